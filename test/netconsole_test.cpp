// The real netconsole captures through the core and through the daemon:
// every record the kernel logged must come out as readable text.
#include <arpa/inet.h>
#include <doctest.h>
#include <stdlib.h>
#include <string.h>

#include <algorithm>

#include <map>
#include <memory>
#include <signal.h>
#include <string>
#include <unordered_set>
#include <vector>

#include "core_harness.h"
#include "helpers.h"
#include "netconsole.h"
#include "udplogger.h"

namespace {

// Feeds datagrams to a fresh core as from 127.0.0.1:6665; returns the log.
std::string replay(const std::vector<std::string>& datagrams, ul::Options o = ul::Options(),
                   ul::Stats* stats = nullptr) {
  Core c(o, 65536);
  long i = 0;
  for (const std::string& d : datagrams) c.feed("127.0.0.1", 6665, d, at(T0, i++ * 1000));
  c.asm_.expire(at(T0 + 1), true);
  if (stats) *stats = c.asm_.stats();
  return c.text();
}

// The lines of a log without their time stamps.
std::unordered_set<std::string> lines_after_stamp(const std::string& log) {
  std::unordered_set<std::string> set;
  size_t i = 0;
  while (i < log.size()) {
    size_t e = log.find('\n', i);
    set.insert(log.substr(i + 20, e - i - 20));
    i = e + 1;
  }
  return set;
}

bool is_extended(const std::string& set) { return set.find("legacy") == std::string::npos; }

// The first SEQ in an extended dump: records before it were logged before
// netconsole started sending.
uint64_t first_seq(const std::vector<std::string>& dump) {
  ul::ExtHeader h;
  REQUIRE(ul::parse_ext_header(dump[0].data(), dump[0].size(), &h));
  return h.seq;
}

// 6.12 cuts a record at 2048 bytes and sends it without its newline.
bool truncated_by_kernel(const std::string& set, const KernelRecord& r) {
  return set.compare(0, 4, "6.12") == 0 && r.text.find(":OPT-LONGX ") != std::string::npos;
}

// Checks that every record of the capture is in the log; returns how many
// lines were checked.
size_t check_capture(const std::string& set, const std::string& log, const std::string& sender) {
  size_t checked = 0;
  std::vector<std::string> dump = load_dump(set);
  if (is_extended(set)) {
    std::unordered_set<std::string> lines = lines_after_stamp(log);
    uint64_t first = first_seq(dump);
    for (const KernelRecord& r : load_kmsg(set)) {
      if (r.seq < first) continue;
      for (const std::string& want : expected_lines(r)) {
        checked++;
        if (truncated_by_kernel(set, r)) {
          CHECK_MESSAGE(log.find(sender + " " + want.substr(0, 400)) != std::string::npos,
                        set << " seq " << r.seq);
          continue;
        }
        CHECK_MESSAGE(lines.count(sender + " " + want) == 1, set << " seq " << r.seq << ": " << want);
      }
      for (const std::string& d : r.dict) {
        checked++;
        CHECK_MESSAGE(lines.count(sender + " " + log_escape(d)) == 1, set << " seq " << r.seq << ": " << d);
      }
    }
  } else {
    // Legacy text carries no sequence numbers: every line the kernel
    // logged (from the first one sent) appears inside one log line.
    for (const KernelRecord& r : load_kmsg(set)) {
      if (truncated_by_kernel(set, r)) {
        checked++;
        CHECK_MESSAGE(log.find(log_escape(r.text.substr(0, 400))) != std::string::npos, set);
        continue;
      }
      size_t i = 0;
      for (;;) {
        size_t e = r.text.find('\n', i);
        std::string piece = log_escape(r.text.substr(i, e == std::string::npos ? e : e - i));
        checked++;
        CHECK_MESSAGE(log.find(piece + "\n") != std::string::npos, set << " seq " << r.seq << ": " << piece);
        if (e == std::string::npos) break;
        i = e + 1;
      }
    }
  }
  return checked;
}

}  // namespace

TEST_CASE("netconsole: every capture decodes to the kernel's own text (core)") {
  for (const std::string set : kCaptureSets) {
    CAPTURE(set);
    ul::Stats st;
    std::string log = replay(load_dump(set), ul::Options(), &st);
    size_t checked = check_capture(set, log, "127.0.0.1:6665");
    CHECK(checked > 900);
    CHECK(log.find("udplogger: 127.0.0.1:6665: record") == std::string::npos);
    CHECK(log.find("not received") == std::string::npos);
    CHECK(st.malformed == 0);
    CHECK(st.incomplete == 0);
    if (is_extended(set)) {
      CHECK(st.records > 900);
      CHECK(st.reassembled >= 4);
    }
  }
}

// ------------------------------------------------------ crafted datagrams

