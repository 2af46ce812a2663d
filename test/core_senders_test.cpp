// Core tests for the senders besides netconsole: syslog datagrams, eol=,
// CRLF, dictionary lines (dict=) and the allow-list, on a fake clock.
#include <doctest.h>

#include <string>
#include <vector>

#include "core_harness.h"
#include "helpers.h"
#include "netconsole.h"
#include "udplogger.h"

using ul::Options;
using ul::ParseStatus;

namespace {

const std::string p1 = "2026-11-22 03:00:00 10.0.0.1:514 ";

Options with(std::vector<const char*> args) {
  Options o;
  REQUIRE(parse(std::move(args), &o) == ParseStatus::ok);
  return o;
}

}  // namespace

TEST_CASE("syslog: a <N> datagram is one message, written at once without a newline") {
  Core c;
  c.feed("10.0.0.1", 514, "<13>Nov 22 03:00:00 host app: one", T0);
  c.feed("10.0.0.1", 514, "<13>Nov 22 03:00:00 host app: two", T0);
  c.feed("10.0.0.1", 514, "<165>1 2026-11-22T03:00:00Z host app - - - three\n", T0);
  // Written before any timeout, one line each: nothing waits.
  CHECK(c.asm_.next_deadline().tv_sec == 0);
  CHECK(c.text() == p1 + "<13>Nov 22 03:00:00 host app: one\n" +
                        p1 + "<13>Nov 22 03:00:00 host app: two\n" +
                        p1 + "<165>1 2026-11-22T03:00:00Z host app - - - three\n");
}

TEST_CASE("syslog: newlines inside still make lines; trailing NULs are dropped") {
  Core c;
  c.feed("10.0.0.1", 514, std::string("<0>first\nsecond\0\0", 18), T0);
  c.feed("10.0.0.1", 514, std::string("<191>x\0y", 8), T0);
  CHECK(c.text() == p1 + "<0>first\n" + p1 + "second\n" + p1 + "<191>x\\x00y\n");
}

TEST_CASE("syslog: only <0> to <191> at the very start counts") {
  for (const char* text : {"<192>late", "<1000>x", "<>x", "<a>x", " <13>x", "<13", "<-1>x"}) {
    CAPTURE(text);
    Core c;
    c.feed("10.0.0.1", 514, text, T0);
    CHECK(c.text() == "");  // waits for its newline, as 1.1
    c.asm_.expire(at(T0 + 10));
    CHECK(c.text() == p1 + text + "\n");
  }
}

TEST_CASE("syslog: a <N> datagram continuing a partial line joins it") {
  Core c;
  c.feed("10.0.0.1", 514, "[   12.345] kernel says ", T0);
  c.feed("10.0.0.1", 514, "<4>and goes on", T0);
  c.feed("10.0.0.1", 514, " to the end\n", T0);
  CHECK(c.text() == p1 + "[   12.345] kernel says <4>and goes on to the end\n");
  // Another sender's partial line does not count.
  c.feed("10.0.0.2", 9, "half a line", T0);
  c.feed("10.0.0.1", 514, "<4>whole", T0);
  CHECK(c.text().find(p1 + "<4>whole\n") != std::string::npos);
}

TEST_CASE("eol=auto: a legacy netconsole line in 1000-byte pieces (console_msg_format=syslog) is one line") {
  Core c;
  std::string line = "<4>[  812.123456] " + std::string(1800, 'x') + "\n";  // 1,818 bytes
  c.feed("10.0.0.1", 514, line.substr(0, 1000), T0);
  CHECK(c.text() == "");  // a piece: the next one finishes the line
  c.feed("10.0.0.1", 514, line.substr(1000), T0);
  CHECK(c.text() == p1 + line);
  // Any other <N> datagram without a newline is still one message.
  Core d;
  d.feed("10.0.0.1", 514, "<13>" + std::string(995, 'y'), T0);
  d.feed("10.0.0.1", 514, "<13>" + std::string(997, 'z'), T0);
  CHECK(d.text() == p1 + "<13>" + std::string(995, 'y') + "\n" + p1 + "<13>" + std::string(997, 'z') + "\n");
}

TEST_CASE("eol=newline is 1.1: a <N> datagram waits for its newline or the timeout") {
  Core c(with({"eol=newline"}));
  c.feed("10.0.0.1", 514, "<13>one", T0);
  c.feed("10.0.0.1", 514, "<13>two", T0 + 1);
  CHECK(c.text() == "");
  c.asm_.expire(at(T0 + 10));
  CHECK(c.text() == p1 + "<13>one<13>two\n");
}

