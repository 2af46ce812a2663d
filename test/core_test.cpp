// Unit tests of the pure core: no sockets, no files.
#include <arpa/inet.h>
#include <doctest.h>
#include <stdlib.h>

#include <string>
#include <vector>

#include "core_harness.h"
#include "helpers.h"
#include "netconsole.h"
#include "udplogger.h"

using ul::Options;
using ul::ParseStatus;

TEST_CASE("options: defaults are udplogger 1.1's") {
  Options o;
  CHECK(parse({}, &o) == ParseStatus::ok);
  CHECK(o.port == 6666);
  CHECK(std::string(o.dir) == ".");
  CHECK(o.timeout == 10);
  CHECK(o.clients == 1024);
  CHECK(o.wbuf == 65536);
  CHECK(o.rbuf == 8u << 20);
  CHECK(o.uid == -1);
  CHECK(o.gid == -1);
  CHECK(o.perm == 0600);
  CHECK(o.ip == nullptr);
}

TEST_CASE("options: key=value and --key=value") {
  Options o;
  CHECK(parse({"port=7000", "--timeout=30", "clients=10", "wbuf=1024", "rbuf=65536",
               "uid=65534", "gid=65534", "perm=0640", "ip=::1", "dir=/tmp", "escape=none"},
              &o) == ParseStatus::ok);
  CHECK(o.port == 7000);
  CHECK(o.timeout == 30);
  CHECK(o.clients == 10);
  CHECK(o.wbuf == 1024);
  CHECK(o.rbuf == 65536);
  CHECK(o.uid == 65534);
  CHECK(o.gid == 65534);
  CHECK(o.perm == 0640);
  CHECK(std::string(o.ip) == "::1");
  CHECK(std::string(o.dir) == "/tmp");
  CHECK(o.escape == ul::Escape::none);
}

TEST_CASE("options: bad values name the option, the value and the range") {
  Options o;
  std::string err;
  CHECK(parse({"timeout=4"}, &o, &err) == ParseStatus::value_error);
  CHECK(err == "timeout=4: out of range (allowed: 5..600)");
  CHECK(parse({"timeout=601"}, &o, &err) == ParseStatus::value_error);
  CHECK(parse({"clients=abc"}, &o, &err) == ParseStatus::value_error);
  CHECK(err == "clients=abc: not a number (allowed: 10..65536)");
  CHECK(parse({"wbuf=-1"}, &o, &err) == ParseStatus::value_error);
  CHECK(parse({"wbuf= 2000"}, &o, &err) == ParseStatus::value_error);
  CHECK(parse({"wbuf=2000x"}, &o, &err) == ParseStatus::value_error);
  CHECK(parse({"wbuf="}, &o, &err) == ParseStatus::value_error);
  CHECK(parse({"rbuf=1073741825"}, &o, &err) == ParseStatus::value_error);
  CHECK(err == "rbuf=1073741825: out of range (allowed: 65536..1073741824)");
  CHECK(parse({"port=0"}, &o, &err) == ParseStatus::value_error);
  CHECK(parse({"port=65536"}, &o, &err) == ParseStatus::value_error);
  CHECK(parse({"port=99999999999999999999999"}, &o, &err) == ParseStatus::value_error);
  CHECK(parse({"perm=0755"}, &o, &err) == ParseStatus::value_error);
  CHECK(err.find("perm=0755") == 0);
  CHECK(parse({"perm=0800"}, &o, &err) == ParseStatus::value_error);
  CHECK(parse({"ip=localhost"}, &o, &err) == ParseStatus::value_error);
  CHECK(err.find("ip=localhost: not an IPv4 or IPv6 address") == 0);
  CHECK(parse({"escape=yes"}, &o, &err) == ParseStatus::value_error);
}

TEST_CASE("options: unknown options, help and version") {
  Options o;
  std::string err;
  CHECK(parse({"colour=blue"}, &o, &err) == ParseStatus::usage_error);
  CHECK(err == "unknown option 'colour=blue'");
  CHECK(parse({"port"}, &o, &err) == ParseStatus::usage_error);
  CHECK(parse({"averyveryverylongkey=1"}, &o, &err) == ParseStatus::usage_error);
  CHECK(parse({"--help"}, &o) == ParseStatus::help);
  CHECK(parse({"--version"}, &o) == ParseStatus::version);
}

