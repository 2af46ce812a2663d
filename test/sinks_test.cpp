// The sinks on a fake clock in real temporary directories: daily files and
// midnight, per-host files, write errors and what the core is told of them,
// files cut by a crash, unsafe files.
#include <doctest.h>
#include <fcntl.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "core_harness.h"
#include "helpers.h"
#include "udplogger.h"

namespace {

timespec test_clock() { return at(T0 + 7); }

// Writes to f as the core does: a notice the file owes, made by the
// LineWriter from its report, is handed back as the preface.
bool write_as_core(ul::LogFile* f, const iovec* iov, int n, const char* dir, const char* name,
                   ul::WriteLoss* loss) {
  ul::LineWriter lines;
  lines.init(ul::Options(), nullptr, nullptr);
  ul::WriteReport r = f->write(iov, n, nullptr, 0, dir, name, test_clock);
  if (r.kind == ul::WriteReport::Kind::owes_notice) {
    char preface[2048];
    size_t len = lines.sink_notice(r, preface, sizeof preface);
    r = f->write(iov, n, preface, len, dir, name, test_clock);
  }
  if (r.kind == ul::WriteReport::Kind::lost) {
    loss->lines[r.cause] += r.lines;
    loss->bytes[r.cause] += r.bytes;
  }
  return r.kind == ul::WriteReport::Kind::written;
}

}  // namespace


TEST_CASE("write errors: lines counted by cause; when writing works again a notice comes first") {
  ScopedZone utc("UTC");
  std::string path = make_temp_dir() + "/log";
  int fd = open("/dev/full", O_WRONLY | O_CLOEXEC);  // every write: ENOSPC
  REQUIRE(fd >= 0);
  ul::LogFile f;
  f.adopt(fd, false);
  ul::WriteLoss loss;
  iovec ab[2] = {piece("line a\n"), piece("line b\n")};
  iovec c = piece("line c\n"), d = piece("line d\n");
  std::string err = stderr_of([&] {
    CHECK_FALSE(write_as_core(&f, ab, 2, "/dir", "x.log", &loss));
    CHECK_FALSE(write_as_core(&f, &c, 1, "/dir", "x.log", &loss));
  });
  CHECK(err == "udplogger: cannot write /dir/x.log: No space left on device; counting the lines "
               "lost until writing works again\n");  // once per episode
  CHECK(loss.lines[ul::WriteLoss::disk_full] == 3);
  CHECK(loss.bytes[ul::WriteLoss::disk_full] == 21);
  // Space again: the same descriptor now leads to a real file.
  int real = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  REQUIRE(dup2(real, fd) == fd);
  close(real);
  err = stderr_of([&] { CHECK(write_as_core(&f, &d, 1, "/dir", "x.log", &loss)); });
  CHECK(err == "udplogger: writing /dir/x.log again: 3 lines (21 bytes) were lost, said in the "
               "file\n");
  CHECK(read_file(path) == "2026-11-22 03:00:07 udplogger: 3 lines (21 bytes) could not be written since "
                           "2026-11-22 03:00:07: No space left on device\nline d\n");
  f.close_file();
}

TEST_CASE("write errors: a line cut by the error is ended and marked") {
  ScopedZone utc("UTC");
  std::string path = make_temp_dir() + "/log";
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  ul::LogFile f;
  f.adopt(fd, false);
  ul::WriteLoss loss;
  iovec half = piece("whole\nhalf of a li");  // a batch may end inside a line
  CHECK(write_as_core(&f, &half, 1, "/d", "n", &loss));
  int full = open("/dev/full", O_WRONLY);
  int keep = dup(fd);
  dup2(full, fd);
  iovec rest = piece("ne\nnext\n");
  stderr_of([&] { CHECK_FALSE(write_as_core(&f, &rest, 1, "/d", "n", &loss)); });
  dup2(keep, fd);
  close(keep);
  close(full);
  iovec later = piece("later\n");
  stderr_of([&] { CHECK(write_as_core(&f, &later, 1, "/d", "n", &loss)); });
  CHECK(read_file(path) == "whole\nhalf of a li[... line cut here ...]\n2026-11-22 03:00:07 udplogger: 2 lines (8 bytes) could not be written "
                           "since 2026-11-22 03:00:07: No space left on device; the line before "
                           "this notice was cut\nlater\n");
  f.close_file();
}

