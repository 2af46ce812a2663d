// Test helpers: start the real daemon, send real datagrams, read its files.
#include "helpers.h"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <limits.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <algorithm>
#include <fstream>
#include <sstream>
#include <stdexcept>

extern char** environ;

bool have_ipv6_loopback() {
  int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in6 a = {};
  a.sin6_family = AF_INET6;
  a.sin6_addr = in6addr_loopback;
  bool ok = bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
  close(fd);
  return ok;
}

bool have_ipv6_sockets() {
  int fd = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (fd >= 0) close(fd);
  return fd >= 0;
}

bool is_root() { return geteuid() == 0; }

bool is_sanitized() { return getenv("UDPLOGGER_SANITIZED") != nullptr; }

doctest::skip skip_unless(bool can_run, const char* test, const char* why) {
  if (!can_run) printf("[skipped] %s: %s\n", test, why);
  return doctest::skip(!can_run);
}

double now_seconds() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return double(ts.tv_sec) + double(ts.tv_nsec) / 1e9;
}

bool wait_for(const std::function<bool()>& cond, double seconds) {
  double end = now_seconds() + seconds;
  for (;;) {
    if (cond()) return true;
    if (now_seconds() > end) return false;
    usleep(10000);
  }
}

std::string read_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

// The directories made for this run, removed at exit unless
// UDPLOGGER_KEEP_TEST_DIRS is set (to look at what a failed test left).
static std::vector<std::string> temp_dirs;

static void remove_temp_dirs() {
  if (getenv("UDPLOGGER_KEEP_TEST_DIRS")) return;
  for (const std::string& d : temp_dirs) {
    std::string cmd = "rm -rf '" + d + "'";
    if (system(cmd.c_str()) != 0) fprintf(stderr, "cannot remove %s\n", d.c_str());
  }
}

std::string make_temp_dir() {
  char tmpl[] = "/tmp/udplogger-test.XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("mkdtemp failed");
  std::string top = tmpl;
  if (temp_dirs.empty()) atexit(remove_temp_dirs);
  temp_dirs.push_back(top);
  mkdir((top + "/logs").c_str(), 0755);
  return top + "/logs";
}

