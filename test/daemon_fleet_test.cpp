// Daemon tests for the fleet view: the real ./udplogger on loopback, its
// metrics file read by the real promtool and prometheus-node-exporter,
// the crash notices it writes, systemd's STATUS= and the summary by hand.
#include <arpa/inet.h>
#include <doctest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <stdlib.h>

#include <sstream>
#include <string>
#include <vector>

#include "helpers.h"

namespace {

// The lines of the real 6.1 panic as the kernel sent them (the text after
// "STAMP IP:PORT " in the log udplogger wrote of it).
std::vector<std::string> legacy_panic() {
  std::istringstream log(read_file("netconsole/crashes/6.1-legacy-panic.log"));
  std::vector<std::string> out;
  for (std::string line; std::getline(log, line);)
    if (line.find(" udplogger: ") == std::string::npos)
      out.push_back(line.substr(line.find(' ', 20) + 1) + "\n");
  return out;
}

// GET path from 127.0.0.1:port over HTTP/1.0; the whole answer, or "".
std::string http_get(int port, const std::string& path) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa = {};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(uint16_t(port));
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  std::string answer;
  if (connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0) {
    std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
    if (write(fd, req.data(), req.size()) == ssize_t(req.size())) {
      char buf[65536];
      ssize_t n;
      while ((n = read(fd, buf, sizeof buf)) > 0) answer.append(buf, size_t(n));
    }
  }
  close(fd);
  return answer;
}

int free_tcp_port() {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa = {};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  socklen_t len = sizeof sa;
  bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa);
  getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  close(fd);
  return ntohs(sa.sin_port);
}

// A unix datagram socket standing in for systemd's notify socket.
struct NotifySocket {
  std::string path;
  int fd = -1;
  std::vector<std::string> got;
  explicit NotifySocket(const std::string& p) : path(p) {
    fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    sockaddr_un sa = {};
    sa.sun_family = AF_UNIX;
    strncpy(sa.sun_path, path.c_str(), sizeof sa.sun_path - 1);
    REQUIRE(bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof sa) == 0);
  }
  ~NotifySocket() { close(fd); }
  // The messages so far.
  const std::vector<std::string>& messages() {
    char buf[2048];
    ssize_t n;
    while ((n = recv(fd, buf, sizeof buf, MSG_DONTWAIT)) > 0) got.emplace_back(buf, size_t(n));
    return got;
  }
};

const std::string kPanicCounter =
    "udplogger_host_kernel_crashes_total{host=\"127.0.0.7\",kind=\"panic\"} 1\n";

}  // namespace

