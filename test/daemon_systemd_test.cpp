// The daemon under systemd's protocols: socket activation (the socket held
// across restarts by the parent, so nothing sent meanwhile is lost), the
// readiness notifications, and the incident tools (debug=1, --key value).
#include <doctest.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>

#include <string>
#include <vector>

#include "helpers.h"

namespace {

// A UDP socket on 127.0.0.1 and a free port, as systemd's .socket unit
// would hold it.
int held_socket(int* port) {
  int fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  int big = 4 << 20;  // as ReceiveBuffer= in the .socket unit: room for the downtime
  if (setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &big, sizeof big) < 0)
    setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &big, sizeof big);
  sockaddr_in a = {};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  *port = free_udp_port();
  a.sin_port = htons(uint16_t(*port));
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a) == 0);
  return fd;
}

// Starts udplogger as socket activation does: fd at 3, LISTEN_FDS=1 and
// LISTEN_PID naming the child itself.
pid_t start_activated(int fd, const std::vector<std::string>& args, const std::string& err) {
  std::string path = udplogger_path();
  pid_t pid = fork();
  if (pid == 0) {
    if (fd == 3) fcntl(3, F_SETFD, 0);  // dup2 onto itself would keep close-on-exec
    else dup2(fd, 3);
    int e = open(err.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(e, 2);
    int o = open("/dev/null", O_WRONLY);
    dup2(o, 1);
    setenv("LISTEN_FDS", "1", 1);
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    std::vector<char*> argv{const_cast<char*>(path.c_str())};
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    execv(path.c_str(), argv.data());
    _exit(127);
  }
  return pid;
}

// An activated start that cannot go on says why on stderr and holds its
// sockets until it is stopped (see hold() in udplogger.cpp): waits for the
// message, checks that it is still there, stops it; returns the exit
// status, or -1 when it exited on its own.
int held_then_stopped(pid_t pid, const std::string& err) {
  int st = 0;
  bool said = wait_for([&] { return !read_file(err).empty(); });
  usleep(200000);
  if (!said || waitpid(pid, &st, WNOHANG) == pid) {
    if (!said) kill(pid, SIGKILL), waitpid(pid, &st, 0);
    return -1;
  }
  kill(pid, SIGTERM);
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

int stop(pid_t pid) {
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

}  // namespace

TEST_CASE("activation: the socket held across a restart loses nothing, in order") {
  std::string dir = make_temp_dir();
  int port;
  int fd = held_socket(&port);
  std::string err = dir + "/../stderr";
  Sender s;
  int seq = 0;
  auto send_some = [&](int n) {
    for (int i = 0; i < n; i++, seq++) {
      s.send(port, "line " + std::to_string(seq) + "\n");
      usleep(1000);
    }
  };
  pid_t first = start_activated(fd, {"dir=" + dir}, err);
  REQUIRE(wait_for([&] { return all_logs(dir).find("started (version") != std::string::npos; }));
  send_some(200);
  CHECK(stop(first) == 0);
  send_some(300);  // nobody reads: the kernel queues them on the held socket
  pid_t second = start_activated(fd, {"dir=" + dir}, err);
  send_some(200);
  REQUIRE(wait_for([&] { return all_logs(dir).find(" line 699\n") != std::string::npos; }));
  CHECK(stop(second) == 0);
  close(fd);
  std::string log = all_logs(dir);
  size_t at = 0, missing = 0, twice = 0, out_of_order = 0;
  for (int i = 0; i < 700; i++) {
    std::string line = " line " + std::to_string(i) + "\n";
    size_t n = count_of(log, line);
    missing += n == 0;
    twice += n > 1;
    size_t p = log.find(line);
    if (p != std::string::npos && p < at) out_of_order++;
    if (p != std::string::npos) at = p;
  }
  CHECK(missing == 0);
  CHECK(twice == 0);
  CHECK(out_of_order == 0);
  // The log says when nobody was listening.
  CHECK(count_of(log, "udplogger: started (version") == 2);
  CHECK(count_of(log, "udplogger: stopped by SIGTERM; statistics:") == 2);
  CHECK(count_of(log, "(from socket activation)") == 2);
}

TEST_CASE("activation: a passed socket that is not UDP is refused, naming the fd") {
  std::string dir = make_temp_dir();
  int tcp = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  std::string err = dir + "/../stderr";
  pid_t pid = start_activated(tcp, {"dir=" + dir}, err);
  CHECK(held_then_stopped(pid, err) == 1);
  close(tcp);
  CHECK(read_file(err) ==
        "udplogger: socket activation: fd 3 is not a UDP socket (ListenDatagram= in the .socket "
        "unit)\n");
}

TEST_CASE("activation: under systemd-socket-activate" *
          skip_unless(system("command -v systemd-socket-activate >/dev/null 2>&1") == 0,
                      "activation: systemd-socket-activate",
                      "systemd-socket-activate not installed (Debian package systemd)")) {
  std::string dir = make_temp_dir();
  int port = free_udp_port();
  std::string cmd = "exec systemd-socket-activate -d -l 127.0.0.1:" + std::to_string(port) + " " +
                    udplogger_path() + " dir=" + dir + " >" + dir + "/../stdout 2>" + dir +
                    "/../stderr";
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  REQUIRE(wait_for([&] { return read_file(dir + "/../stderr").find("Listening on") != std::string::npos; }));
  Sender s;
  s.send(port, "first, wakes it up\n");
  s.send(port, "second\n");
  bool logged = wait_for([&] { return all_logs(dir).find("second\n") != std::string::npos; });
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  REQUIRE(logged);
  std::string log = all_logs(dir);
  CHECK(log.find("first, wakes it up\n") != std::string::npos);
  CHECK(log.find("listening on UDP 127.0.0.1:" + std::to_string(port) + " (from socket activation)") !=
        std::string::npos);
  CHECK(read_file(dir + "/../stderr").find("Address already in use") == std::string::npos);
}

TEST_CASE("notify: READY=1 and STATUS= once listening, STOPPING=1 on SIGTERM") {
  std::string dir = make_temp_dir();
  std::string path = dir + "/../notify";
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa = {};
  sa.sun_family = AF_UNIX;
  strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  std::vector<std::string> got;
  auto receive = [&] {
    char buf[2048];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) got.emplace_back(buf, size_t(n));
    return got.size();
  };
  Daemon d({}, {"NOTIFY_SOCKET=" + path}, dir);
  REQUIRE(d.running());
  REQUIRE(wait_for([&] { return receive() >= 1; }));
  CHECK(got[0].find("READY=1\nSTATUS=listening on UDP ") == 0);
  CHECK(got[0].find("writing " + dir + "/") != std::string::npos);
  CHECK(d.stop() == 0);
  REQUIRE(wait_for([&] { return receive() >= 3; }));
  CHECK(got[1] == "STOPPING=1");
  CHECK(got[2].find("STATUS=0.00 lines/s, 0 hosts in the last minute, 0 kernel drops, last crash: none") == 0);
  close(fd);
}

TEST_CASE("debug=1 traces each datagram on stderr: who, how long, what became of it") {
  Daemon d({"debug=1"});
  REQUIRE(d.running());
  Sender s, t;  // t sends extended netconsole, s plain text
  std::string who = "127.0.0.1:" + std::to_string(s.port());
  std::string ext = "127.0.0.1:" + std::to_string(t.port());
  s.send(d.port_, "two\nlines and a part");
  s.send(d.port_, "");
  t.send(d.port_, "6,7,100,-;a record\n");
  t.send(d.port_, "6,8,100,-,ncfrag=0/10;12345");
  t.send(d.port_, "6,8,100,-,ncfrag=5/10;67890");
  t.send(d.port_, "6,8,100,-,ncfrag=5/10;67890");
  REQUIRE(wait_for([&] { return count_of(d.err(), "udplogger: debug: ") == 6; }));
  std::string err = d.err();
  CHECK(err.find("udplogger: debug: " + who + " 20 bytes: text: 1 line written, 16 bytes wait "
                 "for a newline\n") != std::string::npos);
  CHECK(err.find("udplogger: debug: " + who + " 0 bytes: empty: nothing to write\n") !=
        std::string::npos);
  CHECK(err.find("udplogger: debug: " + ext + " 19 bytes: extended record seq 7 <6>: 1 line "
                 "written\n") != std::string::npos);
  CHECK(err.find("udplogger: debug: " + ext + " 27 bytes: extended fragment seq 8 ncfrag=0/10 "
                 "(5 bytes): held for reassembly\n") != std::string::npos);
  CHECK(err.find("udplogger: debug: " + ext + " 27 bytes: extended fragment seq 8 ncfrag=5/10 "
                 "(5 bytes): record complete, written\n") != std::string::npos);
  CHECK(err.find("udplogger: debug: " + ext + " 27 bytes: extended fragment seq 8 ncfrag=5/10: "
                 "dropped, its record was written already\n") != std::string::npos);
}

TEST_CASE("options: GNU style --key value, as well as key=value and --key=value") {
  Daemon d({"--timeout", "30", "--escape", "none"});
  REQUIRE(d.running());
  CHECK(d.out().find("timeout=30 ") != std::string::npos);
  CHECK(d.out().find("escape=none ") != std::string::npos);
  Exit e = run_udplogger({"--port"});
  CHECK(e.status == 2);
  CHECK(e.err.find("udplogger: unknown option '--port'") == 0);
  e = run_udplogger({"--port", "0"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: port=0: out of range (allowed: 1..65535)\n");
}

TEST_CASE("activation: an inherited socket that is not bound is refused, and so is LISTEN_FDS=1x") {
  std::string dir = make_temp_dir();
  std::string err = dir + "/../stderr";
  int unbound = socket(AF_INET6, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  pid_t pid = start_activated(unbound, {"dir=" + dir}, err);
  CHECK(held_then_stopped(pid, err) == 1);
  close(unbound);
  CHECK(read_file(err) == "udplogger: socket activation: fd 3 is not bound to a port "
                          "(ListenDatagram= in the .socket unit)\n");
  int port = 0;
  int held = held_socket(&port);
  pid = fork();
  if (pid == 0) {
    dup2(held, 3);
    int o = open("/dev/null", O_WRONLY);
    dup2(o, 1);
    int e2 = open(err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    dup2(e2, 2);
    setenv("LISTEN_FDS", "1x", 1);
    setenv("LISTEN_PID", std::to_string(getpid()).c_str(), 1);
    std::string path = udplogger_path(), d = "dir=" + dir;
    execl(path.c_str(), path.c_str(), d.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  CHECK(held_then_stopped(pid, err) == 1);
  close(held);
  CHECK(read_file(err) == "udplogger: socket activation: LISTEN_FDS=1x: expected a number of UDP "
                          "sockets, 1..16\n");
}

TEST_CASE("activation: a bad option holds the socket unread; after the fix nothing sent meanwhile is lost") {
  std::string dir = make_temp_dir();
  std::string err = dir + "/../stderr";
  int port = 0;
  int fd = held_socket(&port);
  // A start that exited would leave the datagram queued and be started
  // again at once, until systemd's start limit closed the socket.
  pid_t pid = start_activated(fd, {"dir=" + dir, "stamp=bogus"}, err);
  REQUIRE(wait_for([&] { return !read_file(err).empty(); }));
  Sender s;
  for (int i = 0; i < 20; i++) s.send(port, "meanwhile " + std::to_string(i) + "\n");
  CHECK(held_then_stopped(pid, err) == 2);
  CHECK(read_file(err) == "udplogger: stamp=bogus: unknown (allowed: classic, iso)\n");
  CHECK(log_names(dir).empty());  // nothing read, nothing written
  pid = start_activated(fd, {"dir=" + dir}, err);  // fixed
  bool all = wait_for([&] { return count_of(all_logs(dir), " meanwhile ") == 20; });
  INFO("written: " << count_of(all_logs(dir), " meanwhile "));
  CHECK(all);
  CHECK(stop(pid) == 0);
  close(fd);
}

TEST_CASE("notify: a NOTIFY_SOCKET nobody reads never stalls the loop") {
  std::string dir = make_temp_dir();
  std::string path = dir + "/../notify-unread";
  int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  sockaddr_un sa = {};
  sa.sun_family = AF_UNIX;
  strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
  REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  Daemon d({}, {"NOTIFY_SOCKET=" + path}, dir);
  REQUIRE(d.running());
  // Statuses until the socket's queue is full: then the next one would block.
  for (int i = 0; i < 2000 && d.err().find("NOTIFY_SOCKET: ") == std::string::npos; i++) {
    d.signal(SIGUSR1);
    if (i % 50 == 49) usleep(20000);
  }
  REQUIRE(wait_for([&] { return d.err().find("NOTIFY_SOCKET: Resource temporarily unavailable; "
                                             "not waiting for it") != std::string::npos; }));
  Sender s;
  for (int i = 0; i < 50; i++) s.send(d.port_, "after " + std::to_string(i) + "\n");
  bool all = wait_for([&] { return count_of(d.log(), " after ") == 50; });
  INFO("lines written: " << count_of(d.log(), " after "));
  CHECK(all);
  double t0 = now_seconds();
  CHECK(d.stop() == 0);
  CHECK(now_seconds() - t0 < 2.0);
  close(fd);
}
