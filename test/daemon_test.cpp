// Integration tests: the real ./udplogger on loopback ports, real
// datagrams, the files it writes.
#include <arpa/inet.h>
#include <dirent.h>
#include <doctest.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>

#include <memory>
#include <regex>
#include <string>

#include "helpers.h"

namespace {

// Today's day file name, YYYY-MM-DD.log.
std::string today_name() {
  time_t now = time(nullptr);
  struct tm tm;
  localtime_r(&now, &tm);
  char name[32];
  strftime(name, sizeof name, "%Y-%m-%d.log", &tm);
  return name;
}

std::string today_log(const Daemon& d) {
  auto names = log_names(d.dir_);
  return names.empty() ? "" : d.dir_ + "/" + names.back();
}

// The log without udplogger's own notices (whose text includes the
// start-up line, with a random temporary path).
std::string data_lines(const std::string& log) {
  std::string out;
  for (size_t i = 0; i < log.size();) {
    size_t e = log.find('\n', i);
    e = e == std::string::npos ? log.size() : e + 1;
    std::string line = log.substr(i, e - i);
    if (line.find(" udplogger: ") == std::string::npos) out += line;
    i = e;
  }
  return out;
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
  std::string where = have_ipv6_sockets() ? "[::]:" + std::to_string(d.port_) + " (IPv4 and IPv6)"
                                          : "0.0.0.0:" + std::to_string(d.port_) + ",";
  CHECK(out.find("listening on UDP " + where) != std::string::npos);
  CHECK(out.find("writing " + d.dir_ + "/") != std::string::npos);
  CHECK(out.find("timeout=10 clients=1024 wbuf=65536 rbuf=8388608 (granted ") !=
        std::string::npos);
  CHECK(out.find("perm=0600") != std::string::npos);
  CHECK(log_names(d.dir_).size() == 1);
  CHECK(d.stop() == 0);
}

TEST_CASE("daemon: IPv4 and IPv6 senders on the dual-stack socket" *
          skip_unless(have_ipv6_loopback(), "daemon: IPv4 and IPv6 senders",
                      "no IPv6 loopback (::1) on this host")) {
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

TEST_CASE("daemon: ip= binds IPv4 alone") {
  Daemon d4({"ip=127.0.0.1"});
  REQUIRE(d4.running());
  CHECK(d4.out().find("listening on UDP 127.0.0.1:") != std::string::npos);
  Sender s4("127.0.0.1");
  s4.send(d4.port_, "four\n");
  CHECK(d4.wait_log(" 127.0.0.1:" + std::to_string(s4.port()) + " four\n"));
}

TEST_CASE("daemon: ip=::1 binds IPv6 alone" *
          skip_unless(have_ipv6_loopback(), "daemon: ip=::1", "no IPv6 loopback (::1) on this host")) {
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
  CHECK(count_of(log, pa + "first half\n") == 1);
  CHECK(count_of(log, pa + "second\n") == 1);
  CHECK(count_of(log, pa + "third\n") == 1);
  CHECK(count_of(log, "other sender\n") == 1);
  CHECK(count_of(log, "\n") == 4 + 1);  // and the start notice
}

TEST_CASE("daemon: SIGTERM and SIGINT write every partial line and exit 0") {
  for (int sig : {SIGTERM, SIGINT}) {
    Daemon d;
    REQUIRE(d.running());
    Sender a, b("127.0.0.2");
    a.send(d.port_, "unfinished a");
    b.send(d.port_, "done\nunfinished b");
    REQUIRE(d.wait_log("done\n"));
    CHECK(d.stop(sig) == 0);
    std::string log = d.log();
    CHECK(count_of(log, "unfinished a\n") == 1);
    CHECK(count_of(log, "unfinished b\n") == 1);
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
  CHECK(count_of(read_file(path), "partial across rotation finished\n") == 1);
  CHECK(d.stop() == 0);
}

TEST_CASE("daemon: after SIGHUP the new file has a netconsole sender's dictionary again") {
  Daemon d;
  REQUIRE(d.running());
  Sender s;
  s.send(d.port_, "6,1,1000,-;one\n nct_host=web1\n");
  s.send(d.port_, "6,2,2000,-;two\n nct_host=web1\n");
  REQUIRE(d.wait_log("two"));
  std::string path = today_log(d);
  REQUIRE(rename(path.c_str(), (path + ".1").c_str()) == 0);
  d.signal(SIGHUP);
  REQUIRE(wait_for([&] { return access(path.c_str(), F_OK) == 0; }));
  s.send(d.port_, "6,3,3000,-;three\n nct_host=web1\n");
  s.send(d.port_, "6,4,4000,-;four\n nct_host=web1\n");
  REQUIRE(wait_for([&] { return read_file(path).find("four") != std::string::npos; }));
  CHECK(count_of(read_file(path + ".1"), " nct_host=web1\n") == 1);
  CHECK(count_of(read_file(path), " nct_host=web1\n") == 1);
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
  for (int i = 0; i < 25; i++) CHECK(count_of(log, "partial-" + std::to_string(i) + "\n") == 1);
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
  CHECK(count_of(log, " " + std::string(1024, 'L') + "\n") == 2);
  CHECK(count_of(log, " " + std::string(952, 'L') + "\n") == 1);
  CHECK(count_of(log, " " + std::string(1024, 'B') + "\n") == 63);
  CHECK(count_of(log, " " + std::string(994, 'B') + "\n") == 1);
  CHECK(count_of(data_lines(log), "B") == 65506);

  Daemon whole({"wbuf=1048576"});
  REQUIRE(whole.running());
  for (int i = 0; i < 100; i++) s.send(whole.port_, big);
  s.send(whole.port_, "after\n");
  REQUIRE(whole.wait_log("after\n"));
  CHECK(count_of(whole.log(), " " + std::string(65506, 'B') + "\n") == 100);
}

namespace {

// The local time of t as stamp=iso writes it, without the zone:
// fixed width, so that such strings sort as the times do.
std::string iso_local(const timespec& t) {
  struct tm tm;
  localtime_r(&t.tv_sec, &tm);
  char out[48];
  size_t n = strftime(out, sizeof out, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out + n, sizeof out - n, ".%06ld", t.tv_nsec / 1000);
  return out;
}

}  // namespace

TEST_CASE("daemon: timestamps are the kernel's arrival time, not the loop's") {
  Daemon d({"stamp=iso"});
  REQUIRE(d.running());
  Sender s;
  // Sent while the daemon is stopped; read 300 ms later, but stamped
  // with the time it arrived.
  d.signal(SIGSTOP);
  timespec before, after;
  clock_gettime(CLOCK_REALTIME, &before);
  s.send(d.port_, "stamped\n");
  clock_gettime(CLOCK_REALTIME, &after);
  usleep(300000);
  d.signal(SIGCONT);
  REQUIRE(d.wait_log("stamped\n"));
  std::string log = d.log();
  size_t line = log.find(" stamped\n");
  REQUIRE(line != std::string::npos);
  line = log.rfind('\n', line) + 1;
  std::string stamp = log.substr(line, 26);
  INFO("sent between " << iso_local(before) << " and " << iso_local(after) << ", stamped " << stamp);
  CHECK(stamp >= iso_local(before).substr(0, 26));
  CHECK(stamp <= iso_local(after));
}

TEST_CASE("daemon: the log switches files at local midnight, even when idle; "
          "each day file has a netconsole sender's dictionary at its first record") {
  std::string tz = zone_with_midnight_in(3);
  Daemon d({}, {std::string("TZ=") + tz});
  REQUIRE(d.running());
  Sender s, ext;
  s.send(d.port_, "before midnight\n");
  ext.send(d.port_, "6,1,1000,-;before\n nct_host=web1\n");
  ext.send(d.port_, "6,2,2000,-;before again\n nct_host=web1\n");
  REQUIRE(d.wait_log("before midnight"));
  REQUIRE(d.wait_log("before again"));
  REQUIRE(wait_for([&] { return log_names(d.dir_).size() == 2; }, 8));
  s.send(d.port_, "after midnight\n");
  ext.send(d.port_, "6,3,3000,-;after\n nct_host=web1\n");
  ext.send(d.port_, "6,4,4000,-;after again\n nct_host=web1\n");
  auto names = log_names(d.dir_);
  std::string yesterday = d.dir_ + "/" + names[0], today = d.dir_ + "/" + names[1];
  REQUIRE(wait_for([&] {
    std::string t = read_file(today);
    return t.find("after midnight") != std::string::npos && t.find("after again") != std::string::npos;
  }));
  CHECK(read_file(yesterday).find("before midnight") != std::string::npos);
  CHECK(read_file(yesterday).find("after midnight") == std::string::npos);
  std::string t = read_file(today);
  INFO("today's file:\n" << t);
  CHECK(t.substr(11, 7) == "00:00:0");
  CHECK(count_of(read_file(yesterday), " nct_host=web1\n") == 1);
  CHECK(count_of(t, " nct_host=web1\n") == 1);
  CHECK(t.find("after\n") < t.find(" nct_host=web1\n"));
}

// A refused file at midnight: see "sink: a refused file at midnight ..." (fake clock).

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

TEST_CASE("--check: the set-up checked as a start would, one line, exit 0 or 2, nothing written") {
  std::string dir = make_temp_dir();
  int port = free_udp_port();
  Exit e = run_udplogger({"--check", "dir=" + dir, "port=" + std::to_string(port), "stamp=iso"});
  CHECK(e.status == 0);
  CHECK(e.out.find("udplogger ") == 0);
  CHECK(e.out.find(": --check: usable: would listen on UDP [::]:" + std::to_string(port) + ", write " +
                   dir + "/20") != std::string::npos);
  CHECK(count_of(e.out, "\n") == 1);
  CHECK(log_names(dir).empty());  // nothing written
  e = run_udplogger({"--check", "dir=" + dir + "/missing"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: cannot use log directory " + dir + "/missing: No such file or directory\n");
  int busy = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_in6 a = {};
  a.sin6_family = AF_INET6;
  a.sin6_port = htons(uint16_t(port));
  REQUIRE(bind(busy, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  e = run_udplogger({"--check", "dir=" + dir, "port=" + std::to_string(port)});
  CHECK(e.status == 2);
  CHECK(e.err.find("Address already in use") != std::string::npos);
  close(busy);
  e = run_udplogger({"--check", "dir=" + dir, "stamp=bogus"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: stamp=bogus: unknown (allowed: classic, iso)\n");
  if (is_root()) {  // as the uid it would run as
    REQUIRE(chmod(dir.c_str(), 0700) == 0);
    e = run_udplogger({"--check", "dir=" + dir, "uid=65534", "gid=65534", "port=" + std::to_string(port)});
    CHECK(e.status == 2);
    CHECK(e.err == "udplogger: cannot write into log directory " + dir + " as uid 65534: Permission denied\n");
    REQUIRE(symlink("/etc/passwd", (dir + "/" + today_name()).c_str()) == 0);
    e = run_udplogger({"--check", "dir=" + dir, "port=" + std::to_string(port)});
    CHECK(e.status == 2);
    CHECK(e.err.find("would be refused: a symbolic link") != std::string::npos);
  }
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
  CHECK(e.err == "udplogger: unknown option 'bogus=1' (udplogger --help lists the options)\n");
  e = run_udplogger({"--help"});
  CHECK(e.status == 0);
  CHECK(e.out.find("usage: udplogger") == 0);
  CHECK(e.out.find("perm=MODE") != std::string::npos);
  e = run_udplogger({"--version"});
  CHECK(e.status == 0);
  CHECK(e.out.find("udplogger 2.") == 0);
}

TEST_CASE("daemon: uid=, gid= and perm=" *
          skip_unless(is_root(), "daemon: uid=, gid=", "not root: cannot switch ids")) {
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

TEST_CASE("binary: links libc alone" *
          skip_unless(!is_sanitized(), "binary: links libc alone", "sanitizers link their runtimes")) {
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
}

// GCC once deleted every call to SenderTable::prefetch (a function of
// prefetches alone looks free of side effects): the hint must be in the code.
#if defined(__x86_64__)
constexpr bool kX86_64 = true;
#else
constexpr bool kX86_64 = false;
#endif
TEST_CASE("binary: sender lookups are prefetched" *
          skip_unless(kX86_64 && !is_sanitized(), "binary: sender lookups are prefetched",
                      "prefetch instructions are only looked for on x86_64, without sanitizers")) {
  FILE* p = popen(("objdump -d " + udplogger_path() + " 2>&1").c_str(), "r");
  REQUIRE(p);
  int prefetches = 0;
  char buf[512];
  while (fgets(buf, sizeof buf, p)) prefetches += strstr(buf, "prefetcht0") != nullptr;
  pclose(p);
  MESSAGE("prefetch instructions: " << prefetches);
  CHECK(prefetches >= 3);
}

TEST_CASE("daemon: memory is bounded by options, not by traffic or senders" *
          skip_unless(!is_sanitized(), "daemon: memory is bounded",
                      "sanitizers' shadow memory and quarantine are not the daemon's")) {
  Daemon d({"clients=1024", "hosts=1024"});
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
  // 4000 more senders push the older ones (and their hosts) out of the
  // 1024 slots.
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
  CHECK(count_of(d.log(), " partial " + std::string(92, 'p') + "\n") == 5000);
}

// ---------------------------------------------------------------- outputs

namespace {

// Reads from fd until `text` has arrived or the deadline passes.
bool read_until(int fd, std::string* got, const std::string& text, double seconds) {
  return wait_for([&] {
    pollfd p = {fd, POLLIN, 0};
    while (poll(&p, 1, 0) == 1 && (p.revents & POLLIN)) {
      char buf[4096];
      ssize_t n = read(fd, buf, sizeof buf);
      if (n <= 0) break;
      got->append(buf, size_t(n));
    }
    return got->find(text) != std::string::npos;
  }, seconds);
}

}  // namespace

TEST_CASE("daemon: dir=- writes lines to stdout, no file, and exits 0 when the reader goes away") {
  std::string dir = make_temp_dir();
  int port = free_udp_port();
  int out = -1;
  std::string err = dir + "/stderr";
  pid_t pid = spawn_with_pipe({"dir=-", "port=" + std::to_string(port)}, &out, err);
  REQUIRE(wait_for([&] { return read_file(err).find("listening on") != std::string::npos; }));
  CHECK(read_file(err).find("writing standard output;") != std::string::npos);
  Sender s;
  s.send(port, "oops: to stdout\nsecond line\npartial");
  std::string got;
  REQUIRE(read_until(out, &got, "second line\n", 3));
  std::regex line("\n\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d 127\\.0\\.0\\.1:" +
                  std::to_string(s.port()) + " oops: to stdout\n");
  CHECK(std::regex_search(got, line));
  CHECK(log_names(dir).empty());
  auto files = [&] {
    size_t n = 0;
    DIR* d = opendir(dir.c_str());
    while (dirent* e = readdir(d)) n += e->d_name[0] != '.';
    closedir(d);
    return n;
  };
  CHECK(files() == 1);  // only the test's own stderr file
  close(out);           // the reader goes away
  s.send(port, "\nnobody reads this\n");
  int st = 0;
  bool exited = wait_for([&] { return waitpid(pid, &st, WNOHANG) == pid; }, 3);
  if (!exited) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
  }
  REQUIRE(exited);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  CHECK(read_file(err).find("udplogger: standard output was closed (EPIPE): the reader went "
                            "away; exiting\n") != std::string::npos);
}

TEST_CASE("daemon: split=host writes DIR/ADDR/ files, at most files= open, own notices apart") {
  Daemon d({"split=host", "files=4"});
  REQUIRE(d.running());
  CHECK(d.out().find("/ADDR/YYYY-MM-DD.log per sender, own notices to " + d.dir_ + "/") !=
        std::string::npos);
  std::vector<std::unique_ptr<Sender>> senders;
  for (int i = 1; i <= 20; i++)
    senders.emplace_back(new Sender(("127.3.0." + std::to_string(i)).c_str()));
  bool v6 = have_ipv6_loopback();  // without it, 21 IPv4 senders
  senders.emplace_back(new Sender(v6 ? "::1" : "127.3.0.21"));
  std::string last = v6 ? "::1" : "127.3.0.21";
  size_t most_open = 0;
  for (int round = 0; round < 3; round++) {
    for (size_t i = 0; i < senders.size(); i++)
      senders[i]->send(d.port_, "round " + std::to_string(round) + " from " + std::to_string(i) + "\n");
    for (int k = 0; k < 20; k++) {
      most_open = std::max(most_open, fds_into(std::to_string(d.pid_), d.dir_));
      usleep(1000);
    }
  }
  std::string day = log_names(d.dir_).at(0);
  auto host_log = [&](const std::string& host) { return read_file(d.dir_ + "/" + host + "/" + day); };
  REQUIRE(wait_for([&] { return host_log(last).find("round 2 from 20\n") != std::string::npos; }));
  d.signal(SIGUSR1);
  REQUIRE(d.wait_log("udplogger: statistics:"));
  CHECK(d.stop() == 0);
  MESSAGE("most descriptors open into the log directory: " << most_open);
  CHECK(most_open <= 4 + 2);  // host files, the day file, a host directory being opened
  for (int i = 1; i <= 20; i++) {
    std::string log = host_log("127.3.0." + std::to_string(i));
    for (int round = 0; round < 3; round++)
      CHECK(count_of(log, " 127.3.0." + std::to_string(i) + ":" + std::to_string(senders[size_t(i - 1)]->port()) +
                           " round " + std::to_string(round) + " from " + std::to_string(i - 1) + "\n") == 1);
    CHECK(log.find("udplogger:") == std::string::npos);
  }
  CHECK(count_of(host_log(last), v6 ? " [::1]:" : " 127.3.0.21:") == 3);
  std::string own = read_file(d.dir_ + "/" + day);
  CHECK(count_of(own, "udplogger: statistics: datagrams=63 ") == 1);  // SIGUSR1
  CHECK(count_of(own, "udplogger: stopped by SIGTERM; statistics: datagrams=63 ") == 1);
  CHECK(count_of(own, "udplogger: started (version 2.") == 1);
  CHECK(own.find(" round ") == std::string::npos);
  struct stat st;
  REQUIRE(stat((d.dir_ + "/127.3.0.1").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0750);
}

TEST_CASE("daemon: stamp=iso stamps lines and notices with microseconds and the offset") {
  Daemon d({"stamp=iso"}, {"TZ=XXX-5:30"});
  REQUIRE(d.running());
  Sender s;
  s.send(d.port_, "iso line\n");
  REQUIRE(d.wait_log("iso line\n"));
  CHECK(d.stop() == 0);
  std::string log = d.log();
  std::regex line("\n\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{6}\\+05:30 127\\.0\\.0\\.1:" +
                  std::to_string(s.port()) + " iso line\n");
  CHECK(std::regex_search(log, line));
  CHECK(std::regex_search(log, std::regex("\n\\d{4}-\\d\\d-\\d\\dT\\d\\d:\\d\\d:\\d\\d\\.\\d{6}"
                                          "\\+05:30 udplogger: stopped by SIGTERM; statistics: ")));
}

TEST_CASE("daemon: bad output options and combinations exit 2 naming the option") {
  Exit e = run_udplogger({"stamp=bogus"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: stamp=bogus: unknown (allowed: classic, iso)\n");
  e = run_udplogger({"split=ip"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: split=ip: unknown (allowed: none, host)\n");
  e = run_udplogger({"dir=-", "split=host"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: split=host: needs a log directory, not dir=- (allowed with dir=-: "
                 "split=none)\n");
  e = run_udplogger({"files=0"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: files=0: out of range (allowed: 1..65536)\n");
}

TEST_CASE("reuseport=1: two processes share a port and a daily file, every line once and whole") {
  std::string dir = make_temp_dir();
  std::string port = "port=" + std::to_string(free_udp_port());
  Daemon a({"reuseport=1", port}, {}, dir, make_temp_dir());
  Daemon b({"reuseport=1", port}, {}, dir, make_temp_dir());
  REQUIRE(a.running());
  REQUIRE(b.running());
  CHECK(a.out().find(" reuseport=1") != std::string::npos);
  const int senders = 1000;
  std::string pad(60, '.');
  for (int i = 0; i < senders; i++) {  // each from its own port; the middle line in two datagrams
    Sender s;
    std::string who = "sender=" + std::to_string(i);
    s.send(a.port_, who + " line=0 " + pad + "\n");
    s.send(a.port_, who + " line=1 first half, ");
    s.send(a.port_, "second half " + pad + "\n" + who + " line=2 " + pad + "\n");
  }
  auto data_lines = [&] { return count_of(a.log(), " " + pad + "\n"); };
  REQUIRE(wait_for([&] { return data_lines() == size_t(3 * senders); }, 10));
  CHECK(a.stop() == 0);
  CHECK(b.stop() == 0);
  std::string log = a.log();
  for (int i = 0; i < senders; i++) {
    std::string who = "sender=" + std::to_string(i);
    CAPTURE(who);
    CHECK(count_of(log, " " + who + " line=0 " + pad + "\n") == 1);
    CHECK(count_of(log, " " + who + " line=1 first half, second half " + pad + "\n") == 1);
    CHECK(count_of(log, " " + who + " line=2 " + pad + "\n") == 1);
  }
  // Nothing torn or glued: every line a stamp, a sender or udplogger, and text.
  std::regex whole("\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d (udplogger: .*|127\\.0\\.0\\.1:\\d+ "
                   "sender=\\d+ line=\\d (first half, second half )?\\.{60})");
  size_t bad = 0;
  for (size_t i = 0; i < log.size();) {
    size_t e = log.find('\n', i);
    if (!std::regex_match(log.substr(i, e - i), whole) && bad++ < 3) MESSAGE("not whole: " << log.substr(i, e - i));
    i = e + 1;
  }
  CHECK(bad == 0);
  // The kernel spread the senders over both.
  auto lines_of = [](const std::string& err) {
    std::smatch m;
    return std::regex_search(err, m, std::regex(" lines=([0-9]+) ")) ? std::stoul(m[1]) : 0;
  };
  size_t la = lines_of(a.err()), lb = lines_of(b.err());
  MESSAGE("lines written by the first process " << la << ", by the second " << lb);
  CHECK(la > 0);
  CHECK(lb > 0);
  CHECK(la + lb == size_t(3 * senders));
}