TEST_CASE("eol=datagram: every datagram's end ends a line") {
  Core c(with({"eol=datagram"}));
  c.feed("10.0.0.1", 514, "plain", T0);
  c.feed("10.0.0.1", 514, "two\nlines", T0);
  c.feed("10.0.0.1", 514, "ends in a newline\n", T0);
  c.feed("10.0.0.1", 514, std::string("c string\0", 9), T0);
  c.feed("10.0.0.1", 514, "crlf without the lf\r", T0);
  CHECK(c.asm_.next_deadline().tv_sec == 0);
  CHECK(c.text() == p1 + "plain\n" + p1 + "two\n" + p1 + "lines\n" + p1 +
                        "ends in a newline\n" + p1 + "c string\n" + p1 + "crlf without the lf\n");
}

TEST_CASE("eol=datagram: extended netconsole is still records") {
  Core c(with({"eol=datagram"}));
  c.feed("10.0.0.1", 514, "6,1,5000000,-;hello\n", T0);
  CHECK(c.text() == p1 + "<6>[    5.000000] hello\n");
}

TEST_CASE("CRLF: the CR before a newline is dropped, any other CR is escaped") {
  for (const char* eol : {"eol=auto", "eol=newline", "eol=datagram"}) {
    CAPTURE(eol);
    Core c(with({eol}));
    c.feed("10.0.0.1", 514, "one\r\ntwo\r\n", T0);
    c.feed("10.0.0.1", 514, "a\rb\r\r\n", T0);
    c.feed("10.0.0.1", 514, "\x01 control first\r\n", T0);
    c.feed("10.0.0.1", 514, "<13>syslog\r\n", T0);
    c.feed("10.0.0.1", 514, "<13>syslog, no LF\r", T0);
    c.asm_.expire(at(T0 + 10));
    CHECK(c.text() == p1 + "one\n" + p1 + "two\n" + p1 + "a\\x0db\\x0d\n" + p1 +
                          "\\x01 control first\n" + p1 + "<13>syslog\n" + p1 +
                          (std::string(eol) == "eol=newline" ? "<13>syslog, no LF\\x0d\n"
                                                             : "<13>syslog, no LF\n"));
  }
}

TEST_CASE("CRLF: split across datagrams, and with escape=none") {
  Core c;
  c.feed("10.0.0.1", 514, "partial\r", T0);
  c.feed("10.0.0.1", 514, "\nnext\r", T0);
  c.feed("10.0.0.1", 514, "\r\n", T0);
  CHECK(c.text() == p1 + "partial\n" + p1 + "next\\x0d\n");
  Core raw(with({"escape=none"}));
  raw.feed("10.0.0.1", 514, "raw\r\n", T0);
  CHECK(raw.text() == p1 + "raw\n");
}

TEST_CASE("CRLF: a line cut at wbuf keeps its bytes") {
  Core c(with({"wbuf=1024"}));
  std::string long_line(1023, 'x');
  c.feed("10.0.0.1", 514, long_line + "\r\n", T0);
  // 1023 bytes and the CR make 1024: the line ends exactly at wbuf.
  CHECK(c.text() == p1 + long_line + "\n");
}

// ------------------------------------------------------------ dictionaries

namespace {

// An extended record with two userdata entries, as Linux 6.12 sends it.
std::string record(int seq, const std::string& text, const std::string& host = "web1") {
  return "6," + std::to_string(seq) + "," + std::to_string(1000000 + seq) + ",-;" + text +
         "\n nct_host=" + host + "\n nct_run=r1\n";
}

std::string rec_line(int seq, const std::string& text) {
  char head[40];
  snprintf(head, sizeof head, "<6>[    1.%06d] ", seq);
  return p1 + head + text + "\n";
}

}  // namespace

