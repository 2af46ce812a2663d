// Never lose a line silently, with the daemon: a real full disk (tmpfs, as
// root), a stop with a queue, closed standard fds, the memory cap, a
// removed directory.
#include <doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/stat.h>
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