namespace {

std::string frag(uint64_t seq, unsigned off, unsigned total, const std::string& payload,
                 const std::string& release = "") {
  return release + (release.empty() ? "" : ",") + "14," + std::to_string(seq) +
         ",5000000,-,ncfrag=" + std::to_string(off) + "/" + std::to_string(total) + ";" + payload;
}

std::string rec(uint64_t seq, const std::string& body, const std::string& release = "") {
  return release + (release.empty() ? "" : ",") + "6," + std::to_string(seq) + ",1234567,-;" +
         body + "\n";
}

// A record of n escaped bytes cut into fragments of `size`.
std::vector<std::string> fragments_of(uint64_t seq, const std::string& text, size_t size) {
  std::vector<std::string> out;
  for (size_t off = 0; off < text.size(); off += size)
    out.push_back(frag(seq, unsigned(off), unsigned(text.size()), text.substr(off, size)));
  return out;
}

}  // namespace

TEST_CASE("ext header: what is and what is not a header") {
  ul::ExtHeader h;
  std::string d = "6.12.117+deb12-cloud-amd64,12,374,6370715,-,ncfrag=969/1970;body";
  REQUIRE(ul::parse_ext_header(d.data(), d.size(), &h));
  CHECK(std::string(h.release, h.release_len) == "6.12.117+deb12-cloud-amd64");
  CHECK(h.pri == 12);
  CHECK(h.seq == 374);
  CHECK(h.usec == 6370715);
  CHECK(h.flag == '-');
  CHECK(h.fragment);
  CHECK(h.frag_off == 969);
  CHECK(h.frag_total == 1970);
  CHECK(d.substr(h.body) == "body");
  d = "4,1242,6020383,c;Sched Debug";
  REQUIRE(ul::parse_ext_header(d.data(), d.size(), &h));
  CHECK(h.flag == 'c');
  CHECK(!h.fragment);
  CHECK(h.release_len == 0);
  d = "14,1,2,-,caller=T1;x\n";  // unknown fields are skipped
  CHECK(ul::parse_ext_header(d.data(), d.size(), &h));
  for (const char* bad : {"[    5.171775] 12,34,567,-;text", "12,34,567;x", "12,34,567,x;x",
                          "1024,1,1,-;x", "12,34,,-;x", "a b,12,34,567,-;x", ",12,34,567,-;x",
                          "12,34,567,-,ncfrag=1;x", "12,34,567,-", "",
                          "99999999999999999999999,1,1,-;x", "1,99999999999999999999999,1,-;x"})
    CHECK_MESSAGE(!ul::parse_ext_header(bad, strlen(bad), &h), bad);
}

TEST_CASE("ext: kernel escapes decoded once; control bytes escaped again") {
  std::string log = replay({rec(1, "a\\x5cx41 \\x09tab \\x1b[31m \\xe2\\x9c\\x93 \\x7f \\xzz \\x4")});
  CHECK(log == "2026-11-22 03:00:00 127.0.0.1:6665 <6>[    1.234567] a\\x41 \ttab \\x1b[31m \xe2\x9c\x93 \\x7f \\xzz \\x4\n");
}

TEST_CASE("ext: embedded newlines split a record; dictionary lines follow") {
  std::string log = replay({rec(1, "one\\x0atwo") + " SUBSYSTEM=net\n DEVICE=n2\n"});
  CHECK(log ==
        "2026-11-22 03:00:00 127.0.0.1:6665 <6>[    1.234567] one\n"
        "2026-11-22 03:00:00 127.0.0.1:6665 <6>[    1.234567] two\n"
        "2026-11-22 03:00:00 127.0.0.1:6665  SUBSYSTEM=net\n"
        "2026-11-22 03:00:00 127.0.0.1:6665  DEVICE=n2\n");
}

TEST_CASE("ext: fragments out of order and duplicated reassemble once") {
  std::string body = "nct:LONG " + std::string(2000, 'x') + "\\xe6\\x97\\xa5 end\n SUBSYSTEM=x\n";
  auto f = fragments_of(7, body, 701);  // cuts inside the escapes
  REQUIRE(f.size() == 3);
  ul::Stats st;
  std::string log = replay({f[2], f[0], f[2], f[1], f[0]}, ul::Options(), &st);
  CHECK(count_of(log, "<14>[    5.000000] nct:LONG " + std::string(2000, 'x') + "\xe6\x97\xa5 end\n") == 1);
  CHECK(count_of(log, "127.0.0.1:6665  SUBSYSTEM=x\n") == 1);
  CHECK(st.reassembled == 1);
  CHECK(st.records == 1);
  CHECK(st.duplicates == 1);
  CHECK(count_of(log, "late or duplicate fragment of seq 7") == 1);
  CHECK(st.incomplete == 0);
}

