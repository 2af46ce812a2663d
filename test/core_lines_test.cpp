// The core's line writing: the line birthplace, stamps, grouping by host,
// names, the sender table, counters.
#include <dirent.h>
#include <doctest.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <string.h>

#include <string>
#include <vector>

#include "core_harness.h"
#include "helpers.h"
#include "udplogger.h"

namespace {

std::string joined(const std::vector<std::pair<std::string, std::string>>& v) {
  std::string s;
  for (const auto& x : v) s += "[" + x.first + "] " + x.second;
  return s;
}

}  // namespace

TEST_CASE("line: notices and data lines share one prefix: stamp, name, space") {
  Core c;
  c.feed("10.0.0.1", 6665, "data\n", at(T0, 5));
  c.asm_.notice(at(T0 + 61), "a notice with a \x1b byte");
  CHECK(c.text() == stamp_at(0) + "10.0.0.1:6665 data\n" + stamp_at(61) +
                        "udplogger: a notice with a \\x1b byte\n");
  CHECK(c.asm_.stats().lines == 1);  // notices are not lines received
}

TEST_CASE("stamp=iso: RFC 3339 with microseconds and the local offset, notices too") {
  ul::Options o;
  o.stamp = ul::StampStyle::iso;
  Core c(o);
  ScopedZone east("XXX-9");  // local = UTC + 9
  c.feed("10.0.0.1", 1, "one\n", at(T0, 123456789));
  c.feed("10.0.0.1", 1, "two\n", at(T0, 7000));  // same second, other microseconds
  c.feed("10.0.0.1", 1, "part", at(T0 + 1, 999999999));
  c.asm_.expire(at(T0 + 30));
  c.asm_.notice(at(T0 + 3600 * 15), "next day");
  CHECK(c.text() ==
        "2026-11-22T12:00:00.123456+09:00 10.0.0.1:1 one\n"
        "2026-11-22T12:00:00.000007+09:00 10.0.0.1:1 two\n"
        "2026-11-22T12:00:01.999999+09:00 10.0.0.1:1 part\n"
        "2026-11-23T03:00:00.000000+09:00 udplogger: next day\n");
}

TEST_CASE("stamp=iso: offsets west of UTC and with minutes") {
  char out[ul::kStampMax + 1];
  {
    ScopedZone west("XXX+5:30");  // local = UTC - 5:30
    CHECK(ul::format_stamp(ul::StampStyle::iso, at(T0, 1000), out) == 33);
    CHECK(std::string(out) == "2026-11-21T21:30:00.000001-05:30 ");
  }
  ScopedZone utc("UTC");
  CHECK(ul::format_stamp(ul::StampStyle::iso, at(T0), out) == 33);
  CHECK(std::string(out) == "2026-11-22T03:00:00.000000+00:00 ");
}

TEST_CASE("output: split=host groups lines by host; notices go with their sender") {
  ul::Options o;
  o.split = ul::Split::host;
  Core c(o);
  // One receive batch: nothing is flushed until the end, as in the shell.
  std::vector<std::string> keep;
  auto add = [&](const in6_addr& a, uint16_t port, const std::string& data, uint32_t drops) {
    keep.push_back(data);
    c.asm_.kernel_dropped(drops, at(T0));
    c.asm_.datagram(ul::Datagram{a, port, at(T0), keep.back().data(), keep.back().size(), false});
  };
  keep.reserve(8);
  add(v4("10.0.0.1"), 1, "a1\n", 0);
  add(v4("10.0.0.1"), 2, "a2\n", 0);  // another port of the same host: same file
  add(v6("2001:db8::7"), 6665, "6,1,1,-;r1\n", 0);
  add(v6("2001:db8::7"), 6665, "6,5,1,-;r5\n", 0);
  add(v4("10.0.0.1"), 1, "", 3);  // the kernel dropped 3: the daemon's own notice
  add(v4("10.0.0.1"), 1, "a3\n", 0);
  c.out.flush();
  std::vector<std::pair<std::string, std::string>> want = {
      {"10.0.0.1", stamp_at(0) + "10.0.0.1:1 a1\n" + stamp_at(0) + "10.0.0.1:2 a2\n"},
      {"2001:db8::7", stamp_at(0) + "[2001:db8::7]:6665 <6>[    0.000001] r1\n" + stamp_at(0) +
                          "udplogger: [2001:db8::7]:6665: 3 records not received: seq 2..4; "
                          "lost on the way or filtered by the sender's console loglevel\n" +
                          stamp_at(0) + "[2001:db8::7]:6665 <6>[    0.000001] r5\n"},
      {"", stamp_at(0) + "udplogger: 3 datagrams dropped by the kernel: receive buffer full "
                         "(rbuf=8388608)\n"},
      {"10.0.0.1", stamp_at(0) + "10.0.0.1:1 a3\n"},
  };
  CHECK(joined(c.cap.batches) == joined(want));
}

