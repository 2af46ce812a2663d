// Integration tests: the real ./udplogger on loopback ports, real
// datagrams, the files it writes.
#include <doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include <memory>
#include <regex>
#include <string>

#include "helpers.h"

namespace {

std::string today_log(const Daemon& d) {
  auto names = log_names(d.dir_);
  return names.empty() ? "" : d.dir_ + "/" + names.back();
}

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) n++;
  return n;
}

std::string status_field(pid_t pid, const std::string& key) {
  std::string s = read_file("/proc/" + std::to_string(pid) + "/status");
  size_t p = s.find(key + ":");
  if (p == std::string::npos) return "";
  size_t e = s.find('\n', p);
  std::string v = s.substr(p + key.size() + 1, e - p - key.size() - 1);
  size_t b = v.find_first_not_of(" \t");
  return b == std::string::npos ? "" : v.substr(b);
}

// A POSIX TZ (local time = UTC + offset) whose next midnight is `seconds`
// from now.
std::string zone_with_midnight_in(long seconds) {
  long sod = long(time(nullptr) % 86400);
  long off = ((86400 - seconds - sod) % 86400 + 86400) % 86400;
  char tz[32];
  snprintf(tz, sizeof tz, "XXX-%ld:%02ld:%02ld", off / 3600, off / 60 % 60, off % 60);
  return tz;
}

}  // namespace

TEST_CASE("daemon: start-up line names the options and the log file") {
  Daemon d;
  REQUIRE(d.running());
  std::string out = d.out();
  CHECK(out.find("listening on UDP [::]:" + std::to_string(d.port_) + " (IPv4 and IPv6)") !=
        std::string::npos);
  CHECK(out.find("writing " + d.dir_ + "/") != std::string::npos);
  CHECK(out.find("timeout=10 clients=1024 wbuf=65536 rbuf=8388608 (granted ") !=
        std::string::npos);
  CHECK(out.find("perm=0600") != std::string::npos);
  CHECK(log_names(d.dir_).size() == 1);
  CHECK(d.stop() == 0);
}

TEST_CASE("daemon: IPv4 and IPv6 senders on the dual-stack socket") {
  Daemon d;
  REQUIRE(d.running());
  Sender s4("127.0.0.1"), s6("::1");
  s4.send(d.port_, "hello from v4\n");
  s6.send(d.port_, "hello from v6\n");
  s4.send(d.port_, "via mapped\n", "::ffff:127.0.0.1");
  REQUIRE(d.wait_log("hello from v6"));
  REQUIRE(d.wait_log("hello from v4"));
  std::string log = d.log();
  std::regex v4line("\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d 127\\.0\\.0\\.1:" +
                    std::to_string(s4.port()) + " hello from v4\n");
  std::regex v6line("\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d \\[::1\\]:" +
                    std::to_string(s6.port()) + " hello from v6\n");
  CHECK(std::regex_search(log, v4line));
  CHECK(std::regex_search(log, v6line));
  // The log is named after the local date of its lines.
  CHECK(log_names(d.dir_).back() == log.substr(0, 10) + ".log");
  CHECK(d.stop() == 0);
}

TEST_CASE("daemon: ip= binds one family") {
  Daemon d4({"ip=127.0.0.1"});
  REQUIRE(d4.running());
  CHECK(d4.out().find("listening on UDP 127.0.0.1:") != std::string::npos);
  Sender s4("127.0.0.1");
  s4.send(d4.port_, "four\n");
  CHECK(d4.wait_log(" 127.0.0.1:" + std::to_string(s4.port()) + " four\n"));

  Daemon d6({"ip=::1"});
  REQUIRE(d6.running());
  Sender s6("::1");
  s6.send(d6.port_, "six\n");
  CHECK(d6.wait_log(" [::1]:" + std::to_string(s6.port()) + " six\n"));
}

TEST_CASE("daemon: lines split across datagrams and several lines per datagram") {
  Daemon d;
  REQUIRE(d.running());
  Sender a, b;
  a.send(d.port_, "first ha");
  b.send(d.port_, "other sender\n");
  a.send(d.port_, "lf\nsecond\nthi");
  a.send(d.port_, "rd\n");
  REQUIRE(d.wait_log("third\n"));
  std::string log = d.log();
  std::string pa = " 127.0.0.1:" + std::to_string(a.port()) + " ";
  CHECK(count(log, pa + "first half\n") == 1);
  CHECK(count(log, pa + "second\n") == 1);
  CHECK(count(log, pa + "third\n") == 1);
  CHECK(count(log, "other sender\n") == 1);
  CHECK(count(log, "\n") == 4);
}