TEST_CASE("ext: a record with fragments missing is written with marks after timeout") {
  std::string body = std::string(900, 'a') + std::string(900, 'b') + std::string(900, 'c') + "\n";
  auto f = fragments_of(3, body, 900);
  ul::Options o;
  o.timeout = 5;
  Core c(o, 65536);
  c.feed("127.0.0.1", 6665, f[0], T0);
  c.feed("127.0.0.1", 6665, f[3], T0);
  CHECK(c.asm_.next_deadline().tv_sec == T0 + 5);
  c.asm_.expire(at(T0 + 4));
  CHECK(c.text() == "");
  c.asm_.expire(at(T0 + 5));
  CHECK(c.text() ==
        "2026-11-22 03:00:05 udplogger: 127.0.0.1:6665: record seq 3 incomplete after timeout=: "
        "1800 of 2701 bytes missing\n"
        "2026-11-22 03:00:00 127.0.0.1:6665 <14>[    5.000000] " + std::string(900, 'a') +
        "[... 1800 bytes missing ...]\n");
  CHECK(c.asm_.stats().incomplete == 1);
  CHECK(c.asm_.next_deadline().tv_sec == 0);
}

TEST_CASE("ext: bogus ncfrag values are written as text with a notice") {
  ul::Stats st;
  std::string log = replay({frag(1, 20, 10, "offset past total"), frag(2, 0, 0, "total zero"),
                            frag(3, 0, 100000000, "total huge"), frag(4, 5, 10, "too long for it"),
                            frag(5, 0, 100, "a"), frag(5, 50, 200, "total changed")},
                           ul::Options(), &st);
  CHECK(st.malformed == 5);
  CHECK(count_of(log, "malformed fragment (seq 1, ncfrag=20/10, 17 bytes): written as text") == 1);
  CHECK(count_of(log, "127.0.0.1:6665 14,1,5000000,-,ncfrag=20/10;offset past total\n") == 1);
  CHECK(count_of(log, "ncfrag=0/0;total zero\n") == 1);
  CHECK(count_of(log, "ncfrag=0/100000000;total huge\n") == 1);
  CHECK(count_of(log, "ncfrag=5/10;too long for it\n") == 1);
  CHECK(count_of(log, "fragment of seq 5 says 200 bytes in all, earlier ones 100") == 1);
  CHECK(count_of(log, "ncfrag=50/200;total changed\n") == 1);
  // seq 5's first fragment is written, incomplete, at exit.
  CHECK(count_of(log, "record seq 5 incomplete at exit: 99 of 100 bytes missing") == 1);
}

TEST_CASE("ext: a 64 KiB garbage datagram with a valid header") {
  std::string junk = "12,1,1,-;";
  for (int i = 0; junk.size() < 65507; i++) junk += char(i * 7 % 256);
  ul::Options o;
  o.wbuf = 4096;
  ul::Stats st;
  std::string log = replay({junk, junk.substr(0, 40000), rec(2, "after")}, o, &st);
  CHECK(count_of(log, "<6>[    1.234567] after\n") == 1);
  CHECK(st.records == 3);
  CHECK(count_of(log, "seq 1 again after seq 1") == 1);
  // Every line is short and holds no raw control bytes.
  size_t i = 0, longest = 0;
  while (i < log.size()) {
    size_t e = log.find('\n', i);
    longest = std::max(longest, e - i);
    for (size_t j = i; j < e; j++) CHECK_FALSE(ul::needs_escape((unsigned char)log[j]));
    i = e + 1;
  }
  CHECK(longest < 4096 * 4 + 100);
}

TEST_CASE("ext: SEQ gaps, late records, duplicates and restarts") {
  ul::Stats st;
  std::string log = replay({rec(10, "ten"), rec(11, "eleven"), rec(15, "fifteen"), rec(13, "late"),
                            rec(13, "dup"), rec(16, "sixteen"), rec(0, "rebooted"), rec(1, "one")},
                           ul::Options(), &st);
  size_t gap = log.find("udplogger: 127.0.0.1:6665: 3 records not received: seq 12..14; "
                        "lost on the way or filtered by the sender's console loglevel\n");
  REQUIRE(gap != std::string::npos);
  CHECK(gap < log.find("fifteen"));
  CHECK(log.find("late\n") > log.find("fifteen"));  // written on arrival
  // A SEQ seen before is written too, with a notice; the old numbering
  // going on after it (16 after 15) is no gap.
  CHECK(count_of(log, "seq 13 again after seq 15: sender restarted, or a duplicated datagram") == 1);
  CHECK(count_of(log, "] dup\n") == 1);
  CHECK(count_of(log, "sequence restarted at seq 0 after seq 16: sender rebooted?") == 1);
  CHECK(count_of(log, "not received") == 1);
  CHECK(st.missing == 3);
  CHECK(st.records == 8);
}

