// The senders a log host meets besides netconsole, as real programs: the
// util-linux logger, rsyslogd forwarding with omfwd, socat; and allow=.
#include <doctest.h>
#include <signal.h>
#include <stdio.h>
#include <sys/wait.h>
#include <unistd.h>

#include <string>
#include <vector>

#include "helpers.h"

namespace {

// The text of every line from a sender on 127.0.0.1 (after the stamp and
// the sender's address), in order.
std::vector<std::string> texts_from_loopback(const std::string& log) {
  std::vector<std::string> texts;
  const std::string from = " 127.0.0.1:";
  for (size_t i = 0; i < log.size();) {
    size_t e = log.find('\n', i);
    if (e == std::string::npos) break;
    if (log.compare(i + 19, from.size(), from) == 0) {
      size_t text = log.find(' ', i + 19 + from.size());
      texts.push_back(log.substr(text + 1, e - text - 1));
    }
    i = e + 1;
  }
  return texts;
}

size_t count_of(const std::vector<std::string>& v, const std::string& s) {
  size_t n = 0;
  for (const std::string& x : v) n += x == s;
  return n;
}

// Splits a program's output into its lines.
std::vector<std::string> lines_of(const std::string& text) {
  std::vector<std::string> lines;
  for (size_t i = 0; i < text.size();) {
    size_t e = text.find('\n', i);
    if (e == std::string::npos) e = text.size();
    lines.push_back(text.substr(i, e - i));
    i = e + 1;
  }
  return lines;
}

// Each message one line of its own, its text exactly as sent, each
// written within a second of the sender finishing.
void check_written_as_sent(const Daemon& d, const std::vector<std::string>& sent) {
  double start = now_seconds();
  REQUIRE(wait_for([&] {
    auto texts = texts_from_loopback(d.log());
    for (const std::string& m : sent)
      if (count_of(texts, m) == 0) return false;
    return true;
  }, 1.0));
  MESSAGE(sent.size() << " message(s) in the log " << int((now_seconds() - start) * 1000)
                      << " ms after the sender finished");
  auto texts = texts_from_loopback(d.log());
  for (const std::string& m : sent) {
    CAPTURE(m);
    CHECK(count_of(texts, m) == 1);
  }
}

// The messages logger sent, as it printed them with --stderr.
std::vector<std::string> run_logger(const std::string& args, int port,
                                    const std::string& input = "") {
  std::string cmd = "logger --stderr -n 127.0.0.1 -P " + std::to_string(port) + " -d " + args;
  if (!input.empty()) cmd = "printf '" + input + "' | " + cmd;
  Command c = run_command(cmd);
  REQUIRE(c.status == 0);
  std::vector<std::string> sent = lines_of(c.output);
  REQUIRE(!sent.empty());
  return sent;
}

bool have_logger() { return have_program("logger") && run_command("logger --help").output.find("--rfc5424") != std::string::npos; }

// True when something listens on UDP 127.0.0.1:port (read from
// /proc/net/udp, without touching the port).
bool udp_bound(int port) {
  char want[32];
  snprintf(want, sizeof want, "0100007F:%04X ", port);
  return read_file("/proc/net/udp").find(want) != std::string::npos;
}

// A private rsyslogd: takes syslog on UDP 127.0.0.1:in_port and forwards
// everything with omfwd, default template, to 127.0.0.1:out_port.
class Rsyslogd {
 public:
  Rsyslogd(int in_port, int out_port) : dir_(make_temp_dir()) {
    FILE* f = fopen((dir_ + "/rsyslog.conf").c_str(), "w");
    REQUIRE(f);
    fprintf(f,
            "global(workDirectory=\"%s\")\n"
            "module(load=\"imudp\")\n"
            "input(type=\"imudp\" address=\"127.0.0.1\" port=\"%d\")\n"
            "*.* action(type=\"omfwd\" target=\"127.0.0.1\" port=\"%d\" protocol=\"udp\")\n",
            dir_.c_str(), in_port, out_port);
    fclose(f);
    pid_ = fork();
    if (pid_ == 0) {
      FILE* out = freopen((dir_ + "/output").c_str(), "w", stdout);
      if (out) dup2(1, 2);
      execlp("rsyslogd", "rsyslogd", "-n", "-f", (dir_ + "/rsyslog.conf").c_str(), "-i",
             (dir_ + "/rsyslogd.pid").c_str(), static_cast<char*>(nullptr));
      _exit(127);
    }
    ready_ = wait_for([&] { return udp_bound(in_port); });
  }
  ~Rsyslogd() {
    if (pid_ <= 0) return;
    kill(pid_, SIGTERM);
    int st;
    waitpid(pid_, &st, 0);
  }
  bool ready() const { return ready_; }
  std::string output() const { return read_file(dir_ + "/output"); }