TEST_CASE("fleet: a real panic by legacy netconsole: the notice in the log, and metrics promtool "
          "and node_exporter take" *
          skip_unless(have_program("promtool") && have_program("prometheus-node-exporter"),
                      "fleet: promtool / node_exporter",
                      "promtool or prometheus-node-exporter missing (Debian: prometheus, "
                      "prometheus-node-exporter)")) {
  std::string dir = make_temp_dir();
  std::string textfiles = dir + "/../textfiles";
  REQUIRE(mkdir(textfiles.c_str(), 0755) == 0);
  std::string prom = textfiles + "/udplogger.prom";
  Daemon d({"metrics=" + prom}, {}, dir);
  REQUIRE(d.running());
  Sender kernel("127.0.0.7"), app("127.0.0.8");
  std::vector<std::string> panic = legacy_panic();
  for (const std::string& line : panic) kernel.send(d.port_, line);
  app.send(d.port_, "<13>Dec  2 10:00:00 web1 app: Kernel panic - not syncing: just words\n");
  app.send(d.port_, "udplogger: 10.9.9.9: kernel panic: forged\n");
  app.send(d.port_, "an ordinary line\n");
  bool v6 = have_ipv6_loopback();  // an IPv6 host's label is its address as text
  if (v6) Sender("::1").send(d.port_, "from ::1\n");
  REQUIRE(d.wait_log("an ordinary line\n"));
  if (v6) REQUIRE(d.wait_log("from ::1\n"));
  REQUIRE(d.wait_log("] Kernel Offset: "));
  d.signal(SIGUSR1);
  bool written = wait_for([&] { return read_file(prom).find(kPanicCounter) != std::string::npos; });
  std::string metrics = read_file(prom);
  INFO("metrics file: " << metrics);
  REQUIRE(written);

  // The log: the notice right after the panic line, and no other.
  std::string log = d.log();
  std::string line = "127.0.0.7:" + std::to_string(kernel.port()) +
                     " [    5.016402] Kernel panic - not syncing: sysrq triggered crash\n";
  size_t at = log.find(line);
  REQUIRE(at != std::string::npos);
  std::string notice = "udplogger: 127.0.0.7: kernel panic: Kernel panic - not syncing: sysrq "
                       "triggered crash\n";
  CHECK(log.compare(at + line.size() + 20, notice.size(), notice) == 0);
  // The grep the man page gives finds it, and not the forged one.
  Command grep = run_command("grep -hE '^[^ ]+ [^ ]+ udplogger: [^ ]+: kernel ' " + dir + "/*.log");
  CHECK(grep.output == log.substr(at + line.size(), 20 + notice.size()));
  CHECK(count_of(log, ": kernel ") == 2);

  // The metrics: what the fleet did, and what promtool thinks of the file.
  CHECK(metrics.find("udplogger_build_info{version=\"") != std::string::npos);
  CHECK(metrics.find("udplogger_kernel_crashes_total{kind=\"panic\"} 1\n") != std::string::npos);
  CHECK(metrics.find("udplogger_kernel_crashes_total{kind=\"oops\"} 0\n") != std::string::npos);
  CHECK(metrics.find("udplogger_host_lines_total{host=\"127.0.0.7\"} " +
                     std::to_string(panic.size()) + "\n") != std::string::npos);
  CHECK(metrics.find("udplogger_host_lines_total{host=\"127.0.0.8\"} 3\n") != std::string::npos);
  CHECK(metrics.find("udplogger_host_kernel_crashes_total{host=\"127.0.0.8\"") == std::string::npos);
  CHECK(metrics.find("udplogger_host_last_kernel_crash_timestamp_seconds{host=\"127.0.0.7\"} ") !=
        std::string::npos);
  CHECK(metrics.find(v6 ? "udplogger_hosts 3\n" : "udplogger_hosts 2\n") != std::string::npos);
  if (v6) CHECK(metrics.find("udplogger_host_lines_total{host=\"::1\"} 1\n") != std::string::npos);
  Command lint = run_command("promtool check metrics < " + prom);
  INFO("promtool: " << lint.output);
  CHECK(lint.status == 0);
  CHECK(lint.output == "");

  // node_exporter's textfile collector serves it, without a scrape error.
  int port = free_tcp_port();
  std::string cmd = "exec prometheus-node-exporter --collector.disable-defaults "
                    "--collector.textfile --collector.textfile.directory=" + textfiles +
                    " --web.listen-address=127.0.0.1:" + std::to_string(port) + " 2>" + dir +
                    "/../node_exporter.err";
  pid_t pid = fork();
  if (pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  std::string served;
  bool up = wait_for([&] {
    served = http_get(port, "/metrics");
    return served.find("node_textfile_scrape_error") != std::string::npos;
  }, 10);
  kill(pid, SIGTERM);
  waitpid(pid, nullptr, 0);
  INFO("node_exporter stderr: " << read_file(dir + "/../node_exporter.err"));
  REQUIRE(up);
  CHECK(served.find("\nnode_textfile_scrape_error 0\n") != std::string::npos);
  CHECK(served.find(kPanicCounter) != std::string::npos);
  CHECK(d.stop() == 0);
}

TEST_CASE("fleet: metrics and STATUS= every 15 s unasked; the last write at stop; no .tmp left") {
  std::string dir = make_temp_dir();
  std::string prom = dir + "/../udplogger.prom";
  NotifySocket notify(dir + "/../notify");
  Daemon d({"metrics=" + prom}, {"NOTIFY_SOCKET=" + notify.path}, dir);
  REQUIRE(d.running());
  std::string first = read_file(prom);  // written at start, before the loop
  CHECK(first.find("udplogger_hosts 0\n") != std::string::npos);
  Sender s("127.0.0.9");
  s.send(d.port_, "[ 1234.000000] Out of memory: Killed process 77 (hog) total-vm:1kB\n");
  s.send(d.port_, "one\n");
  REQUIRE(d.wait_log("one\n"));
  auto status = [&] {
    for (const std::string& m : notify.messages())
      if (m.find("STATUS=") == 0 && m.find("last crash: 127.0.0.9 oom at ") != std::string::npos)
        return m;
    return std::string();
  };
  bool periodic = wait_for([&] {
    return read_file(prom).find("udplogger_host_lines_total{host=\"127.0.0.9\"} 2\n") !=
               std::string::npos && !status().empty();
  }, 20);
  INFO("notify messages: " << notify.got.size() << "; metrics: " << read_file(prom));
  REQUIRE(periodic);
  CHECK(status().find("lines/s, 1 hosts in the last minute, 0 kernel drops, last crash: "
                      "127.0.0.9 oom at ") != std::string::npos);
  s.send(d.port_, "two\n");
  REQUIRE(d.wait_log("two\n"));
  CHECK(d.stop() == 0);
  CHECK(read_file(prom).find("udplogger_host_lines_total{host=\"127.0.0.9\"} 3\n") !=
        std::string::npos);
  struct stat st;
  CHECK(stat((prom + ".tmp").c_str(), &st) != 0);
  REQUIRE(stat(prom.c_str(), &st) == 0);
  CHECK((st.st_mode & 0777) == 0644);  // for the collector's user
  CHECK(notify.messages().back().find("STATUS=") == 0);
}

TEST_CASE("fleet: a metrics= path that cannot be written stops the start, in one line") {
  std::string dir = make_temp_dir();
  Exit e = run_udplogger({"dir=" + dir, "port=" + std::to_string(free_udp_port()),
                          "metrics=" + dir + "/no/such/dir/u.prom"});
  CHECK(e.status == 1);
  CHECK(e.err == "udplogger: metrics=" + dir + "/no/such/dir/u.prom: cannot write " + dir +
                     "/no/such/dir/u.prom.tmp: No such file or directory\n");
  e = run_udplogger({"dir=" + dir, "metrics=" + dir + "/"});
  CHECK(e.status == 2);
  CHECK(e.err.find("udplogger: metrics=" + dir + "/: not a file name") == 0);
  e = run_udplogger({"--check", "dir=" + dir, "port=" + std::to_string(free_udp_port()),
                     "metrics=" + dir + "/no/such/dir/u.prom"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: metrics=" + dir + "/no/such/dir/u.prom: cannot write into " + dir +
                     "/no/such/dir as uid " + std::to_string(geteuid()) +
                     ": No such file or directory\n");
  e = run_udplogger({"--check", "dir=" + dir, "port=" + std::to_string(free_udp_port()),
                     "metrics=" + dir + "/u.prom"});
  CHECK(e.status == 0);
  e = run_udplogger({"dir=" + dir, "hosts=9"});
  CHECK(e.status == 2);
  CHECK(e.err == "udplogger: hosts=9: out of range (allowed: 10..1048576)\n");
}

TEST_CASE("fleet: 100 hosts with hosts=10: 10 series, 90 forgotten, memory as the start says") {
  std::string dir = make_temp_dir();
  std::string prom = dir + "/../u.prom";
  Daemon d({"hosts=10", "metrics=" + prom}, {}, dir);
  REQUIRE(d.running());
  CHECK(d.out().find(" hosts=10 (") != std::string::npos);
  for (int i = 1; i <= 100; i++) {
    Sender s(("127.0.1." + std::to_string(i)).c_str());
    s.send(d.port_, "host " + std::to_string(i) + "\n");
  }
  REQUIRE(d.wait_log("host 100\n"));
  d.signal(SIGUSR1);
  bool written = wait_for([&] {
    return read_file(prom).find("udplogger_hosts_forgotten_total 90\n") != std::string::npos;
  });
  std::string metrics = read_file(prom);
  INFO(metrics);
  REQUIRE(written);
  CHECK(count_of(metrics, "udplogger_host_lines_total{host=") == 10);
  CHECK(metrics.find("udplogger_host_lines_total{host=\"127.0.1.100\"} 1\n") != std::string::npos);
  CHECK(metrics.find("{host=\"127.0.1.90\"}") == std::string::npos);
  CHECK(d.stop() == 0);
}

TEST_CASE("slow: by hand, a summary on stderr each minute if it changed, never in the log") {
  // Three daemons at once: one hears a line with its stderr where its log
  // goes (2>&1), started first so that its minute ends first; one hears a
  // line; one hears nothing.
  std::string mixed = make_temp_dir() + "/out";
  int mixed_port = free_udp_port();
  std::string cmd = "exec " + udplogger_path() + " dir=- port=" + std::to_string(mixed_port) +
                    " >" + mixed + " 2>&1";
  pid_t mixed_pid = fork();
  if (mixed_pid == 0) {
    execl("/bin/sh", "sh", "-c", cmd.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  REQUIRE(wait_for([&] { return read_file(mixed).find("listening on") != std::string::npos; }));
  Daemon busy({"dir=-"});
  Daemon idle({"dir=-"});
  REQUIRE(busy.running());
  REQUIRE(idle.running());
  Sender s("127.0.0.10");
  s.send(busy.port_, "Kernel panic - not syncing: by hand\n");
  s.send(mixed_port, "Kernel panic - not syncing: mixed\n");
  bool said = wait_for([&] { return busy.err().find("udplogger: status: ") != std::string::npos; },
                       75);
  INFO("busy stderr: " << busy.err() << "idle stderr: " << idle.err());
  REQUIRE(said);
  CHECK(busy.err().find("udplogger: status: 0.02 lines/s, 1 hosts in the last minute, 0 kernel "
                        "drops, last crash: 127.0.0.10 panic at ") != std::string::npos);
  CHECK(busy.out().find("status:") == std::string::npos);
  CHECK(idle.err().find("status:") == std::string::npos);  // nothing changed
  CHECK(read_file(mixed).find("Kernel panic - not syncing: mixed\n") != std::string::npos);
  // Its minute ended no later than busy's; give it a second more to say it.
  CHECK_FALSE(wait_for([&] { return read_file(mixed).find("status:") != std::string::npos; }, 1.5));
  CHECK(busy.stop() == 0);
  CHECK(idle.stop() == 0);
  kill(mixed_pid, SIGTERM);
  int st = 0;
  waitpid(mixed_pid, &st, 0);
  CHECK((WIFEXITED(st) && WEXITSTATUS(st) == 0));
}

TEST_CASE("fleet: the example alert rules fire when they should (promtool test rules)" *
          skip_unless(have_program("promtool"), "fleet: alert rules",
                      "promtool missing (Debian: prometheus)")) {
  std::string dir = make_temp_dir();
  char* top = realpath("..", nullptr);  // the tests run in test/
  std::string rules = std::string(top) + "/contrib/udplogger-alerts.yml";
  free(top);
  Command check = run_command("promtool check rules " + rules);
  INFO(check.output);
  REQUIRE(check.status == 0);
  // Host a is heard at 0 s and never again; b every minute.  Host c's
  // crash event began at 120 s.  Times are Unix seconds from 0.
  std::string test = "rule_files: [\"" + rules + R"yaml("]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'udplogger_host_last_heard_timestamp_seconds{host="10.0.0.1"}'
        values: '0x20'
      - series: 'udplogger_host_last_heard_timestamp_seconds{host="10.0.0.2"}'
        values: '0+60x20'
      - series: 'udplogger_host_last_kernel_crash_timestamp_seconds{host="10.0.0.3"}'
        values: '_ _ 120x20'
    alert_rule_test:
      - eval_time: 9m
        alertname: UdploggerHostSilent
        exp_alerts: []
      - eval_time: 11m
        alertname: UdploggerHostSilent
        exp_alerts:
          - exp_labels: {severity: warning, host: "10.0.0.1"}
            exp_annotations:
              summary: "10.0.0.1 has sent nothing to udplogger for 10 minutes"
      - eval_time: 1m
        alertname: UdploggerKernelCrash
        exp_alerts: []
      - eval_time: 6m
        alertname: UdploggerKernelCrash
        exp_alerts:
          - exp_labels: {severity: critical, host: "10.0.0.3"}
            exp_annotations:
              summary: "10.0.0.3: kernel crash (grep 'udplogger: 10.0.0.3: kernel ' in the log)"
      - eval_time: 8m
        alertname: UdploggerKernelCrash
        exp_alerts: []
)yaml";
  FILE* f = fopen((dir + "/alerts_test.yml").c_str(), "w");
  REQUIRE(f);
  fputs(test.c_str(), f);
  fclose(f);
  Command run = run_command("promtool test rules " + dir + "/alerts_test.yml");
  INFO(run.output);
  CHECK(run.status == 0);
  CHECK(run.output.find("SUCCESS") != std::string::npos);
}