TEST_CASE("daemon: a partial line is written after timeout= seconds") {
  Daemon d({"timeout=5"});
  REQUIRE(d.running());
  Sender s;
  double sent = now_seconds();
  s.send(d.port_, "waiting for a newline");
  REQUIRE(d.wait_log("waiting for a newline\n", 10));
  double waited = now_seconds() - sent;
  CHECK(waited >= 4.5);
  CHECK(waited < 7.5);
}

TEST_CASE("daemon: SIGTERM and SIGINT write every partial line and exit 0") {
  for (int sig : {SIGTERM, SIGINT}) {
    Daemon d;
    REQUIRE(d.running());
    Sender a, b("::1");
    a.send(d.port_, "unfinished a");
    b.send(d.port_, "done\nunfinished b");
    REQUIRE(d.wait_log("done\n"));
    CHECK(d.stop(sig) == 0);
    std::string log = d.log();
    CHECK(count(log, "unfinished a\n") == 1);
    CHECK(count(log, "unfinished b\n") == 1);
  }
}

TEST_CASE("daemon: SIGHUP reopens the log file after it was moved") {
  Daemon d;
  REQUIRE(d.running());
  Sender s;
  s.send(d.port_, "before rotation\n");
  REQUIRE(d.wait_log("before rotation"));
  std::string path = today_log(d);
  REQUIRE(rename(path.c_str(), (path + ".1").c_str()) == 0);
  s.send(d.port_, "partial across rotation");
  d.signal(SIGHUP);
  REQUIRE(wait_for([&] { return access(path.c_str(), F_OK) == 0; }));
  s.send(d.port_, " finished\n");
  REQUIRE(wait_for([&] { return read_file(path).find("finished\n") != std::string::npos; }));
  CHECK(read_file(path + ".1").find("before rotation\n") != std::string::npos);
  CHECK(count(read_file(path), "partial across rotation finished\n") == 1);
  CHECK(d.stop() == 0);
}

TEST_CASE("daemon: a full clients table loses nothing") {
  Daemon d({"clients=10"});
  REQUIRE(d.running());
  std::vector<std::unique_ptr<Sender>> senders;
  for (int i = 0; i < 25; i++) {
    senders.emplace_back(new Sender());
    senders.back()->send(d.port_, "partial-" + std::to_string(i));
  }
  // The 15 senders pushed out wrote their partial lines at once, long
  // before the timeout.
  REQUIRE(d.wait_log("partial-14\n", 3));
  CHECK(d.log().find("partial-15\n") == std::string::npos);
  CHECK(d.stop() == 0);
  std::string log = d.log();
  for (int i = 0; i < 25; i++) CHECK(count(log, "partial-" + std::to_string(i) + "\n") == 1);
}

TEST_CASE("daemon: control bytes are escaped, UTF-8 and tabs kept; escape=none is raw") {
  std::string evil("\x1b[2J\x1b]0;owned\x07 nul:\0 del:\x7f tab:\t utf8:\xe6\x97\xa5\xe6\x9c\xac\n", 45);
  {
    Daemon d;
    REQUIRE(d.running());
    Sender s;
    s.send(d.port_, evil);
    REQUIRE(d.wait_log("utf8:"));
    CHECK(d.log().find("\\x1b[2J\\x1b]0;owned\\x07 nul:\\x00 del:\\x7f tab:\t utf8:\xe6\x97\xa5\xe6\x9c\xac\n") !=
          std::string::npos);
  }
  {
    Daemon d({"escape=none"});
    REQUIRE(d.running());
    Sender s;
    s.send(d.port_, evil);
    REQUIRE(d.wait_log("utf8:"));
    CHECK(d.log().find(evil) != std::string::npos);
  }
}