 private:
  std::string dir_;
  pid_t pid_ = -1;
  bool ready_ = false;
};

}  // namespace

TEST_CASE("clients: util-linux logger, RFC 3164 and RFC 5424: one line each, at once" *
          skip_unless(have_logger(), "clients: util-linux logger",
                      "util-linux logger with --rfc5424 not installed (Debian: bsdutils)")) {
  Daemon d;
  REQUIRE(d.running());
  check_written_as_sent(d, run_logger("--rfc3164 -t app 'one message, RFC 3164'", d.port_));
  check_written_as_sent(d, run_logger("--rfc5424 -t app 'one message, RFC 5424'", d.port_));
}

TEST_CASE("clients: logger sending several lines from one socket: one line each, none glued" *
          skip_unless(have_logger(), "clients: logger, several lines",
                      "util-linux logger with --rfc5424 not installed (Debian: bsdutils)")) {
  Daemon d;
  REQUIRE(d.running());
  for (std::string format : {"--rfc3164", "--rfc5424"}) {
    CAPTURE(format);
    auto sent = run_logger(format + " -t batch", d.port_,
                           "first of three " + format + "\\nsecond\\nthird\\n");
    REQUIRE(sent.size() == 3);
    check_written_as_sent(d, sent);
  }
}

TEST_CASE("clients: rsyslogd forwarding with omfwd and its default template" *
          skip_unless(have_program("rsyslogd") && have_logger(), "clients: rsyslogd omfwd",
                      "rsyslogd or util-linux logger not installed (Debian: rsyslog, bsdutils)")) {
  Daemon d;
  REQUIRE(d.running());
  int relay_port = free_udp_port();
  Rsyslogd rs(relay_port, d.port_);
  INFO("rsyslogd said: " << rs.output());
  REQUIRE(rs.ready());
  // A burst through one relay socket: the messages must not be glued.
  auto sent = run_logger("--rfc3164 -t relayed", relay_port,
                         "relayed one\\nrelayed two\\nrelayed three\\n");
  REQUIRE(sent.size() == 3);
  check_written_as_sent(d, sent);
}

TEST_CASE("clients: socat, a syslog datagram and CRLF lines" *
          skip_unless(have_program("socat"), "clients: socat", "socat not installed")) {
  Daemon d;
  REQUIRE(d.running());
  std::string to = " | socat -u - UDP-SENDTO:127.0.0.1:" + std::to_string(d.port_);
  REQUIRE(run_command("printf '<14>socat: no newline'" + to).status == 0);
  check_written_as_sent(d, {"<14>socat: no newline"});
  REQUIRE(run_command("printf 'crlf one\\r\\ncrlf two\\r\\n'" + to).status == 0);
  check_written_as_sent(d, {"crlf one", "crlf two"});
  CHECK(d.log().find("\\x0d") == std::string::npos);
}