TEST_CASE("ext: a sender that reboots early reuses SEQs: nothing is dropped") {
  std::string log = replay({rec(0, "boot1 a"), rec(1, "boot1 b"), rec(2, "boot1 c"), rec(0, "boot2 a"),
                            rec(1, "boot2 b"), rec(2, "boot2 c"), rec(3, "boot2 d")});
  for (const char* line : {"boot1 a", "boot1 b", "boot1 c", "boot2 a", "boot2 b", "boot2 c", "boot2 d"})
    CHECK(count_of(log, std::string("] ") + line + "\n") == 1);
  CHECK(count_of(log, "seq 0 again after seq 2") == 1);
  CHECK(count_of(log, "not received") == 0);
}

TEST_CASE("ext: msgid gaps are losses in transit") {
  ul::Stats st;
  std::string log = replay({rec(1, "a") + " msgid=100\n", rec(2, "b") + " msgid=101\n",
                            rec(9, "c") + " msgid=104\n"},
                           ul::Options(), &st);
  CHECK(count_of(log, "2 records lost in transit: msgid 102..103") == 1);
  CHECK(count_of(log, "6 records not received: seq 3..8; filtered by the sender's console loglevel") == 1);
  CHECK(st.lost_in_transit == 2);
}

TEST_CASE("ext: the kernel release is a notice when first seen and when it changes") {
  std::string log = replay({rec(1, "a", "6.1.0-56-cloud-amd64"), rec(2, "b", "6.1.0-56-cloud-amd64"),
                            frag(3, 0, 2, "c\n", "6.1.0-56-cloud-amd64"), rec(1, "d", "6.12.117+deb12")});
  CHECK(count_of(log, "udplogger: 127.0.0.1:6665: kernel release 6.1.0-56-cloud-amd64\n") == 1);
  CHECK(count_of(log, "kernel release changed from 6.1.0-56-cloud-amd64 to 6.12.117+deb12\n") == 1);
  CHECK(count_of(log, "6.1.0") == 2);  // not repeated on the lines
  CHECK(count_of(log, "] a\n") + count_of(log, "] b\n") + count_of(log, "] c\n") +
            count_of(log, "] d\n") == 4);
}

TEST_CASE("ext: a header inside a line is text; a sender may switch modes") {
  std::string log = replay({"[    5.1] SEMI key ", "12,34,567,-;not-a-header\n", rec(1, "now extended"),
                            "[    1.0] legacy again after reboot\n"});
  CHECK(log ==
        "2026-11-22 03:00:00 127.0.0.1:6665 [    5.1] SEMI key 12,34,567,-;not-a-header\n"
        "2026-11-22 03:00:00 127.0.0.1:6665 <6>[    1.234567] now extended\n"
        "2026-11-22 03:00:00 127.0.0.1:6665 [    1.0] legacy again after reboot\n");
}

TEST_CASE("ext: ext=raw writes extended datagrams as udplogger 1.1 did") {
  ul::Options o;
  o.ext = ul::Ext::raw;
  std::string log = replay({rec(1, "x\\x09y")}, o);
  CHECK(log == "2026-11-22 03:00:00 127.0.0.1:6665 6,1,1234567,-;x\\x09y\n");
}

TEST_CASE("ext: reassembly memory is bounded: per sender and in all") {
  ul::Options o;
  o.frags = 4;
  ul::Stats st;
  std::vector<std::string> d;
  for (int seq = 1; seq <= 6; seq++) d.push_back(frag(uint64_t(seq), 0, 10, "part"));
  std::string log = replay(d, o, &st);
  CHECK(count_of(log, "with newer records of its sender in reassembly") == 2);
  CHECK(count_of(log, "incomplete at exit") == 4);
  CHECK(count_of(log, "part[... 6 bytes missing ...]\n") == 6);
  CHECK(st.incomplete == 6);
}

TEST_CASE("notices: kernel drops and statistics") {
  Core c(ul::Options(), 65536);
  for (uint32_t dropped : {0u, 0u, 17u, 0u, 0u, 3u}) c.feed(v4("10.0.0.1"), 1, "", at(T0), dropped);
  CHECK(c.text() ==
        "2026-11-22 03:00:00 udplogger: 17 datagrams dropped by the kernel: receive buffer full (rbuf=8388608)\n"
        "2026-11-22 03:00:00 udplogger: 3 datagrams dropped by the kernel: receive buffer full (rbuf=8388608)\n");
  char line[512];
  c.asm_.format_stats(line, sizeof line);
  CHECK(std::string(line).find("statistics: datagrams=6 bytes=0 ") == 0);
  CHECK(std::string(line).find(" kernel_drops=20 ") != std::string::npos);
}

// ------------------------------------------------------------ the daemon

