// Never lose a line silently, with the daemon: a real full disk (tmpfs, as
// root), a stop with a queue, closed standard fds, the memory cap, a
// removed directory.
#include <doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <arpa/inet.h>
#include <dirent.h>
#include <sys/wait.h>
#include <unistd.h>

#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "core_harness.h"
#include "helpers.h"
#include "udplogger.h"

TEST_CASE("daemon: a full disk: every lost line counted, the first thing after is a notice" *
          skip_unless(is_root(), "daemon: a full disk", "not root: mounting a small tmpfs needs root")) {
  std::string dir = make_temp_dir();
  REQUIRE(mount("udplogger-test", dir.c_str(), "tmpfs", 0, "size=200k,mode=0755") == 0);
  // Most of the space taken, so that the log fills it soon.
  REQUIRE(run_command("dd if=/dev/zero of=" + dir + "/filler bs=4k count=40 2>/dev/null").status == 0);
  {
    Daemon d({}, {}, dir);
    REQUIRE(d.running());
    Sender s;
    const int n = 1000;
    std::string pad(80, '.');
    for (int i = 0; i < n; i++) {
      s.send(d.port_, "seq " + std::to_string(i) + " " + pad + "\n");
      if (i % 50 == 49) usleep(2000);
    }
    REQUIRE(wait_for([&] { return d.err().find("No space left on device") != std::string::npos; }));
    usleep(200000);
    REQUIRE(unlink((dir + "/filler").c_str()) == 0);  // space again
    s.send(d.port_, "after the disk was freed\n");
    REQUIRE(d.wait_log("after the disk was freed\n"));
    CHECK(d.stop() == 0);
    std::string log = d.log();
    size_t written = count_of(log, " " + pad + "\n");
    std::smatch m;
    REQUIRE(std::regex_search(log, m, std::regex("\n[0-9: -]{20}udplogger: ([0-9]+) lines \\(([0-9]+) "
                                                 "bytes\\) could not be written since [0-9: -]{19}: No space "
                                                 "left on device(; the line before this notice was cut)?\n")));
    size_t lost = std::stoul(m[1]);
    MESSAGE("sent " << n << ", written " << written << ", counted as lost " << lost);
    CHECK(lost > 0);
    CHECK(written + lost == size_t(n));
    // The notice is the first thing written once there was room again.
    size_t notice = log.find("could not be written since");
    CHECK(log.find(" seq ", notice) > log.find("after the disk was freed", notice));
    // Every line whole: a prefix, no glued lines.
    size_t bad = 0;
    for (size_t i = 0; i < log.size();) {
      size_t e = log.find('\n', i);
      std::string line = log.substr(i, e - i);
      // A line the disk cut, even inside its stamp, ends in the mark.
      bool ok = std::regex_match(line, std::regex("\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d:\\d\\d "
                                                  "(udplogger: .*|127\\.0\\.0\\.1:\\d+ (seq \\d+ \\.{80}|after the disk was freed))|.*\\[\\.\\.\\. line cut here \\.\\.\\.\\]"));
      if (!ok && bad++ < 3) MESSAGE("not a whole line: " << line);
      i = e + 1;
    }
    CHECK(bad == 0);
    CHECK(d.err().find("unwritten_lines=" + std::to_string(lost) + " ") != std::string::npos);
    CHECK(d.err().find("(disk_full=" + std::to_string(lost) + " ") != std::string::npos);
    CHECK(count_of(d.err(), "cannot write ") == 1);  // once per episode
  }
  umount(dir.c_str());
}

TEST_CASE("stop: SIGTERM reads everything queued before it leaves") {
  Daemon d({"rbuf=67108864"});
  REQUIRE(d.running());
  Sender s;
  d.signal(SIGSTOP);
  const int n = 20000;
  for (int i = 0; i < n; i++) s.send(d.port_, "queued " + std::to_string(i) + "\n");
  d.signal(SIGTERM);  // pending while stopped: seen first thing on SIGCONT
  d.signal(SIGCONT);
  int st = d.stop(0);  // signal 0: only wait for the exit
  CHECK(st == 0);
  std::string log = d.log();
  size_t written = count_of(log, " queued ");
  size_t dropped = kernel_drops_in(log);
  MESSAGE("queued " << n << " at SIGTERM: written " << written << ", dropped by the kernel " << dropped);
  CHECK(written + dropped == size_t(n));
  CHECK(written > 8192);  // more than the old bound of 64 batches
  CHECK(log.find("still queued") == std::string::npos);
}

