// Test helpers: start the real daemon, send real datagrams, read its files.
#ifndef UDPLOGGER_TEST_HELPERS_H
#define UDPLOGGER_TEST_HELPERS_H

#include <doctest.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <unistd.h>

#include <functional>
#include <string>
#include <vector>

// What this host allows; tests that need more are skipped, saying why.
bool have_ipv6_loopback();  // ::1 can be bound
bool have_ipv6_sockets();   // AF_INET6 sockets exist: the daemon binds [::]
bool is_root();
// The daemon under test is built with sanitizers (make check-asan): its
// libraries and memory use are not the shipped binary's.
bool is_sanitized();

// A test decorator: skips the test when `can_run` is false and says why
// on stdout, so a test that cannot run here never counts as passed.
doctest::skip skip_unless(bool can_run, const char* test, const char* why);

// Polls cond every 10 ms until it holds or `seconds` pass.
bool wait_for(const std::function<bool()>& cond, double seconds = 5.0);

std::string read_file(const std::string& path);
std::string make_temp_dir();
int free_udp_port();
double now_seconds();

// All *.log files of dir, by name, concatenated.
std::string all_logs(const std::string& dir);
std::vector<std::string> log_names(const std::string& dir);

// A UDP socket bound to a loopback address (127.0.0.1 or ::1).
class Sender {
 public:
  explicit Sender(const char* ip = "127.0.0.1", int port = 0);
  ~Sender();
  void send(int to_port, const std::string& data, const char* to_ip = nullptr);
  int port() const { return port_; }

 private:
  int fd_ = -1;
  int family_;
  int port_ = 0;
  std::string ip_;
};

// The result of running udplogger to its end.
struct Exit {
  int status = -1;  // exit status, or 128 + signal
  std::string out, err;
};

// Runs ../udplogger with args to completion (killed after `seconds`).
Exit run_udplogger(const std::vector<std::string>& args, double seconds = 5.0,
                   const std::vector<std::string>& env = {});

// A running daemon on a free loopback port with its own log directory.
class Daemon {
 public:
  // Starts udplogger with dir= and port= added (unless args have them);
  // waits for its start-up line.  Its stdout and stderr go to files in io,
  // by default dir's parent.
  explicit Daemon(std::vector<std::string> args = {},
                  const std::vector<std::string>& env = {},
                  std::string dir = "", std::string io = "");
  ~Daemon();
  bool running() const { return pid_ > 0; }
  // Sends a signal (0: none) and waits for the exit; returns the exit status.
  int stop(int sig = 15);
  void signal(int sig);
  std::string log() const { return all_logs(dir_); }
  // Waits until the logs contain `text`.
  bool wait_log(const std::string& text, double seconds = 5.0) const;
  std::string out() const { return read_file(io_ + "/stdout"); }
  std::string err() const { return read_file(io_ + "/stderr"); }

  std::string dir_;
  std::string io_;
  int port_ = 0;
  pid_t pid_ = -1;
};

// Starts udplogger in the directory of err_path, with stdout into a pipe
// (*stdout_fd, the read end) and stderr into err_path; returns its pid.
pid_t spawn_with_pipe(const std::vector<std::string>& args, int* stdout_fd,
                      const std::string& err_path);

// How many of pid's descriptors ("self" for this process) point into dir.
size_t fds_into(const std::string& pid, const std::string& dir);

// Runs a shell command; returns its exit status and what it printed
// (stdout and stderr).
struct Command {
  int status;
  std::string output;
};
Command run_command(const std::string& cmd);

// True when the shell finds the program.
bool have_program(const char* name);

// The datagrams the "N datagrams dropped by the kernel" notices of a log add up to.
size_t kernel_drops_in(const std::string& log);

// How many times `what` occurs in text.
size_t count_of(const std::string& text, const std::string& what);

// A string as one piece of a batch of log text.
inline iovec piece(const char* s) { return iovec{const_cast<char*>(s), strlen(s)}; }

// Runs f with this process's stderr going to a file; returns what f wrote.
template <typename F>
std::string stderr_of(F f) {
  std::string path = make_temp_dir() + "/stderr";
  fflush(stderr);
  int saved = dup(2);
  int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
  dup2(fd, 2);
  close(fd);
  f();
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  return read_file(path);
}

// Path of the daemon under test.
std::string udplogger_path();

#endif