TEST_CASE("dict: written with the first record, when it changes, and after files_changed") {
  Core c;
  c.feed("10.0.0.1", 514, record(1, "one"), T0);
  c.feed("10.0.0.1", 514, record(2, "two"), T0);
  c.feed("10.0.0.1", 514, record(3, "three", "web2"), T0);
  c.feed("10.0.0.1", 514, record(4, "four", "web2"), T0);
  c.asm_.files_changed();  // midnight: a new daily file
  c.feed("10.0.0.1", 514, record(5, "five", "web2"), T0);
  c.feed("10.0.0.1", 514, "6,6,1000006,-;bare\n", T0);  // none is a change too
  c.feed("10.0.0.1", 514, record(7, "seven", "web2"), T0);
  std::string dict1 = p1 + " nct_host=web1\n" + p1 + " nct_run=r1\n";
  std::string dict2 = p1 + " nct_host=web2\n" + p1 + " nct_run=r1\n";
  CHECK(c.text() == rec_line(1, "one") + dict1 + rec_line(2, "two") + rec_line(3, "three") +
                        dict2 + rec_line(4, "four") + rec_line(5, "five") + dict2 +
                        rec_line(6, "bare") + rec_line(7, "seven") + dict2);
}

TEST_CASE("dict: each sender has its own, and a new sender in a reused slot starts afresh") {
  Options o = with({"clients=10"});
  Core c(o);
  for (int port = 1; port <= 11; port++)
    c.feed(v4("10.0.0.1"), uint16_t(port), record(1, "hi"), at(T0));
  // 11 senders through 10 slots: each first record carries its dictionary.
  CHECK(count_of(c.text(), " nct_host=web1\n") == 11);
  c.feed(v4("10.0.0.1"), 1, record(2, "again"), at(T0));  // port 1 was pushed out
  CHECK(count_of(c.text(), " nct_host=web1\n") == 12);
  c.feed(v4("10.0.0.1"), 1, record(3, "again"), at(T0));
  CHECK(count_of(c.text(), " nct_host=web1\n") == 12);
}

TEST_CASE("dict=all writes every copy, dict=none none") {
  Core all(with({"dict=all"}));
  Core none(with({"dict=none"}));
  for (int seq = 1; seq <= 3; seq++) {
    all.feed("10.0.0.1", 514, record(seq, "x"), T0);
    none.feed("10.0.0.1", 514, record(seq, "x"), T0);
  }
  CHECK(count_of(all.text(), " nct_host=web1\n") == 3);
  CHECK(count_of(all.text(), " nct_run=r1\n") == 3);
  CHECK(none.text() == rec_line(1, "x") + rec_line(2, "x") + rec_line(3, "x"));
}

TEST_CASE("dict: a record with bytes missing is written whole; the next one repeats its own") {
  Core c(with({"timeout=5"}));
  c.feed("10.0.0.1", 514, record(1, "one"), T0);
  // Record 2 arrives as its first fragment only, then times out.
  std::string body = "two\n nct_host=web1\n nct_run=r1\n";
  std::string frag = "6,2,1000002,-,ncfrag=0/" + std::to_string(body.size()) + ";" +
                     body.substr(0, 10);
  c.feed("10.0.0.1", 514, frag, T0);
  c.asm_.expire(at(T0 + 10));
  c.feed("10.0.0.1", 514, record(3, "three"), at(T0 + 10));
  std::string text = c.text();
  CHECK(text.find("<6>[    1.000002] two\n") != std::string::npos);
  CHECK(text.find("nct_h[... 21 bytes missing ...]") != std::string::npos);
  // Record 3 writes its dictionary again: the one before it was cut.
  std::string tail = text.substr(text.find("] three\n"));
  CHECK(tail.find(" nct_host=web1\n") != std::string::npos);
}

TEST_CASE("dict: Linux 6.12 configfs userdata once per sender, not after every record") {
  Core dflt;
  Core all(with({"dict=all"}));
  for (const std::string& d : load_dump("6.12-configfs")) {
    dflt.feed(v4("127.0.0.1"), 6665, d, at(T0));
    all.feed(v4("127.0.0.1"), 6665, d, at(T0));
  }
  dflt.asm_.expire(at(T0), true);
  all.asm_.expire(at(T0), true);
  size_t every = count_of(all.text(), " nct_host=");
  size_t changed = count_of(dflt.text(), " nct_host=");
  MESSAGE("6.12-configfs: nct_host= lines with dict=all " << every << ", by default " << changed);
  CHECK(every > 1000);
  // The first record, and the two records around the one the kernel cut
  // at 2048 bytes, whose userdata ends up in its text.
  CHECK(changed <= 3);
  // Every record's text is still there.
  CHECK(count_of(dflt.text(), "nct:") == count_of(all.text(), "nct:"));
}

// ------------------------------------------------------------------ allow=

