// A core fed by hand, as the unit tests drive it: no sockets, no files,
// time zone UTC.
#ifndef UDPLOGGER_TEST_CORE_HARNESS_H
#define UDPLOGGER_TEST_CORE_HARNESS_H

#include <arpa/inet.h>
#include <doctest.h>
#include <stdlib.h>

#include <string>

#include "udplogger.h"

// 2026-11-22 03:00:00 UTC
constexpr time_t T0 = 1795316400;

inline timespec at(time_t sec, long nsec = 0) { return timespec{sec, nsec}; }

inline in6_addr v4(const char* ip) {
  in6_addr a = {};
  a.s6_addr[10] = a.s6_addr[11] = 0xff;
  inet_pton(AF_INET, ip, &a.s6_addr[12]);
  return a;
}

// Collects what the core would write.
struct Capture {
  std::string text;
  int flushes = 0;
  static void flush(void* ctx, const iovec* iov, int n) {
    auto* c = static_cast<Capture*>(ctx);
    c->flushes++;
    for (int i = 0; i < n; i++)
      c->text.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
  }
};

struct Core {
  ul::Options opts;
  ul::Output out;
  ul::Assembler asm_;
  Capture cap;
  explicit Core(ul::Options o = ul::Options(), size_t arena = 4096) : opts(o) {
    setenv("TZ", "UTC", 1);
    tzset();
    REQUIRE(out.init(arena, Capture::flush, &cap));
    REQUIRE(asm_.init(opts, &out));
  }
  void feed(const char* ip, uint16_t port, const std::string& data, timespec when) {
    asm_.datagram(v4(ip), port, data.data(), data.size(), when);
    out.flush();  // as the shell does: the datagram's bytes go away now
  }
  void feed(const char* ip, uint16_t port, const std::string& data, time_t sec) {
    feed(ip, port, data, at(sec));
  }
  std::string text() {
    out.flush();
    return cap.text;
  }
};

#endif