TEST_CASE("daemon: long lines in wbuf pieces; 64 KiB and empty datagrams") {
  Daemon d({"wbuf=1024"});
  REQUIRE(d.running());
  Sender s;
  s.send(d.port_, "");
  s.send(d.port_, std::string(3000, 'L') + "\n");
  std::string big(65507, 'B');
  big[65506] = '\n';
  s.send(d.port_, big);
  s.send(d.port_, "after\n");
  REQUIRE(d.wait_log("after\n"));
  std::string log = d.log();
  CHECK(count(log, " " + std::string(1024, 'L') + "\n") == 2);
  CHECK(count(log, " " + std::string(952, 'L') + "\n") == 1);
  CHECK(count(log, " " + std::string(1024, 'B') + "\n") == 63);
  CHECK(count(log, " " + std::string(994, 'B') + "\n") == 1);
  CHECK(count(log, "B") == 65506);

  Daemon whole({"wbuf=1048576"});
  REQUIRE(whole.running());
  for (int i = 0; i < 100; i++) s.send(whole.port_, big);
  s.send(whole.port_, "after\n");
  REQUIRE(whole.wait_log("after\n"));
  CHECK(count(whole.log(), " " + std::string(65506, 'B') + "\n") == 100);
}

TEST_CASE("daemon: timestamps are the kernel's arrival time, not the loop's") {
  Daemon d;
  REQUIRE(d.running());
  Sender s;
  // Send early in a second while the daemon is stopped; it reads the
  // datagram two seconds later but must stamp the second it arrived.
  timespec ts;
  REQUIRE(wait_for([&] {
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_nsec > 100000000 && ts.tv_nsec < 300000000;
  }));
  d.signal(SIGSTOP);
  time_t sent = ts.tv_sec;
  s.send(d.port_, "stamped\n");
  usleep(2200000);
  d.signal(SIGCONT);
  REQUIRE(d.wait_log("stamped\n"));
  char stamp[32];
  struct tm tm;
  localtime_r(&sent, &tm);
  strftime(stamp, sizeof stamp, "%Y-%m-%d %H:%M:%S", &tm);
  CHECK(d.log().substr(0, 19) == stamp);
}

TEST_CASE("daemon: the log switches files at local midnight, even when idle") {
  std::string tz = zone_with_midnight_in(3);
  Daemon d({}, {std::string("TZ=") + tz});
  REQUIRE(d.running());
  Sender s;
  s.send(d.port_, "before midnight\n");
  REQUIRE(d.wait_log("before midnight"));
  REQUIRE(wait_for([&] { return log_names(d.dir_).size() == 2; }, 8));
  s.send(d.port_, "after midnight\n");
  auto names = log_names(d.dir_);
  REQUIRE(wait_for([&] {
    return read_file(d.dir_ + "/" + names[1]).find("after midnight") != std::string::npos;
  }));
  CHECK(read_file(d.dir_ + "/" + names[0]).find("before midnight") != std::string::npos);
  CHECK(read_file(d.dir_ + "/" + names[0]).find("after midnight") == std::string::npos);
  CHECK(read_file(d.dir_ + "/" + names[1]).substr(11, 8) == "00:00:0" +
        read_file(d.dir_ + "/" + names[1]).substr(18, 1));
}

TEST_CASE("daemon: a refused file at midnight keeps the current one and says why") {
  time_t now = time(nullptr);
  std::string tz = zone_with_midnight_in(3);
  std::string dir = make_temp_dir();
  // Tomorrow's file (in that zone) is a symbolic link planted in advance.
  setenv("TZ", tz.c_str(), 1);
  tzset();
  time_t tomorrow = now + 10;
  char name[32];
  struct tm tm;
  localtime_r(&tomorrow, &tm);
  strftime(name, sizeof name, "%Y-%m-%d.log", &tm);
  unsetenv("TZ");
  tzset();
  REQUIRE(symlink("/etc/passwd", (dir + "/" + name).c_str()) == 0);
  Daemon d({}, {std::string("TZ=") + tz}, dir);
  REQUIRE(d.running());
  REQUIRE(wait_for([&] { return d.err().find("cannot switch to log file") != std::string::npos; }, 8));
  CHECK(d.err().find(std::string(name) + ": is a symbolic link; still writing") != std::string::npos);
  Sender s;
  s.send(d.port_, "still logged\n");
  REQUIRE(d.wait_log("still logged"));
  CHECK(read_file("/etc/passwd").find("still logged") == std::string::npos);
}