TEST_CASE("allow=: networks of both families, hosts, v4-mapped senders") {
  Options o = with({"allow=10.0.0.0/8,192.0.2.7,2001:db8::/32,::1,0.0.0.0/0"});
  REQUIRE(o.allow.count == 5);
  Options some = with({"allow=10.0.0.0/8,192.0.2.7,2001:db8::/32,::1"});
  CHECK(some.allow.allows(v4("10.255.1.2")));
  CHECK(some.allow.allows(v4("192.0.2.7")));
  CHECK_FALSE(some.allow.allows(v4("192.0.2.8")));
  CHECK_FALSE(some.allow.allows(v4("11.0.0.1")));
  CHECK(some.allow.allows(v6("2001:db8:1::5")));
  CHECK_FALSE(some.allow.allows(v6("2001:db9::5")));
  CHECK(some.allow.allows(v6("::1")));
  CHECK_FALSE(some.allow.allows(v6("::2")));
  // An IPv4 entry is not an IPv6 address with the same bits.
  CHECK_FALSE(some.allow.allows(v6("::10.0.0.1")));
  CHECK(o.allow.allows(v4("203.0.113.9")));  // 0.0.0.0/0: every IPv4 sender
  CHECK_FALSE(o.allow.allows(v6("2001:db9::5")));
  Options v6all = with({"allow=::/0"});
  CHECK(v6all.allow.allows(v4("203.0.113.9")));
  CHECK(v6all.allow.allows(v6("2001:db9::5")));
  Options mapped = with({"allow=::ffff:10.0.0.0/104"});
  CHECK(mapped.allow.allows(v4("10.1.2.3")));
}

TEST_CASE("allow=: an IPv6 datagram from a v4-mapped address is no IPv4 sender: refused, said so") {
  for (const char* allow : {"allow=10.0.0.0/8", "allow=0.0.0.0/0", "allow=::/0", "allow=10.1.2.3"}) {
    CAPTURE(allow);
    Core c(with({allow}));
    ul::Datagram d{};
    std::string text = "claims to be 10.1.2.3\n";
    d.addr = v4("10.1.2.3");
    d.port = 5000;
    d.when = at(T0);
    d.data = text.data();
    d.len = text.size();
    d.spoofed_v4 = true;
    c.asm_.datagram(d);
    CHECK(c.asm_.senders() == 0);
    CHECK(c.asm_.stats().refused == 1);
    CHECK(c.text() == "2026-11-22 03:00:00 udplogger: refused 1 datagram from senders not in allow= "
                      "or from IPv6 senders claiming an IPv4 address, the last from "
                      "[::ffff:10.1.2.3]:5000 (counted; reported at most once a minute)\n");
  }
  Core none;  // no allow= at all: still refused
  ul::Datagram d{};
  d.addr = v4("10.1.2.3");
  d.data = "x\n";
  d.len = 2;
  d.when = at(T0);
  d.spoofed_v4 = true;
  none.asm_.datagram(d);
  CHECK(none.asm_.stats().refused == 1);
}

TEST_CASE("allow=: bad lists are errors naming allow") {
  struct Case {
    const char* arg;
    const char* says;
  };
  for (Case k : {Case{"allow=", "an empty list"}, Case{"allow=10.0.0.0/8,", "an empty entry"},
                 Case{"allow=10.0.0.0/33", "'10.0.0.0/33': the prefix length must be 0..32"},
                 Case{"allow=::/129", "the prefix length must be 0..128"},
                 Case{"allow=10.0.0.0/", "the prefix length"},
                 Case{"allow=10.0.0.0/-8", "the prefix length"},
                 Case{"allow=example.com", "'example.com': not an IPv4 or IPv6 address"},
                 Case{"allow=10.1.2.3/8", "address bits set past the prefix (the network is "
                                          "10.0.0.0/8)"},
                 Case{"allow=2001:db8::1/32", "(the network is 2001:db8::/32)"}}) {
    CAPTURE(k.arg);
    Options o;
    std::string err;
    CHECK(parse({k.arg}, &o, &err) == ParseStatus::value_error);
    CHECK(err.rfind(std::string(k.arg) + ": ", 0) == 0);
    CHECK(err.find(k.says) != std::string::npos);
  }
  std::string many = "allow=10.0.0.1";
  for (int i = 2; i <= 65; i++) many += ",10.0.0." + std::to_string(i);
  Options o;
  std::string err;
  CHECK(parse({many.c_str()}, &o, &err) == ParseStatus::value_error);
  CHECK(err.find("more than 64 networks") != std::string::npos);
}