TEST_CASE("daemon: every capture replayed over loopback reads as the kernel logged it") {
  Daemon d;
  REQUIRE(d.running());
  std::map<std::string, std::unique_ptr<Sender>> senders;
  for (const std::string set : kCaptureSets) {
    senders[set].reset(new Sender());
    for (const std::string& dg : load_dump(set)) senders[set]->send(d.port_, dg);
  }
  // Each capture ends with its END record; then stop to write what is left.
  REQUIRE(wait_for([&] { return count_of(d.log(), ":END\n") == 7; }));
  REQUIRE(d.stop() == 0);
  std::string log = d.log();
  for (const std::string set : kCaptureSets) {
    CAPTURE(set);
    CHECK(check_capture(set, log, "127.0.0.1:" + std::to_string(senders[set]->port())) > 900);
  }
  CHECK(log.find(": record seq ") == std::string::npos);
  CHECK(log.find("not received") == std::string::npos);
  CHECK(log.find("malformed fragment") == std::string::npos);
  CHECK(log.find("dropped by the kernel") == std::string::npos);
  CHECK(count_of(log, "kernel release 6.12.117+deb12-cloud-amd64\n") == 2);
}

TEST_CASE("daemon: after timeout= a partial line and a record missing fragments are written") {
  Daemon d({"timeout=5"});
  REQUIRE(d.running());
  Sender s, t;
  auto f = fragments_of(42, std::string(1000, 'x') + std::string(1000, 'y') + "tail\n", 1000);
  double sent = now_seconds();
  s.send(d.port_, f[2]);
  s.send(d.port_, f[0]);
  t.send(d.port_, "waiting for a newline");
  REQUIRE(d.wait_log("waiting for a newline\n", 10));
  double waited = now_seconds() - sent;
  CHECK(waited >= 4.5);
  CHECK(waited < 7.5);
  REQUIRE(d.wait_log("bytes missing ...]", 3));
  std::string log = d.log();
  CHECK(count_of(log, "udplogger: 127.0.0.1:" + std::to_string(s.port()) +
                          ": record seq 42 incomplete after timeout=: 1000 of 2005 bytes missing\n") == 1);
  CHECK(count_of(log, std::string(1000, 'x') + "[... 1000 bytes missing ...]tail\n") == 1);
}

// The drops column of the dual-stack socket bound to port, /proc/net/udp6.
static size_t udp6_drops(int port) {
  char hexport[8];
  snprintf(hexport, sizeof hexport, ":%04X ", port);
  std::string table = read_file("/proc/net/udp6");
  size_t p = table.find(hexport);
  REQUIRE(p != std::string::npos);
  size_t e = table.find('\n', p);
  size_t b = table.rfind(' ', e - 1);
  return std::stoul(table.substr(b + 1, e - b - 1));
}

TEST_CASE("daemon: datagrams the kernel dropped are counted in the log" *
          skip_unless(have_ipv6_sockets(), "daemon: kernel drops",
                      "no IPv6 sockets: the drop counter is read from /proc/net/udp6")) {
  Daemon d({"rbuf=65536"});
  REQUIRE(d.running());
  Sender s;
  d.signal(SIGSTOP);
  const int sent = 3000;
  for (int i = 0; i < sent; i++)
    s.send(d.port_, "drop-test " + std::to_string(i) + " " + std::string(150, '.') + "\n");
  d.signal(SIGCONT);
  // No datagram follows the burst to carry the last drops: the daemon reads
  // the socket's counter itself when it goes idle.
  auto counted = [&] {
    std::string log = d.log();
    return count_of(log, "drop-test ") + kernel_drops_in(log);
  };
  REQUIRE(wait_for([&] { return counted() == size_t(sent); }, 10));
  size_t socket_drops = udp6_drops(d.port_);
  REQUIRE(d.stop() == 0);
  std::string log = d.log();
  size_t received = count_of(log, "drop-test ");
  size_t dropped = kernel_drops_in(log);
  MESSAGE("sent " << sent << ", received " << received << ", kernel dropped " << dropped);
  CHECK(dropped > 0);
  CHECK(received + dropped == size_t(sent));
  CHECK(dropped == socket_drops);  // the kernel's own count for the socket
  CHECK(log.find("receive buffer full (rbuf=65536)") != std::string::npos);
  CHECK(d.err().find("kernel_drops=" + std::to_string(dropped) + " ") != std::string::npos);
}