TEST_CASE("daemon: unsafe log files are refused at start") {
  char name[32];
  time_t now = time(nullptr);
  struct tm tm;
  localtime_r(&now, &tm);
  strftime(name, sizeof name, "%Y-%m-%d.log", &tm);
  {
    std::string dir = make_temp_dir();
    REQUIRE(symlink("/etc/passwd", (dir + "/" + name).c_str()) == 0);
    Exit e = run_udplogger({"dir=" + dir, "port=" + std::to_string(free_udp_port())});
    CHECK(e.status == 1);
    CHECK(e.err.find("cannot open log file " + dir + "/" + name + ": is a symbolic link") !=
          std::string::npos);
  }
  {
    std::string dir = make_temp_dir();
    int fd = open((dir + "/" + name).c_str(), O_CREAT | O_WRONLY, 0755);
    fchmod(fd, 0755);
    close(fd);
    Exit e = run_udplogger({"dir=" + dir, "port=" + std::to_string(free_udp_port())});
    CHECK(e.status == 1);
    CHECK(e.err.find(": is executable (mode 0755)") != std::string::npos);
  }
  {
    std::string dir = make_temp_dir();
    REQUIRE(mkfifo((dir + "/" + name).c_str(), 0600) == 0);
    Exit e = run_udplogger({"dir=" + dir, "port=" + std::to_string(free_udp_port())});
    CHECK(e.status == 1);
    CHECK(e.err.find(": is not a regular file") != std::string::npos);
  }
  {
    std::string dir = make_temp_dir();
    REQUIRE(mkdir((dir + "/" + name).c_str(), 0700) == 0);
    Exit e = run_udplogger({"dir=" + dir, "port=" + std::to_string(free_udp_port())});
    CHECK(e.status == 1);
    CHECK(e.err.find("cannot open log file") != std::string::npos);
  }
}

TEST_CASE("daemon: fatal errors name what failed, on what, and why") {
  Exit e = run_udplogger({"dir=/nonexistent/udplogger"});
  CHECK(e.status == 1);
  CHECK(e.err == "udplogger: cannot use log directory /nonexistent/udplogger: No such file or directory\n");

  Daemon d;
  REQUIRE(d.running());
  e = run_udplogger({"dir=" + make_temp_dir(), "port=" + std::to_string(d.port_)});
  CHECK(e.status == 1);
  CHECK(e.err == "udplogger: cannot bind UDP [::]:" + std::to_string(d.port_) +
                     ": Address already in use\n");
  e = run_udplogger({"dir=" + make_temp_dir(), "ip=127.0.0.1", "port=" + std::to_string(d.port_)});
  CHECK(e.err == "udplogger: cannot bind UDP 127.0.0.1:" + std::to_string(d.port_) +
                     ": Address already in use\n");
  e = run_udplogger({"dir=" + make_temp_dir(), "ip=192.0.2.1"});
  CHECK(e.status == 1);
  CHECK(e.err.find("cannot bind UDP 192.0.2.1:6666: Cannot assign requested address") !=
        std::string::npos);
}