TEST_CASE("escaping: control bytes but TAB become \\xNN, the rest stays") {
  std::string in("a\tb\x01\x1b[31m\x7f\xc3\xbc\\x\0z", 16);
  std::string out(in.size() * 4, '\0');
  out.resize(ul::escape_text(in.data(), in.size(), &out[0]));
  CHECK(out == "a\tb\\x01\\x1b[31m\\x7f\xc3\xbc\\x\\x00z");
  for (int c = 0; c < 256; c++)
    CHECK(ul::needs_escape(static_cast<unsigned char>(c)) ==
          ((c < 0x20 && c != '\t') || c == 0x7f));
}

TEST_CASE("prefix: sender names and stamps") {
  char name[ul::kSenderNameMax];
  size_t n = ul::format_sender(v4("10.1.2.3"), 6665, name);
  CHECK(std::string(name, n) == "10.1.2.3:6665");
  in6_addr a;
  inet_pton(AF_INET6, "2001:db8::1", &a);
  n = ul::format_sender(a, 65535, name);
  CHECK(std::string(name, n) == "[2001:db8::1]:65535");
  inet_pton(AF_INET6, "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", &a);
  n = ul::format_sender(a, 65535, name);
  CHECK(std::string(name, n) == "[ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff]:65535");
  // IPv4 is formatted by hand: the same text as inet_ntop, every octet
  // value in every position, ports at the ends of their range.
  for (unsigned v = 0; v < 256; v++) {
    for (unsigned pos = 0; pos < 4; pos++) {
      unsigned char b[4] = {10, 200, 3, 99};
      b[pos] = (unsigned char)v;
      in6_addr m = {};
      m.s6_addr[10] = m.s6_addr[11] = 0xff;
      memcpy(&m.s6_addr[12], b, 4);
      uint16_t port = uint16_t(v * 257 + pos);
      char host[INET_ADDRSTRLEN], want[64];
      inet_ntop(AF_INET, b, host, sizeof host);
      snprintf(want, sizeof want, "%s:%u", host, unsigned(port));
      n = ul::format_sender(m, port, name);
      CHECK(std::string(name, n) == want);
      CHECK(ul::format_host(m, name) == strlen(host));
      CHECK(std::string(name) == host);
    }
  }

  ScopedZone utc("UTC");
  char stamp[ul::kStampMax + 1];
  CHECK(ul::format_stamp(ul::StampStyle::classic, at(T0 + 3723, 999999999), stamp) == 20);
  CHECK(std::string(stamp) == "2026-11-22 04:02:03 ");
  char file[16];
  ul::log_file_name(T0, file);
  CHECK(std::string(file) == "2026-11-22.log");
}

TEST_CASE("midnight: the next local midnight in several zones") {
  {
    ScopedZone utc("UTC");
    CHECK(ul::next_local_midnight(T0) == T0 + 21 * 3600);
    CHECK(ul::next_local_midnight(T0 + 21 * 3600) == T0 + 45 * 3600);
  }
  ScopedZone east("XXX-5:59:57");  // local = UTC + 5:59:57
  CHECK(ul::next_local_midnight(T0) == T0 + 15 * 3600 + 3);
}

TEST_CASE("assembly: lines, partial lines joined across datagrams") {
  Core c;
  c.feed("10.0.0.1", 6665, "one\ntwo\nthr", T0);
  c.feed("10.0.0.2", 6665, "other\n", T0 + 1);
  c.feed("10.0.0.1", 6665, "ee\n", T0 + 2);
  CHECK(c.text() ==
        "2026-11-22 03:00:00 10.0.0.1:6665 one\n"
        "2026-11-22 03:00:00 10.0.0.1:6665 two\n"
        "2026-11-22 03:00:01 10.0.0.2:6665 other\n"
        "2026-11-22 03:00:00 10.0.0.1:6665 three\n");
  CHECK(c.asm_.stats().lines == 4);
  CHECK(c.asm_.stats().datagrams == 3);
}

TEST_CASE("assembly: empty lines and empty datagrams") {
  Core c;
  c.feed("10.0.0.1", 1, "", T0);
  c.feed("10.0.0.1", 1, "\n\n", T0);
  CHECK(c.text() == "2026-11-22 03:00:00 10.0.0.1:1 \n2026-11-22 03:00:00 10.0.0.1:1 \n");
}

TEST_CASE("assembly: partial lines time out after timeout= seconds") {
  Options o;
  o.timeout = 5;
  Core c(o);
  c.feed("10.0.0.1", 1, "no newline", T0);
  CHECK(c.asm_.next_deadline().tv_sec == T0 + 5);
  c.asm_.expire(at(T0 + 4, 999999999));
  CHECK(c.text() == "");
  c.asm_.expire(at(T0 + 5));
  CHECK(c.text() == "2026-11-22 03:00:00 10.0.0.1:1 no newline\n");
  CHECK(c.asm_.next_deadline().tv_sec == 0);
  CHECK(c.asm_.stats().lines_timed_out == 1);
}