TEST_CASE("daemon: SIGUSR1 writes statistics into the log and on stderr") {
  Daemon d;
  REQUIRE(d.running());
  Sender s;
  s.send(d.port_, "plain line\n");
  s.send(d.port_, rec(5, "a record"));
  REQUIRE(d.wait_log("a record\n"));
  d.signal(SIGUSR1);
  REQUIRE(d.wait_log("udplogger: statistics: "));
  CHECK(d.log().find("udplogger: statistics: datagrams=2 bytes=") != std::string::npos);
  CHECK(d.log().find(" lines=2 records=1 ") != std::string::npos);
  REQUIRE(wait_for([&] { return d.err().find("udplogger: statistics: datagrams=2") != std::string::npos; }));
  CHECK(d.stop() == 0);
  CHECK(count_of(d.log(), "udplogger: statistics:") == 1);
  CHECK(count_of(d.log(), "udplogger: stopped by SIGTERM; statistics: datagrams=2 ") == 1);
}

TEST_CASE("ext: overlapping fragments at odd offsets count each byte once") {
  std::string body = std::string(60, 'p') + std::string(39, 'q') + "\n";
  ul::Stats st;
  std::string log = replay({frag(9, 30, 100, body.substr(30, 41)), frag(9, 0, 100, body.substr(0, 37)),
                            frag(9, 3, 100, body.substr(3, 5)), frag(9, 71, 100, body.substr(71))},
                           ul::Options(), &st);
  CHECK(count_of(log, "] " + body) == 1);
  CHECK(st.reassembled == 1);
  CHECK(st.incomplete == 0);
}

TEST_CASE("hostile input: random bytes, sizes and headers never break the log") {
  // A fixed seed: the same 20000 datagrams every run.
  uint64_t state = 0x9e3779b97f4a7c15ULL;
  auto rnd = [&] {
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
  };
  const char* heads[] = {"", "6,1,1,-;", "12,", "4,9,9,c,ncfrag=", "6.1.0,14,3,3,-,ncfrag=0/900;",
                         "14,5,5,-,ncfrag=10/20;", "\\x", "6,7,7,-;\\x0", " KEY=v\n"};
  ul::Options o;
  o.clients = 10;
  o.frags = 4;
  o.wbuf = 1024;
  Core c(o, 8192);
  std::string text;
  for (int i = 0; i < 20000; i++) {
    std::string d = heads[rnd() % 9];
    if (rnd() % 4 == 0 && d.find("ncfrag=") != std::string::npos && d.back() == '=')
      d += std::to_string(rnd() % 3000) + "/" + std::to_string(rnd() % 3000) + ";";
    size_t len = rnd() % 20 == 0 ? size_t(rnd() % 65508) : size_t(rnd() % 300);
    for (size_t j = d.size(); j < len; j++) {
      uint64_t r = rnd() % 16;
      d += r == 0 ? '\n' : r == 1 ? '\\' : r == 2 ? char(rnd() % 32) : char(rnd() % 256);
    }
    c.feed(("10.0.0." + std::to_string(1 + rnd() % 20)).c_str(), uint16_t(rnd() % 3), d,
           at(T0 + i / 1000, long(i % 1000) * 1000000));
    if (i % 997 == 0) c.asm_.expire(at(T0 + i / 1000 + 20));
    if (i % 1000 == 999) {
      text += c.text();
      c.cap.text.clear();
    }
  }
  c.asm_.expire(at(T0 + 100), true);
  text += c.text();
  // Every line has a prefix, is short and holds no raw control byte.
  size_t lines = 0, i = 0, bad = 0;
  while (i < text.size()) {
    size_t e = text.find('\n', i);
    if (e == std::string::npos) e = text.size();  // unterminated: counted bad below
    bool ok = e < text.size() && text.compare(i, 4, "2026") == 0 && e - i < 4 * 1024 + 120;
    for (size_t j = i; j < e; j++) ok = ok && !ul::needs_escape((unsigned char)text[j]);
    if (!ok && bad++ < 3) MESSAGE("bad line: " << text.substr(i, std::min<size_t>(e - i, 200)));
    lines++;
    i = e + 1;
  }
  CHECK(bad == 0);
  CHECK(lines > 20000);
  CHECK(c.asm_.senders() == 10);
}

TEST_CASE("ext: a sender pushed out of a full table writes its records in reassembly") {
  ul::Options o;
  o.clients = 10;
  Core c(o);
  c.feed("10.9.9.9", 6665, frag(77, 0, 20, "first half"), T0);
  for (int i = 0; i < 10; i++) c.feed(("10.0.0." + std::to_string(i + 1)).c_str(), 1, "x\n", T0 + 1);
  std::string log = c.text();
  CHECK(count_of(log, "udplogger: 10.9.9.9:6665: record seq 77 incomplete as its sender's slot was "
                      "reused (clients=): 10 of 20 bytes missing\n") == 1);
  CHECK(count_of(log, "10.9.9.9:6665 <14>[    5.000000] first half[... 10 bytes missing ...]\n") == 1);
  CHECK(c.asm_.stats().senders_reused == 1);
}