int free_udp_port() {
  static int next = 0;
  // Spread over a range so that runs started close together differ, then
  // make sure nobody listens there now (IPv4 and IPv6).
  if (!next) next = 20000 + int(getpid() % 20000);
  for (;;) {
    int port = next++;
    if (next > 60000) next = 20000;
    int fd6 = socket(AF_INET6, SOCK_DGRAM, 0);
    bool ok;
    if (fd6 >= 0) {
      sockaddr_in6 a = {};
      a.sin6_family = AF_INET6;
      a.sin6_port = htons(uint16_t(port));
      int off = 0;
      setsockopt(fd6, IPPROTO_IPV6, IPV6_V6ONLY, &off, sizeof off);
      ok = bind(fd6, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      close(fd6);
    } else {  // no IPv6 at all: the daemon binds IPv4 alone
      int fd4 = socket(AF_INET, SOCK_DGRAM, 0);
      sockaddr_in a = {};
      a.sin_family = AF_INET;
      a.sin_port = htons(uint16_t(port));
      ok = bind(fd4, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0;
      close(fd4);
    }
    if (ok) return port;
  }
}

std::vector<std::string> log_names(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* d = opendir(dir.c_str())) {
    while (dirent* e = readdir(d)) {
      std::string n = e->d_name;
      if (n.size() > 4 && n.compare(n.size() - 4, 4, ".log") == 0) names.push_back(n);
    }
    closedir(d);
  }
  std::sort(names.begin(), names.end());
  return names;
}

std::string all_logs(const std::string& dir) {
  std::string text;
  for (const std::string& n : log_names(dir)) text += read_file(dir + "/" + n);
  return text;
}

Sender::Sender(const char* ip, int port) : ip_(ip) {
  family_ = strchr(ip, ':') ? AF_INET6 : AF_INET;
  fd_ = socket(family_, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  int big = 4 << 20;
  setsockopt(fd_, SOL_SOCKET, SO_SNDBUF, &big, sizeof big);
  sockaddr_storage ss = {};
  socklen_t len;
  if (family_ == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(uint16_t(port));
    inet_pton(AF_INET6, ip, &a->sin6_addr);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(uint16_t(port));
    inet_pton(AF_INET, ip, &a->sin_addr);
    len = sizeof *a;
  }
  if (bind(fd_, reinterpret_cast<sockaddr*>(&ss), len) < 0)
    throw std::runtime_error(std::string("bind sender: ") + strerror(errno));
  getsockname(fd_, reinterpret_cast<sockaddr*>(&ss), &len);
  port_ = ntohs(family_ == AF_INET6 ? reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port
                                    : reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
}

Sender::~Sender() { close(fd_); }

void Sender::send(int to_port, const std::string& data, const char* to_ip) {
  if (!to_ip) to_ip = family_ == AF_INET6 ? "::1" : "127.0.0.1";
  sockaddr_storage ss = {};
  socklen_t len;
  if (family_ == AF_INET6) {
    auto* a = reinterpret_cast<sockaddr_in6*>(&ss);
    a->sin6_family = AF_INET6;
    a->sin6_port = htons(uint16_t(to_port));
    inet_pton(AF_INET6, to_ip, &a->sin6_addr);
    len = sizeof *a;
  } else {
    auto* a = reinterpret_cast<sockaddr_in*>(&ss);
    a->sin_family = AF_INET;
    a->sin_port = htons(uint16_t(to_port));
    inet_pton(AF_INET, to_ip, &a->sin_addr);
    len = sizeof *a;
  }
  if (sendto(fd_, data.data(), data.size(), 0, reinterpret_cast<sockaddr*>(&ss), len) !=
      ssize_t(data.size()))
    throw std::runtime_error(std::string("sendto: ") + strerror(errno));
}

size_t fds_into(const std::string& pid, const std::string& dir) {
  std::string fds = "/proc/" + pid + "/fd";
  size_t n = 0;
  DIR* d = opendir(fds.c_str());
  if (!d) return 0;
  while (dirent* e = readdir(d)) {
    char target[4096];
    ssize_t len = readlink((fds + "/" + e->d_name).c_str(), target, sizeof target - 1);
    if (len > 0 && std::string(target, size_t(len)).compare(0, dir.size() + 1, dir + "/") == 0)
      n++;
  }
  closedir(d);
  return n;
}

Command run_command(const std::string& cmd) {
  Command c{-1, ""};
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  if (!p) return c;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) c.output.append(buf, n);
  int st = pclose(p);
  c.status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
  return c;
}

size_t count_of(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) n++;
  return n;
}

bool have_program(const char* name) {
  return run_command(std::string("command -v ") + name).status == 0;
}

size_t kernel_drops_in(const std::string& log) {
  static const std::string kNotice = " datagrams dropped by the kernel";
  size_t n = 0;
  for (size_t p = log.find(kNotice); p != std::string::npos; p = log.find(kNotice, p + 1)) {
    size_t b = log.rfind("udplogger: ", p) + 11;
    n += std::stoul(log.substr(b, p - b));
  }
  return n;
}

std::string udplogger_path() {
  const char* p = getenv("UDPLOGGER");
  return p ? p : "../udplogger";
}

// Starts udplogger with stdout and stderr going to files; returns its pid.
static pid_t spawn(const std::vector<std::string>& args, const std::vector<std::string>& env,
                   const std::string& out, const std::string& err) {
  std::vector<std::string> envs;
  for (char** e = environ; *e; e++) {
    std::string var = *e;
    bool replaced = false;
    for (const std::string& x : env)
      replaced |= var.compare(0, x.find('=') + 1, x, 0, x.find('=') + 1) == 0;
    if (!replaced) envs.push_back(var);
  }
  for (const std::string& e : env) envs.push_back(e);
  pid_t pid = fork();
  if (pid == 0) {
    int o = open(out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    int e = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(o, 1);
    dup2(e, 2);
    std::vector<char*> argv, envp;
    std::string path = udplogger_path();
    argv.push_back(const_cast<char*>(path.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    for (const std::string& s : envs) envp.push_back(const_cast<char*>(s.c_str()));
    envp.push_back(nullptr);
    execve(path.c_str(), argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

pid_t spawn_with_pipe(const std::vector<std::string>& args, int* stdout_fd,
                      const std::string& err_path) {
  char path[PATH_MAX];
  if (!realpath(udplogger_path().c_str(), path)) throw std::runtime_error("no udplogger");
  std::string cwd = err_path.substr(0, err_path.rfind('/'));
  int p[2];
  if (pipe2(p, O_CLOEXEC) < 0) throw std::runtime_error("pipe failed");
  pid_t pid = fork();
  if (pid == 0) {
    int e = open(err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(p[1], 1);
    dup2(e, 2);
    if (chdir(cwd.c_str()) < 0) _exit(126);
    std::vector<char*> argv;
    argv.push_back(path);
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(path, argv.data());
    _exit(127);
  }
  close(p[1]);
  *stdout_fd = p[0];
  return pid;
}

static int decode_status(int st) {
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

Exit run_udplogger(const std::vector<std::string>& args, double seconds,
                   const std::vector<std::string>& env) {
  std::string dir = make_temp_dir();
  Exit r;
  pid_t pid = spawn(args, env, dir + "/../stdout", dir + "/../stderr");
  int st = 0;
  bool done = wait_for([&] { return waitpid(pid, &st, WNOHANG) == pid; }, seconds);
  if (!done) {
    kill(pid, SIGKILL);
    waitpid(pid, &st, 0);
  }
  r.status = decode_status(st);
  r.out = read_file(dir + "/../stdout");
  r.err = read_file(dir + "/../stderr");
  return r;
}

Daemon::Daemon(std::vector<std::string> args, const std::vector<std::string>& env,
               std::string dir, std::string io)
    : dir_(dir.empty() ? make_temp_dir() : dir), io_(io.empty() ? dir_ + "/.." : io) {
  port_ = 0;
  for (const std::string& a : args)
    if (a.rfind("port=", 0) == 0) port_ = std::stoi(a.substr(5));
  if (port_ == 0) {
    port_ = free_udp_port();
    args.push_back("port=" + std::to_string(port_));
  }
  bool has_dir = false;
  for (const std::string& a : args) has_dir |= a.rfind("dir=", 0) == 0;
  if (!has_dir) args.push_back("dir=" + dir_);
  pid_ = spawn(args, env, io_ + "/stdout", io_ + "/stderr");
  bool up = wait_for([&] {
    // The start-up line is on stdout, or on stderr when stdout is the log.
    if (out().find("listening on") != std::string::npos ||
        err().find("listening on") != std::string::npos)
      return true;
    int st;
    if (waitpid(pid_, &st, WNOHANG) == pid_) pid_ = -1;
    return pid_ < 0;
  });
  if (!up || pid_ < 0) {
    if (pid_ > 0) stop(SIGKILL);
    pid_ = -1;
  }
}

Daemon::~Daemon() {
  if (pid_ > 0) stop(SIGKILL);
}

void Daemon::signal(int sig) { kill(pid_, sig); }

int Daemon::stop(int sig) {
  if (pid_ <= 0) return -1;
  if (sig) kill(pid_, sig);
  int st = 0;
  if (!wait_for([&] { return waitpid(pid_, &st, WNOHANG) == pid_; }, 10)) {
    kill(pid_, SIGKILL);
    waitpid(pid_, &st, 0);
  }
  pid_ = -1;
  return decode_status(st);
}

bool Daemon::wait_log(const std::string& text, double seconds) const {
  return wait_for([&] { return log().find(text) != std::string::npos; }, seconds);
}