TEST_CASE("output: without split=host one batch holds every sender") {
  Core c;
  ul::Datagram d{};
  std::string a = "a\n", b = "b\n";
  d = ul::Datagram{v4("10.0.0.1"), 1, at(T0), a.data(), a.size(), false};
  c.asm_.datagram(d);
  c.asm_.kernel_dropped(3, at(T0));
  d = ul::Datagram{v4("10.0.0.2"), 1, at(T0), b.data(), b.size(), false};
  c.asm_.datagram(d);
  c.out.flush();
  REQUIRE(c.cap.batches.size() == 1);
  CHECK(c.cap.batches[0].first == "");
  CHECK(count_of(c.cap.batches[0].second, "\n") == 3);
}

TEST_CASE("datagram: a cut datagram is a notice about its sender") {
  Core c;
  std::string big(100, 'x');
  c.asm_.datagram(ul::Datagram{v4("10.0.0.9"), 7, at(T0), big.data(), big.size(), true});
  c.asm_.expire(at(T0), true);
  CHECK(c.text() == stamp_at(0) + "udplogger: 10.0.0.9:7: datagram cut to 100 bytes: larger "
                                  "than the receive slot\n" +
                        stamp_at(0) + "10.0.0.9:7 " + big + "\n");
}

TEST_CASE("names: hosts for directories, senders for lines") {
  char name[ul::kSenderNameMax];
  CHECK(std::string(name, ul::format_host(v4("192.0.2.7"), name)) == "192.0.2.7");
  CHECK(std::string(name, ul::format_host(v6("2001:db8::7"), name)) == "2001:db8::7");
  CHECK(std::string(name, ul::format_host(v6("::1"), name)) == "::1");
  CHECK(std::string(name, ul::format_sender(v6("::1"), 9, name)) == "[::1]:9");
}

TEST_CASE("sender table: finds, orders by last heard, reuses the idle slot, never writes") {
  ul::SenderTable t;
  REQUIRE(t.init(10, 0));
  for (int i = 0; i < 10; i++) REQUIRE(t.add(v4("10.0.0.1"), uint16_t(100 + i)));
  CHECK(t.full());
  CHECK(t.idle_longest()->port == 100);
  REQUIRE(t.find(v4("10.0.0.1"), 100));  // heard again
  CHECK(t.idle_longest()->port == 101);
  CHECK(t.find(v4("10.0.0.2"), 100) == nullptr);
  ul::Sender* idle = t.idle_longest();
  ul::Sender* s = t.add(v4("10.0.0.2"), 100);
  CHECK(s == idle);  // the same slot, now the new sender's
  CHECK(std::string(s->name, s->name_len) == "10.0.0.2:100");
  CHECK(t.find(v4("10.0.0.1"), 101) == nullptr);
  CHECK(t.find(v4("10.0.0.2"), 100) == s);
  CHECK(t.size() == 10);
}

TEST_CASE("sender table: the hash seed decides the buckets, so collisions cannot be precomputed") {
  ul::SenderTable a, b;
  REQUIRE(a.init(1024, 0x1234));
  REQUIRE(b.init(1024, 0x5678));
  int same = 0;
  for (int i = 0; i < 1000; i++) {
    in6_addr addr = v4(("10.0." + std::to_string(i / 250) + "." + std::to_string(i % 250)).c_str());
    same += a.bucket(addr, 6665) == b.bucket(addr, 6665);
  }
  MESSAGE(same << " of 1000 senders in the same bucket under two seeds (2048 buckets)");
  CHECK(same < 20);
}

TEST_CASE("counters saturate: sequence jumps chosen by a sender cannot wrap them") {
  Core c;
  const std::string half = "9223372036854775808";  // 2^63
  for (const std::string& seq : {std::string("0"), half, std::string("0"), std::string("9223372036854775813")})
    c.feed("10.0.0.1", 1, "6," + seq + ",1,-;x\n", T0);
  CHECK(c.asm_.stats().missing == UINT64_MAX);
}