TEST_CASE("assembly: expire(all) writes every partial line") {
  Core c;
  c.feed("10.0.0.1", 1, "a", T0);
  c.feed("10.0.0.2", 1, "b", T0 + 1);
  c.asm_.expire(at(T0 + 1), true);
  CHECK(c.text() == "2026-11-22 03:00:00 10.0.0.1:1 a\n2026-11-22 03:00:01 10.0.0.2:1 b\n");
}

TEST_CASE("assembly: lines longer than wbuf are written in wbuf pieces") {
  Options o;
  o.wbuf = 1024;
  Core c(o);
  std::string line(2500, 'x');
  c.feed("10.0.0.1", 1, line + "\n", T0);
  std::string p = "2026-11-22 03:00:00 10.0.0.1:1 ";
  CHECK(c.text() == p + std::string(1024, 'x') + "\n" + p + std::string(1024, 'x') + "\n" +
                        p + std::string(452, 'x') + "\n");
}

TEST_CASE("assembly: a partial line that reaches wbuf is written as a piece") {
  Options o;
  o.wbuf = 1024;
  Core c(o);
  c.feed("10.0.0.1", 1, std::string(1000, 'a'), T0);
  c.feed("10.0.0.1", 1, std::string(100, 'b'), T0 + 1);
  c.feed("10.0.0.1", 1, "c\n", T0 + 2);
  std::string t = c.text();
  CHECK(t == "2026-11-22 03:00:00 10.0.0.1:1 " + std::string(1000, 'a') + std::string(24, 'b') +
                 "\n2026-11-22 03:00:01 10.0.0.1:1 " + std::string(76, 'b') + "c\n");
}

TEST_CASE("assembly: exactly wbuf bytes and a newline is one line") {
  Options o;
  o.wbuf = 1024;
  Core c(o);
  c.feed("10.0.0.1", 1, std::string(1024, 'a') + "\n", T0);
  c.feed("10.0.0.1", 1, std::string(1000, 'b'), T0);
  c.feed("10.0.0.1", 1, std::string(24, 'b') + "\n", T0);
  std::string p = "2026-11-22 03:00:00 10.0.0.1:1 ";
  CHECK(c.text() == p + std::string(1024, 'a') + "\n" + p + std::string(1024, 'b') + "\n");
}

TEST_CASE("assembly: control bytes escaped, in partial and complete parts") {
  Core c;
  c.feed("10.0.0.1", 1, std::string("\x1b]0;pwn\x07", 8), T0);
  c.feed("10.0.0.1", 1, std::string("\0\t\xe6\x97\xa5\r\r\n", 8), T0);
  // Only the CR right before the newline is a line end's; the other stays.
  CHECK(c.text() == "2026-11-22 03:00:00 10.0.0.1:1 \\x1b]0;pwn\\x07\\x00\t\xe6\x97\xa5\\x0d\n");
}

TEST_CASE("assembly: escape=none writes bytes as they came") {
  Options o;
  o.escape = ul::Escape::none;
  Core c(o);
  c.feed("10.0.0.1", 1, std::string("\x1b[1m\0x\n", 7), T0);
  CHECK(c.text() == std::string("2026-11-22 03:00:00 10.0.0.1:1 \x1b[1m\0x\n", 38));
}

TEST_CASE("assembly: a full table reuses the idle slot and writes its partial line") {
  Options o;
  o.clients = 10;
  Core c(o);
  for (int i = 0; i < 10; i++) c.feed("10.0.0.1", uint16_t(100 + i), "part", T0 + i);
  c.feed("10.0.0.1", 100, "-0", T0 + 10);  // sender 100 heard again: 101 idle longest
  CHECK(c.text() == "");
  c.feed("10.0.0.1", 200, "new\n", T0 + 11);
  CHECK(c.text() ==
        "2026-11-22 03:00:01 10.0.0.1:101 part\n"
        "2026-11-22 03:00:11 10.0.0.1:200 new\n");
  CHECK(c.asm_.stats().senders_reused == 1);
  CHECK(c.asm_.senders() == 10);
  // Hundreds of senders later, nothing is lost and the table stays at 10.
  for (int i = 0; i < 500; i++) c.feed("10.0.1.1", uint16_t(1000 + i), "x", T0 + 20);
  c.asm_.expire(at(T0 + 20), true);
  std::string t = c.text();
  size_t lines = 0;
  for (char ch : t) lines += ch == '\n';
  CHECK(lines == 511);  // 101, new, 9 pushed out, 490 pushed out, 10 at exit
  CHECK(c.asm_.senders() == 10);
}

