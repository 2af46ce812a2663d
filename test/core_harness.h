// A core fed by hand, as the unit tests drive it: no sockets, no files, a
// fake clock (times are arguments) and time zone UTC, restored afterwards.
#ifndef UDPLOGGER_TEST_CORE_HARNESS_H
#define UDPLOGGER_TEST_CORE_HARNESS_H

#include <arpa/inet.h>
#include <doctest.h>
#include <stdlib.h>

#include <string>
#include <utility>
#include <vector>

#include "udplogger.h"

// 2026-11-22 03:00:00 UTC
constexpr time_t T0 = 1795316400;

inline timespec at(time_t sec, long nsec = 0) { return timespec{sec, nsec}; }

// Runs parse_options on args (without the program name); *err gets its message.
inline ul::ParseStatus parse(std::vector<const char*> args, ul::Options* o,
                             std::string* err = nullptr) {
  args.insert(args.begin(), "udplogger");
  char buf[512];
  ul::ParseStatus st = ul::parse_options(int(args.size()), const_cast<char**>(args.data()), o,
                                         buf, sizeof buf);
  if (err) *err = buf;
  return st;
}

inline in6_addr v4(const char* ip) {
  in6_addr a = {};
  a.s6_addr[10] = a.s6_addr[11] = 0xff;
  inet_pton(AF_INET, ip, &a.s6_addr[12]);
  return a;
}

inline in6_addr v6(const char* ip) {
  in6_addr a = {};
  inet_pton(AF_INET6, ip, &a);
  return a;
}

// Sets TZ for the life of the object and puts the old value back after.
class ScopedZone {
 public:
  explicit ScopedZone(const char* tz) {
    const char* old = getenv("TZ");
    had_ = old != nullptr;
    if (had_) old_ = old;
    setenv("TZ", tz, 1);
    tzset();
  }
  ~ScopedZone() {
    if (had_) setenv("TZ", old_.c_str(), 1);
    else unsetenv("TZ");
    tzset();
  }

 private:
  bool had_;
  std::string old_;
};

// The expected prefix of a line, made by hand (not by the code under
// test): "YYYY-MM-DD hh:mm:ss " for a UTC time T0 + offset, and the sender.
inline std::string stamp_at(time_t offset) {
  long s = long(offset);  // T0 is 03:00:00 on 2026-11-22
  long sod = 3 * 3600 + s;
  char buf[32];
  snprintf(buf, sizeof buf, "2026-11-%02ld %02ld:%02ld:%02ld ", 22 + sod / 86400, sod % 86400 / 3600,
           sod % 3600 / 60, sod % 60);
  return buf;
}

// Collects what the core would write, batch by batch, with the host each
// batch is about ("" for the daemon's own lines).
struct Capture : ul::Sink {
  std::string text;
  std::vector<std::pair<std::string, std::string>> batches;
  int flushes = 0;
  ul::WriteReport write(const in6_addr* host, const iovec* iov, int n, const char*,
                        size_t) override {
    flushes++;
    std::string batch;
    for (int i = 0; i < n; i++)
      batch.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    char name[ul::kHostNameMax] = "";
    if (host) ul::format_host(*host, name);
    batches.emplace_back(name, batch);
    text += batch;
    return ul::WriteReport();
  }
};

struct Core {
  ScopedZone zone{"UTC"};
  ul::Options opts;
  ul::Output out;
  ul::Assembler asm_;
  Capture cap;
  explicit Core(ul::Options o = ul::Options(), size_t arena = 4096) : opts(o) {
    REQUIRE(out.init(arena, &cap, asm_.lines(), o.split == ul::Split::host));
    REQUIRE(asm_.init(opts, &out));
  }
  void feed(const in6_addr& addr, uint16_t port, const std::string& data, timespec when,
            uint32_t dropped = 0) {
    ul::Datagram d{};
    d.addr = addr;
    d.port = port;
    d.when = when;
    d.data = data.data();
    d.len = data.size();
    asm_.kernel_dropped(dropped, when);  // as the shell reports them: before
    asm_.datagram(d);
    out.flush();  // as the shell does: the datagram's bytes go away now
  }
  void feed(const char* ip, uint16_t port, const std::string& data, timespec when) {
    feed(v4(ip), port, data, when);
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