TEST_CASE("ext: one host on many ports cannot push another sender's record out of reassembly") {
  ul::Options o;  // frags=64
  Core c(o);
  c.feed("10.1.1.1", 6665, frag(500, 0, 10, "victim"), at(T0));
  for (int port = 1; port <= 64; port++)  // the attack: 64 one-byte fragments
    c.feed("10.6.6.6", uint16_t(port), frag(uint64_t(port), 0, 100, "x"), at(T0, port));
  c.feed("10.1.1.1", 6665, frag(500, 6, 10, "-ok\n"), at(T0 + 1));
  std::string log = c.text();
  CHECK(count_of(log, "10.1.1.1:6665 <14>[    5.000000] victim-ok\n") == 1);
  CHECK(log.find("10.1.1.1:6665: record seq 500 incomplete") == std::string::npos);
  CHECK(count_of(log, "incomplete with newer records of its sender address in reassembly") == 60);
}

TEST_CASE("ext: a late fragment of a record written incomplete is written as its own piece") {
  ul::Options o;
  o.timeout = 5;
  Core c(o);
  auto f = fragments_of(42, std::string(1000, 'x') + std::string(1000, 'y') + "tail\n", 1000);
  c.feed("10.0.0.1", 1, f[0], T0);
  c.feed("10.0.0.1", 1, f[2], T0);
  c.asm_.expire(at(T0 + 5));
  c.feed("10.0.0.1", 1, f[1], T0 + 6);  // late, but not lost
  c.feed("10.0.0.1", 1, f[1], T0 + 7);  // and again: written again, said again
  std::string p = "2026-11-22 03:00:06 10.0.0.1:1 <14>[    5.000000] ";
  std::string log = c.text();
  CHECK(count_of(log, "udplogger: 10.0.0.1:1: late fragment of seq 42 (ncfrag=1000/2005) written "
                      "as its own piece: its record was written incomplete\n") == 2);
  CHECK(count_of(log, p + "[... 1000 bytes missing ...]" + std::string(1000, 'y') +
                          "[... 5 bytes missing ...]\n") == 1);
  // A fragment of a record written whole is a duplicate: ignored, as before.
  c.feed("10.0.0.2", 1, frag(7, 0, 4, "ab"), T0);
  c.feed("10.0.0.2", 1, frag(7, 2, 4, "c\n"), T0);
  c.feed("10.0.0.2", 1, frag(7, 2, 4, "c\n"), T0);
  CHECK(c.text().find("late or duplicate fragment of seq 7 (ncfrag=2/4) ignored") != std::string::npos);
}

// ------------------------------------------------ the state machine alone

namespace {

// One string of a list, to compare lists with a readable difference.
std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += x + "\n";
  return s;
}


// What the machine handed back since its last call, one line each.
std::vector<std::string> pulled(ul::Netconsole* nc) {
  static const char* const kKinds[] = {"record", "incomplete", "release", "release_changed", "gap",
                                       "lost", "restart", "again", "late", "duplicate",
                                       "malformed", "inconsistent"};
  static const char* const kWhy[] = {"complete", "timed_out", "at_exit", "newer_of_sender",
                                     "newer_of_address", "table_full", "slot_reused"};
  std::vector<std::string> seen;
  ul::NetconsoleEvent e;
  while (nc->next(&e)) {
    using K = ul::NetconsoleEvent::Kind;
    std::string line = std::string(kKinds[int(e.kind)]) + " " + std::to_string(e.sender);
    std::string rec;
    for (uint32_t i = 0; i < e.record.len; i++)
      rec += !e.record.got || (e.record.got[i >> 3] >> (i & 7) & 1) ? e.record.data[i] : '_';
    rec = std::to_string(e.record.pri) + " " + rec;
    std::string seq = " seq " + std::to_string(e.seq);
    std::string frag = seq + " " + std::to_string(e.off) + "/" + std::to_string(e.total);
    switch (e.kind) {
      case K::record: line += " " + rec + (e.reassembled ? " reassembled" : ""); break;
      case K::incomplete:
        line += seq + " " + std::to_string(e.bytes) + "/" + std::to_string(e.total) + " missing " +
                kWhy[int(e.why)] + ": " + rec;
        break;
      case K::release: line += " " + std::string(e.release, e.release_len); break;
      case K::release_changed:
        line += " " + std::string(e.previous, e.previous_len) + " to " + std::string(e.release, e.release_len);
        break;
      case K::gap: case K::lost: line += seq + ".." + std::to_string(e.last); break;
      case K::restart: case K::again: line += seq + " after " + std::to_string(e.last); break;
      case K::late: line += frag + ": " + rec; break;
      case K::duplicate: line += frag; break;
      case K::malformed: line += frag + " " + std::to_string(e.bytes) + " bytes"; break;
      case K::inconsistent: line += frag + " earlier " + std::to_string(e.bytes); break;
    }
    seen.push_back(line);
  }
  return seen;
}

