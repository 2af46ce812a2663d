// The real netconsole captures through the core and through the daemon:
// every record the kernel logged must come out as readable text.
#include <arpa/inet.h>
#include <doctest.h>
#include <stdlib.h>

#include <map>
#include <string>
#include <unordered_set>
#include <vector>

#include "helpers.h"
#include "netconsole.h"
#include "udplogger.h"

namespace {

struct Capture {
  std::string text;
  static void flush(void* ctx, const iovec* iov, int n) {
    for (int i = 0; i < n; i++)
      static_cast<Capture*>(ctx)->text.append(static_cast<const char*>(iov[i].iov_base),
                                              iov[i].iov_len);
  }
};

in6_addr localhost() {
  in6_addr a = {};
  a.s6_addr[10] = a.s6_addr[11] = 0xff;
  inet_pton(AF_INET, "127.0.0.1", &a.s6_addr[12]);
  return a;
}

constexpr time_t T0 = 1795316400;  // 2026-11-22 03:00:00 UTC

// Feeds datagrams to a fresh core as from 127.0.0.1:6665; returns the log.
std::string replay(const std::vector<std::string>& datagrams, ul::Options o = ul::Options(),
                   ul::Stats* stats = nullptr) {
  setenv("TZ", "UTC", 1);
  tzset();
  Capture cap;
  ul::Output out;
  ul::Assembler a;
  REQUIRE(out.init(65536, Capture::flush, &cap));
  REQUIRE(a.init(o, &out));
  long i = 0;
  for (const std::string& d : datagrams) {
    a.datagram(localhost(), 6665, d.data(), d.size(), timespec{T0, i++ * 1000});
    out.flush();
  }
  a.expire(timespec{T0 + 1, 0}, true);
  out.flush();
  if (stats) *stats = a.stats();
  return cap.text;
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
