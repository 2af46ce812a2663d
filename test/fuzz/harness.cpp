// The fuzz harness (see harness.h).
#include "harness.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <map>
#include <string>

#include "udplogger.h"

namespace {

std::string collected;

struct Collect : ul::Sink {
  ul::WriteReport write(const in6_addr*, const iovec* iov, int n, const char*, size_t) override {
    for (int i = 0; i < n; i++)
      collected.append(static_cast<const char*>(iov[i].iov_base), iov[i].iov_len);
    return ul::WriteReport();
  }
};

[[noreturn]] void finding(const char* what, const std::string& line) {
  fprintf(stderr, "fuzz invariant broken: %s: %.200s\n", what, line.c_str());
  abort();
}

in6_addr sender_addr(uint8_t id) {
  in6_addr a = {};
  if (id & 0x80) {  // some IPv6 senders
    a.s6_addr[0] = 0x20;
    a.s6_addr[1] = 0x01;
    a.s6_addr[15] = uint8_t(id & 7);
  } else {
    a.s6_addr[10] = a.s6_addr[11] = 0xff;
    a.s6_addr[12] = 10;
    a.s6_addr[15] = uint8_t(id & 7);
  }
  return a;
}

// "2026-11-22 03:00:00 " with digits where digits belong.
bool has_stamp(const std::string& line) {
  static const char shape[] = "dddd-dd-dd dd:dd:dd ";
  if (line.size() < 20) return false;
  for (int i = 0; i < 20; i++)
    if (shape[i] == 'd' ? (line[i] < '0' || line[i] > '9') : line[i] != shape[i]) return false;
  return true;
}

}  // namespace

void fuzz_one(const uint8_t* data, size_t size, bool raw) {
  setenv("TZ", "UTC", 1);
  ul::Options o;
  uint8_t knobs = size > 0 ? data[0] : 0;
  if (raw) {  // 1.1's rules, so that every byte but a line end's CR is kept
    o.ext = ul::Ext::raw;
    o.escape = ul::Escape::none;
    o.eol = ul::Eol::newline;
  } else {
    o.escape = knobs & 1 ? ul::Escape::none : ul::Escape::hex;
    o.split = knobs & 2 ? ul::Split::host : ul::Split::none;
    o.eol = knobs & 128 ? ul::Eol::datagram : ul::Eol::automatic;
  }
  o.clients = knobs & 4 ? 10 : 1024;
  o.wbuf = knobs & 8 ? 1024 : 65536;
  o.frags = knobs & 16 ? 4 : 64;
  o.partials = knobs & 32 ? 65536 : 4UL << 20;
  collected.clear();
  std::map<std::string, std::string> sent;  // sender name -> bytes sent
  {
    Collect sink;
    ul::Output out;
    ul::Assembler a;
    if (!out.init(knobs & 64 ? 4096 : 65536, &sink, a.lines(), o.split == ul::Split::host) ||
        !a.init(o, &out, 42))
      abort();
    timespec now = {1795316400, 0};
    size_t i = size > 0 ? 1 : 0;
    while (i + 4 <= size) {
      uint8_t who = data[i], step = data[i + 1];
      size_t len = size_t(data[i + 2]) | size_t(data[i + 3]) << 8;
      i += 4;
      if (len > size - i) len = size - i;
      now.tv_nsec += long(step) * 7000000;
      now.tv_sec += now.tv_nsec / 1000000000 + (step == 255 ? 20 : 0);
      now.tv_nsec %= 1000000000;
      ul::Datagram d{sender_addr(who), uint16_t(6665 + (who >> 3 & 3)), now,
                     reinterpret_cast<const char*>(data + i), len, false};
      if (step == 254) a.kernel_dropped(1, now);
      char name[ul::kSenderNameMax];
      sent[std::string(name, ul::format_sender(d.addr, d.port, name))].append(d.data, len);
      a.datagram(d);
      out.flush();
      if (step >= 250) a.expire(now);
      if (step == 253) a.tally();  // hosts read now and then, as the metrics do
      i += len;
    }
    a.expire(now, true);
    out.flush();
    // Every sender's line is counted for its host (256 senders at most: none
    // forgotten).
    a.tally();
    size_t n = 0;
    const ul::HostState* hosts = a.fleet().all(&n);
    uint64_t host_lines = 0;
    for (size_t h = 0; h < n; h++) host_lines += hosts[h].lines;
    if (host_lines != a.stats().lines)
      finding("the hosts' lines do not add up to the lines written", std::to_string(host_lines));
  }
  if (!collected.empty() && collected.back() != '\n') finding("log does not end in a newline", collected);
  std::map<std::string, std::string> got;
  size_t start = 0;
  while (start < collected.size()) {
    size_t end = collected.find('\n', start);
    std::string line = collected.substr(start, end - start);
    start = end + 1;
    if (!has_stamp(line)) finding("no stamp", line);
    std::string rest = line.substr(20);
    if (rest.compare(0, 11, "udplogger: ") == 0) {
      for (char c : rest)
        if (ul::needs_escape(static_cast<unsigned char>(c))) finding("raw control byte in a notice", line);
      continue;
    }
    size_t sp = rest.find(' ');
    if (sp == std::string::npos) finding("no sender", line);
    std::string who = rest.substr(0, sp), text = rest.substr(sp + 1);
    if (!sent.count(who)) finding("a sender nobody was", line);
    if (o.escape == ul::Escape::hex)
      for (char c : text)
        if (ul::needs_escape(static_cast<unsigned char>(c))) finding("raw control byte", line);
    size_t limit = (o.escape == ul::Escape::hex ? 4 : 1) * size_t(o.wbuf) + 64;  // + a record's head
    if (text.size() > limit) finding("line longer than wbuf allows", line);
    got[who] += text;
  }
  if (raw) {  // every byte once, in order: newlines and CRs aside, which lines add and take
    for (auto& kv : sent) {
      std::string want;
      for (char c : kv.second)
        if (c != '\n' && c != '\r') want += c;
      std::string have;
      for (char c : got[kv.first])
        if (c != '\n' && c != '\r') have += c;
      if (have != want) finding("bytes lost, added or reordered for", kv.first);
    }
  }
}