// Feeds one datagram of sender id; returns what the machine then handed
// back, one string per event.
std::vector<std::string> feed(ul::Netconsole* nc, uint32_t id, const std::string& d,
                              const timespec& when, ul::Netconsole::Fed want = ul::Netconsole::Fed::taken) {
  ul::ExtHeader h;
  REQUIRE(ul::parse_ext_header(d.data(), d.size(), &h));
  CHECK(nc->feed(id, v4("10.0.0.1"), h, d.data(), d.size(), when) == want);
  return pulled(nc);
}

}  // namespace

TEST_CASE("netconsole: a state machine fed bytes and times alone hands back events") {
  ul::Netconsole nc;
  REQUIRE(nc.init(2, 4, 10));
  nc.forget(0);
  CHECK(feed(&nc, 0, "14,7,5,-,ncfrag=4/8;5678", at(T0, 500)).empty());
  CHECK(nc.next_deadline().tv_sec == T0 + 10);
  CHECK(nc.next_deadline().tv_nsec == 500);
  CHECK(joined(feed(&nc, 0, "14,7,5,-,ncfrag=0/8;1234", at(T0 + 1))) == "record 0 14 12345678 reassembled\n");
  CHECK(joined(feed(&nc, 0, "14,7,5,-,ncfrag=4/8;5678", at(T0 + 1))) == "duplicate 0 seq 7 4/8\n");
  CHECK(joined(feed(&nc, 0, "6.1.0,6,8,6,-;whole", at(T0 + 2))) ==
        "release 0 6.1.0\nrecord 0 6 whole\n");
  CHECK(feed(&nc, 0, "14,9,5,-,ncfrag=0/6;ab", at(T0 + 3)).empty());
  CHECK(nc.next_deadline().tv_sec == T0 + 13);
  nc.expire(at(T0 + 12, 999999999), false);
  CHECK(pulled(&nc).empty());
  nc.expire(at(T0 + 13), false);
  CHECK(joined(pulled(&nc)) == "incomplete 0 seq 9 4/6 missing timed_out: 14 ab____\n");
  CHECK(joined(feed(&nc, 0, "14,10,5,-,ncfrag=9/6;x", at(T0 + 14), ul::Netconsole::Fed::not_extended)) ==
        "malformed 0 seq 10 9/6 1 bytes\n");
  CHECK(joined(feed(&nc, 0, "14,11,5,-,ncfrag=0/6;cd", at(T0 + 14))) == "gap 0 seq 10..10\n");
  CHECK(joined(feed(&nc, 0, "14,9,5,-,ncfrag=2/6;xy", at(T0 + 14))) == "late 0 seq 9 2/6: 14 __xy__\n");
  CHECK(joined(feed(&nc, 0, "6.2.0,6,1,6,-;new\n msgid=4", at(T0 + 15))) ==
        "release_changed 0 6.1.0 to 6.2.0\nrecord 0 6 new\n msgid=4\n");
  CHECK(joined(feed(&nc, 0, "6.2.0,6,2,6,-;next\n msgid=7", at(T0 + 15))) ==
        "lost 0 seq 5..6\nrecord 0 6 next\n msgid=7\n");
  CHECK(joined(feed(&nc, 0, "6.2.0,6,2,6,-;again", at(T0 + 15))) == "again 0 seq 2 after 2\nrecord 0 6 again\n");
  nc.drop(0, at(T0 + 16));
  CHECK(joined(pulled(&nc)) == "incomplete 0 seq 11 4/6 missing slot_reused: 14 cd____\n");
  CHECK(nc.next_deadline().tv_sec == 0);
}

TEST_CASE("netconsole: records pushed out to make room stay readable until the next call") {
  ul::Netconsole nc;
  REQUIRE(nc.init(8, 4, 10));
  for (uint32_t id = 0; id < 8; id++) nc.forget(id);
  // Four senders fill the table of 4; each further one pushes out the oldest.
  for (uint32_t id = 0; id < 8; id++) {
    ul::ExtHeader h;
    std::string d = "6," + std::to_string(100 + id) + ",5,-,ncfrag=0/4;" + std::string(2, char('a' + id));
    REQUIRE(ul::parse_ext_header(d.data(), d.size(), &h));
    in6_addr addr = v4(("10.0.0." + std::to_string(id + 1)).c_str());
    nc.feed(id, addr, h, d.data(), d.size(), at(T0 + id));
    std::vector<std::string> got = pulled(&nc);
    if (id < 4) CHECK(got.empty());
    else CHECK(joined(got) == "incomplete " + std::to_string(id - 4) + " seq " + std::to_string(96 + id) +
                                  " 2/4 missing table_full: 6 " + std::string(2, char('a' + id - 4)) + "__\n");
  }
}

// ------------------------------------------------------------------ sinks

