// Shipping it: make install/uninstall/dist/static/rpm, the systemd units,
// the man page, as a packager and a rescue image would use them.  Tools
// that are missing make their test skip, saying which Debian package.
#include <doctest.h>
#include <signal.h>
#include <fcntl.h>
#include <limits.h>
#include <stdlib.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <regex>
#include <string>

#include "helpers.h"

namespace {

const char* const kTop = "..";  // the tests run in test/

std::string make(const std::string& args) { return std::string("make -s -C ") + kTop + " " + args; }

// Every file below dir, as "path" lines relative to it, sorted.
std::string tree(const std::string& dir) {
  return run_command("cd '" + dir + "' && find . -type f | sort").output;
}

bool in_git_checkout() { return run_command(std::string("git -C ") + kTop + " rev-parse").status == 0; }

}  // namespace

TEST_CASE("install: every directory honoured, units name the binary, uninstall removes exactly that") {
  std::string root = make_temp_dir() + "/root";
  std::string dirs = " DESTDIR=" + root + " PREFIX=/opt/ul SBINDIR=/opt/ul/bin MANDIR=/opt/man "
                     "UNITDIR=/etc/systemd/system SYSUSERSDIR=/opt/sysusers TMPFILESDIR=/opt/tmpfiles";
  Command c = run_command(make("install" + dirs));
  REQUIRE_MESSAGE(c.status == 0, c.output);
  CHECK(tree(root) ==
        "./etc/systemd/system/udplogger-compress.service\n"
        "./etc/systemd/system/udplogger-compress.timer\n"
        "./etc/systemd/system/udplogger.service\n"
        "./etc/systemd/system/udplogger.socket\n"
        "./opt/man/man8/udplogger.8\n"
        "./opt/sysusers/udplogger.conf\n"
        "./opt/tmpfiles/udplogger.conf\n"
        "./opt/ul/bin/udplogger\n");
  std::string unit = read_file(root + "/etc/systemd/system/udplogger.service");
  CHECK(unit.find("ExecStart=/opt/ul/bin/udplogger dir=/var/log/udplogger $UDPLOGGER_OPTIONS\n") !=
        std::string::npos);
  CHECK(unit.find("@SBINDIR@") == std::string::npos);
  struct stat st;
  REQUIRE(stat((root + "/opt/ul/bin/udplogger").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0755);
  REQUIRE(run_command("touch " + root + "/opt/ul/bin/someone-elses").status == 0);
  c = run_command(make("uninstall" + dirs));
  REQUIRE_MESSAGE(c.status == 0, c.output);
  CHECK(tree(root) == "./opt/ul/bin/someone-elses\n");
}

TEST_CASE("dist: one top directory, the committed tree, no .git; --version agrees" *
          skip_unless(in_git_checkout(), "dist", "not a git checkout: make dist archives the committed tree")) {
  Command c = run_command(make("dist"));
  REQUIRE_MESSAGE(c.status == 0, c.output);
  std::string version = run_command(udplogger_path() + " --version").output;  // "udplogger 2.1\n"
  REQUIRE(version.compare(0, 10, "udplogger ") == 0);
  std::string name = "udplogger-" + version.substr(10, version.size() - 11);
  std::string tarball = std::string(kTop) + "/" + name + ".tar.gz";
  std::string list = run_command("tar tzf " + tarball).output;
  CHECK(run_command("tar tzf " + tarball + " | grep -v '^" + name + "/'").output == "");
  CHECK(list.find("/.git/") == std::string::npos);
  CHECK(list.find(name + "/contrib/udplogger.spec\n") != std::string::npos);
  CHECK(list.find(name + "/udplogger.cpp\n") != std::string::npos);
  std::string spec = read_file(std::string(kTop) + "/contrib/udplogger.spec");
  CHECK(spec.find("Version:        " + version.substr(10, version.size() - 11) + "\n") !=
        std::string::npos);
}

TEST_CASE("release: one version in udplogger.h, NEWS, the spec and debian/changelog; nothing "
          "compiled in git; every build output ignored; make clean removes them all" *
          skip_unless(in_git_checkout(), "release", "not a git checkout")) {
  std::string version = run_command(udplogger_path() + " --version").output;  // "udplogger 2.3\n"
  REQUIRE(version.compare(0, 10, "udplogger ") == 0);
  version = version.substr(10, version.size() - 11);
  std::string top = kTop;
  std::string news = read_file(top + "/NEWS");
  size_t first = news.find("\n\n");
  REQUIRE(first != std::string::npos);
  CHECK(news.compare(first + 2, version.size() + 2, version + " (") == 0);  // newest first
  std::string spec = read_file(top + "/contrib/udplogger.spec");
  CHECK(spec.find("\nVersion:        " + version + "\n") != std::string::npos);
  size_t log = spec.find("%changelog\n");
  REQUIRE(log != std::string::npos);
  CHECK(spec.substr(log, spec.find('\n', log + 11) - log).find("- " + version + "-1") != std::string::npos);
  CHECK(read_file(top + "/contrib/debian/changelog").rfind("udplogger (" + version + "-1) ", 0) == 0);
  Command c = run_command("cd " + top + " && git ls-files -z | xargs -0 file | grep -E ': +ELF'");
  CHECK_MESSAGE(c.output == "", "compiled files in git: " << c.output);
  // After this test run's builds (daemon, static, tests, flags), nothing untracked.
  c = run_command("cd " + top + " && git status --porcelain | grep '^[?][?]'");
  CHECK_MESSAGE(c.output == "", "build outputs not in .gitignore: " << c.output);
  // make clean, in a copy of the committed tree, leaves exactly that tree.
  std::string copy = make_temp_dir() + "/tree";
  REQUIRE(run_command("git -C " + top + " worktree add --detach -q " + copy + " HEAD 2>&1").status == 0);
  std::string before = tree(copy);
  c = run_command("make -s -C " + copy + " udplogger test/bench/loadgen test/udplogger-core.o 2>&1 && make -s -C " +
                  copy + " clean 2>&1");
  CHECK_MESSAGE(c.status == 0, c.output);
  CHECK(tree(copy) == before);
  run_command("git -C " + top + " worktree remove --force " + copy);
}

TEST_CASE("rpm: rpmbuild -ba from the dist tarball, no network; rpmlint finds no errors" *
          skip_unless(have_program("rpmbuild") && have_program("rpmlint") && in_git_checkout(), "rpm",
                      "rpmbuild or rpmlint missing (Debian packages rpm, rpmlint), or not a git "
                      "checkout (make rpm builds from make dist)")) {
  std::string dir = make_temp_dir();
  Command c = run_command(make("rpm RPMBUILD_OPTS=--nocheck RPMDIR=" + dir));  // %check: below
  REQUIRE_MESSAGE(c.status == 0, c.output);
  std::string rpms = run_command("ls " + dir + "/RPMS/*/*.rpm " + dir + "/SRPMS/*.rpm").output;
  CHECK(rpms.find(".src.rpm") != std::string::npos);
  bool binary_rpm = rpms.find(".x86_64.rpm") != std::string::npos || rpms.find(".aarch64.rpm") != std::string::npos;
  CHECK(binary_rpm);
  std::string files = run_command("rpm -qlp " + dir + "/RPMS/*/*.rpm").output;
  for (const char* f : {"/usr/sbin/udplogger\n", "/usr/lib/systemd/system/udplogger.service\n",
                        "/usr/lib/systemd/system/udplogger.socket\n", "/usr/lib/sysusers.d/udplogger.conf\n",
                        "/usr/lib/tmpfiles.d/udplogger.conf\n", "/etc/sysconfig/udplogger\n",
                        "/COPYING\n", "/README.md\n"})
    CHECK_MESSAGE(files.find(f) != std::string::npos, f);
  c = run_command("rpmlint -c " + std::string(kTop) + "/contrib/rpmlint.toml " + kTop +
                  "/contrib/udplogger.spec " + dir + "/RPMS/*/*.rpm " + dir + "/SRPMS/*.rpm");
  MESSAGE(c.output.substr(c.output.rfind('\n', c.output.size() - 2) + 1));
  CHECK(c.output.find(" 0 errors,") != std::string::npos);
  CHECK(c.output.find(": E: ") == std::string::npos);
  // The source RPM alone rebuilds somewhere else, as mock and koji do,
  // %check (the core tests) included.
  std::string other = make_temp_dir();
  std::string defines = run_command("rpm --eval '%{?_unitdir}'").output == "\n"
      ? " --nodeps --define '_unitdir /usr/lib/systemd/system' --define '_sysusersdir /usr/lib/sysusers.d'"
        " --define '_tmpfilesdir /usr/lib/tmpfiles.d'" : "";
  c = run_command("cd " + other + " && rpmbuild --rebuild --define '_topdir " + other + "/top'" + defines +
                  " " + dir + "/SRPMS/*.src.rpm 2>&1");
  CHECK_MESSAGE(c.status == 0, c.output.substr(c.output.size() > 3000 ? c.output.size() - 3000 : 0));
  CHECK(c.output.find("test cases:") != std::string::npos);  // %check ran the tests
  CHECK(c.output.find(" 0 failed") != std::string::npos);
  CHECK(run_command("ls " + other + "/top/RPMS/*/udplogger-*.rpm").status == 0);
}

namespace {

// A minimal Debian root to install into: the one .ci/run prepares
// (mmdebstrap, with systemd), else made here (mmdebstrap needs a mirror).
const char kDebianRoot[] = "/var/cache/udplogger-test/bookworm.tar";
bool can_make_debian_root() {
  return access(kDebianRoot, R_OK) == 0 || have_program("mmdebstrap");
}

std::string built_deb;  // by the first deb test, for the second

}  // namespace

TEST_CASE("deb: make deb builds the package from the dist tarball; lintian finds no error" *
          skip_unless(have_program("dpkg-buildpackage") && have_program("dh") && have_program("lintian") &&
                          in_git_checkout(), "deb",
                      "dpkg-buildpackage, debhelper or lintian missing, or not a git checkout")) {
  std::string dir = make_temp_dir();
  // nocheck: the same core tests run in the rpm test's %check.
  Command c = run_command("DEB_BUILD_OPTIONS='nocheck parallel=2' " + make("deb DEBDIR=" + dir) + " 2>&1");
  REQUIRE_MESSAGE(c.status == 0, c.output.substr(c.output.size() > 3000 ? c.output.size() - 3000 : 0));
  std::string deb = run_command("ls " + dir + "/udplogger_*_*.deb").output;
  REQUIRE(!deb.empty());
  deb.pop_back();
  c = run_command("lintian --suppress-tags initial-upload-closes-no-bugs " + dir + "/*.changes 2>&1 | "
                  "grep -v 'running with root privileges'");
  CHECK_MESSAGE(c.output == "", c.output);  // the one warning suppressed is explained in README.md
  std::string listed = run_command("dpkg -c " + deb).output;
  for (const char* f : {"./usr/sbin/udplogger\n", "./lib/systemd/system/udplogger.service\n",
                        "./lib/systemd/system/udplogger.socket\n", "./usr/lib/sysusers.d/udplogger.conf\n",
                        "./usr/lib/tmpfiles.d/udplogger.conf\n", "./etc/default/udplogger\n",
                        "./usr/share/man/man8/udplogger.8.gz\n", "./usr/share/doc/udplogger/copyright\n"})
    CHECK_MESSAGE(listed.find(f) != std::string::npos, f);
  CHECK(run_command("dpkg-deb -f " + deb + " Depends").output.find("systemd") != std::string::npos);
  built_deb = deb;
}

TEST_CASE("deb: in a minimal Debian root it installs, enables its units, makes its user and "
          "directory, checks its own set-up, and purges clean" *
          skip_unless(is_root() && can_make_debian_root() && have_program("dpkg-buildpackage") &&
                          have_program("dh") && in_git_checkout(), "deb: in a Debian root",
                      "needs root, mmdebstrap (or the root .ci/run makes) and what make deb needs")) {
  std::string deb = built_deb;
  if (deb.empty()) {  // the test before did not run
    std::string dir = make_temp_dir();
    Command b = run_command("DEB_BUILD_OPTIONS='nocheck parallel=2' " + make("deb DEBDIR=" + dir) + " 2>&1");
    REQUIRE_MESSAGE(b.status == 0, b.output);
    deb = run_command("ls " + dir + "/udplogger_*_*.deb").output;
    deb.pop_back();
  }
  Command c;
  std::string root = make_temp_dir() + "/root";
  REQUIRE(mkdir(root.c_str(), 0755) == 0);
  if (access(kDebianRoot, R_OK) == 0)
    c = run_command(std::string("tar -C ") + root + " -xf " + kDebianRoot);
  else
    c = run_command("mmdebstrap --variant=apt --include=systemd bookworm " + root + " 2>&1");
  REQUIRE_MESSAGE(c.status == 0, c.output);
  REQUIRE(run_command("cp " + deb + " " + root + "/tmp/udplogger.deb").status == 0);
  struct Proc {  // systemd-tmpfiles needs /proc; unmounted however the test ends
    std::string at;
    ~Proc() { umount2(at.c_str(), MNT_DETACH); }
  } proc{root + "/proc"};
  REQUIRE(mount("proc", proc.at.c_str(), "proc", 0, nullptr) == 0);
  std::string in_root = "chroot " + root + " ";
  c = run_command(in_root + "dpkg -i /tmp/udplogger.deb 2>&1");
  REQUIRE_MESSAGE(c.status == 0, c.output);
  // Files where dpkg says.
  std::string files = run_command(in_root + "dpkg -L udplogger").output;
  size_t missing = 0;
  for (size_t i = 0; i < files.size();) {
    size_t e = files.find('\n', i);
    std::string f = files.substr(i, e - i);
    i = e + 1;
    if (access((root + f).c_str(), F_OK) != 0 && missing++ < 3) MESSAGE("listed but missing: " << f);
  }
  CHECK(missing == 0);
  // The user and the log directory, from the maintainer scripts.
  std::string user = run_command(in_root + "getent passwd udplogger").output;
  CHECK(user.find("udplogger:x:") == 0);
  struct stat st;
  REQUIRE(stat((root + "/var/log/udplogger").c_str(), &st) == 0);
  CHECK((st.st_mode & 07777) == 0750);
  CHECK(std::to_string(st.st_uid) == user.substr(12, user.find(':', 12) - 12));
  // The units enabled; the installed binary checks its own set-up.
  struct stat ln;  // symbolic links to /lib/...: looked at, not followed out of the root
  CHECK(lstat((root + "/etc/systemd/system/sockets.target.wants/udplogger.socket").c_str(), &ln) == 0);
  CHECK(lstat((root + "/etc/systemd/system/multi-user.target.wants/udplogger.service").c_str(), &ln) == 0);
  CHECK(lstat((root + "/lib/systemd/system/udplogger-compress.timer").c_str(), &ln) == 0);
  CHECK(lstat((root + "/etc/systemd/system/timers.target.wants/udplogger-compress.timer").c_str(), &ln) != 0);
  c = run_command(in_root + "/usr/sbin/udplogger --check dir=/var/log/udplogger port=" +
                  std::to_string(free_udp_port()) + " 2>&1");
  CHECK_MESSAGE(c.status == 0, c.output);
  // Purged: nothing of it left.
  c = run_command(in_root + "dpkg --purge udplogger 2>&1");
  CHECK_MESSAGE(c.status == 0, c.output);
  size_t left = 0;
  for (size_t i = 0; i < files.size();) {
    size_t e = files.find('\n', i);
    std::string f = files.substr(i, e - i);
    i = e + 1;
    struct stat fs;
    if (lstat((root + f).c_str(), &fs) == 0 && S_ISREG(fs.st_mode) && left++ < 3) MESSAGE("left after purge: " << f);
  }
  CHECK(left == 0);
  CHECK(access((root + "/var/log/udplogger").c_str(), F_OK) != 0);
  CHECK(lstat((root + "/etc/systemd/system/sockets.target.wants/udplogger.socket").c_str(), &ln) != 0);
  CHECK(access((root + "/etc/default/udplogger").c_str(), F_OK) != 0);
  umount2(proc.at.c_str(), MNT_DETACH);
  run_command("rm -rf " + root);
}

TEST_CASE("systemd: verify is clean and the service is rated 2.0 or lower" *
          skip_unless(have_program("systemd-analyze"), "systemd", "systemd-analyze missing (Debian package systemd)")) {
  // Installed with SBINDIR where the binary is, so that ExecStart= names a
  // real file for verify, which checks it on this system.
  std::string root = make_temp_dir() + "/root";
  char top[4096];
  REQUIRE(realpath(kTop, top));
  Command c = run_command(make("install DESTDIR=" + root + " PREFIX=/usr SBINDIR=" + top));
  REQUIRE_MESSAGE(c.status == 0, c.output);
  std::string units = root + "/usr/lib/systemd/system";
  c = run_command("cd " + units + " && MANPATH=" + root + "/usr/share/man systemd-analyze verify "
                  "udplogger.service udplogger.socket udplogger-compress.service udplogger-compress.timer");
  CHECK_MESSAGE(c.status == 0, c.output);
  CHECK(c.output == "");
  c = run_command("cd " + units + " && systemd-analyze security --offline=true --root=" + root +
                  " udplogger.service | tail -n 1");
  MESSAGE(c.output);
  size_t at = c.output.find("exposure level for udplogger.service: ");
  REQUIRE(at != std::string::npos);
  double score = std::stod(c.output.substr(at + 39));
  CHECK(score <= 2.0);
  c = run_command("cd " + units + " && systemd-analyze security --offline=true --root=" + root +
                  " udplogger-compress.service | tail -n 1");
  MESSAGE(c.output);
  at = c.output.find("exposure level for udplogger-compress.service: ");
  REQUIRE(at != std::string::npos);
  CHECK(std::stod(c.output.substr(at + 48)) <= 2.0);
}

TEST_CASE("compress: the timer's service compresses closed day files, never today's, host files too") {
  std::string dir = make_temp_dir();
  REQUIRE(mkdir((dir + "/192.0.2.7").c_str(), 0750) == 0);
  // Day files last written two days ago and yesterday, and today's.
  for (const char* f : {"2026-11-29.log", "2026-11-30.log", "192.0.2.7/2026-11-30.log"})
    REQUIRE(run_command("echo old > " + dir + "/" + f + " && touch -d '2 days ago' " + dir + "/" + f).status == 0);
  REQUIRE(run_command("echo yesterday > " + dir + "/2026-12-01.log && touch -d 'yesterday 23:59:59' " +
                      dir + "/2026-12-01.log").status == 0);
  REQUIRE(run_command("echo today > " + dir + "/2026-12-02.log && echo today > " + dir +
                      "/192.0.2.7/2026-12-02.log && echo other > " + dir + "/notes.txt").status == 0);
  // The unit's own command, with the directory and systemd's %% unescaped.
  std::string unit = read_file(std::string(kTop) + "/contrib/udplogger-compress.service");
  size_t at = unit.find("ExecStart=/bin/sh -c '");
  REQUIRE(at != std::string::npos);
  std::string cmd = unit.substr(at + 22, unit.find("'\n", at) - at - 22);
  cmd = std::regex_replace(cmd, std::regex("/var/log/udplogger"), dir);
  cmd = std::regex_replace(cmd, std::regex("%%"), "%");
  for (int round = 0; round < 2; round++) {  // a second run finds nothing to do
    Command c = run_command("UDPLOGGER_COMPRESS=gzip sh -c '" + cmd + "' 2>&1");
    CHECK_MESSAGE(c.status == 0, c.output);
  }
  CHECK(tree(dir) == "./192.0.2.7/2026-11-30.log.gz\n./192.0.2.7/2026-12-02.log\n./2026-11-29.log.gz\n"
                     "./2026-11-30.log.gz\n./2026-12-01.log.gz\n./2026-12-02.log\n./notes.txt\n");
  CHECK(run_command("zcat " + dir + "/2026-12-01.log.gz").output == "yesterday\n");
}

TEST_CASE("man: mandoc -Tlint -Wall says nothing" *
          skip_unless(have_program("mandoc"), "man", "mandoc missing (Debian package mandoc)")) {
  Command c = run_command(std::string("mandoc -Tlint -Wall ") + kTop + "/man/udplogger.8");
  CHECK_MESSAGE(c.output == "", c.output);
  CHECK(c.status == 0);
}

TEST_CASE("static: runs in an empty chroot with an empty environment" *
          skip_unless(is_root(), "static", "not root: chroot needs root")) {
  std::string root = make_temp_dir() + "/chroot";
  REQUIRE(run_command("mkdir -p " + root + "/logs && cp " + kTop + "/udplogger-static " + root +
                      "/udplogger").status == 0);
  CHECK(run_command("file " + std::string(kTop) + "/udplogger-static").output.find("statically linked") !=
        std::string::npos);
  REQUIRE(run_command("chown 65534:65534 " + root + "/logs").status == 0);
  int port = free_udp_port();
  pid_t pid = fork();
  if (pid == 0) {
    char* const argv[] = {const_cast<char*>("/udplogger"), const_cast<char*>("dir=/logs"),
                          const_cast<char*>(("port=" + std::to_string(port)).c_str()),
                          const_cast<char*>("uid=65534"), const_cast<char*>("gid=65534"), nullptr};
    char* const envp[] = {nullptr};
    int quiet = open("/dev/null", O_WRONLY);  // its start-up line is not the test's output
    dup2(quiet, 1);
    dup2(quiet, 2);
    if (chroot(root.c_str()) < 0 || chdir("/") < 0) _exit(126);
    execve("/udplogger", argv, envp);
    _exit(127);
  }
  Sender s;
  bool logged = wait_for([&] {
    s.send(port, "from the rescue image\n");
    return all_logs(root + "/logs").find("from the rescue image\n") != std::string::npos;
  });
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  CHECK(logged);
  CHECK(WIFEXITED(st));
  CHECK(WEXITSTATUS(st) == 0);
  std::string log = all_logs(root + "/logs");
  CHECK(log.find("udplogger: stopped by SIGTERM; statistics:") != std::string::npos);
  struct stat sb;
  REQUIRE(stat(root.c_str(), &sb) == 0);
  CHECK(run_command("ls -A " + root).output == "logs\nudplogger\n");  // nothing else needed
}

TEST_CASE("fuzz: libFuzzer targets over the core find nothing (FUZZTIME seconds each)" *
          skip_unless(have_program("clang++") &&
                          run_command("echo 'extern \"C\" int LLVMFuzzerTestOneInput(const char*, long) "
                                      "{ return 0; }' | clang++ -x c++ -fsanitize=fuzzer -o /dev/null -")
                                  .status == 0,
                      "fuzz", "clang++ with libFuzzer missing (Debian packages clang, libclang-rt-14-dev)")) {
  const char* t = getenv("FUZZTIME");
  std::string fuzztime = t && *t ? t : "0";
  Command c = run_command(make("fuzz FUZZTIME=" + fuzztime));
  std::string tail = c.output.substr(c.output.size() > 3000 ? c.output.size() - 3000 : 0);
  CHECK_MESSAGE(c.status == 0, tail);
  size_t runs = 0;
  for (size_t p = c.output.find("\nDone "); p != std::string::npos; p = c.output.find("\nDone ", p + 1)) {
    MESSAGE(c.output.substr(p + 1, c.output.find('\n', p + 1) - p - 1));
    runs++;
  }
  CHECK(runs == 2);
  CHECK(c.output.find("fuzz invariant broken") == std::string::npos);
}
