// Core tests for the fleet: kernel crash events found in lines (the
// kernel's own message formats and two real panics), their notices and
// the follow-up rule, and the host table (hosts=), on a fake clock.
#include <doctest.h>

#include <sstream>
#include <string>
#include <vector>

#include "core_harness.h"
#include "helpers.h"
#include "udplogger.h"

using ul::CrashKind;

namespace {

CrashKind kind_of(const std::string& line, std::string* message = nullptr) {
  size_t start = 0;
  CrashKind k = ul::crash_kind(line.data(), line.size(), &start);
  if (message) *message = line.substr(start);
  return k;
}

// The notices of a capture: the lines whose name is "udplogger:".
std::vector<std::string> notices(const std::string& text) {
  std::vector<std::string> out;
  std::istringstream in(text);
  for (std::string line; std::getline(in, line);)
    if (line.compare(20, 11, "udplogger: ") == 0) out.push_back(line.substr(20));
  return out;
}

// The host's state, brought up to date.
const ul::HostState* host_of(ul::Assembler& a, const in6_addr& addr) {
  a.tally();
  size_t n = 0;
  const ul::HostState* h = a.fleet().all(&n);
  for (size_t i = 0; i < n; i++)
    if (!memcmp(&h[i].addr, &addr, sizeof addr)) return &h[i];
  return nullptr;
}

}  // namespace

TEST_CASE("crash: each kind from the kernel's own first lines") {
  struct Case {
    const char* line;
    CrashKind kind;
  };
  const Case cases[] = {
      {"Kernel panic - not syncing: Fatal exception", CrashKind::panic},
      {"Oops: 0000 [#1] PREEMPT SMP NOPTI", CrashKind::oops},
      {"BUG: unable to handle page fault for address: ffffffffc0a01000", CrashKind::oops},
      {"BUG: kernel NULL pointer dereference, address: 0000000000000000", CrashKind::oops},
      {"general protection fault, probably for non-canonical address 0xdead: 0000 [#1] SMP",
       CrashKind::oops},
      {"kernel BUG at mm/slub.c:4205!", CrashKind::bug},
      {"BUG: scheduling while atomic: swapper/0/0/0x00000002", CrashKind::bug},
      {"BUG: KASAN: use-after-free in foo+0x12/0x40", CrashKind::bug},
      {"WARNING: CPU: 1 PID: 42 at net/core/dev.c:3101 skb_warn_bad_offload+0x8c/0x100",
       CrashKind::warning},
      {"INFO: task kworker/u8:2:123 blocked for more than 120 seconds.", CrashKind::hung_task},
      {"watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [swapper/0:1]", CrashKind::lockup},
      {"NMI watchdog: BUG: soft lockup - CPU#3 stuck for 23s! [a.out:999]", CrashKind::lockup},
      {"watchdog: Watchdog detected hard LOCKUP on cpu 1", CrashKind::lockup},
      {"NMI watchdog: Watchdog detected hard LOCKUP on cpu 2", CrashKind::lockup},
      {"Watchdog detected hard LOCKUP on cpu 0", CrashKind::lockup},
      {"rcu: INFO: rcu_preempt detected stalls on CPUs/tasks:", CrashKind::rcu_stall},
      {"rcu: INFO: rcu_sched self-detected stall on CPU", CrashKind::rcu_stall},
      {"INFO: rcu_sched detected stalls on CPUs/tasks: { 1} (detected by 0)", CrashKind::rcu_stall},
      {"stress-ng invoked oom-killer: gfp_mask=0x140cca(GFP_HIGHUSER_MOVABLE), order=0",
       CrashKind::oom},
      {"Web Content invoked oom-killer: gfp_mask=0x140dca, order=0, oom_score_adj=0",
       CrashKind::oom},
      {"Out of memory: Killed process 1234 (stress-ng) total-vm:1234kB", CrashKind::oom},
      {"abcdefghijklmno invoked oom-killer: gfp_mask=0x140cca, order=0", CrashKind::oom},
      {"a b c d e f g h invoked oom-killer: gfp_mask=0x140cca, order=0", CrashKind::oom},
      {"x invoked oom-killer:", CrashKind::oom},
      {"x invoked oom-killer", CrashKind::none},
      {"abcdefghijklmnop invoked oom-killer: gfp_mask=0x140cca, order=0", CrashKind::none},
      // Not events: follow-up lines, and lines that merely look alike.
      {"---[ end Kernel panic - not syncing: Fatal exception ]---", CrashKind::none},
      {"CPU: 0 PID: 1 Comm: init Not tainted 6.1.0-56-cloud-amd64 #1", CrashKind::none},
      {"Call Trace:", CrashKind::none},
      {"#PF: supervisor read access in kernel mode", CrashKind::none},
      {"oom-kill:constraint=CONSTRAINT_NONE,nodemask=(null)", CrashKind::none},
      {"the kernel said: Kernel panic - not syncing", CrashKind::none},
      {"INFO: task list printed", CrashKind::none},
      {"BUG", CrashKind::none},
      {"", CrashKind::none},
      {"a-very-long-command-name invoked oom-killer:", CrashKind::none},
  };
  for (const Case& c : cases) {
    std::string line = c.line;
    CAPTURE(line);
    CHECK(kind_of(c.line) == c.kind);
  }
  CHECK(std::string(ul::crash_kind_name(CrashKind::hung_task)) == "hung_task");
  CHECK(std::string(ul::crash_kind_words(CrashKind::rcu_stall)) == "RCU stall");
}