TEST_CASE("output: flushes as the arena fills, nothing lost") {
  Core c;  // a 4 KiB arena
  std::string expect;
  for (int i = 0; i < 300; i++) {
    std::string line = "line " + std::to_string(i) + std::string(size_t(i), '\x01');
    c.feed("10.0.0.1", 1, line + "\n", T0);
    expect += stamp_at(0) + "10.0.0.1:1 " + log_escape(line) + "\n";
  }
  CHECK(c.text() == expect);
  CHECK(c.cap.flushes > 10);
}

TEST_CASE("output: a full arena writes the lines before the current one; only a line longer than the arena is cut") {
  Core c(Options(), 1024);  // a 1 KiB arena
  // One batch as the shell hands it over: lines escaped to 130 to 850
  // bytes from three senders, one partial line completed, and one line
  // that escapes to 1600 bytes, more than the arena holds.
  std::vector<std::string> lines, payloads;
  std::vector<uint16_t> ports;
  for (int i = 0; i < 30; i++) {
    std::string line = "line " + std::to_string(i) + " " + std::string(size_t(25 + i * 7), '\x01');
    if (i == 17) line = std::string(400, '\x02');
    lines.push_back(line);
    uint16_t port = uint16_t(1 + i % 3);
    if (i == 4) {  // its first half comes in a datagram of its own
      payloads.push_back(line.substr(0, 20));
      ports.push_back(port);
      payloads.push_back(line.substr(20) + "\n");
    } else {
      payloads.push_back(line + "\n");
    }
    ports.push_back(port);
  }
  std::vector<ul::Datagram> ds(payloads.size());
  for (size_t i = 0; i < payloads.size(); i++)
    ds[i] = ul::Datagram{v4("10.0.0.1"), ports[i], at(T0), payloads[i].data(), payloads[i].size(), false};
  c.asm_.datagrams(ds.data(), ds.size());
  std::string expect;
  for (size_t i = 0; i < lines.size(); i++)
    expect += stamp_at(0) + "10.0.0.1:" + std::to_string(1 + i % 3) + " " + log_escape(lines[i]) + "\n";
  CHECK(c.text() == expect);
  CHECK(c.cap.batches.size() > 10);
  int cut = 0;
  for (auto& b : c.cap.batches) cut += b.second.back() != '\n';
  CHECK(cut >= 1);  // the 1600-byte line
  CHECK(cut <= 2);
  for (size_t i = 0; i < lines.size(); i++) {
    if (i == 17) continue;
    std::string whole = "10.0.0.1:" + std::to_string(1 + i % 3) + " " + log_escape(lines[i]) + "\n";
    bool found = false;
    for (auto& b : c.cap.batches) found |= b.second.find(whole) != std::string::npos;
    CHECK_MESSAGE(found, "line " << i << " was cut between two writes");
  }
}

TEST_CASE("assembly: the 32- and 16-byte scans and the byte loop find every control byte, at every position") {
  // Lengths around each block size: the scan's last 16 bytes overlap
  // bytes already scanned, and text under 16 bytes is scanned bytewise.
  std::vector<size_t> lengths;
  for (size_t n = 1; n <= 20; n++) lengths.push_back(n);
  for (size_t n : {31, 32, 33, 47, 48, 49, 63, 64, 65, 80}) lengths.push_back(n);
  for (unsigned char ctl : {0x00, 0x01, 0x09, 0x0a, 0x1b, 0x1f, 0x7f}) {
    for (size_t len : lengths) {
      for (size_t pos = 0; pos < len; pos++) {
        Core c;
        std::string line(len, 'a');
        line[pos] = char(ctl);
        if (len > 8) line.replace(len - 5, 5, "\xc3\xa9\x80\xff~");  // high bytes never count
        if (pos >= len - 5 && len > 8) line[pos] = char(ctl);
        c.feed("10.0.0.1", 1, line + "\n", T0);
        std::string want;
        if (ctl == '\n') {
          want = "2026-11-22 03:00:00 10.0.0.1:1 " + line.substr(0, pos) + "\n";
          want += "2026-11-22 03:00:00 10.0.0.1:1 " + line.substr(pos + 1) + "\n";
        } else {
          want = stamp_at(0) + "10.0.0.1:1 " + log_escape(line) + "\n";
        }
        CHECK_MESSAGE(c.text() == want, int(ctl) << " at " << pos << " of " << len);
      }
    }
  }
}