TEST_CASE("crash: a day file that does not end in a newline gets one and a notice first") {
  ScopedZone utc("UTC");
  std::string dir = make_temp_dir();
  {
    FILE* old = fopen((dir + "/2026-11-22.log").c_str(), "w");
    fputs("2026-11-22 02:59:59 10.0.0.1:1 cut by SIGKI", old);
    fclose(old);
    chmod((dir + "/2026-11-22.log").c_str(), 0600);
  }
  ul::LogDir d;
  char why[512];
  REQUIRE(ul::open_log_dir(dir.c_str(), 0600, &d, why, sizeof why));
  ul::DailyFile f;
  REQUIRE(f.open(&d, T0, test_clock, why, sizeof why));
  ul::LineWriter lines;
  ul::Output out;
  REQUIRE(out.init(4096, &f, &lines, false));
  lines.init(ul::Options(), &out, nullptr);
  out.copy("2026-11-22 03:00:00 10.0.0.1:1 next\n", 36);
  out.flush();
  CHECK(read_file(dir + "/2026-11-22.log") ==
        "2026-11-22 02:59:59 10.0.0.1:1 cut by SIGKI[... line cut here ...]\n"
        "2026-11-22 03:00:07 udplogger: the line before this notice was cut: the file did not end in a newline "
        "(udplogger or the system stopped while writing it)\n"
        "2026-11-22 03:00:00 10.0.0.1:1 next\n");
}

TEST_CASE("start-up safety: a day file with another hard link, or another owner, is refused") {
  ScopedZone utc("UTC");
  std::string dir = make_temp_dir();
  std::string victim = make_temp_dir() + "/victim";
  {
    FILE* v = fopen(victim.c_str(), "w");
    fclose(v);
    chmod(victim.c_str(), 0600);
  }
  REQUIRE(link(victim.c_str(), (dir + "/2026-11-22.log").c_str()) == 0);
  ul::LogDir d;
  char why[512];
  REQUIRE(ul::open_log_dir(dir.c_str(), 0600, &d, why, sizeof why));
  ul::DailyFile f;
  CHECK_FALSE(f.open(&d, T0, nullptr, why, sizeof why));
  CHECK(std::string(why) == "cannot open log file " + std::string(d.path) +
                                "/2026-11-22.log: has 2 hard links; refusing to append to it");
  if (!is_root()) {
    MESSAGE("not root: the other-owner case needs chown");  // the hard link case ran
    return;
  }
  REQUIRE(unlink((dir + "/2026-11-22.log").c_str()) == 0);
  REQUIRE(rename(victim.c_str(), (dir + "/2026-11-22.log").c_str()) == 0);
  REQUIRE(chown((dir + "/2026-11-22.log").c_str(), 65534, 65534) == 0);
  ul::DailyFile g;
  CHECK_FALSE(g.open(&d, T0, nullptr, why, sizeof why));
  CHECK(std::string(why).find("/2026-11-22.log: is owned by uid 65534, not by udplogger's uid 0; "
                              "refusing to append to it") != std::string::npos);
}


namespace {

ul::LogDir open_dir(const std::string& path) {
  ul::LogDir d;
  char why[256];
  REQUIRE_MESSAGE(ul::open_log_dir(path.c_str(), 0640, &d, why, sizeof why), why);
  return d;
}

}  // namespace