TEST_CASE("crash: after a printk time, a level, a caller, or a syslog header tagged kernel") {
  const char* panic = "Kernel panic - not syncing: sysrq triggered crash";
  for (std::string prefix : {"", "[    5.016402] ", "<0>[    5.016402] ", "<0>",
                             "[ 1234.000001][    T1] ", "[    0.000000][ C0] ",
                             "<2>Dec  2 10:00:00 web1 kernel: ",
                             "<2>Dec  2 10:00:00 kernel: [   12.345678] ",
                             "<0>1 2026-12-02T10:00:00.1Z web1 kernel - - - ",
                             "<0>1 2026-12-02T10:00:00Z web1 kernel - - [meta x=\"a] b\"] "}) {
    CAPTURE(prefix);
    std::string message;
    CHECK(kind_of(prefix + panic, &message) == CrashKind::panic);
    CHECK(message == panic);
  }
  // Not from the kernel: another facility (PRI 8 and up: /dev/kmsg writes
  // from user space, syslog from programs) or another tag.
  for (std::string prefix : {"<13>", "<14>[    5.016402] ", "<3>Dec  2 10:00:00 web1 app: ",
                             "<0>1 2026-12-02T10:00:00Z web1 app - - - ",
                             "<2>Dec  2 10:00:00 web1 notkernel: ", "[5.0] x ", "[    T1] "}) {
    CAPTURE(prefix);
    CHECK(kind_of(prefix + panic) == CrashKind::none);
  }
}

TEST_CASE("crash: a real 6.1 panic by legacy netconsole: one notice, right after its line") {
  std::istringstream log(read_file("netconsole/crashes/6.1-legacy-panic.log"));
  Core c;
  std::string expected;
  int lines = 0;
  for (std::string line; std::getline(log, line);) {
    if (line.find(" udplogger: ") != std::string::npos) continue;  // udplogger's own
    std::string text = line.substr(line.find(' ', 20) + 1);  // after "STAMP IP:PORT "
    c.feed("10.1.2.3", 6665, text + "\n", T0);
    expected += "2026-11-22 03:00:00 10.1.2.3:6665 " + text + "\n";
    if (text.find("] Kernel panic - not syncing") != std::string::npos)
      expected += "2026-11-22 03:00:00 udplogger: 10.1.2.3: kernel panic: Kernel panic - not "
                  "syncing: sysrq triggered crash\n";
    lines++;
  }
  REQUIRE(lines == 38);
  CHECK(c.text() == expected);
  const ul::HostState* h = host_of(c.asm_, v4("10.1.2.3"));
  REQUIRE(h);
  CHECK(h->lines == 38);
  CHECK(h->crashes[int(CrashKind::panic)] == 1);
  CHECK(h->last_crash == T0);
  CHECK(c.asm_.stats().crashes[int(CrashKind::panic)] == 1);
  CHECK(c.asm_.fleet().last_crash().kind == CrashKind::panic);
}