TEST_CASE("daemon: usage errors exit 2, --help and --version exit 0") {
  Exit e = run_udplogger({"timeout=1"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: timeout=1: out of range (allowed: 5..600)\n");
  e = run_udplogger({"--clients=lots"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: clients=lots: not a number (allowed: 10..65536)\n");
  e = run_udplogger({"bogus=1"});
  CHECK(e.status == 2);
  CHECK(e.err.find("udplogger: unknown option 'bogus=1'\nusage: udplogger") == 0);
  e = run_udplogger({"--help"});
  CHECK(e.status == 0);
  CHECK(e.out.find("usage: udplogger") == 0);
  CHECK(e.out.find("perm=MODE") != std::string::npos);
  e = run_udplogger({"--version"});
  CHECK(e.status == 0);
  CHECK(e.out.find("udplogger 2.") == 0);
}

TEST_CASE("daemon: uid=, gid= and perm=") {
  if (geteuid() != 0) {
    MESSAGE("not root: the privilege drop is tested only as root");
    return;
  }
  std::string dir = make_temp_dir();
  REQUIRE(chown(dir.c_str(), 65534, 65534) == 0);
  Daemon d({"uid=65534", "gid=65534", "perm=0640"}, {}, dir);
  REQUIRE(d.running());
  CHECK(status_field(d.pid_, "Uid") == "65534\t65534\t65534\t65534");
  CHECK(status_field(d.pid_, "Gid") == "65534\t65534\t65534\t65534");
  CHECK(status_field(d.pid_, "Groups") == "");
  struct stat st;
  REQUIRE(stat(today_log(d).c_str(), &st) == 0);
  CHECK(st.st_uid == 65534);
  CHECK(st.st_gid == 65534);
  CHECK((st.st_mode & 07777) == 0640);
  Sender s;
  s.send(d.port_, "as nobody\n");
  CHECK(d.wait_log("as nobody\n"));

  // A directory the new user cannot write: a clear error, exit 1.
  std::string rootdir = make_temp_dir();
  Exit e = run_udplogger({"dir=" + rootdir, "uid=65534", "gid=65534",
                          "port=" + std::to_string(free_udp_port())});
  CHECK(e.status == 1);
  CHECK(e.err.find("cannot open log file " + rootdir) != std::string::npos);
  CHECK(e.err.find("Permission denied") != std::string::npos);
}

TEST_CASE("daemon: perm= applies whatever the umask") {
  mode_t old = umask(077);
  Daemon d({"perm=0644"});
  umask(old);
  REQUIRE(d.running());
  struct stat st;
  REQUIRE(stat(today_log(d).c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0644);
}

TEST_CASE("binary: links libc alone") {
  FILE* p = popen(("ldd " + udplogger_path() + " 2>&1").c_str(), "r");
  REQUIRE(p);
  std::string out;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) out += buf;
  pclose(p);
  CHECK(out.find("libc.so") != std::string::npos);
  CHECK(out.find("libstdc++") == std::string::npos);
  CHECK(out.find("libgcc_s") == std::string::npos);
  CHECK(out.find("libm.") == std::string::npos);
  // Small enough for a rescue image: stripped, under 64 KiB.
  std::string stripped = make_temp_dir() + "/udplogger.stripped";
  REQUIRE(system(("strip -o " + stripped + " " + udplogger_path()).c_str()) == 0);
  struct stat st;
  REQUIRE(stat(stripped.c_str(), &st) == 0);
  MESSAGE("stripped binary: " << st.st_size << " bytes");
  CHECK(st.st_size < 64 * 1024);
}

TEST_CASE("daemon: memory is bounded by options, not by traffic or senders") {
  Daemon d({"clients=1024"});
  REQUIRE(d.running());
  // 1000 senders (each its own 127.0.x.y) holding a 100-byte partial line.
  auto send_partials = [&](int from, int to) {
    for (int i = from; i < to; i++) {
      std::string ip = "127.1." + std::to_string(i / 250) + "." + std::to_string(1 + i % 250);
      Sender s(ip.c_str());
      s.send(d.port_, "partial " + std::string(92, 'p'));
    }
  };
  send_partials(0, 1000);
  d.signal(SIGUSR1);
  REQUIRE(d.wait_log("senders=1000 "));
  long hwm1000 = std::stol(status_field(d.pid_, "VmHWM"));
  MESSAGE("VmHWM with 1000 partial lines: " << hwm1000 << " kB");
  CHECK(hwm1000 <= 4096);
  // 4000 more senders push the older ones out of the 1024 slots.
  send_partials(1000, 5000);
  d.signal(SIGUSR1);
  REQUIRE(d.wait_log("reused=3976"));
  long hwm5000 = std::stol(status_field(d.pid_, "VmHWM"));
  MESSAGE("VmHWM after 5000 senders: " << hwm5000 << " kB");
  CHECK(hwm5000 <= hwm1000 + 256);
  // Known senders sending: no new memory at all.
  std::vector<std::unique_ptr<Sender>> known;
  for (int i = 0; i < 16; i++) known.emplace_back(new Sender());
  for (int round = 0; round < 2; round++) {
    long data_before = std::stol(status_field(d.pid_, "VmData"));
    for (int i = 0; i < 20000; i++)
      known[size_t(i % 16)]->send(d.port_, "line " + std::to_string(round) + "-" + std::to_string(i) +
                                               " " + std::string(80, 'x') + "\n");
    REQUIRE(d.wait_log("line " + std::to_string(round) + "-19999 "));
    if (round == 1) CHECK(std::stol(status_field(d.pid_, "VmData")) == data_before);
  }
  CHECK(d.stop() == 0);
  CHECK(count(d.log(), " partial " + std::string(92, 'p') + "\n") == 5000);
}