TEST_CASE("allow=: others are refused before they have a sender, in one notice a minute") {
  Core c(with({"allow=10.0.0.0/24"}));
  c.feed("10.0.0.1", 514, "welcome\n", T0);
  c.feed("10.0.1.1", 514, "stranger\n", T0);
  for (int i = 0; i < 1000; i++)
    c.feed(v4("203.0.113.5"), uint16_t(1000 + i), "flood\n", at(T0 + 1));
  CHECK(c.asm_.senders() == 1);
  CHECK(c.asm_.stats().refused == 1001);
  std::string first = "2026-11-22 03:00:00 udplogger: refused 1 datagram from senders not in "
                      "allow=, the last from 10.0.1.1:514 (counted; reported at most once a "
                      "minute)\n";
  CHECK(c.text() == p1 + "welcome\n" + first);
  // The rest is reported when the minute is over, even if nothing arrives.
  timespec due = c.asm_.next_deadline();
  CHECK(due.tv_sec == T0 + 60);
  c.asm_.expire(at(T0 + 59));
  CHECK(c.text() == p1 + "welcome\n" + first);
  c.asm_.expire(at(T0 + 60));
  CHECK(c.text() == p1 + "welcome\n" + first +
                        "2026-11-22 03:01:00 udplogger: refused 1000 datagrams from senders not "
                        "in allow=, the last from 203.0.113.5:1999 (counted; reported at most "
                        "once a minute)\n");
  CHECK(c.asm_.next_deadline().tv_sec == 0);
  char stats[1024];
  c.asm_.format_stats(stats, sizeof stats);
  CHECK(std::string(stats).find(" refused=1001 ") != std::string::npos);
}

TEST_CASE("allow=: the refused count is written at exit") {
  Core c(with({"allow=::1"}));
  c.feed("10.0.0.1", 514, "no\n", T0);
  c.feed("10.0.0.1", 514, "no\n", T0);
  c.asm_.expire(at(T0 + 5), true);
  CHECK(count_of(c.text(), "udplogger: refused 1 datagram ") == 2);
}

TEST_CASE("eol= and dict= name what they allow") {
  Options o;
  std::string err;
  CHECK(parse({"eol=crlf"}, &o, &err) == ParseStatus::value_error);
  CHECK(err == "eol=crlf: unknown (allowed: auto, newline, datagram)");
  CHECK(parse({"dict=some"}, &o, &err) == ParseStatus::value_error);
  CHECK(err == "dict=some: unknown (allowed: changes, all, none)");
  CHECK(parse({"escape=raw"}, &o, &err) == ParseStatus::value_error);
  CHECK(err == "escape=raw: unknown (allowed: hex, none)");
  Options d;
  CHECK(d.eol == ul::Eol::automatic);
  CHECK(d.dict == ul::Dict::changes);
  CHECK(d.allow.count == 0);
}

TEST_CASE("netconsole captures: syslog datagrams, CRLF and dict= change no kernel line") {
  // Against 1.1's line ends and every dictionary copy: the legacy sets give
  // the same log byte for byte, the extended ones the same lines apart from
  // repeated dictionary lines.
  for (std::string set : kCaptureSets) {
    CAPTURE(set);
    Core now;
    Core before(with({"eol=newline", "dict=all"}));
    for (const std::string& d : load_dump(set)) {
      now.feed(v4("127.0.0.1"), 6665, d, at(T0));
      before.feed(v4("127.0.0.1"), 6665, d, at(T0));
    }
    now.asm_.expire(at(T0), true);
    before.asm_.expire(at(T0), true);
    if (set.find("legacy") != std::string::npos) {
      CHECK(now.text() == before.text());
      continue;
    }
    auto without_dictionaries = [](const std::string& log) {
      std::string out;
      for (size_t i = 0; i < log.size();) {
        size_t e = log.find('\n', i) + 1;
        // "2026-11-22 03:00:00 127.0.0.1:6665  KEY=value": a space after the sender.
        if (log.compare(i + 20, 16, "127.0.0.1:6665  ") != 0) out += log.substr(i, e - i);
        i = e;
      }
      return out;
    };
    CHECK(without_dictionaries(now.text()) == without_dictionaries(before.text()));
    CHECK(now.text().size() <= before.text().size());
  }
}