TEST_CASE("crash: a real 6.12 panic by extended netconsole: the record, then the notice") {
  std::istringstream log(read_file("netconsole/crashes/6.12-extended-panic.log"));
  Core c;
  uint64_t seq = 1000;
  int records = 0;
  for (std::string line; std::getline(log, line);) {
    if (line.find(" udplogger: ") != std::string::npos) continue;
    std::string text = line.substr(line.find(' ', 20) + 1);  // "<PRI>[sssss.uuuuuu] message"
    unsigned pri = unsigned(std::stoul(text.substr(1)));
    size_t open = text.find('['), dot = text.find('.', open), close = text.find("] ", open);
    uint64_t usec = std::stoull(text.substr(open + 1, dot - open - 1)) * 1000000 +
                    std::stoull(text.substr(dot + 1, close - dot - 1));
    std::string body = text.substr(close + 2);
    c.feed("10.1.2.4", 6666,
           std::to_string(pri) + "," + std::to_string(seq++) + "," + std::to_string(usec) +
               ",-;" + body + "\n",
           T0 + 1);
    records++;
  }
  REQUIRE(records == 31);
  std::string out = c.text();
  std::vector<std::string> got = notices(out);
  REQUIRE(got.size() == 1);
  CHECK(got[0] ==
        "udplogger: 10.1.2.4: kernel panic: Kernel panic - not syncing: sysrq triggered crash");
  std::string panic_line = "10.1.2.4:6666 <0>[    5.436080] Kernel panic - not syncing: sysrq "
                           "triggered crash\n";
  size_t at = out.find(panic_line);
  REQUIRE(at != std::string::npos);
  CHECK(out.compare(at + panic_line.size() + 20, got[0].size(), got[0]) == 0);
  CHECK(host_of(c.asm_, v4("10.1.2.4"))->lines == 31);
}

TEST_CASE("crash: follow-up lines of the same kind within a minute are one event") {
  Core c;
  auto send = [&](const char* text, time_t t) { c.feed("10.0.0.9", 6665, std::string(text) + "\n", T0 + t); };
  send("[  100.000001] BUG: kernel NULL pointer dereference, address: 0000000000000000", 0);
  send("[  100.000002] #PF: supervisor read access in kernel mode", 0);
  send("[  100.000003] Oops: 0000 [#1] PREEMPT SMP NOPTI", 0);  // the same oops
  send("[  100.000004] Kernel panic - not syncing: Fatal exception", 1);  // a new kind
  send("[  200.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [a:1]", 100);
  send("[  222.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 44s! [a:1]", 122);
  send("[  270.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 92s! [a:1]", 170);
  send("[  400.000000] watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [b:2]", 300);  // 130 s on
  std::vector<std::string> got = notices(c.text());
  REQUIRE(got.size() == 4);
  CHECK(got[0] == "udplogger: 10.0.0.9: kernel oops: BUG: kernel NULL pointer dereference, "
                  "address: 0000000000000000");
  CHECK(got[1] == "udplogger: 10.0.0.9: kernel panic: Kernel panic - not syncing: Fatal exception");
  CHECK(got[2].find("kernel lockup: watchdog: BUG: soft lockup - CPU#0 stuck for 22s! [a:1]") !=
        std::string::npos);
  CHECK(got[3].find("[b:2]") != std::string::npos);
  const ul::HostState* h = host_of(c.asm_, v4("10.0.0.9"));
  CHECK(h->crashes[int(CrashKind::oops)] == 1);
  CHECK(h->crashes[int(CrashKind::panic)] == 1);
  CHECK(h->crashes[int(CrashKind::lockup)] == 2);
  CHECK(h->last_crash == T0 + 300);
}

TEST_CASE("crash: events are per host; a sender cannot forge one for another") {
  Core c;
  // The forged text is written as the sender's line; the notice names its
  // real address (not the port's sender name, not the text's).
  c.feed("10.0.0.1", 5000, "udplogger: 10.9.9.9: kernel panic: Kernel panic - not syncing\n", T0);
  c.feed("10.0.0.1", 5000, "Kernel panic - not syncing: 10.9.9.9 crashed\n", T0);
  c.feed("10.0.0.2", 5001, "Kernel panic - not syncing: x\n", T0);  // another host: its own
  c.feed("10.0.0.1", 5002, "Kernel panic - not syncing: again\n", T0);  // same host, other port
  std::string out = c.text();
  CHECK(out.find("2026-11-22 03:00:00 10.0.0.1:5000 udplogger: 10.9.9.9: kernel panic: ") == 0);
  std::vector<std::string> got = notices(out);
  REQUIRE(got.size() == 2);
  CHECK(got[0] == "udplogger: 10.0.0.1: kernel panic: Kernel panic - not syncing: 10.9.9.9 crashed");
  CHECK(got[1] == "udplogger: 10.0.0.2: kernel panic: Kernel panic - not syncing: x");
  CHECK(host_of(c.asm_, v4("10.9.9.9")) == nullptr);
  // Control bytes in the crash line are escaped in the notice too.
  c.feed("10.0.0.3", 5000, std::string("Oops: \x1b[2J\r", 11) + "\n", T0);
  got = notices(c.text());
  REQUIRE(got.size() == 3);
  CHECK(got[2] == "udplogger: 10.0.0.3: kernel oops: Oops: \\x1b[2J");
}

