// Unit tests of the reshaped core and the sinks: the line birthplace,
// stamps, grouping by host, the sender table, the netconsole state machine
// on its own, and the sinks on a fake clock in a real temporary directory.
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

// One string of a list, to compare lists with a readable difference.
std::string joined(const std::vector<std::string>& v) {
  std::string s;
  for (const std::string& x : v) s += x + "\n";
  return s;
}

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

namespace {

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
  REQUIRE(h.open(&d, 3, T0, nullptr, why, sizeof why));
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
  REQUIRE(h.open(&d, 4, T0, nullptr, why, sizeof why));
  in6_addr host = v4("192.0.2.66");
  iovec v = piece("2026-11-22 03:00:00 192.0.2.66:1 evil\n");
  std::string err = stderr_of([&] {
    for (int i = 0; i < 3; i++) h.write(&host, &v, 1, nullptr, 0);
  });
  CHECK(err == "udplogger: cannot open log file " + std::string(d.path) +
                   "/192.0.2.66/2026-11-22.log: is not a directory (or is a symbolic link); "
                   "its lines go to " + d.path + "/2026-11-22.log\n");  // once, not per batch
  CHECK(count_of(read_file(dir + "/2026-11-22.log"), "2026-11-22 03:00:00 192.0.2.66:1 evil\n") == 3);
  CHECK(log_names(elsewhere).empty());
}