TEST_CASE("clients: eol=datagram: socat messages without a newline, one line each" *
          skip_unless(have_program("socat"), "clients: socat, eol=datagram", "socat not installed")) {
  Daemon d({"eol=datagram"});
  REQUIRE(d.running());
  std::string to = " | socat -u - UDP-SENDTO:127.0.0.1:" + std::to_string(d.port_);
  REQUIRE(run_command("printf 'app message one'" + to).status == 0);
  REQUIRE(run_command("printf 'app message two'" + to).status == 0);
  check_written_as_sent(d, {"app message one", "app message two"});
  CHECK(d.out().find(" eol=datagram ") != std::string::npos);
}

TEST_CASE("allow=: datagrams from elsewhere are refused, counted and reported") {
  Daemon d({"allow=127.0.0.1/32,::1"});
  REQUIRE(d.running());
  CHECK(d.out().find(" allow=127.0.0.1/32,::1") != std::string::npos);
  Sender stranger("127.0.0.2");
  for (int i = 0; i < 5; i++) stranger.send(d.port_, "stranger " + std::to_string(i) + "\n");
  Sender friendly("127.0.0.1");
  friendly.send(d.port_, "welcome\n");
  REQUIRE(d.wait_log("welcome\n"));
  REQUIRE(d.wait_log("udplogger: refused 1 datagram from senders not in allow=, the last from "
                     "127.0.0.2:" + std::to_string(stranger.port())));
  CHECK(d.stop() == 0);
  std::string log = d.log();
  CHECK(log.find("stranger") == std::string::npos);
  // The other four, in the notice written on the way out.
  CHECK(log.find("udplogger: refused 4 datagrams from senders not in allow=") != std::string::npos);
  CHECK(log.find(" refused=5 senders=1 ") != std::string::npos);
}

TEST_CASE("allow=: a bad list stops the daemon with exit 2, naming allow") {
  Exit e = run_udplogger({"allow=10.0.0.1/8", "port=" + std::to_string(free_udp_port())});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: allow=10.0.0.1/8: '10.0.0.1/8': address bits set past the prefix "
                 "(the network is 10.0.0.0/8) (allowed: IPv4 or IPv6 networks such as "
                 "10.0.0.0/8,192.0.2.7,2001:db8::/32, separated by commas)\n");
}

TEST_CASE("clients: kernel crash lines relayed by rsyslogd are noticed; logger's (user facility) "
          "are not" *
          skip_unless(have_program("rsyslogd") && have_logger(), "clients: crash via rsyslogd",
                      "rsyslogd or util-linux logger not installed (Debian: rsyslog, bsdutils)")) {
  Daemon d;
  REQUIRE(d.running());
  int relay_port = free_udp_port();
  Rsyslogd rs(relay_port, d.port_);
  INFO("rsyslogd said: " << rs.output());
  REQUIRE(rs.ready());
  // A kernel's message as a syslog daemon receives it from the kernel's
  // facility (what imklog forwards), through the relay.
  Sender kernel;
  kernel.send(relay_port,
              "<2>Dec  2 10:00:00 web1 kernel: [   12.345678] Kernel panic - not syncing: relayed");
  // util-linux logger turns kern into user: its crash words are a program's.
  run_logger("--rfc3164 -p kern.emerg -t kernel 'Kernel panic - not syncing: from logger'",
             d.port_);
  run_logger("--rfc5424 -p kern.crit -t kernel 'Oops: 0000 [#1] from logger'", d.port_);
  REQUIRE(d.wait_log("udplogger: 127.0.0.1: kernel panic: Kernel panic - not syncing: relayed\n"));
  REQUIRE(d.wait_log("Oops: 0000 [#1] from logger\n"));
  std::string log = d.log();
  INFO(log);
  CHECK(log.find("kernel: [   12.345678] Kernel panic - not syncing: relayed\n") !=
        std::string::npos);
  CHECK(log.find("Kernel panic - not syncing: from logger\n") != std::string::npos);
  CHECK(count_of(log, "udplogger: 127.0.0.1: kernel ") == 1);
}