TEST_CASE("crash: a line joined from pieces, an IPv6 host, split=host puts the notice in its file") {
  ul::Options o;
  REQUIRE(parse({"split=host"}, &o) == ul::ParseStatus::ok);
  Core c(o);
  c.feed(v6("2001:db8::7"), 6665, "[   5.016402] Kernel pa", at(T0));
  c.feed(v6("2001:db8::7"), 6665, "nic - not syncing: split\n", at(T0));
  c.text();
  REQUIRE(c.cap.batches.size() >= 1);
  CHECK(c.cap.batches.back().first == "2001:db8::7");
  CHECK(c.cap.batches.back().second.find("udplogger: 2001:db8::7: kernel panic: Kernel panic - "
                                         "not syncing: split\n") != std::string::npos);
}

TEST_CASE("fleet: hosts= bounds the table; the host heard longest ago is forgotten, counted") {
  ul::Options o;
  REQUIRE(parse({"hosts=10"}, &o) == ul::ParseStatus::ok);
  Core c(o);
  for (int i = 0; i < 10; i++)
    c.feed(("10.0.1." + std::to_string(i)).c_str(), 514, "x\n", T0 + i);
  c.feed("10.0.1.0", 515, "y\n", T0 + 20);  // heard again (another port): kept
  c.feed("10.0.2.1", 514, "z\n", T0 + 21);  // forgets 10.0.1.1, heard longest ago
  c.feed("10.0.2.2", 514, "z\n", T0 + 22);  // and 10.0.1.2
  size_t n = 0;
  c.asm_.tally();
  c.asm_.fleet().all(&n);
  CHECK(n == 10);
  CHECK(c.asm_.stats().hosts_forgotten == 2);
  CHECK(host_of(c.asm_, v4("10.0.1.1")) == nullptr);
  CHECK(host_of(c.asm_, v4("10.0.1.2")) == nullptr);
  c.asm_.tally();  // their idle senders do not take them back
  CHECK(c.asm_.stats().hosts_forgotten == 2);
  const ul::HostState* h = host_of(c.asm_, v4("10.0.1.0"));
  REQUIRE(h);
  CHECK(h->lines == 2);  // both ports
  CHECK(h->last_heard == T0 + 20);
  CHECK(c.asm_.fleet().heard_since(T0 + 9) == 4);  // 10.0.1.9, .0, 10.0.2.1, .2
  // A sender whose host was forgotten takes a slot again when it sends.
  c.feed("10.0.1.1", 514, "back\n", T0 + 30);
  CHECK(host_of(c.asm_, v4("10.0.1.1"))->lines == 1);
  CHECK(c.asm_.stats().hosts_forgotten == 3);
}

TEST_CASE("fleet: records missing by SEQ are counted for their host") {
  Core c;
  c.feed("10.0.0.5", 6666, "6,100,5000000,-;one\n", T0);
  c.feed("10.0.0.5", 6666, "6,104,5000001,-;two\n", T0);
  c.feed("10.0.0.6", 6666, "6,7,5000001,-;other\n", T0);
  CHECK(host_of(c.asm_, v4("10.0.0.5"))->missing == 3);
  CHECK(host_of(c.asm_, v4("10.0.0.6"))->missing == 0);
  CHECK(c.asm_.stats().missing == 3);
}

TEST_CASE("metrics: label values are escaped as the text format wants") {
  char out[64];
  CHECK(ul::escape_label_value("2001:db8::1", out, sizeof out) == 11);
  CHECK(std::string(out) == "2001:db8::1");
  ul::escape_label_value("a\\b\"c\nd", out, sizeof out);
  CHECK(std::string(out) == "a\\\\b\\\"c\\nd");
  CHECK(ul::escape_label_value("\"\"\"\"", out, 6) == 4);  // cut between escapes, never inside
  CHECK(std::string(out) == "\\\"\\\"");
}

TEST_CASE("fleet: a sender's lines reach its host before its slot goes to another (clients=)") {
  ul::Options o;
  REQUIRE(parse({"clients=10"}, &o) == ul::ParseStatus::ok);
  Core c(o);
  for (int port = 1000; port < 1025; port++) c.feed("10.0.0.1", uint16_t(port), "x\ny\n", T0);
  CHECK(c.asm_.stats().senders_reused == 15);
  const ul::HostState* h = host_of(c.asm_, v4("10.0.0.1"));
  REQUIRE(h);
  CHECK(h->lines == 50);
  CHECK(h->last_heard == T0);
}