TEST_CASE("assembly: a batch is written exactly as its datagrams one by one") {
  // 150 datagrams (more than one batch of lookups): 12 senders whose
  // partial lines join, and every 25th from a sender of its own, so that
  // the 16 slots are reused within a batch; an empty datagram and an
  // extended record among them.
  Options o;
  REQUIRE(parse({"clients=16"}, &o) == ParseStatus::ok);
  Core one(o), batch(o);
  std::vector<std::string> payloads;
  for (int i = 0; i < 150; i++) {
    if (i % 37 == 5) payloads.push_back("");
    else if (i == 10) payloads.push_back("6,7,1000,-;an extended record\n");
    else if (i % 5 == 0) payloads.push_back("part of " + std::to_string(i) + " ");
    else payloads.push_back("line " + std::to_string(i) + "\n");
  }
  std::vector<ul::Datagram> ds(payloads.size());
  for (size_t i = 0; i < payloads.size(); i++) {
    ds[i].addr = v4("10.0.0.1");
    ds[i].port = uint16_t(i % 25 == 24 ? 2000 + i : 1000 + i % 12);
    ds[i].when = at(T0 + time_t(i / 50));
    ds[i].data = payloads[i].data();
    ds[i].len = payloads[i].size();
    one.asm_.datagram(ds[i]);
  }
  batch.asm_.datagrams(ds.data(), ds.size());
  one.asm_.expire(at(T0 + 100), true);
  batch.asm_.expire(at(T0 + 100), true);
  std::string want = one.text();
  CHECK(count_of(want, "\n") >= 120);
  CHECK(count_of(want, "part of 25 line 37\n") == 1);  // joined across datagrams
  CHECK(count_of(want, " an extended record\n") == 1);
  CHECK(batch.text() == want);
}

TEST_CASE("options: keyword options name the words they allow") {
  Options o;
  std::string err;
  CHECK(parse({"ext=raw", "escape=none"}, &o) == ParseStatus::ok);
  CHECK(o.ext == ul::Ext::raw);
  CHECK(o.escape == ul::Escape::none);
  CHECK(parse({"ext=auto", "escape=hex"}, &o) == ParseStatus::ok);
  CHECK(o.ext == ul::Ext::automatic);
  CHECK(o.escape == ul::Escape::hex);
  CHECK(parse({"ext=cooked"}, &o, &err) == ParseStatus::value_error);
  CHECK(err == "ext=cooked: unknown (allowed: auto, raw)");
  CHECK(parse({"escape="}, &o, &err) == ParseStatus::value_error);
  CHECK(err == "escape=: unknown (allowed: hex, none)");
  CHECK(parse({"frags=3"}, &o, &err) == ParseStatus::value_error);
  CHECK(err == "frags=3: out of range (allowed: 4..4096)");
}

TEST_CASE("pacer: no pause at low rates, a batch's worth of pause at high ones") {
  // Wakes every `gap` ns, each finding n datagrams, for a second; returns the last pause.
  auto steady = [](ul::Pacer* p, int64_t gap, uint64_t n) {
    long pause = -1;
    for (int64_t t = gap; t <= 1000000000; t += gap) pause = p->woke(n, t);
    return pause;
  };
  ul::Pacer slow;
  CHECK(steady(&slow, 1000000, 1) == 0);  // 1000/s: every line at once
  CHECK(slow.rate() > 900);
  CHECK(slow.rate() < 1100);
  ul::Pacer busy;
  long pause = steady(&busy, 1000000, 40);  // 40k/s: 64 datagrams take 1.6 ms
  CHECK(busy.rate() == 40000);
  CHECK(pause == 1600000);
  ul::Pacer flood;
  CHECK(steady(&flood, 1000000, 400) == 160000);  // 400k/s
  ul::Pacer capped(1000000);  // a small receive buffer allows 1 ms at most
  CHECK(steady(&capped, 1000000, 10) == 1000000);
  // A wakeup for a signal or a timer finds nothing: no pause.
  CHECK(busy.woke(0, 1000000000 + 1000000) == 0);
  // After a second of silence the rate is low again.
  CHECK(busy.woke(1, 2100000000) == 0);
  CHECK(busy.rate() < 100);
}