TEST_CASE("sink: the daily file switches at local midnight on a fake clock") {
  ScopedZone zone("XXX-9");  // local = UTC + 9: T0 is 12:00 local
  std::string dir = make_temp_dir();
  ul::LogDir d = open_dir(dir);
  ul::DailyFile f;
  char why[512];
  REQUIRE(f.open(&d, T0, nullptr, why, sizeof why));
  CHECK(std::string(f.name()) == "2026-11-22.log");
  time_t midnight = T0 + 12 * 3600;
  CHECK(f.next_switch() == midnight);
  iovec before = piece("before\n"), after = piece("after\n");
  f.write(nullptr, &before, 1, nullptr, 0);
  f.tick(midnight - 1);
  CHECK(std::string(f.name()) == "2026-11-22.log");
  f.tick(midnight);
  CHECK(std::string(f.name()) == "2026-11-23.log");
  CHECK(f.next_switch() == midnight + 86400);
  f.write(nullptr, &after, 1, nullptr, 0);
  CHECK(read_file(dir + "/2026-11-22.log") == "before\n");
  CHECK(read_file(dir + "/2026-11-23.log") == "after\n");
  struct stat st;
  REQUIRE(stat((dir + "/2026-11-23.log").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0640);
}

TEST_CASE("sink: a refused file at midnight keeps the current one and says why") {
  ScopedZone zone("UTC");
  std::string dir = make_temp_dir();
  std::string victim = make_temp_dir() + "/victim";
  REQUIRE(symlink(victim.c_str(), (dir + "/2026-11-23.log").c_str()) == 0);
  ul::LogDir d = open_dir(dir);
  ul::DailyFile f;
  char why[512];
  REQUIRE(f.open(&d, T0, nullptr, why, sizeof why));
  time_t midnight = T0 + 21 * 3600;
  std::string err = stderr_of([&] { f.tick(midnight); });
  CHECK(err == "udplogger: cannot switch to log file " + std::string(d.path) +
                   "/2026-11-23.log: is a symbolic link; still writing 2026-11-22.log\n");
  CHECK(f.next_switch() == midnight + 60);  // tries again in a minute
  iovec line = piece("still logged\n");
  f.write(nullptr, &line, 1, nullptr, 0);
  CHECK(read_file(dir + "/2026-11-22.log") == "still logged\n");
  CHECK(access(victim.c_str(), F_OK) != 0);
}

TEST_CASE("sink: split=host files per address, at most files= open, daemon lines apart") {
  ScopedZone zone("UTC");
  std::string dir = make_temp_dir();
  ul::LogDir d = open_dir(dir);
  ul::HostFiles h;
  char why[512];
  REQUIRE(h.open(&d, 3, 4096, T0, nullptr, why, sizeof why));
  std::vector<in6_addr> hosts;
  for (int i = 1; i <= 10; i++) hosts.push_back(v4(("192.0.2." + std::to_string(i)).c_str()));
  hosts.push_back(v6("2001:db8::1"));
  for (int round = 0; round < 3; round++) {
    for (size_t i = 0; i < hosts.size(); i++) {
      std::string text = "round " + std::to_string(round) + " host " + std::to_string(i) + "\n";
      iovec v = piece(text.c_str());
      h.write(&hosts[i], &v, 1, nullptr, 0);
      CHECK(h.open_files() <= 3);
      CHECK(fds_into("self", d.path) <= 3 + 1);  // host files and the daemon's day file
    }
  }
  iovec own = piece("udplogger: own\n");
  h.write(nullptr, &own, 1, nullptr, 0);
  CHECK(read_file(dir + "/192.0.2.4/2026-11-22.log") ==
        "round 0 host 3\nround 1 host 3\nround 2 host 3\n");
  CHECK(read_file(dir + "/2001:db8::1/2026-11-22.log").find("round 2 host 10\n") !=
        std::string::npos);
  CHECK(read_file(dir + "/2026-11-22.log") == "udplogger: own\n");
  struct stat st;
  REQUIRE(stat((dir + "/192.0.2.4").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0750);
  REQUIRE(stat((dir + "/192.0.2.4/2026-11-22.log").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0640);
  // At midnight host files take the new day's name when next written.
  h.tick(T0 + 21 * 3600);
  CHECK(h.open_files() == 0);
  iovec late = piece("next day\n");
  h.write(&hosts[3], &late, 1, nullptr, 0);
  CHECK(read_file(dir + "/192.0.2.4/2026-11-23.log") == "next day\n");
  CHECK(std::string(h.name()) == "2026-11-23.log");
}

TEST_CASE("sink: a host directory that is a symbolic link is refused; lines kept") {
  ScopedZone zone("UTC");
  std::string dir = make_temp_dir();
  std::string elsewhere = make_temp_dir();
  REQUIRE(symlink(elsewhere.c_str(), (dir + "/192.0.2.66").c_str()) == 0);
  ul::LogDir d = open_dir(dir);
  ul::HostFiles h;
  char why[512];
  REQUIRE(h.open(&d, 4, 4096, T0, nullptr, why, sizeof why));
  in6_addr host = v4("192.0.2.66");
  iovec v = piece("2026-11-22 03:00:00 192.0.2.66:1 evil\n");
  std::string err = stderr_of([&] {
    for (int i = 0; i < 3; i++) h.write(&host, &v, 1, nullptr, 0);
  });
  CHECK(err == "udplogger: cannot open log file " + std::string(d.path) +
                   "/192.0.2.66/2026-11-22.log: is not a directory (or is a symbolic link); "
                   "lines of such hosts go to " + d.path + "/2026-11-22.log (said once a minute)\n");
  CHECK(count_of(read_file(dir + "/2026-11-22.log"), "2026-11-22 03:00:00 192.0.2.66:1 evil\n") == 3);
  CHECK(log_names(elsewhere).empty());
}


namespace {

// The sink driven as the core drives it, through a real Output: lines in,
// notices made by the LineWriter, losses counted.
struct Driven {
  ul::LineWriter lines;
  ul::Output out;
  explicit Driven(ul::Sink* sink, bool by_host) {
    lines.init(ul::Options(), nullptr, nullptr);
    REQUIRE(out.init(1 << 16, sink, &lines, by_host));
  }
  void write(const in6_addr* host, const std::string& text) {
    out.to(host);
    out.begin_line();
    out.copy(text.data(), text.size());
    out.flush();
  }
  uint64_t lost(ul::WriteLoss::Cause c) const { return out.losses().lines[c]; }
};

// The descriptor of this process open on path, or -1.
int fd_of(const std::string& path) {
  for (int fd = 3; fd < 1024; fd++) {
    char link[4096];
    ssize_t n = readlink(("/proc/self/fd/" + std::to_string(fd)).c_str(), link, sizeof link - 1);
    if (n > 0 && std::string(link, size_t(n)) == path) return fd;
  }
  return -1;
}

}  // namespace

TEST_CASE("sink: split=host: a failing host file keeps its episode; no other host's file hears of it") {
  ScopedZone zone("UTC");
  std::string dir = make_temp_dir();
  ul::LogDir d = open_dir(dir);
  ul::HostFiles h;
  char why[512];
  REQUIRE(h.open(&d, 2, 4096, T0, test_clock, why, sizeof why));
  Driven core(&h, true);
  in6_addr a = v4("192.0.2.5"), b = v4("192.0.2.6"), c = v4("192.0.2.7");
  core.write(&a, "a first\n");
  int fd = fd_of(std::string(d.path) + "/192.0.2.5/2026-11-22.log");
  REQUIRE(fd >= 0);
  int full = open("/dev/full", O_WRONLY);
  REQUIRE(dup2(full, fd) == fd);  // 192.0.2.5's disk is full from now on
  close(full);
  std::string err = stderr_of([&] {
    for (int i = 0; i < 20; i++) {
      core.write(&a, "a " + std::to_string(i) + "\n");
      core.write(&b, "b " + std::to_string(i) + "\n");
      core.write(&c, "c " + std::to_string(i) + "\n");  // files=2: b and c share one slot
    }
  });
  CHECK(core.lost(ul::WriteLoss::disk_full) == 20);
  CHECK(count_of(err, "cannot write ") == 1);  // once per episode
  CHECK(read_file(dir + "/192.0.2.6/2026-11-22.log").find("udplogger") == std::string::npos);
  CHECK(read_file(dir + "/192.0.2.7/2026-11-22.log").find("udplogger") == std::string::npos);
  CHECK(count_of(read_file(dir + "/192.0.2.7/2026-11-22.log"), "c ") == 20);
  // At stop its notice goes to the daemon's file, naming the file.
  err = stderr_of([&] { core.out.close(); });
  CHECK(read_file(dir + "/2026-11-22.log") ==
        "2026-11-22 03:00:07 udplogger: 192.0.2.5/2026-11-22.log: 20 lines (90 bytes) could not be "
        "written since 2026-11-22 03:00:07: No space left on device\n");
}

TEST_CASE("sink: split=host: newdirs= caps new host directories a day; their lines go to the daemon's file") {
  ScopedZone zone("UTC");
  std::string dir = make_temp_dir();
  REQUIRE(mkdir((dir + "/192.0.2.9").c_str(), 0750) == 0);  // made on an earlier day
  ul::LogDir d = open_dir(dir);
  ul::HostFiles h;
  char why[512];
  REQUIRE(h.open(&d, 8, 2, T0, test_clock, why, sizeof why));
  Driven core(&h, true);
  std::string err = stderr_of([&] {
    for (int round = 0; round < 2; round++)
      for (int i = 1; i <= 5; i++) {
        in6_addr host = v4(("192.0.2." + std::to_string(i)).c_str());
        core.write(&host, "host " + std::to_string(i) + "\n");
      }
    in6_addr old = v4("192.0.2.9");
    core.write(&old, "old host\n");
  });
  CHECK(log_names(dir).size() == 1);
  CHECK(read_file(dir + "/192.0.2.1/2026-11-22.log") == "host 1\nhost 1\n");
  CHECK(read_file(dir + "/192.0.2.2/2026-11-22.log") == "host 2\nhost 2\n");
  CHECK(access((dir + "/192.0.2.3").c_str(), F_OK) != 0);
  CHECK(read_file(dir + "/192.0.2.9/2026-11-22.log") == "old host\n");  // no new directory
  CHECK(read_file(dir + "/2026-11-22.log") ==
        "2026-11-22 03:00:07 udplogger: split=host: 2 new host directories made today (newdirs=); "
        "until midnight, lines of hosts that have none go to this file\n"
        "host 3\nhost 4\nhost 5\nhost 3\nhost 4\nhost 5\n");
  CHECK(h.beyond_newdirs() == 6);
  CHECK(count_of(err, "newdirs=2 new host directories made today") == 1);
  // The next day may make new ones again.
  h.tick(T0 + 21 * 3600);
  in6_addr next = v4("192.0.2.3");
  core.write(&next, "next day\n");
  CHECK(read_file(dir + "/192.0.2.3/2026-11-23.log") == "next day\n");
}

namespace {

// A daily file in DIR/logs, driven as the core drives it; gone() moves
// the directory away and tells the file (SIGHUP).
struct Outage {
  ScopedZone zone{"UTC"};
  std::string top = make_temp_dir() + "/logs";
  ul::LogDir d;
  ul::DailyFile f;
  Outage() {
    REQUIRE(mkdir(top.c_str(), 0755) == 0);
    d = open_dir(top);
    char why[512];
    REQUIRE(f.open(&d, T0, test_clock, why, sizeof why));
  }
  void gone() {
    REQUIRE(rename(top.c_str(), (top + ".gone").c_str()) == 0);
    stderr_of([&] { f.reopen(T0 + 1); });
  }
};

}  // namespace

TEST_CASE("sink: stopping while DIR is gone: the kept lines go to stderr and are counted, never dropped") {
  Outage o;
  std::string& top = o.top;
  Driven core(&o.f, false);
  core.write(nullptr, "before\n");
  o.gone();
  std::string err;
  for (int i = 0; i < 500; i++) core.write(nullptr, "kept " + std::to_string(i) + "\n");
  CHECK(core.lost(ul::WriteLoss::no_directory) == 0);  // kept, not lost, yet
  err = stderr_of([&] {
    core.out.close();
    core.write(nullptr, "after the close\n");  // the statistics notice, say
  });
  CHECK(count_of(err, "\nkept ") == 500);
  CHECK(err.find("log directory " + top + " is still gone at stop: the 4390 bytes of lines kept in "
                 "memory follow here\nkept 0\n") != std::string::npos);
  CHECK(err.find("kept 499\nafter the close\n") != std::string::npos);
  CHECK(core.lost(ul::WriteLoss::no_directory) == 501);
  CHECK(read_file(top + ".gone/2026-11-22.log") == "before\n");
}

TEST_CASE("sink: stopping when DIR came back: the notice and the kept lines are written, nothing lost") {
  Outage o;
  std::string& top = o.top;
  Driven core(&o.f, false);
  o.gone();
  core.write(nullptr, "kept\n");
  REQUIRE(mkdir(top.c_str(), 0755) == 0);  // back before the retry is due
  stderr_of([&] { core.out.close(); });
  CHECK(read_file(top + "/2026-11-22.log").find("could not be used since") != std::string::npos);
  CHECK(read_file(top + "/2026-11-22.log").find("\nkept\n") != std::string::npos);
  CHECK(core.lost(ul::WriteLoss::no_directory) == 0);
}