TEST_CASE("start-up safety: with fds 0 to 2 closed, messages never land in the log") {
  std::string dir = make_temp_dir();
  int port = free_udp_port();
  std::string path = udplogger_path();
  pid_t pid = fork();
  if (pid == 0) {
    close(0);
    close(1);
    close(2);
    std::string d = "dir=" + dir, p = "port=" + std::to_string(port);
    execl(path.c_str(), path.c_str(), d.c_str(), p.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  REQUIRE(wait_for([&] { return all_logs(dir).find("started (version") != std::string::npos; }));
  char target[256] = "";
  ssize_t len = readlink(("/proc/" + std::to_string(pid) + "/fd/2").c_str(), target, sizeof target - 1);
  CHECK(std::string(target, size_t(len > 0 ? len : 0)) == "/dev/null");
  kill(pid, SIGUSR1);  // its statistics go to the log and to stderr, which must not be the log
  REQUIRE(wait_for([&] { return all_logs(dir).find("statistics:") != std::string::npos; }));
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  std::string log = all_logs(dir);
  size_t bad = 0;
  for (size_t i = 0; i < log.size();) {
    size_t e = log.find('\n', i);
    bad += log.compare(i, 2, "20") != 0;  // every line starts with its stamp
    i = e == std::string::npos ? log.size() : e + 1;
  }
  CHECK(bad == 0);
}

TEST_CASE("memory: one cap on all partial lines; the oldest is written out whole, not dropped") {
  ul::Options o;
  o.partials = 65536;
  Core c(o, 1 << 20);
  c.feed("10.0.0.1", 1, std::string(30000, 'a'), T0);
  c.feed("10.0.0.2", 1, std::string(30000, 'b'), T0 + 1);
  CHECK(c.text() == "");
  c.feed("10.0.0.3", 1, std::string(30000, 'c'), T0 + 2);  // no room: the oldest goes out
  CHECK(c.text() == stamp_at(0) + "10.0.0.1:1 " + std::string(30000, 'a') + "\n");
  CHECK(c.asm_.stats().flushed_for_memory == 1);
  c.feed("10.0.0.2", 1, "b\n", T0 + 3);
  c.asm_.expire(at(T0 + 100), true);
  CHECK(c.text() == stamp_at(0) + "10.0.0.1:1 " + std::string(30000, 'a') + "\n" + stamp_at(1) +
                        "10.0.0.2:1 " + std::string(30001, 'b') + "\n" + stamp_at(2) +
                        "10.0.0.3:1 " + std::string(30000, 'c') + "\n");
}

namespace {

long status_kib(pid_t pid, const char* key) {
  std::string s = read_file("/proc/" + std::to_string(pid) + "/status");
  size_t p = s.find(std::string(key) + ":");
  return p == std::string::npos ? -1 : std::stol(s.substr(p + strlen(key) + 1));
}


// Lines of the log whose text is exactly `text` (a linear scan: a find()
// of a 65,000-byte pattern of one letter is quadratic).
size_t lines_of(const std::string& log, const std::string& text) {
  size_t n = 0;
  for (size_t i = 0; i < log.size();) {
    size_t e = log.find('\n', i);
    if (e == std::string::npos) break;
    n += e - i >= text.size() && log.compare(e - text.size(), text.size(), text) == 0 &&
         (e - i == text.size() || log[e - text.size() - 1] == ' ');
    i = e + 1;
  }
  return n;
}

// The last statistics notice's value of key, -1 when there is none.
long long last_stat(const std::string& log, const std::string& key) {
  size_t at = log.rfind("udplogger: statistics: ");
  if (at == std::string::npos) return -1;
  size_t k = log.find(" " + key + "=", at);
  return k == std::string::npos ? -1 : std::stoll(log.substr(k + key.size() + 2));
}

}  // namespace

TEST_CASE("memory: 500 senders with 65,000-byte partial lines stay under the cap, and it goes back" *
          skip_unless(!is_sanitized(), "memory: 500 senders",
                      "sanitizers' shadow memory and quarantine are not the daemon's")) {
  Daemon d({"rbuf=67108864"});  // partials= default: 4 MiB; 32 MB in flight fit the buffer
  REQUIRE(d.running());
  long idle = status_kib(d.pid_, "VmRSS");
  std::vector<std::unique_ptr<Sender>> senders;
  std::string big(65000, 'p');
  for (int i = 0; i < 500; i++) {
    senders.emplace_back(new Sender());
    senders.back()->send(d.port_, big);
  }
  // Every datagram read or, if the kernel dropped some after all, counted.
  long long got = 0, dropped = 0;
  bool all = wait_for([&] {
    d.signal(SIGUSR1);
    usleep(50000);
    std::string log = d.log();
    got = last_stat(log, "datagrams");
    dropped = last_stat(log, "kernel_drops");
    return got + dropped == 500;
  }, 20);
  INFO("statistics: datagrams=" << got << " kernel_drops=" << dropped << "; stderr: " << d.err());
  REQUIRE(all);
  long peak = status_kib(d.pid_, "VmHWM");
  for (auto& s : senders) s->send(d.port_, "\n");  // every line completes
  size_t whole = 0;
  bool written = wait_for([&] { return (whole = lines_of(d.log(), big)) == size_t(got); }, 20);
  INFO("lines of 65,000 bytes written: " << whole << " of " << got);
  REQUIRE(written);
  long after = 0;  // the loop gives the ring's pages back once it is idle
  wait_for([&] { return (after = status_kib(d.pid_, "VmRSS")) < idle + 1024; }, 2);
  MESSAGE("VmRSS idle " << idle << " kB, VmHWM with " << got << " x 65,000-byte partial lines "
                        << peak << " kB, VmRSS after they were written " << after << " kB");
  CHECK(peak < idle + 4096 + 4096 + 1024);  // the cap, the receive ring (4 MiB), slack
  CHECK(after < idle + 1024);
  CHECK(last_stat(d.log(), "flushed_for_memory") > 0);  // the cap was reached
}

TEST_CASE("directories: dir= removed, then SIGHUP: lines wait in memory and follow a notice once it is back") {
  std::string top = make_temp_dir();  // .../logs
  Daemon d({}, {}, top);
  REQUIRE(d.running());
  Sender s;
  s.send(d.port_, "before\n");
  REQUIRE(d.wait_log("before\n"));
  std::string moved = top + ".moved";
  std::string err_path = top.substr(0, top.rfind('/')) + "/stderr";  // not through logs/..
  auto err = [&] { return read_file(err_path); };
  REQUIRE(rename(top.c_str(), moved.c_str()) == 0);  // the directory goes away
  d.signal(SIGHUP);
  REQUIRE(wait_for([&] { return err().find("cannot use log directory " + top) != std::string::npos; }));
  CHECK(err().find(": No such file or directory; keeping up to 1024 KiB of lines in memory and "
                     "trying again every 2 s\n") != std::string::npos);
  s.send(d.port_, "while it was gone\n");
  usleep(300000);
  std::string old_log = all_logs(moved);
  CHECK(old_log.find("before\n") != std::string::npos);
  CHECK(old_log.find("while it was gone") == std::string::npos);  // not into the moved file
  REQUIRE(mkdir(top.c_str(), 0755) == 0);  // back, as a new directory
  REQUIRE(wait_for([&] { return all_logs(top).find("while it was gone\n") != std::string::npos; }, 5));
  s.send(d.port_, "after\n");
  REQUIRE(d.wait_log("after\n"));
  std::string log = all_logs(top);
  size_t notice = log.find("udplogger: log directory " + top + " could not be used since ");
  REQUIRE(notice != std::string::npos);
  CHECK(notice < log.find("while it was gone"));  // the notice first, then the kept lines
  CHECK(log.find("(No such file or directory): ") != std::string::npos);
  CHECK(log.find("; 0 lines (0 bytes) beyond them were lost\n") != std::string::npos);
  CHECK(err().find("log directory " + top + " is back") != std::string::npos);
  CHECK(d.stop() == 0);
  rename(moved.c_str(), (top + ".old").c_str());
}


// ------------------------------------------------------------- round two

TEST_CASE("directories: a stop while dir= is gone: the kept lines go to stderr, counted, never dropped") {
  for (std::string split : {"split=none", "split=host"}) {
    CAPTURE(split);
    std::string top = make_temp_dir();
    Daemon d({split}, {}, top);
    REQUIRE(d.running());
    Sender s;
    s.send(d.port_, "before\n");
    REQUIRE(wait_for([&] {  // in DIR, or with split=host in DIR/127.0.0.1
      return (all_logs(top) + all_logs(top + "/127.0.0.1")).find(" before\n") != std::string::npos;
    }));
    REQUIRE(rename(top.c_str(), (top + ".gone").c_str()) == 0);
    std::string err_path = top.substr(0, top.rfind('/')) + "/stderr";
    d.signal(SIGHUP);
    REQUIRE(wait_for([&] { return read_file(err_path).find("cannot use log directory") != std::string::npos; }));
    for (int i = 0; i < 500; i++) s.send(d.port_, "while gone " + std::to_string(i) + "\n");
    REQUIRE(wait_for([&] {  // all 500 taken in (the statistics notice is kept too)
      d.signal(SIGUSR1);
      usleep(50000);
      return read_file(err_path).find(" datagrams=501 ") != std::string::npos;
    }));
    CHECK(d.stop() == 0);
    std::string err = read_file(err_path);
    INFO("stderr ends: " << err.substr(err.size() > 800 ? err.size() - 800 : 0));
    CHECK(count_of(err, " while gone ") == 500);
    CHECK(err.find("is still gone at stop: the ") != std::string::npos);
    // Every kept line (the 500 and the SIGUSR1 statistics) counted as not in the log.
    CHECK(err.find("udplogger: stopped by SIGTERM; statistics: ") != std::string::npos);
    CHECK(err.find(" unwritten_lines=501 ") != std::string::npos);
    CHECK(err.find(" no_directory=501 ") != std::string::npos);
    rename((top + ".gone").c_str(), (top + ".old").c_str());
  }
}

TEST_CASE("split=host: a full disk under one host: its loss in a notice naming its file, nowhere else" *
          skip_unless(is_root(), "split=host: a full disk", "not root: mounting a small tmpfs needs root")) {
  std::string dir = make_temp_dir();
  std::string five = dir + "/127.0.0.5";
  REQUIRE(mkdir(five.c_str(), 0750) == 0);
  REQUIRE(mount("udplogger-test", five.c_str(), "tmpfs", 0, "size=64k,mode=0750") == 0);
  REQUIRE(run_command("dd if=/dev/zero of=" + five + "/filler bs=4k count=16 2>/dev/null").status != 2);
  {
    Daemon d({"split=host", "files=2"}, {}, dir);
    REQUIRE(d.running());
    Sender a("127.0.0.5"), b("127.0.0.6"), c("127.0.0.7");
    for (int i = 0; i < 20; i++) {
      a.send(d.port_, "five " + std::to_string(i) + "\n");
      b.send(d.port_, "six " + std::to_string(i) + "\n");
      c.send(d.port_, "seven " + std::to_string(i) + "\n");
      usleep(2000);  // one host per batch: the slots change hands each time
    }
    REQUIRE(wait_for([&] {
      return count_of(all_logs(dir + "/127.0.0.7"), " seven ") == 20 &&
             count_of(all_logs(dir + "/127.0.0.6"), " six ") == 20;
    }));
    CHECK(d.stop() == 0);
    std::string own = all_logs(dir);
    INFO("the daemon's file:\n" << own << "stderr:\n" << d.err());
    CHECK(all_logs(dir + "/127.0.0.6").find("udplogger") == std::string::npos);
    CHECK(all_logs(dir + "/127.0.0.7").find("udplogger") == std::string::npos);
    CHECK(std::regex_search(own, std::regex("udplogger: 127\\.0\\.0\\.5/[0-9-]{10}\\.log: 20 lines "
                                            "\\([0-9]+ bytes\\) could not be written since [0-9: -]{19}: "
                                            "No space left on device\n")));
    CHECK(count_of(d.err(), "cannot write ") == 1);  // once per episode
    CHECK(d.err().find("(disk_full=20 ") != std::string::npos);
  }
  umount(five.c_str());
}

TEST_CASE("split=host: newdirs= bounds the directories a flood of addresses can make") {
  Daemon d({"split=host", "newdirs=10"});
  REQUIRE(d.running());
  for (int i = 1; i <= 100; i++) {
    Sender s(("127.0.9." + std::to_string(i)).c_str());
    s.send(d.port_, "from " + std::to_string(i) + "\n");
  }
  REQUIRE(wait_for([&] { return count_of(all_logs(d.dir_), " from ") == 90; }));
  DIR* dir = opendir(d.dir_.c_str());
  size_t dirs = 0;
  while (dirent* e = readdir(dir)) dirs += e->d_type == DT_DIR && e->d_name[0] != '.';
  closedir(dir);
  CHECK(dirs == 10);
  CHECK(count_of(all_logs(d.dir_), "udplogger: split=host: 10 new host directories made today") == 1);
  CHECK(d.stop() == 0);
  CHECK(d.err().find(" beyond_newdirs=90") != std::string::npos);
  CHECK(count_of(d.err(), "newdirs=10 new host directories made today") == 1);
}

namespace {

// Starts udplogger with stdout and stderr into pipes nobody reads; returns
// its pid, the read ends in *out and *err.
pid_t spawn_unread(const std::vector<std::string>& args, int* out, int* err) {
  std::string path = udplogger_path();
  int o[2], e[2];
  REQUIRE(pipe2(o, O_CLOEXEC) == 0);
  REQUIRE(pipe2(e, O_CLOEXEC) == 0);
  pid_t pid = fork();
  if (pid == 0) {
    dup2(o[1], 1);
    dup2(e[1], 2);
    std::vector<char*> argv{const_cast<char*>(path.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(path.c_str(), argv.data());
    _exit(127);
  }
  close(o[1]);
  close(e[1]);
  *out = o[0];
  *err = e[0];
  return pid;
}

std::string drain(int fd) {
  std::string s;
  char buf[65536];
  fcntl(fd, F_SETFL, O_NONBLOCK);
  ssize_t n;
  while ((n = read(fd, buf, sizeof buf)) > 0) s.append(buf, size_t(n));
  return s;
}

// Seconds from SIGTERM to pid's exit (killed after 10).
double seconds_to_stop(pid_t pid, int* status) {
  double t0 = now_seconds();
  kill(pid, SIGTERM);
  if (!wait_for([&] { return waitpid(pid, status, WNOHANG) == pid; }, 10)) {
    kill(pid, SIGKILL);
    waitpid(pid, status, 0);
  }
  return now_seconds() - t0;
}

}  // namespace

TEST_CASE("readers that stop reading: dir=- into a pipe, stderr under debug=1; SIGTERM within a second") {
  for (bool debug : {false, true}) {
    CAPTURE(debug);
    std::string dir = make_temp_dir();
    int port = free_udp_port();
    std::vector<std::string> args{"port=" + std::to_string(port), debug ? "dir=" + dir : "dir=-"};
    if (debug) args.push_back("debug=1");
    int out = -1, err = -1;
    pid_t pid = spawn_unread(args, &out, &err);
    // Up: the start-up line, read off whichever pipe has it.
    std::string first;
    REQUIRE(wait_for([&] {
      first += drain(debug ? out : err);
      return first.find("listening on") != std::string::npos;
    }));
    Sender s;
    const int n = 5000;
    for (int i = 0; i < n; i++) s.send(port, "line " + std::to_string(i) + " " + std::string(100, 'x') + "\n");
    usleep(700000);  // the pipe (64 KiB) is full long before this
    int status = 0;
    double took = seconds_to_stop(pid, &status);
    MESSAGE("SIGTERM to exit: " << took << " s");
    CHECK(took < 1.5);
    CHECK(WIFEXITED(status));
    std::string o = drain(out), e = drain(err);
    close(out);
    close(err);
    if (debug) {  // the log itself lost nothing
      CHECK(count_of(all_logs(dir), " line ") + kernel_drops_in(all_logs(dir)) == size_t(n));
    } else {  // what did not fit the pipe is counted as stalled
      std::smatch m;
      REQUIRE(std::regex_search(e, m, std::regex(" stalled=([0-9]+) ")));
      MESSAGE("written to the pipe " << count_of(o, " line ") << ", stalled " << m[1]);
      CHECK(std::stoul(m[1]) > 0);
      CHECK(e.find("cannot write standard output: its reader has stopped reading") != std::string::npos);
    }
  }
}

TEST_CASE("options: dir= longer than a path, and dir=- with standard output closed, are refused") {
  Exit e = run_udplogger({"dir=/" + std::string(4200, 'd')});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: dir=/ddddddddddddddddddddddddddddddddddddddd...: 4201 bytes long "
                 "(allowed: at most 4095)\n");
  std::string err = make_temp_dir() + "/err";
  pid_t pid = fork();
  if (pid == 0) {
    int fd = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(fd, 2);
    close(fd);
    close(1);
    std::string path = udplogger_path(), port = "port=" + std::to_string(free_udp_port());
    execl(path.c_str(), path.c_str(), "dir=-", port.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  int st = 0;
  bool exited = wait_for([&] { return waitpid(pid, &st, WNOHANG) == pid; });
  if (!exited) kill(pid, SIGKILL), waitpid(pid, &st, 0);
  CHECK(exited);
  CHECK(WEXITSTATUS(st) == 1);
  CHECK(read_file(err) == "udplogger: dir=-: standard output is closed\n");
}

namespace {

// Sends one UDP datagram over IPv6 to [::1]:port from `source`, whatever
// it is, by writing the IPv6 header itself (raw socket: root only).
bool send_raw_ipv6(const char* source, uint16_t sport, int port, const std::string& text) {
  uint8_t src[16], dst[16];
  inet_pton(AF_INET6, source, src);
  inet_pton(AF_INET6, "::1", dst);
  std::vector<uint8_t> p(40 + 8 + text.size());
  uint16_t ulen = uint16_t(8 + text.size());
  p[0] = 0x60;
  p[4] = uint8_t(ulen >> 8), p[5] = uint8_t(ulen);
  p[6] = IPPROTO_UDP, p[7] = 64;
  memcpy(&p[8], src, 16);
  memcpy(&p[24], dst, 16);
  uint8_t* u = &p[40];
  u[0] = uint8_t(sport >> 8), u[1] = uint8_t(sport), u[2] = uint8_t(port >> 8), u[3] = uint8_t(port);
  u[4] = uint8_t(ulen >> 8), u[5] = uint8_t(ulen);
  memcpy(u + 8, text.data(), text.size());
  // RFC 8200 8.1: the checksum covers a pseudo-header of both addresses,
  // the length and the next header.
  uint32_t sum = ulen + IPPROTO_UDP;
  for (int i = 8; i < 40; i += 2) sum += uint32_t(p[size_t(i)] << 8 | p[size_t(i) + 1]);
  for (size_t i = 0; i < ulen; i += 2) sum += uint32_t(u[i] << 8 | (i + 1 < ulen ? u[i + 1] : 0));
  while (sum >> 16) sum = (sum & 0xffff) + (sum >> 16);
  uint16_t check = uint16_t(~sum) ? uint16_t(~sum) : 0xffff;
  u[6] = uint8_t(check >> 8), u[7] = uint8_t(check);
  int fd = socket(AF_INET6, SOCK_RAW | SOCK_CLOEXEC, IPPROTO_RAW);
  if (fd < 0) return false;
  int on = 1;
  setsockopt(fd, IPPROTO_IPV6, IPV6_HDRINCL, &on, sizeof on);
  sockaddr_in6 to = {};
  to.sin6_family = AF_INET6;
  memcpy(&to.sin6_addr, dst, 16);
  bool sent = sendto(fd, p.data(), p.size(), 0, reinterpret_cast<sockaddr*>(&to), sizeof to) ==
              ssize_t(p.size());
  close(fd);
  return sent;
}

}  // namespace

TEST_CASE("senders: an IPv6 datagram from ::ffff:10.1.2.3 is no IPv4 sender: refused despite allow=" *
          skip_unless(is_root() && have_ipv6_loopback(), "senders: v4-mapped IPv6 source",
                      "needs root (a raw socket) and ::1")) {
  Daemon d({"split=host", "allow=10.0.0.0/8,::1"});
  REQUIRE(d.running());
  REQUIRE(send_raw_ipv6("::1", 5000, d.port_, "real ipv6\n"));  // the raw path works
  REQUIRE(wait_for([&] { return all_logs(d.dir_ + "/::1").find("real ipv6") != std::string::npos; }));
  REQUIRE(send_raw_ipv6("::ffff:10.1.2.3", 5000, d.port_, "claims 10.1.2.3\n"));
  REQUIRE(d.wait_log("refused 1 datagram"));
  CHECK(d.log().find("the last from [::ffff:10.1.2.3]:5000") != std::string::npos);
  CHECK(access((d.dir_ + "/10.1.2.3").c_str(), F_OK) != 0);
  CHECK(d.stop() == 0);
  CHECK(d.err().find(" refused=1 ") != std::string::npos);
  CHECK(all_logs(d.dir_).find("claims") == std::string::npos);
}

TEST_CASE("split=host: dir= removed and back: the kept lines follow the gap notice; stderr is not flooded") {
  std::string top = make_temp_dir();
  Daemon d({"split=host"}, {}, top);
  REQUIRE(d.running());
  Sender a("127.0.0.5"), b("127.0.0.6");
  a.send(d.port_, "before\n");
  REQUIRE(wait_for([&] { return all_logs(top + "/127.0.0.5").find(" before\n") != std::string::npos; }));
  std::string err_path = top.substr(0, top.rfind('/')) + "/stderr";
  REQUIRE(rename(top.c_str(), (top + ".moved").c_str()) == 0);
  d.signal(SIGHUP);
  REQUIRE(wait_for([&] { return read_file(err_path).find("cannot use log directory") != std::string::npos; }));
  for (int i = 0; i < 1000; i++) (i % 2 ? b : a).send(d.port_, "gone " + std::to_string(i) + "\n");
  usleep(300000);
  REQUIRE(mkdir(top.c_str(), 0755) == 0);  // back, as a new directory
  REQUIRE(wait_for([&] { return count_of(all_logs(top), " gone ") == 1000; }, 8));
  std::string log = all_logs(top);
  size_t notice = log.find("udplogger: log directory " + top + " could not be used since ");
  REQUIRE(notice != std::string::npos);
  CHECK(notice < log.find(" gone 0\n"));
  CHECK(log.find("; 0 lines (0 bytes) beyond them were lost\n") != std::string::npos);
  CHECK(all_logs(top + ".moved/127.0.0.5").find(" gone ") == std::string::npos);  // not into the old one
  a.send(d.port_, "after\n");  // and host files again
  REQUIRE(wait_for([&] { return all_logs(top + "/127.0.0.5").find(" after\n") != std::string::npos; }));
  CHECK(d.stop() == 0);
  CHECK(count_of(read_file(err_path), "cannot open log file") <= 1);
  rename((top + ".moved").c_str(), (top + ".old").c_str());
}
