// udplogger: receive line-oriented UDP log streams (Linux netconsole and
// others) and append them to daily log files.
//
// Map of this file, in the order a datagram travels.  The pure core,
// declared in udplogger.h, does no I/O:
//   options        key=value parsing and its error texts
//   formatting     escaping and the line scan, stamps, sender and host
//                  names, day file names, metric label values
//   core           Core: the contract's verbs, over the parts below
//   routing        Assembler: allow=, a datagram's sender, extended
//                  netconsole or text; the machine's events made into
//                  lines and counts
//   senders        SenderTable: slots, hash, least recently heard
//   fleet          kernel crash events in a line's first bytes; Fleet, the
//                  hosts heard (hosts=) and the crash follow-up rule
//   text lines     TextLines: plain text joined into lines per sender,
//                  unfinished lines and their one cap (partials=)
//   netconsole     extended header parsing; Netconsole, the state machine
//                  (SEQ, msgid, reassembly); RecordWriter (a record as lines)
//   LineWriter     the one birthplace of every log line and notice
//   output         Output: lines collected as iovecs, handed to the sink,
//                  its reports counted
//   pacing         Pacer: the loop's pause under load, from the arrival rate
// The shell does the I/O:
//   listener       create (or inherit by socket activation), tune and
//                  describe the UDP sockets
//   receive        recvmmsg into the ring, one Datagram per message
//   sinks          log directory and files: DailyFile, HostFiles, StdoutSink
//   notify         systemd's readiness protocol
//   fleet view     metrics= (Prometheus text format) and the one-line
//                  summary for systemd's status and by hand
//   privileges     dropping uid and gid
//   loop           setup, then epoll: receive, expire, signals, midnight;
//                  main
//
// Copyright (C) 2026 the udplogger authors.  GPL version 2, see COPYING.
#include "udplogger.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <poll.h>
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <stddef.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
#ifdef __SSE2__
#include <emmintrin.h>
#endif


namespace ul {

// ================================================================= options

const char kUsage[] =
    "usage: udplogger [key=value ...]\n"
    "  ip=ADDR      address to bind, IPv4 or IPv6 literal (default: any, dual stack)\n"
    "  port=N       UDP port (default 6666)\n"
    "  dir=PATH     log directory, or - for standard output (default .)\n"
    "  timeout=S    seconds a line waits for its newline, 5..600 (default 10)\n"
    "  clients=N    senders tracked at once, 10..65536 (default 1024)\n"
    "  wbuf=N       longest line kept in bytes, 1024..1048576 (default 65536)\n"
    "  rbuf=N       socket receive buffer in bytes, 65536..1073741824 (default 8388608)\n"
    "  uid=N gid=N  numeric ids to switch to after binding (default: unchanged)\n"
    "  perm=MODE    octal mode of new log files, no x bits (default 0600)\n"
    "  escape=hex|none  write control bytes as \\xNN (default) or raw\n"
    "  ext=auto|raw extended netconsole: decode and reassemble (default) or\n"
    "               write as received, as udplogger 1.1 did\n"
    "  frags=N      fragmented records reassembled at once, 4..4096 (default 64)\n"
    "  stamp=classic|iso  line time as 2026-11-22 02:04:05 (default) or\n"
    "               2026-11-22T02:04:05.123456+09:00\n"
    "  split=none|host  one daily file (default), or DIR/ADDR/ per sender address\n"
    "  files=N      split=host: log files open at once, 1..65536 (default 64)\n"
    "  newdirs=N    split=host: new host directories a day, 0..1048576 (default 4096)\n"
    "  hosts=N      sending hosts tracked at once, 10..1048576 (default 4096)\n"
    "  metrics=PATH Prometheus text file, rewritten every 15 s (default: none)\n"
    "  partials=N   bytes all partial lines may hold, 65536..1073741824 (default 4194304)\n"
    "  eol=auto|newline|datagram  what ends a line besides a newline: a syslog\n"
    "               datagram's end (default), nothing (as 1.1), every datagram's end\n"
    "  dict=changes|all|none  extended netconsole KEY=value lines: when they\n"
    "               change (default), after every record, never\n"
    "  allow=CIDR[,CIDR...]  take datagrams only from these networks\n"
    "  reuseport=0|1  share the port with other udplogger processes (SO_REUSEPORT)\n"
    "  debug=0|1    trace every datagram on stderr: sender, length, what became of it\n"
    "  --check      check the set-up (directory, port, user) as a start would, then exit\n"
    "  --help, --version\n"
    "Every key=value may also be written --key=value or --key value.\n";

namespace {

// Parses an unsigned decimal (or octal) number that fills all of s.
bool parse_number(const char* s, int base, unsigned long* out) {
  if (*s < '0' || *s > '9') return false;  // no sign, no space, not empty
  errno = 0;
  char* end = nullptr;
  unsigned long v = strtoul(s, &end, base);
  if (errno != 0 || *end != '\0') return false;
  *out = v;
  return true;
}

struct NumberOption {
  const char* key;
  unsigned long min, max;
  int base;
};

const NumberOption kNumberOptions[] = {
    {"port", 1, 65535, 10},        {"timeout", 5, 600, 10},
    {"clients", 10, 65536, 10},    {"wbuf", 1024, 1048576, 10},
    {"rbuf", 65536, 1UL << 30, 10}, {"uid", 0, 4294967294UL, 10},
    {"gid", 0, 4294967294UL, 10},  {"perm", 0, 0777, 8},
    {"frags", 4, 4096, 10},        {"files", 1, 65536, 10},
    {"debug", 0, 1, 10},           {"partials", 65536, 1UL << 30, 10},
    {"reuseport", 0, 1, 10},       {"newdirs", 0, 1048576, 10},
    {"hosts", 10, 1048576, 10},
};

void store_number(Options* o, const char* key, unsigned long v) {
  if (!strcmp(key, "port")) o->port = unsigned(v);
  else if (!strcmp(key, "timeout")) o->timeout = unsigned(v);
  else if (!strcmp(key, "clients")) o->clients = unsigned(v);
  else if (!strcmp(key, "wbuf")) o->wbuf = unsigned(v);
  else if (!strcmp(key, "rbuf")) o->rbuf = v;
  else if (!strcmp(key, "uid")) o->uid = long(v);
  else if (!strcmp(key, "gid")) o->gid = long(v);
  else if (!strcmp(key, "perm")) o->perm = unsigned(v);
  else if (!strcmp(key, "frags")) o->frags = unsigned(v);
  else if (!strcmp(key, "files")) o->files = unsigned(v);
  else if (!strcmp(key, "debug")) o->debug = unsigned(v);
  else if (!strcmp(key, "partials")) o->partials = v;
  else if (!strcmp(key, "reuseport")) o->reuseport = unsigned(v);
  else if (!strcmp(key, "newdirs")) o->newdirs = unsigned(v);
  else if (!strcmp(key, "hosts")) o->hosts = unsigned(v);
}

ParseStatus parse_number_option(const NumberOption& n, const char* value, Options* o,
                                char* err, size_t errlen) {
  unsigned long v = 0;
  const char* range_fmt = n.base == 8 ? "%s=%s: %s (allowed: octal %04lo..%04lo)"
                                      : "%s=%s: %s (allowed: %lu..%lu)";
  if (!parse_number(value, n.base, &v)) {
    snprintf(err, errlen, range_fmt, n.key, value, "not a number", n.min, n.max);
    return ParseStatus::value_error;
  }
  if (v < n.min || v > n.max) {
    snprintf(err, errlen, range_fmt, n.key, value, "out of range", n.min, n.max);
    return ParseStatus::value_error;
  }
  if (n.base == 8 && (v & 0111)) {
    snprintf(err, errlen, "perm=%s: log files must not be executable "
             "(allowed: octal 0000..0666)", value);
    return ParseStatus::value_error;
  }
  store_number(o, n.key, v);
  return ParseStatus::ok;
}

// A keyword option: one of two or three words, the first the default;
// the word's index is the value of the option's enum.
struct WordOption {
  const char* key;
  const char* words[3];  // the third null for two
};

const WordOption kWordOptions[] = {
    {"escape", {"hex", "none"}},         {"ext", {"auto", "raw"}},
    {"stamp", {"classic", "iso"}},       {"split", {"none", "host"}},
    {"eol", {"auto", "newline", "datagram"}}, {"dict", {"changes", "all", "none"}},
};

void store_word(Options* o, const char* key, int i) {
  if (!strcmp(key, "escape")) o->escape = Escape(i);
  else if (!strcmp(key, "ext")) o->ext = Ext(i);
  else if (!strcmp(key, "stamp")) o->stamp = StampStyle(i);
  else if (!strcmp(key, "split")) o->split = Split(i);
  else if (!strcmp(key, "eol")) o->eol = Eol(i);
  else if (!strcmp(key, "dict")) o->dict = Dict(i);
}

ParseStatus parse_word_option(const WordOption& w, const char* value, Options* o,
                                      char* err, size_t errlen) {
  for (int i = 0; i < 3 && w.words[i]; i++) {
    if (strcmp(value, w.words[i]) != 0) continue;
    store_word(o, w.key, i);
    return ParseStatus::ok;
  }
  snprintf(err, errlen, "%s=%s: unknown (allowed: %s, %s%s%s)", w.key, value, w.words[0],
           w.words[1], w.words[2] ? ", " : "", w.words[2] ? w.words[2] : "");
  return ParseStatus::value_error;
}

// Fills net from one allow= entry, "ADDR" or "ADDR/BITS"; false with
// *why set.  A network with bits set past its prefix is refused: that is
// a typo more often than not.
bool parse_net(const char* entry, AllowList::Net* net, char* why, size_t whylen) {
  char text[INET6_ADDRSTRLEN + 8];
  size_t len = strlen(entry);
  if (len >= sizeof text) {
    snprintf(why, whylen, "'%.60s': too long for an address", entry);
    return false;
  }
  memcpy(text, entry, len + 1);
  char* slash = strchr(text, '/');
  if (slash) *slash = '\0';
  in6_addr a = {};
  unsigned width = 128, offset = 0;
  if (inet_pton(AF_INET, text, &a.s6_addr[12]) == 1) {
    a.s6_addr[10] = a.s6_addr[11] = 0xff;  // v4-mapped
    width = 32;
    offset = 96;
  } else if (inet_pton(AF_INET6, text, &a) != 1) {
    snprintf(why, whylen, "'%s': not an IPv4 or IPv6 address", text);
    return false;
  }
  unsigned long bits = width;
  if (slash && (!parse_number(slash + 1, 10, &bits) || bits > width)) {
    snprintf(why, whylen, "'%s': the prefix length must be 0..%u", entry, width);
    return false;
  }
  in6_addr mask = {};
  for (unsigned i = 0; i < offset + bits; i++) mask.s6_addr[i / 8] |= uint8_t(0x80 >> (i % 8));
  in6_addr masked = a;
  for (int i = 0; i < 16; i++) masked.s6_addr[i] &= mask.s6_addr[i];
  if (memcmp(&masked, &a, sizeof a) != 0) {
    char shown[INET6_ADDRSTRLEN];
    if (width == 32) inet_ntop(AF_INET, &masked.s6_addr[12], shown, sizeof shown);
    else inet_ntop(AF_INET6, &masked, shown, sizeof shown);
    snprintf(why, whylen, "'%s': address bits set past the prefix (the network is %s/%lu)",
             entry, shown, bits);
    return false;
  }
  memcpy(net->addr, &a, sizeof a);
  memcpy(net->mask, &mask, sizeof mask);
  return true;
}

// allow=CIDR[,CIDR...]: replaces the list.
ParseStatus parse_allow(const char* value, Options* o, char* err, size_t errlen) {
  AllowList& l = o->allow;
  l.count = 0;
  char why[160] = "an empty list";
  const char* p = value;
  for (;;) {
    const char* comma = strchr(p, ',');
    size_t n = comma ? size_t(comma - p) : strlen(p);
    char entry[80];
    if (n == 0) {
      if (*value) snprintf(why, sizeof why, "an empty entry");
      break;
    }
    if (l.count == kAllowMax) {
      snprintf(why, sizeof why, "more than %u networks", kAllowMax);
      break;
    }
    snprintf(entry, sizeof entry, "%.*s", int(n), p);
    if (!parse_net(entry, &l.nets[l.count], why, sizeof why)) break;
    l.count++;
    if (!comma) {
      l.given = value;
      return ParseStatus::ok;
    }
    p = comma + 1;
  }
  bool long_list = strlen(value) > 60;  // the message names the entry at fault
  snprintf(err, errlen, "allow=%.60s%s: %s (allowed: IPv4 or IPv6 networks such as "
           "10.0.0.0/8,192.0.2.7,2001:db8::/32, separated by commas)", value,
           long_list ? "..." : "", why);
  return ParseStatus::value_error;
}

// Parses one key=value; returns usage_error for an unknown key.
ParseStatus parse_one(const char* key, size_t keylen, const char* value,
                      Options* o, char* err, size_t errlen) {
  char k[16];
  if (keylen >= sizeof k) return ParseStatus::usage_error;
  memcpy(k, key, keylen);
  k[keylen] = '\0';
  for (const NumberOption& n : kNumberOptions)
    if (!strcmp(k, n.key)) return parse_number_option(n, value, o, err, errlen);
  for (const WordOption& w : kWordOptions)
    if (!strcmp(k, w.key)) return parse_word_option(w, value, o, err, errlen);
  if (!strcmp(k, "allow")) return parse_allow(value, o, err, errlen);
  if (!strcmp(k, "ip")) {
    unsigned char buf[sizeof(in6_addr)];
    if (inet_pton(AF_INET, value, buf) != 1 &&
        inet_pton(AF_INET6, value, buf) != 1) {
      snprintf(err, errlen, "ip=%s: not an IPv4 or IPv6 address "
               "(allowed: a numeric address such as 0.0.0.0 or ::1; no names)", value);
      return ParseStatus::value_error;
    }
    o->ip = value;
    return ParseStatus::ok;
  }
  if (!strcmp(k, "dir")) {
    if (!*value) {
      snprintf(err, errlen, "dir=: empty (allowed: a directory path, or - for standard output)");
      return ParseStatus::value_error;
    }
    if (strlen(value) >= kPathMax) {  // looked up again on SIGHUP and at midnight: never cut
      snprintf(err, errlen, "dir=%.40s...: %zu bytes long (allowed: at most %zu)", value,
               strlen(value), kPathMax - 1);
      return ParseStatus::value_error;
    }
    o->dir = value;
    return ParseStatus::ok;
  }
  if (!strcmp(k, "metrics")) {
    const char* base = strrchr(value, '/');
    base = base ? base + 1 : value;
    if (!*base || !strcmp(base, ".") || !strcmp(base, "..") || strlen(value) >= kPathMax - 8) {
      snprintf(err, errlen, "metrics=%.60s: %s (allowed: a file path, such as "
               "/run/udplogger/udplogger.prom)", value, *value ? "not a file name" : "empty");
      return ParseStatus::value_error;
    }
    o->metrics = value;
    return ParseStatus::ok;
  }
  return ParseStatus::usage_error;
}

}  // namespace

ParseStatus parse_options(int argc, char* const* argv, Options* o, char* err,
                          size_t errlen) {
  err[0] = '\0';
  for (int i = 1; i < argc; i++) {
    const char* arg = argv[i];
    if (!strcmp(arg, "--help") || !strcmp(arg, "-h")) return ParseStatus::help;
    if (!strcmp(arg, "--version") || !strcmp(arg, "-V")) return ParseStatus::version;
    if (!strcmp(arg, "--check") || !strcmp(arg, "-t")) {
      o->check = true;
      continue;
    }
    bool dashed = !strncmp(arg, "--", 2);
    if (dashed) arg += 2;
    const char* eq = strchr(arg, '=');
    ParseStatus st;
    if (eq)
      st = parse_one(arg, size_t(eq - arg), eq + 1, o, err, errlen);
    else if (dashed && i + 1 < argc)  // GNU style: --key value
      st = parse_one(arg, strlen(arg), argv[++i], o, err, errlen);
    else
      st = ParseStatus::usage_error;
    if (st == ParseStatus::usage_error)
      snprintf(err, errlen, "unknown option '%s'", argv[i]);
    if (st != ParseStatus::ok) return st;
  }
  if (o->to_stdout() && o->split == Split::host) {
    snprintf(err, errlen, "split=host: needs a log directory, not dir=- "
             "(allowed with dir=-: split=none)");
    return ParseStatus::value_error;
  }
  return ParseStatus::ok;
}

// ============================================================== formatting

namespace {

// Bit i set when byte i of the 16 at p needs escaping: SSE2 on x86-64
// (every x86-64 CPU has it), else GCC's vector extension (NEON on arm64).
#ifdef __SSE2__
inline unsigned escape_bits16(const char* p) {
  __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  __m128i low = _mm_cmpeq_epi8(_mm_min_epu8(x, _mm_set1_epi8(0x1f)), x);  // x <= 0x1f
  __m128i tab = _mm_cmpeq_epi8(x, _mm_set1_epi8('\t'));
  __m128i del = _mm_cmpeq_epi8(x, _mm_set1_epi8(0x7f));
  return unsigned(_mm_movemask_epi8(_mm_or_si128(_mm_andnot_si128(tab, low), del)));
}
#else
typedef unsigned char Bytes16 __attribute__((vector_size(16)));

inline unsigned escape_bits16(const char* p) {
  Bytes16 x;
  memcpy(&x, p, 16);
  Bytes16 hit = Bytes16(((x < 0x20) & (x != '\t')) | (x == 0x7f));
  unsigned bits = 0;
  for (int i = 0; i < 16; i++) bits |= unsigned(hit[i] & 1) << i;
  return bits;
}
#endif

// The first byte from p that needs escaping (a newline is one), or end.
// This is the loop every byte of plain text goes through: 32 bytes at a
// time, then 16, the last 16 overlapping bytes already known clean; text
// shorter than 16 bytes byte by byte.
const char* find_control(const char* p, const char* end) {
  if (end - p >= 16) {
    for (; end - p > 32; p += 32)
      if (unsigned bits = escape_bits16(p) | escape_bits16(p + 16) << 16)
        return p + __builtin_ctz(bits);
    if (end - p > 16) {  // 17 to 32 bytes left
      if (unsigned bits = escape_bits16(p)) return p + __builtin_ctz(bits);
    }
    unsigned bits = escape_bits16(end - 16);
    return bits ? end - 16 + __builtin_ctz(bits) : end;
  }
  for (; p < end; p++)
    if (needs_escape(static_cast<unsigned char>(*p))) return p;
  return end;
}

bool any_escape(const char* p, size_t len) { return find_control(p, p + len) != p + len; }

// Two digits of v at p; the stamp formatter runs once a second, but
// snprintf would still be the biggest cost of a quiet second.
void put2(char* p, int v) {
  p[0] = char('0' + v / 10 % 10);
  p[1] = char('0' + v % 10);
}

// Where the six digits of the microsecond stand in an ISO stamp.
constexpr size_t kIsoMicros = 20;

// The six digits of the microsecond at p.
void put_micros(char* p, long nsec) {
  long us = nsec / 1000;
  for (int i = 5; i >= 0; i--, us /= 10) p[i] = char('0' + us % 10);
}

}  // namespace

size_t escape_text(const char* src, size_t len, char* dst) {
  static const char hex[] = "0123456789abcdef";
  char* d = dst;
  for (size_t i = 0; i < len; i++) {
    unsigned char c = static_cast<unsigned char>(src[i]);
    if (needs_escape(c)) {
      d[0] = '\\';
      d[1] = 'x';
      d[2] = hex[c >> 4];
      d[3] = hex[c & 15];
      d += 4;
    } else {
      *d++ = char(c);
    }
  }
  return size_t(d - dst);
}

// "YYYY-MM-DD hh:mm:ss " or "YYYY-MM-DDThh:mm:ss.uuuuuu+hh:mm ".
size_t format_stamp(StampStyle style, const timespec& t, char out[kStampMax + 1]) {
  struct tm tm;
  localtime_r(&t.tv_sec, &tm);
  int year = tm.tm_year + 1900;
  put2(out, year / 100);
  put2(out + 2, year % 100);
  out[4] = '-';
  put2(out + 5, tm.tm_mon + 1);
  out[7] = '-';
  put2(out + 8, tm.tm_mday);
  out[10] = style == StampStyle::iso ? 'T' : ' ';
  put2(out + 11, tm.tm_hour);
  out[13] = ':';
  put2(out + 14, tm.tm_min);
  out[16] = ':';
  put2(out + 17, tm.tm_sec);
  size_t n = 19;
  if (style == StampStyle::iso) {
    out[19] = '.';
    put_micros(out + kIsoMicros, t.tv_nsec);
    long off = tm.tm_gmtoff / 60;  // minutes east of UTC
    out[26] = off < 0 ? '-' : '+';
    if (off < 0) off = -off;
    put2(out + 27, int(off / 60 % 100));
    out[29] = ':';
    put2(out + 30, int(off % 60));
    n = 32;
  }
  out[n] = ' ';
  out[n + 1] = '\0';
  return n + 1;
}

void log_file_name(time_t t, char out[16]) {
  char stamp[kStampMax + 1];
  format_stamp(StampStyle::classic, timespec{t, 0}, stamp);
  memcpy(out, stamp, 10);
  memcpy(out + 10, ".log", 5);
}

time_t next_local_midnight(time_t t) {
  struct tm tm;
  localtime_r(&t, &tm);
  tm.tm_mday += 1;
  tm.tm_hour = tm.tm_min = tm.tm_sec = 0;
  tm.tm_isdst = -1;
  time_t m = mktime(&tm);
  return m > t ? m : t + 1;  // never stand still, whatever the zone does
}

// v in decimal at p; returns the end.
char* put_decimal(char* p, unsigned v) {
  char digits[10];
  int n = 0;
  do digits[n++] = char('0' + v % 10); while ((v /= 10) != 0);
  while (n > 0) *p++ = digits[--n];
  return p;
}

// IPv4 by hand: glibc's inet_ntop goes through sprintf, which made naming
// a new sender cost as much as writing a hundred lines.
size_t format_host(const in6_addr& addr, char* out) {
  if (!IN6_IS_ADDR_V4MAPPED(&addr)) {
    inet_ntop(AF_INET6, &addr, out, kHostNameMax);
    return strlen(out);
  }
  char* p = put_decimal(out, addr.s6_addr[12]);
  for (int i = 13; i < 16; i++) {
    *p++ = '.';
    p = put_decimal(p, addr.s6_addr[i]);
  }
  *p = '\0';
  return size_t(p - out);
}

size_t format_sender(const in6_addr& addr, uint16_t port, char* out) {
  bool v6 = !IN6_IS_ADDR_V4MAPPED(&addr);
  char* p = out;
  if (v6) *p++ = '[';
  p += format_host(addr, p);
  if (v6) *p++ = ']';
  *p++ = ':';
  p = put_decimal(p, port);
  *p = '\0';
  return size_t(p - out);
}

// Short lines are copied next to their prefix, so that a batch of them is
// one piece of memory for writev; long ones are referenced in place.
constexpr size_t kCopyMax = 512;

size_t escape_label_value(const char* value, char* out, size_t len) {
  size_t n = 0;
  for (const char* p = value; *p; p++) {
    const char* rep = *p == '\\' ? "\\\\" : *p == '"' ? "\\\"" : *p == '\n' ? "\\n" : nullptr;
    size_t w = rep ? 2 : 1;
    if (n + w >= len) break;
    if (rep) memcpy(out + n, rep, 2);
    else out[n] = *p;
    n += w;
  }
  out[n] = '\0';
  return n;
}

// ==================================================================== core

// Placement new of our own: musl's toolchain has no C++ headers (<new>).
struct InPlace {};

}  // namespace ul

inline void* operator new(size_t, void* p, ul::InPlace) noexcept { return p; }

namespace ul {

struct Core::Parts {
  Output out;
  Assembler assembler;
};

// Room for copied lines between two writes to the sink.
constexpr size_t kArenaBytes = size_t(256) * 1024;

bool Core::init(const Options& opts, Sink* sink, uint64_t seed) {
  void* p = calloc(1, sizeof(Parts));
  if (!p) return false;
  parts_ = new (p, InPlace()) Parts();
  return parts_->out.init(kArenaBytes, sink, parts_->assembler.lines(), opts.split == Split::host) &&
         parts_->assembler.init(opts, &parts_->out, seed);
}

Core::~Core() {
  if (!parts_) return;
  parts_->~Parts();
  free(parts_);
}

void Core::datagrams(const Datagram* d, size_t n) {
  parts_->assembler.datagrams(d, n);
  parts_->out.flush();  // the bytes go away now
}

void Core::expire(const timespec& now, bool all) {
  parts_->assembler.expire(now, all);
  parts_->out.flush();
}

timespec Core::next_deadline() const { return parts_->assembler.next_deadline(); }

void Core::kernel_dropped(uint32_t n, const timespec& now) {
  parts_->assembler.kernel_dropped(n, now);
  parts_->out.flush();
}

void Core::files_changed() {
  parts_->out.settle();
  parts_->assembler.files_changed();
}

void Core::stop(const timespec& now) {
  expire(now, true);
  parts_->out.close();
}

void Core::notice(const timespec& now, const char* fmt, ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  parts_->assembler.notice(now, "%s", text);
  parts_->out.flush();
}

void Core::set_trace(TraceFn fn) { parts_->assembler.set_trace(fn); }
const Stats& Core::stats() const { return parts_->assembler.stats(); }
const WriteLoss& Core::losses() const { return parts_->out.losses(); }
size_t Core::senders() const { return parts_->assembler.senders(); }
const HostState* Core::hosts(size_t* n) {
  parts_->assembler.tally();
  return parts_->assembler.fleet().all(n);
}
size_t Core::hosts_heard_since(time_t since) {
  parts_->assembler.tally();
  return parts_->assembler.fleet().heard_since(since);
}
const LastCrash& Core::last_crash() const { return parts_->assembler.fleet().last_crash(); }
void Core::format_stats(char* buf, size_t len) {
  parts_->assembler.tally();
  parts_->assembler.format_stats(buf, len);
}

// ================================================================= routing

namespace {

bool timespec_le(const timespec& a, const timespec& b) {
  return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec <= b.tv_nsec);
}

// True when data starts with a syslog priority, "<N>" with N from 0 to 191
// (RFC 5424 and RFC 3164 alike).
bool starts_with_priority(const char* data, size_t len) {
  if (len < 3 || data[0] != '<') return false;
  unsigned v = 0;
  size_t i = 1;
  for (; i < len && i <= 3 && data[i] >= '0' && data[i] <= '9'; i++) v = v * 10 + unsigned(data[i] - '0');
  return i > 1 && i < len && data[i] == '>' && v <= 191;
}

// The length of r's body through its raw newline, where its dictionary
// starts; r.len when there is none, or a gap leaves it unknown.
uint32_t body_length(const ExtRecord& r) {
  const char* nl = static_cast<const char*>(memchr(r.data, '\n', r.len));
  if (!nl) return r.len;
  uint32_t n = uint32_t(nl - r.data) + 1;
  if (r.got)
    for (uint32_t i = 0; i < n; i++)
      if (!(r.got[i >> 3] >> (i & 7) & 1)) return r.len;
  return n;
}

}  // namespace

bool AllowList::allows(const in6_addr& a) const {
  uint64_t w[2];
  memcpy(w, &a, sizeof w);
  for (unsigned i = 0; i < count; i++)
    if ((w[0] & nets[i].mask[0]) == nets[i].addr[0] && (w[1] & nets[i].mask[1]) == nets[i].addr[1])
      return true;
  return false;
}

bool Assembler::init(const Options& opts, Output* out, uint64_t hash_seed) {
  opts_ = opts;
  out_ = out;
  lines_.init(opts, out, &stats_);
  records_.init(&lines_, opts.wbuf, &stats_);
  text_.init(opts, &lines_, &table_, &fleet_, &stats_);
  return table_.init(opts.clients, hash_seed) &&
         fleet_.init(opts.hosts, hash_seed * 0x9e3779b97f4a7c15ULL + 1, &stats_) &&
         nc_.init(opts.clients, opts.frags, opts.timeout);
}

constexpr size_t kLookups = 64;     // senders hashed at once
constexpr long kBucketAhead = 8;    // buckets fetched ahead of their datagram
constexpr long kSenderAhead = 4;    // senders fetched ahead of their datagram

void Assembler::datagrams(const Datagram* d, size_t n) {
  uint32_t bucket[kLookups];
  for (size_t start = 0; start < n; start += kLookups) {
    const Datagram* b = d + start;
    long m = long(n - start < kLookups ? n - start : kLookups);
    for (long i = 0; i < m; i++) bucket[i] = table_.bucket(b[i].addr, b[i].port);
    for (long i = -kBucketAhead; i < m; i++) {
      long next = i + kSenderAhead;
      if (i + kBucketAhead < m) table_.prefetch_bucket(bucket[i + kBucketAhead]);
      if (next >= 0 && next < m) table_.prefetch_sender(bucket[next]);
      if (i >= 0) take(b[i], bucket[i]);
    }
  }
}

// One datagram, and with debug=1 what became of it.
void Assembler::take(const Datagram& d, uint32_t bucket) {
  ExtHeader h;
  const Sender* s = nullptr;
  if (!trace_) {
    route(d, bucket, &h, &s);
    return;
  }
  uint64_t lines = stats_.lines;
  Outcome what = route(d, bucket, &h, &s);
  trace(d, s, h, what, stats_.lines - lines);
}

// Takes one datagram to where it belongs: extended netconsole to the
// machine, everything else (and what the machine gives back) to text
// assembly.  *sender is set unless it was refused or empty; h holds its
// extended header, if it had one.
Assembler::Outcome Assembler::route(const Datagram& d, uint32_t bucket, ExtHeader* h,
                                    const Sender** sender) {
  stats_.datagrams++;
  add_saturating(&stats_.bytes, d.len);
  if (d.spoofed_v4 || (opts_.allow.count > 0 && !opts_.allow.allows(d.addr))) {
    refuse(d);
    return Outcome::refused;
  }
  if (d.len == 0) return Outcome::empty;
  Sender* s = sender_for(d, bucket);
  *sender = s;
  s->heard = d.when.tv_sec;
  if (d.truncated)
    lines_.notice(&s->addr, s->name, s->name_len, d.when,
                  "datagram cut to %zu bytes: larger than the receive slot", d.len);
  // A header counts only at the start of a line: a datagram that continues
  // a partial line is text, whatever it looks like.
  if (opts_.ext == Ext::automatic && s->partial_len == 0 && may_be_ext_header(d.data, d.len) &&
      parse_ext_header(d.data, d.len, h))
    return netconsole(s, d, *h);
  if (ends_with_datagram(s, d.data, d.len)) {
    size_t len = d.len;
    while (len > 0 && d.data[len - 1] == '\0') len--;  // C strings sent with their NUL
    if (len > 0 && d.data[len - 1] == '\r') len--;     // CRLF without the LF
    text_.join(s, d.data, len, d.when, true);
  } else {
    text_.join(s, d.data, d.len, d.when, false);
  }
  return Outcome::text;
}

// An extended netconsole datagram: fed to the machine, its events written;
// a fragment that fits no record is written as text after them.
Assembler::Outcome Assembler::netconsole(Sender* s, const Datagram& d, const ExtHeader& h) {
  if (h.fragment) stats_.fragments++;
  Netconsole::Fed fed = nc_.feed(uint32_t(table_.index(s)), s->addr, h, d.data, d.len, d.when);
  Outcome what = take_events(h.fragment ? Outcome::held : Outcome::record);
  if (fed == Netconsole::Fed::not_extended) text_.join(s, d.data, d.len, d.when, true);
  return what;
}

// Writes and counts what the machine's last call handed back; returns
// `outcome`, or what the events say became of the datagram fed.
Assembler::Outcome Assembler::take_events(Outcome outcome) {
  NetconsoleEvent e;
  while (nc_.next(&e)) outcome = event(e, outcome);
  return outcome;
}

Assembler::Outcome Assembler::event(const NetconsoleEvent& e, Outcome outcome) {
  Sender* s = &table_.slots()[e.sender];
  unsigned long long seq = e.seq, last = e.last, n = e.last - e.seq + 1;
  switch (e.kind) {
    case NetconsoleEvent::Kind::record:
      stats_.records++;
      if (e.reassembled) {
        stats_.reassembled++;
        outcome = Outcome::completed;
      }
      record(s, e.record);
      break;
    case NetconsoleEvent::Kind::incomplete: {
      static const char* const kWhy[] = {
          "", "after timeout=", "at exit", "with newer records of its sender in reassembly",
          "with newer records of its sender address in reassembly",
          "to make room: reassembly table full (frags=)",
          "as its sender's slot was reused (clients=)"};
      stats_.incomplete++;
      sender_notice(s, e.when, "record seq %llu incomplete %s: %u of %u bytes missing", seq,
                    kWhy[int(e.why)], e.bytes, e.total);
      stats_.records++;
      record(s, e.record);
      break;
    }
    case NetconsoleEvent::Kind::release:
      sender_notice(s, e.when, "kernel release %.*s", int(e.release_len), e.release);
      break;
    case NetconsoleEvent::Kind::release_changed:
      sender_notice(s, e.when, "kernel release changed from %.*s to %.*s", int(e.previous_len),
                    e.previous, int(e.release_len), e.release);
      break;
    case NetconsoleEvent::Kind::gap:
      add_saturating(&stats_.missing, n);
      add_saturating(&fleet_.fold(s)->missing, n);
      sender_notice(s, e.when, "%llu record%s not received: seq %llu..%llu; %s", n,
                    n == 1 ? "" : "s", seq, last,
                    e.msgid_known ? "filtered by the sender's console loglevel"
                                  : "lost on the way or filtered by the sender's console loglevel");
      break;
    case NetconsoleEvent::Kind::lost:
      add_saturating(&stats_.lost_in_transit, n);
      sender_notice(s, e.when, "%llu record%s lost in transit: msgid %llu..%llu", n,
                    n == 1 ? "" : "s", seq, last);
      break;
    case NetconsoleEvent::Kind::restart:
      sender_notice(s, e.when, "sequence restarted at seq %llu after seq %llu: sender rebooted?",
                    seq, last);
      break;
    case NetconsoleEvent::Kind::again:
      sender_notice(s, e.when, "seq %llu again after seq %llu: sender restarted, or a duplicated "
                    "datagram", seq, last);
      break;
    case NetconsoleEvent::Kind::late:
      sender_notice(s, e.when, "late fragment of seq %llu (ncfrag=%u/%u) written as its own "
                    "piece: its record was written incomplete", seq, e.off, e.total);
      stats_.late_fragments++;
      record(s, e.record);
      outcome = Outcome::late;
      break;
    case NetconsoleEvent::Kind::duplicate:
      stats_.duplicates++;
      sender_notice(s, e.when, "late or duplicate fragment of seq %llu (ncfrag=%u/%u) ignored: "
                    "its record was written already", seq, e.off, e.total);
      outcome = Outcome::duplicate;
      break;
    case NetconsoleEvent::Kind::malformed:
      stats_.malformed++;
      sender_notice(s, e.when, "malformed fragment (seq %llu, ncfrag=%u/%u, %u bytes): written "
                    "as text", seq, e.off, e.total, e.bytes);
      outcome = Outcome::malformed;
      break;
    case NetconsoleEvent::Kind::inconsistent:
      stats_.malformed++;
      sender_notice(s, e.when, "fragment of seq %llu says %u bytes in all, earlier ones %u: "
                    "written as text", seq, e.total, e.bytes);
      outcome = Outcome::malformed;
      break;
  }
  return outcome;
}

// eol=: whether the datagram's end ends its last line.  auto: for a syslog
// message (RFC 5426: one per datagram), unless it continues a partial line
// as a kernel's continuation lines do.
// Legacy netconsole cuts a longer message into 1000-byte datagrams, the
// first without a newline: with console_msg_format=syslog such a piece
// starts "<N>" too, and the next piece finishes its line.
bool Assembler::ends_with_datagram(const Sender* s, const char* data, size_t len) const {
  constexpr size_t kNetconsolePiece = 1000;
  if (opts_.eol == Eol::automatic)
    return s->partial_len == 0 && starts_with_priority(data, len) &&
           !(len == kNetconsolePiece && data[len - 1] != '\n');
  return opts_.eol == Eol::datagram;
}

// allow=: a datagram from elsewhere is counted and dropped before it has a
// sender slot; notices say so at most once a minute, so a flood of them
// cannot flood the log.
void Assembler::refuse(const Datagram& d) {
  add_saturating(&stats_.refused, 1);
  refused_unreported_++;
  refused_addr_ = d.addr;
  refused_port_ = d.port;
  refused_spoofed_ = d.spoofed_v4;
  if (timespec_le(refused_notice_at_, d.when)) report_refused(d.when);
}

void Assembler::report_refused(const timespec& now) {
  char who[kSenderNameMax + 16], host[kHostNameMax];
  format_sender(refused_addr_, refused_port_, who);
  if (refused_spoofed_) {  // an IPv6 sender: its address as it is
    format_host(refused_addr_, host);
    snprintf(who, sizeof who, "[::ffff:%s]:%u", host, unsigned(refused_port_));
  }
  lines_.notice(nullptr, nullptr, 0, now,
                "refused %llu datagram%s from senders not in allow=%s, the last from %s "
                "(counted; reported at most once a minute)",
                (unsigned long long)refused_unreported_, refused_unreported_ == 1 ? "" : "s",
                refused_spoofed_ ? " or from IPv6 senders claiming an IPv4 address" : "", who);
  refused_unreported_ = 0;
  refused_notice_at_ = now;
  refused_notice_at_.tv_sec += 60;
}

// debug=1: one line per datagram, like sshd -d: who, how long, and what
// became of it, as route() said.
void Assembler::trace(const Datagram& d, const Sender* s, const ExtHeader& h, Outcome what,
                      uint64_t lines) {
  char who[kSenderNameMax], text[160], line[400];
  format_sender(d.addr, d.port, who);
  unsigned long long seq = h.seq, n = lines;
  const char* plural = n == 1 ? "" : "s";
  switch (what) {
    case Outcome::refused:
      snprintf(text, sizeof text, "refused: %s",
               d.spoofed_v4 ? "an IPv6 datagram from a v4-mapped address" : "not in allow=");
      break;
    case Outcome::empty:
      snprintf(text, sizeof text, "empty: nothing to write");
      break;
    case Outcome::text:
      snprintf(text, sizeof text, "text: %llu line%s written, %u bytes wait for a newline", n,
               plural, s->partial_len);
      break;
    case Outcome::malformed:
      snprintf(text, sizeof text, "extended seq %llu: malformed, written as text (%llu lines)",
               seq, n);
      break;
    case Outcome::late:
      snprintf(text, sizeof text, "extended fragment seq %llu ncfrag=%u/%u: late, written as "
               "its own piece", seq, h.frag_off, h.frag_total);
      break;
    case Outcome::duplicate:
      snprintf(text, sizeof text, "extended fragment seq %llu ncfrag=%u/%u: dropped, its record "
               "was written already", seq, h.frag_off, h.frag_total);
      break;
    case Outcome::held:
    case Outcome::completed:
      snprintf(text, sizeof text, "extended fragment seq %llu ncfrag=%u/%u (%zu bytes): %s", seq,
               h.frag_off, h.frag_total, d.len - h.body,
               what == Outcome::completed ? "record complete, written" : "held for reassembly");
      break;
    case Outcome::record:
      snprintf(text, sizeof text, "extended record seq %llu <%u>: %llu line%s written", seq,
               h.pri, n, plural);
      break;
  }
  snprintf(line, sizeof line, "debug: %s %zu bytes: %s", who, d.len, text);
  trace_(line);
}

// The sender's slot.  A new sender in a full table takes the slot of the
// one idle longest, whose pending text is written out first: nothing lost.
Sender* Assembler::sender_for(const Datagram& d, uint32_t bucket) {
  Sender* s = table_.find(d.addr, d.port, bucket);
  if (s) return s;
  if (table_.full()) {
    Sender* old = table_.idle_longest();
    text_.finish(old);
    nc_.drop(uint32_t(table_.index(old)), d.when);
    take_events(Outcome::text);
    fleet_.fold(old);
    stats_.senders_reused++;
  }
  s = table_.add(d.addr, d.port);
  nc_.forget(uint32_t(table_.index(s)));
  return s;
}

void Assembler::kernel_dropped(uint32_t n, const timespec& now) {
  if (n == 0) return;
  add_saturating(&stats_.kernel_drops, n);
  lines_.notice(nullptr, nullptr, 0, now,
                "%u datagram%s dropped by the kernel: receive buffer full (rbuf=%lu)", n,
                n == 1 ? "" : "s", opts_.rbuf);
}

void Assembler::expire(const timespec& now, bool all) {
  text_.expire(now, all);
  if (refused_unreported_ > 0 && (all || timespec_le(refused_notice_at_, now)))
    report_refused(now);
  nc_.expire(now, all);
  take_events(Outcome::text);
}

timespec Assembler::next_deadline() const {
  timespec due = nc_.next_deadline();
  timespec partial = text_.next_deadline();
  if (partial.tv_sec != 0 && (due.tv_sec == 0 || timespec_le(partial, due))) due = partial;
  if (refused_unreported_ > 0 && (due.tv_sec == 0 || timespec_le(refused_notice_at_, due)))
    due = refused_notice_at_;
  return due;
}

void Assembler::notice(const timespec& now, const char* fmt, ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  lines_.notice(nullptr, nullptr, 0, now, "%s", text);
}

void Assembler::sender_notice(Sender* s, const timespec& when, const char* fmt, ...) {
  char text[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  lines_.notice(&s->addr, s->name, s->name_len, when, "%s", text);
}

void Assembler::format_stats(char* buf, size_t len) const {
  const Stats& t = stats_;
  size_t hosts = 0;
  fleet_.all(&hosts);
  uint64_t crashes = 0;
  for (int k = 1; k < kCrashKinds; k++) add_saturating(&crashes, t.crashes[k]);
  snprintf(buf, len,
           "statistics: datagrams=%llu bytes=%llu lines=%llu records=%llu "
           "fragments=%llu reassembled=%llu incomplete=%llu missing_by_seq=%llu "
           "lost_in_transit=%llu kernel_drops=%llu duplicates=%llu late_fragments=%llu malformed=%llu "
           "timed_out=%llu flushed_for_memory=%llu refused=%llu senders=%zu reused=%llu "
           "hosts=%zu hosts_forgotten=%llu kernel_crashes=%llu",
           (unsigned long long)t.datagrams, (unsigned long long)t.bytes,
           (unsigned long long)t.lines, (unsigned long long)t.records,
           (unsigned long long)t.fragments, (unsigned long long)t.reassembled,
           (unsigned long long)t.incomplete, (unsigned long long)t.missing,
           (unsigned long long)t.lost_in_transit, (unsigned long long)t.kernel_drops,
           (unsigned long long)t.duplicates, (unsigned long long)t.late_fragments,
           (unsigned long long)t.malformed,
           (unsigned long long)t.lines_timed_out, (unsigned long long)t.flushed_for_memory,
           (unsigned long long)t.refused, table_.size(),
           (unsigned long long)t.senders_reused, hosts, (unsigned long long)t.hosts_forgotten,
           (unsigned long long)crashes);
}

// A record as lines, its dictionary as dict= says, counted for its host;
// a kernel record (facility 0) that begins a crash event is followed by
// the notice.
void Assembler::record(Sender* s, const ExtRecord& r) {
  ExtRecord shown = r;
  if (opts_.dict != Dict::all) shown.len = dictionary_shown(s, r);
  uint64_t before = stats_.lines;
  records_.write(s->origin(), shown);
  s->unfolded_lines += stats_.lines - before;
  if (r.pri >= 8) return;
  uint32_t n = r.len < kCrashLook ? r.len : uint32_t(kCrashLook);
  if (r.got)  // only the bytes that arrived before the first gap
    for (uint32_t i = 0; i < n; i++)
      if (!(r.got[i >> 3] >> (i & 7) & 1)) {
        n = i;
        break;
      }
  size_t start;
  CrashKind k = crash_kind(r.data, n, &start);
  if (k == CrashKind::none) return;
  HostState* h = fleet_.fold(s);
  if (fleet_.begins_event(h, k, r.when.tv_sec))
    note_crash(&lines_, *h, k, r.data + start, n - start, r.when);
}

// dict=: how much of r to write.  Its dictionary (the KEY=VALUE lines after
// the body's raw newline) goes out with a sender's first record, when it
// differs from the last one written, and after files_changed(); a record
// with bytes missing is written whole and makes the next one write its own.
uint32_t Assembler::dictionary_shown(Sender* s, const ExtRecord& r) {
  uint32_t body = body_length(r);
  if (opts_.dict == Dict::none) return body;
  if (r.got) {
    s->dict_written = 0;
    return r.len;
  }
  uint64_t h = 14695981039346656037ULL;  // FNV-1a
  for (uint32_t i = body; i < r.len; i++) h = (h ^ uint8_t(r.data[i])) * 1099511628211ULL;
  h |= 1;  // never 0, which means none written
  if (h == s->dict_written) return body;
  s->dict_written = h;
  return r.len;
}

void Assembler::files_changed() {
  for (size_t i = 0; i < table_.size(); i++) table_.slots()[i].dict_written = 0;
}

// ================================================================= senders

namespace {

// The fixed tables of senders and hosts: their slots are mapped, so they
// are zeroed, resident only as they are used, and page-aligned (a slot's
// first 64 bytes are one cache line); null when there is no memory.
void* map_slots(size_t bytes) {
  void* m = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  return m == MAP_FAILED ? nullptr : m;
}

// Their hash buckets (-1: empty), a power of two at least twice the slots.
bool make_buckets(unsigned capacity, int32_t** buckets, uint32_t* mask) {
  uint32_t n = 16;
  while (n < capacity * 2) n <<= 1;
  *buckets = static_cast<int32_t*>(malloc(n * sizeof(int32_t)));
  if (!*buckets) return false;
  for (uint32_t i = 0; i < n; i++) (*buckets)[i] = -1;
  *mask = n - 1;
  return true;
}

}  // namespace

// Address and port mixed a word at a time (multiply, fold) with the seed:
// a few cycles, where a byte-wise hash over 18 bytes was the largest cost
// of a lookup; senders of one subnet or one host's ports still spread, and
// without the seed nobody can compute senders that share a bucket.
uint64_t address_hash(const in6_addr& addr, uint16_t port, uint64_t seed) {
  uint64_t hi, lo;
  memcpy(&hi, addr.s6_addr, 8);
  memcpy(&lo, addr.s6_addr + 8, 8);
  uint64_t h = ((hi ^ seed) * 0x9e3779b97f4a7c15ULL) ^
               ((lo + port + (seed >> 17)) * 0xc2b2ae3d27d4eb4fULL);
  h ^= h >> 29;
  h *= 0xbf58476d1ce4e5b9ULL;
  h ^= h >> 32;
  return h;
}

bool SenderTable::init(unsigned capacity, uint64_t seed) {
  capacity_ = capacity;
  seed_ = seed;
  slots_ = static_cast<Sender*>(map_slots(capacity * sizeof(Sender)));
  return slots_ && make_buckets(capacity, &buckets_, &bucket_mask_);
}

SenderTable::~SenderTable() {
  if (slots_) munmap(slots_, capacity_ * sizeof(Sender));
  free(buckets_);
}

uint32_t SenderTable::bucket(const in6_addr& addr, uint16_t port) const {
  return uint32_t(address_hash(addr, port, seed_)) & bucket_mask_;
}

void SenderTable::unhash(Sender* s) {
  int32_t* link = &buckets_[bucket(s->addr, s->port)];
  while (*link != index(s)) link = &slots_[*link].hash_next;
  *link = s->hash_next;
}

Sender* SenderTable::find(const in6_addr& addr, uint16_t port, uint32_t bucket) {
  for (int32_t i = buckets_[bucket]; i >= 0; i = slots_[i].hash_next) {
    Sender* s = &slots_[i];
    if (s->port == port && !memcmp(&s->addr, &addr, sizeof addr)) {
      if (lru_.tail != i) {
        lru_.unlink(slots_, i);
        lru_.append(slots_, i);
      }
      return s;
    }
  }
  return nullptr;
}

// The slot keeps its partial-line buffer; everything else is the caller's
// to reset.
Sender* SenderTable::add(const in6_addr& addr, uint16_t port) {
  Sender* s;
  if (used_ < capacity_) {
    s = &slots_[used_++];
  } else {
    s = idle_longest();
    unhash(s);
    lru_.unlink(slots_, index(s));
  }
  // The one place a sender is born.  Its partial-line buffer was given
  // back when its last partial line was written (slots start zeroed).
  s->addr = addr;
  s->port = port;
  s->name_len = uint8_t(format_sender(addr, port, s->name));
  s->partial_len = 0;
  s->dict_written = 0;
  s->host = UINT32_MAX;
  s->unfolded_lines = 0;
  s->heard = 0;
  uint32_t b = bucket(addr, port);
  s->hash_next = buckets_[b];
  buckets_[b] = index(s);
  lru_.append(slots_, index(s));
  return s;
}

// =================================================================== fleet

namespace {

template <size_t N>
bool begins(const char* p, size_t len, const char (&word)[N]) {
  return len >= N - 1 && !memcmp(p, word, N - 1);
}

template <size_t N>
bool contains(const char* p, size_t len, const char (&word)[N]) {
  return memmem(p, len, word, N - 1) != nullptr;
}

bool is_digit(char c) { return c >= '0' && c <= '9'; }

// "[    5.016402]" (a printk time) or "[    T1]" / "[ C0]" (its caller) at
// p + *i: *i is moved past it.
bool printk_bracket(const char* p, size_t len, size_t* i, bool time) {
  size_t j = *i;
  if (j >= len || p[j] != '[') return false;
  for (j++; j < len && p[j] == ' '; j++) {}
  if (!time && j < len && (p[j] == 'T' || p[j] == 'C')) j++;
  else if (!time) return false;
  size_t digits = j;
  while (j < len && is_digit(p[j])) j++;
  if (j == digits) return false;
  if (time) {
    if (j >= len || p[j] != '.') return false;
    for (digits = ++j; j < len && is_digit(p[j]);) j++;
    if (j == digits) return false;
  }
  if (j >= len || p[j] != ']') return false;
  *i = j + 1;
  return true;
}

// The next space-separated word at p + *i: its length; *i is moved past
// it and the space after it.
size_t next_word(const char* p, size_t len, size_t* i, const char** word) {
  *word = p + *i;
  size_t j = *i;
  while (j < len && p[j] != ' ') j++;
  size_t n = j - *i;
  *i = j < len ? j + 1 : j;
  return n;
}

constexpr size_t kNotKernel = SIZE_MAX;

// After "<PRI>": the length of a syslog header whose tag (RFC 3164) or
// APP-NAME (RFC 5424) is "kernel", 0 when there is no header (the
// kernel's own "<N>" as netconsole sends it), kNotKernel for another tag.
size_t kernel_syslog_header(const char* p, size_t len) {
  size_t i = 0;
  const char* w;
  size_t n;
  if (begins(p, len, "1 ")) {  // RFC 5424: 1 TIMESTAMP HOST APP PROCID MSGID SD MSG
    i = 2;
    next_word(p, len, &i, &w);
    next_word(p, len, &i, &w);
    n = next_word(p, len, &i, &w);
    if (n != 6 || memcmp(w, "kernel", 6) != 0) return kNotKernel;
    next_word(p, len, &i, &w);
    next_word(p, len, &i, &w);
    if (i < len && p[i] == '[') {  // structured data: up to "] " outside quotes
      bool quoted = false;
      for (; i + 1 < len && (quoted || p[i] != ']' || p[i + 1] != ' '); i++)
        if (p[i] == '"' && p[i - 1] != '\\') quoted = !quoted;
      i += 2;
    } else {
      next_word(p, len, &i, &w);  // "-"
    }
    return i > len ? len : i;
  }
  // RFC 3164: "Mmm dd hh:mm:ss " then a host name (not always) and "kernel: "
  if (len < 16 || p[3] != ' ' || p[6] != ' ' || p[9] != ':' || p[12] != ':' || p[15] != ' ')
    return 0;
  i = 16;
  for (int word = 0; word < 2; word++) {
    n = next_word(p, len, &i, &w);
    if (n == 7 && !memcmp(w, "kernel:", 7)) return i;
  }
  return kNotKernel;
}

// "COMM invoked oom-killer:", COMM being 1 to 15 bytes, spaces allowed.
// Every line that is no other event comes here: with SSE2 the spaces
// among bytes 1..15 are found in one compare, and only there is " invoked"
// looked for (a byte-by-byte search, or memchr's calls, made crash
// detection cost about 1% of the CPU of a line; test/bench/README.md).
bool invokes_oom_killer(const char* m, size_t n) {
  constexpr size_t kCommMax = 15, kRest = sizeof " invoked oom-killer:" - 1;
#ifdef __SSE2__
  if (n >= 1 + kCommMax + kRest) {  // 16 bytes can be read
    __m128i bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(m));
    unsigned spaces = unsigned(_mm_movemask_epi8(_mm_cmpeq_epi8(bytes, _mm_set1_epi8(' '))));
    for (spaces &= 0xfffe; spaces; spaces &= spaces - 1)  // bytes 1..15
      if (begins(m + __builtin_ctz(spaces), kRest, " invoked oom-killer:")) return true;
    return false;
  }
#endif
  for (size_t j = 1; j <= kCommMax && j + kRest <= n; j++)
    if (m[j] == ' ' && begins(m + j, n - j, " invoked oom-killer:")) return true;
  return false;
}

// The kind of event a kernel message begins, from its first bytes.
CrashKind message_kind(const char* m, size_t n) {
  switch (n > 0 ? m[0] : 0) {
    case 'K':
      if (begins(m, n, "Kernel panic - not syncing")) return CrashKind::panic;
      break;
    case 'O':
      if (begins(m, n, "Oops:")) return CrashKind::oops;
      if (begins(m, n, "Out of memory: Killed process")) return CrashKind::oom;
      break;
    case 'B':
      if (begins(m, n, "BUG: unable to handle") ||
          begins(m, n, "BUG: kernel NULL pointer dereference"))
        return CrashKind::oops;
      if (begins(m, n, "BUG:")) return CrashKind::bug;
      break;
    case 'g':
      if (begins(m, n, "general protection fault")) return CrashKind::oops;
      break;
    case 'k':
      if (begins(m, n, "kernel BUG at ")) return CrashKind::bug;
      break;
    case 'W':
      if (begins(m, n, "WARNING: CPU:")) return CrashKind::warning;
      if (begins(m, n, "Watchdog detected hard LOCKUP")) return CrashKind::lockup;
      break;
    case 'I':
      if (begins(m, n, "INFO: task ") && contains(m, n, " blocked for more than "))
        return CrashKind::hung_task;
      if (begins(m, n, "INFO: rcu_") && contains(m, n, "detected stall"))
        return CrashKind::rcu_stall;
      break;
    case 'r':
      if (begins(m, n, "rcu: INFO: rcu_") && contains(m, n, "detected stall"))
        return CrashKind::rcu_stall;
      break;
    case 'w':
    case 'N':  // "watchdog: " (or, before Linux 6.5, "NMI watchdog: ")
      if (begins(m, n, "NMI ")) m += 4, n -= 4;
      if (begins(m, n, "watchdog: BUG: soft lockup") ||
          begins(m, n, "watchdog: Watchdog detected hard LOCKUP"))
        return CrashKind::lockup;
      break;
  }
  return invokes_oom_killer(m, n) ? CrashKind::oom : CrashKind::none;
}

}  // namespace

CrashKind crash_kind(const char* text, size_t len, size_t* start) {
  size_t i = 0;
  if (len > 2 && text[0] == '<') {  // "<PRI>": the kernel's facility (0) only
    unsigned pri = 0;
    size_t j = 1;
    for (; j < len && j <= 3 && is_digit(text[j]); j++) pri = pri * 10 + unsigned(text[j] - '0');
    if (j > 1 && j < len && text[j] == '>') {
      if (pri >= 8) return CrashKind::none;
      i = j + 1;
      size_t header = kernel_syslog_header(text + i, len - i);
      if (header == kNotKernel) return CrashKind::none;
      i += header;
    }
  }
  if (i < len && text[i] == '[' && printk_bracket(text, len, &i, true)) {
    printk_bracket(text, len, &i, false);
    if (i < len && text[i] == ' ') i++;
  }
  *start = i;
  return message_kind(text + i, len - i);
}

const char* crash_kind_name(CrashKind k) {
  static const char* const kNames[kCrashKinds] = {
      "none", "panic", "oops", "bug", "warning", "hung_task", "lockup", "rcu_stall", "oom"};
  return kNames[int(k)];
}

const char* crash_kind_words(CrashKind k) {
  static const char* const kWords[kCrashKinds] = {
      "none", "panic", "oops", "bug", "warning", "hung task", "lockup", "RCU stall",
      "out of memory"};
  return kWords[int(k)];
}

// The host is named by its address (the kernel's, whatever port it sent
// from); the text is the line from its message on.
void note_crash(LineWriter* lines, const HostState& h, CrashKind k, const char* text, size_t len,
                const timespec& when) {
  char host[kHostNameMax];
  size_t n = format_host(h.addr, host);
  const char* nl = static_cast<const char*>(memchr(text, '\n', len));
  if (nl) len = size_t(nl - text);
  lines->notice(&h.addr, host, n, when, "kernel %s: %.*s", crash_kind_words(k), int(len), text);
}

bool Fleet::init(unsigned capacity, uint64_t seed, Stats* stats) {
  capacity_ = capacity;
  seed_ = seed;
  stats_ = stats;
  hosts_ = static_cast<HostState*>(map_slots(capacity * sizeof(HostState)));
  return hosts_ && make_buckets(capacity, &buckets_, &bucket_mask_);
}

Fleet::~Fleet() {
  if (hosts_) munmap(hosts_, capacity_ * sizeof(HostState));
  free(buckets_);
}

HostState* Fleet::fold(Sender* s) {
  HostState* h = s->host < used_ && !memcmp(&hosts_[s->host].addr, &s->addr, sizeof s->addr)
                     ? &hosts_[s->host]
                     : take(s);
  add_saturating(&h->lines, s->unfolded_lines);
  s->unfolded_lines = 0;
  if (s->heard > h->last_heard) {
    h->last_heard = s->heard;
    int32_t i = int32_t(h - hosts_);
    if (lru_.tail != i) {
      lru_.unlink(hosts_, i);
      lru_.append(hosts_, i);
    }
  }
  s->heard = 0;
  return h;
}

// Only the senders with something to tell: an idle sender whose host was
// forgotten does not take a slot again.
void Fleet::fold_all(SenderTable* senders) {
  for (size_t i = 0; i < senders->size(); i++) {
    Sender* s = &senders->slots()[i];
    if (s->heard != 0 || s->unfolded_lines != 0) fold(s);
  }
}

// s's host found by its address, or born: in a free slot, or in that of
// the host heard longest ago, which is forgotten.
HostState* Fleet::take(Sender* s) {
  uint32_t b = bucket(s->addr);
  int32_t i = buckets_[b];
  while (i >= 0 && memcmp(&hosts_[i].addr, &s->addr, sizeof s->addr) != 0) i = hosts_[i].hash_next;
  if (i < 0) {
    if (used_ < capacity_) {
      i = int32_t(used_++);
    } else {
      i = lru_.head;
      int32_t* link = &buckets_[bucket(hosts_[i].addr)];
      while (*link != i) link = &hosts_[*link].hash_next;
      *link = hosts_[i].hash_next;
      lru_.unlink(hosts_, i);
      add_saturating(&stats_->hosts_forgotten, 1);
    }
    // The one place a host is born.
    HostState* h = &hosts_[i];
    memset(h, 0, sizeof *h);
    h->addr = s->addr;
    h->hash_next = buckets_[b];
    buckets_[b] = i;
    lru_.append(hosts_, i);
  }
  s->host = uint32_t(i);
  return &hosts_[i];
}

// A crash prints pages of lines, and some of them match again (an oops's
// "BUG: unable to handle" is followed by "Oops:"; a soft lockup repeats
// every 20 s): a line of the kind of h's last event, less than
// kCrashFollowSeconds after that event's last such line, belongs to it.
bool Fleet::begins_event(HostState* h, CrashKind k, time_t t) {
  bool follows = h->event == k && t - h->event_seen < kCrashFollowSeconds;
  h->event = k;
  h->event_seen = t;
  if (follows) return false;
  add_saturating(&h->crashes[int(k)], 1);
  add_saturating(&stats_->crashes[int(k)], 1);
  h->last_crash = t;
  last_crash_.host = h->addr;
  last_crash_.kind = k;
  last_crash_.at = t;
  return true;
}

// All of them: the order of hearing is the order of folding.
size_t Fleet::heard_since(time_t since) const {
  size_t n = 0;
  for (uint32_t i = 0; i < used_; i++) n += hosts_[i].last_heard >= since;
  return n;
}

// ============================================================ text lines

void TextLines::init(const Options& opts, LineWriter* lines, SenderTable* table, Fleet* fleet,
                     Stats* stats) {
  wbuf_ = opts.wbuf;
  fleet_ = fleet;
  partials_ = opts.partials;
  timeout_ = opts.timeout;
  lines_ = lines;
  table_ = table;
  stats_ = stats;
}

// Writes one log line: a (copied) and b (referenced in place, followed by
// its newline when newline_in_b), then a newline if needed.
void TextLines::write_line(Sender* s, const timespec& when, const char* a, size_t alen,
                           const char* b, size_t blen, bool newline_in_b, bool b_clean) {
  if (alen == 0 && newline_in_b && b_clean && blen < kCopyMax) {  // most lines
    lines_->short_line(s->origin(), when, b, blen);
  } else {
    lines_->begin(s->origin(), when);
    lines_->text(a, alen);
    lines_->end_with(b, blen, newline_in_b, b_clean);
  }
  watch(s, when, a, alen, b, blen);
}

// A line written (a then b) is counted for its host; one that begins a
// kernel crash event is followed by the notice.  Only its first bytes
// are read.
void TextLines::watch(Sender* s, const timespec& when, const char* a, size_t alen, const char* b,
                      size_t blen) {
  s->unfolded_lines++;
  const char* p = alen ? a : b;
  size_t n = alen ? alen : blen;
  char joined[kCrashLook];
  if (alen > 0 && alen < kCrashLook && blen > 0) {  // the start is in two pieces
    size_t more = blen < kCrashLook - alen ? blen : kCrashLook - alen;
    memcpy(joined, a, alen);
    memcpy(joined + alen, b, more);
    p = joined;
    n = alen + more;
  }
  if (n > kCrashLook) n = kCrashLook;
  size_t start;
  CrashKind k = crash_kind(p, n, &start);
  if (k == CrashKind::none) return;
  HostState* h = fleet_->fold(s);
  if (fleet_->begins_event(h, k, when.tv_sec)) note_crash(lines_, *h, k, p + start, n - start, when);
}

// Writes the sender's partial line followed by rest, and forgets it; its
// buffer goes back (the line was copied out).
void TextLines::write_partial(Sender* s, const char* rest, size_t rest_len,
                              bool newline_in_rest) {
  write_line(s, s->partial_time, s->partial, s->partial_len, rest, rest_len, newline_in_rest,
             false);
  s->partial_len = 0;
  pending_.unlink(table_->slots(), table_->index(s));
  release_partial(s);
}

TextLines::~TextLines() {
  if (!table_) return;
  for (size_t i = 0; i < table_->size(); i++) release_partial(&table_->slots()[i]);
}

// Buffers up to a page come from the heap; larger ones are mapped, so that
// releasing one gives its memory back to the system at once.
constexpr size_t kHeapPartialMax = 4096;

bool TextLines::resize_partial(Sender* s, size_t cap) {
  char* p;
  if (cap <= kHeapPartialMax) {
    p = static_cast<char*>(realloc(s->partial, cap));
  } else if (s->partial_cap > kHeapPartialMax) {
    void* m = mremap(s->partial, s->partial_cap, cap, MREMAP_MAYMOVE);
    p = m == MAP_FAILED ? nullptr : static_cast<char*>(m);
  } else {
    void* m = mmap(nullptr, cap, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    p = m == MAP_FAILED ? nullptr : static_cast<char*>(m);
    if (p && s->partial) {
      memcpy(p, s->partial, s->partial_len);
      free(s->partial);
    }
  }
  if (!p) return false;
  partial_bytes_ += cap - s->partial_cap;
  s->partial = p;
  s->partial_cap = uint32_t(cap);
  return true;
}

void TextLines::release_partial(Sender* s) {
  if (s->partial_cap > kHeapPartialMax) munmap(s->partial, s->partial_cap);
  else free(s->partial);
  partial_bytes_ -= s->partial_cap;
  s->partial = nullptr;
  s->partial_cap = 0;
}

// One cap on all partial lines (partials=): to grow s's buffer to cap, the
// oldest partial lines of other senders are written out as they are.
// False when even that leaves no room.
bool TextLines::make_room(Sender* s, size_t cap) {
  while (partial_bytes_ + cap - s->partial_cap > partials_) {
    int32_t i = pending_.head;
    if (i == table_->index(s)) i = table_->slots()[i].pend_next;
    if (i < 0) return false;
    write_partial(&table_->slots()[i], nullptr, 0, false);
    stats_->flushed_for_memory++;
  }
  return true;
}

// Keeps bytes that have no newline yet.  The buffer grows (at most to
// wbuf) only when this sender's partial line is longer than ever before.
void TextLines::keep_partial(Sender* s, const char* p, size_t len, const timespec& when) {
  size_t need = s->partial_len + len;
  if (need > s->partial_cap) {
    size_t cap = s->partial_cap ? s->partial_cap : 256;
    while (cap < need) cap *= 2;
    if (cap > wbuf_) cap = wbuf_;
    if (!make_room(s, cap) || !resize_partial(s, cap)) {  // write it now rather than lose it
      stats_->flushed_for_memory++;
      if (s->partial_len > 0) write_partial(s, p, len, false);
      else write_line(s, when, nullptr, 0, p, len, false, false);
      return;
    }
  }
  if (s->partial_len == 0) {
    s->partial_time = when;
    pending_.append(table_->slots(), table_->index(s));
  }
  memcpy(s->partial + s->partial_len, p, len);
  s->partial_len += uint32_t(len);
}

// Plain text: joined into lines across datagrams, split at wbuf; a CR
// before a newline is dropped.  ends_line: the data's end ends its line.
void TextLines::join(Sender* s, const char* data, size_t len, const timespec& when,
                     bool ends_line) {
  const size_t wbuf = wbuf_;
  const char* p = data;
  const char* end = data + len;
  while (p < end) {
    // One pass finds the newline, or first the byte that needs escaping;
    // no piece is longer than wbuf, so nothing beyond that is scanned.
    const char* limit = size_t(end - p) > wbuf ? p + wbuf + 1 : end;
    const char* c = find_control(p, limit);
    const char* nl = c == limit ? nullptr : *c == '\n' ? c  // the common case: no call
        : static_cast<const char*>(memchr(c, '\n', size_t(limit - c)));
    bool clean = c == limit || nl == c || (nl == c + 1 && *c == '\r');
    size_t seg = size_t((nl ? nl : limit) - p);  // bytes before the newline
    size_t cr = nl && seg > 0 && nl[-1] == '\r';  // 1: CRLF, the CR is dropped
    if (s->partial_len > 0) {
      size_t room = wbuf - s->partial_len;
      if (nl && seg <= room) {  // completes the partial line
        if (seg == 0 && s->partial[s->partial_len - 1] == '\r') s->partial_len--;
        write_partial(s, p, seg - cr, cr == 0);
        p = nl + 1;
      } else if (seg > room) {  // partial line reaches wbuf: write a piece
        write_partial(s, p, room, false);
        p += room;
      } else if (ends_line) {
        write_partial(s, p, seg, false);
        p = end;
      } else {  // still no newline
        keep_partial(s, p, seg, when);
        p = end;
      }
    } else if (seg > wbuf) {
      write_line(s, when, nullptr, 0, p, wbuf, false, clean);
      p += wbuf;
    } else if (nl) {
      write_line(s, when, nullptr, 0, p, seg - cr, cr == 0, clean);
      p = nl + 1;
    } else if (ends_line) {
      write_line(s, when, nullptr, 0, p, seg, false, clean);
      p = end;
    } else {
      keep_partial(s, p, seg, when);
      p = end;
    }
  }
  if (ends_line && s->partial_len > 0) write_partial(s, nullptr, 0, false);
}

void TextLines::expire(const timespec& now, bool all) {
  while (pending_.head >= 0) {
    Sender* s = &table_->slots()[pending_.head];
    timespec due = s->partial_time;
    due.tv_sec += timeout_;
    if (!all && !timespec_le(due, now)) break;
    write_partial(s, nullptr, 0, false);
    stats_->lines_timed_out++;
  }
}

timespec TextLines::next_deadline() const {
  if (pending_.head < 0) return timespec{0, 0};
  timespec due = table_->slots()[pending_.head].partial_time;
  due.tv_sec += timeout_;
  return due;
}

// ============================================================== netconsole

namespace {

// Parses decimal digits at *p (at most max_digits) into *v.
bool parse_decimal(const char** p, const char* end, int max_digits, uint64_t* v) {
  const char* q = *p;
  uint64_t n = 0;
  while (q < end && *q >= '0' && *q <= '9' && q - *p < max_digits) n = n * 10 + uint64_t(*q++ - '0');
  if (q == *p || (q < end && *q >= '0' && *q <= '9')) return false;
  *p = q;
  *v = n;
  return true;
}

bool expect(const char** p, const char* end, char c) {
  if (*p >= end || **p != c) return false;
  (*p)++;
  return true;
}

// PRI,SEQ,USEC,FLAG[,field...]; where one field may be ncfrag=OFF/TOTAL.
bool parse_ext_fields(const char* p, const char* end, const char* start, ExtHeader* h) {
  uint64_t pri, off, total;
  if (!parse_decimal(&p, end, 4, &pri) || pri > 1023 || !expect(&p, end, ',') ||
      !parse_decimal(&p, end, 20, &h->seq) || !expect(&p, end, ',') ||
      !parse_decimal(&p, end, 20, &h->usec) || !expect(&p, end, ',') || p >= end ||
      (*p != '-' && *p != 'c' && *p != '+'))
    return false;
  h->pri = unsigned(pri);
  h->flag = *p++;
  h->fragment = false;
  while (p < end && *p == ',') {  // fields newer kernels may add
    p++;
    if (end - p > 7 && !memcmp(p, "ncfrag=", 7)) {
      p += 7;
      if (!parse_decimal(&p, end, 10, &off) || !expect(&p, end, '/') ||
          !parse_decimal(&p, end, 10, &total) || off > UINT32_MAX || total > UINT32_MAX)
        return false;
      h->fragment = true;
      h->frag_off = uint32_t(off);
      h->frag_total = uint32_t(total);
    } else {
      while (p < end && *p != ',' && *p != ';' && *p > ' ' && *p < 0x7f) p++;
    }
  }
  if (!expect(&p, end, ';')) return false;
  h->body = size_t(p - start);
  return true;
}

// Marks bytes [from, to) as received; returns how many were new.
uint32_t mark_received(uint8_t* bits, uint32_t from, uint32_t to) {
  uint32_t added = 0;
  while (from < to && (from & 7)) {
    uint8_t bit = uint8_t(1u << (from & 7));
    added += !(bits[from >> 3] & bit);
    bits[from >> 3] |= bit;
    from++;
  }
  for (; from + 8 <= to; from += 8) {  // whole bytes: usually all new
    uint8_t b = bits[from >> 3];
    for (; b; b &= uint8_t(b - 1)) added--;
    added += 8;
    bits[from >> 3] = 0xff;
  }
  for (; from < to; from++) {
    uint8_t bit = uint8_t(1u << (from & 7));
    added += !(bits[from >> 3] & bit);
    bits[from >> 3] |= bit;
  }
  return added;
}

int hex_value(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

}  // namespace

bool parse_ext_header(const char* data, size_t len, ExtHeader* h) {
  if (!may_be_ext_header(data, len)) return false;
  const char* end = data + (len < 160 ? len : 160);  // headers are short
  h->release = nullptr;
  h->release_len = 0;
  if (parse_ext_fields(data, end, data, h)) return true;
  // RELEASE, (the kernel's uname release: printable, no ',' or ';')
  size_t room = size_t(end - data) < 65 ? size_t(end - data) : 65;
  const char* comma = static_cast<const char*>(memchr(data, ',', room));
  if (!comma || comma == data || comma - data > 64) return false;
  for (const char* p = data; p < comma; p++)
    if (*p <= ' ' || *p >= 0x7f || *p == ';') return false;
  if (!parse_ext_fields(comma + 1, end, data, h)) return false;
  h->release = data;
  h->release_len = size_t(comma - data);
  return true;
}

bool Netconsole::init(unsigned senders, unsigned frags, unsigned timeout) {
  timeout_ = timeout;
  frags_ = frags;
  // Reserved now, resident only once used.  A feed finishes at most three
  // records before it starts one, and finished ones stay readable until
  // the next call: three entries more than frags.
  senders_ = static_cast<NetconsoleState*>(calloc(senders, sizeof(NetconsoleState)));
  fed_ = static_cast<uint8_t*>(calloc(senders, 1));
  pool_ = static_cast<Reassembly*>(calloc(frags + kFinishedPerFeed, sizeof(Reassembly)));
  events_ = static_cast<NetconsoleEvent*>(calloc(frags + kEventsPerFeed, sizeof(NetconsoleEvent)));
  return senders_ && fed_ && pool_ && events_;
}

Netconsole::~Netconsole() {
  free(senders_);
  free(fed_);
  free(pool_);
  free(events_);
}

// A sender's state is touched only once it sends extended netconsole, so
// that the memory of syslog-only senders stays untouched.
void Netconsole::forget(uint32_t id) { fed_[id] = 0; }

NetconsoleState& Netconsole::state(uint32_t id) {
  NetconsoleState& n = senders_[id];
  if (fed_[id]) return n;
  fed_[id] = 1;
  n.seq_known = n.msgid_known = n.seq_resumable = false;
  n.release_len = 0;
  for (int32_t& r : n.inflight) r = -1;
  for (uint64_t& c : n.cut_seq) c = 0;
  n.cut_next = 0;
  return n;
}

bool Netconsole::next(NetconsoleEvent* e) {
  if (event_head_ == event_count_) return false;
  *e = events_[event_head_++];
  return true;
}

// Starts a call that queues events: the previous call's events were
// pulled, so the records they pointed to may be reused now.
void Netconsole::begin_call() {
  event_head_ = event_count_ = 0;
  while (finished_head_ >= 0) {
    int32_t idx = finished_head_;
    finished_head_ = pool_[idx].age_next;
    pool_[idx].age_next = free_head_;
    free_head_ = idx;
  }
}

NetconsoleEvent* Netconsole::event(NetconsoleEvent::Kind kind, uint32_t id, const timespec& when) {
  NetconsoleEvent* e = &events_[event_count_++];
  *e = NetconsoleEvent();
  e->kind = kind;
  e->sender = id;
  e->when = when;
  return e;
}

Netconsole::Fed Netconsole::feed(uint32_t id, const in6_addr& addr, const ExtHeader& h,
                                 const char* data, size_t len, const timespec& when) {
  begin_call();
  state(id);
  check_release(id, h, when);
  if (h.fragment) return fragment(id, addr, h, data, len, when);
  record(id, h, data, len, when);
  return Fed::taken;
}

// Notes the kernel release when a sender first sends one or changes it.
void Netconsole::check_release(uint32_t id, const ExtHeader& h, const timespec& when) {
  NetconsoleState& n = senders_[id];
  if (h.release_len == 0 ||
      (h.release_len == n.release_len && !memcmp(h.release, n.release, h.release_len)))
    return;
  NetconsoleEvent* e = event(n.release_len == 0 ? NetconsoleEvent::Kind::release
                                                : NetconsoleEvent::Kind::release_changed, id, when);
  e->release = h.release;
  e->release_len = h.release_len;
  memcpy(previous_release_, n.release, n.release_len);  // a new kernel: its records count from 0 again
  e->previous = previous_release_;
  e->previous_len = n.release_len;
  n.seq_known = n.msgid_known = false;
  memcpy(n.release, h.release, h.release_len);
  n.release_len = uint8_t(h.release_len);
}

// Tracks SEQ: reports gaps and restarts; true for a record seen before.
bool Netconsole::seen_before(uint32_t id, uint64_t seq, const timespec& when) {
  NetconsoleState& n = senders_[id];
  if (!n.seq_known) {
    restart_seq(&n, seq);
    return false;
  }
  if (seq > n.last_seq) {
    uint64_t gap = seq - n.last_seq - 1;
    bool resumed = n.seq_resumable && seq == n.resume_seq + 1;  // it was a duplicate
    if (gap > 0 && !resumed) {
      NetconsoleEvent* e = event(NetconsoleEvent::Kind::gap, id, when);
      e->seq = n.last_seq + 1;
      e->last = seq - 1;
      e->msgid_known = n.msgid_known;
    }
    uint64_t shift = seq - n.last_seq;
    n.seq_window = shift >= 64 || resumed ? 1 : (n.seq_window << shift) | 1;
    n.last_seq = seq;
    n.seq_resumable = false;
    return false;
  }
  uint64_t back = n.last_seq - seq;
  if (back < 64 && seq >= n.first_seq && !(n.seq_window >> back & 1)) {
    n.seq_window |= uint64_t(1) << back;  // a late record filling a gap
    return false;
  }
  if (back < 64 && seq >= n.first_seq) return true;
  NetconsoleEvent* e = event(NetconsoleEvent::Kind::restart, id, when);
  e->seq = seq;
  e->last = n.last_seq;
  restart_seq(&n, seq);
  return false;
}

// Counts this sender's records from seq on, forgetting what came before.
void Netconsole::restart_seq(NetconsoleState* n, uint64_t seq) {
  n->seq_known = true;
  n->first_seq = n->last_seq = seq;
  n->seq_window = 1;
  n->seq_resumable = false;
  n->msgid_known = false;
}

// A whole record whose SEQ was seen before: a sender that rebooted early
// (its new records reuse the old numbers) or a duplicated datagram.  Either
// way it is handed back, never dropped; if the old numbering continues
// next, it was a duplicate and no gap is reported.
void Netconsole::seen_again(uint32_t id, uint64_t seq, const timespec& when) {
  NetconsoleState& n = senders_[id];
  NetconsoleEvent* e = event(NetconsoleEvent::Kind::again, id, when);
  e->seq = seq;
  e->last = n.last_seq;
  uint64_t last = n.last_seq;
  bool msgid_known = n.msgid_known;
  restart_seq(&n, seq);
  n.msgid_known = msgid_known;
  n.resume_seq = last;
  n.seq_resumable = true;
}

// msgid= (newer kernels) counts messages sent: a gap is a loss in transit.
void Netconsole::check_msgid(uint32_t id, const char* text, size_t len, const timespec& when) {
  NetconsoleState& n = senders_[id];
  const char* dict = static_cast<const char*>(memchr(text, '\n', len));  // after the body
  if (!dict) return;
  const char* m = static_cast<const char*>(
      memmem(dict, size_t(text + len - dict), "\n msgid=", 8));
  if (!m) return;
  const char* p = m + 8;
  uint64_t msgid;
  if (!parse_decimal(&p, text + len, 20, &msgid)) return;
  if (n.msgid_known && msgid > n.last_msgid + 1) {
    NetconsoleEvent* e = event(NetconsoleEvent::Kind::lost, id, when);
    e->seq = n.last_msgid + 1;
    e->last = msgid - 1;
  }
  if (!n.msgid_known || msgid > n.last_msgid) n.last_msgid = msgid;
  n.msgid_known = true;
}

// A whole record in one datagram.
void Netconsole::record(uint32_t id, const ExtHeader& h, const char* data, size_t len,
                        const timespec& when) {
  if (seen_before(id, h.seq, when)) seen_again(id, h.seq, when);
  const char* body = data + h.body;
  uint32_t n = uint32_t(len - h.body);
  check_msgid(id, body, n, when);
  event(NetconsoleEvent::Kind::record, id, when)->record =
      ExtRecord{h.pri, h.usec, when, body, n, nullptr};
}

// One fragment: kept until its record is whole or times out.  One that
// cannot belong to a record is not extended netconsole after all.
Netconsole::Fed Netconsole::fragment(uint32_t id, const in6_addr& addr, const ExtHeader& h,
                                     const char* data, size_t len, const timespec& when) {
  const char* payload = data + h.body;
  size_t n = len - h.body;
  if (h.frag_total == 0 || h.frag_total > kRecordMax || h.frag_off >= h.frag_total ||
      n > h.frag_total - h.frag_off || n == 0) {
    NetconsoleEvent* e = fragment_event(NetconsoleEvent::Kind::malformed, id, h, when);
    e->bytes = uint32_t(n);
    return Fed::not_extended;
  }
  for (int32_t idx : senders_[id].inflight) {
    if (idx >= 0 && pool_[idx].seq == h.seq && pool_[idx].total != h.frag_total) {
      NetconsoleEvent* e = fragment_event(NetconsoleEvent::Kind::inconsistent, id, h, when);
      e->bytes = pool_[idx].total;
      return Fed::not_extended;
    }
  }
  Reassembly* r = reassembly_for(id, addr, h, when);
  if (!r && written_incomplete(id, h.seq)) {  // late: it fills a gap, so it is handed back
    NetconsoleEvent* e = fragment_event(NetconsoleEvent::Kind::late, id, h, when);
    memset(late_got_, 0, sizeof late_got_);
    memcpy(late_data_ + h.frag_off, payload, n);
    mark_received(late_got_, h.frag_off, h.frag_off + uint32_t(n));
    e->record = ExtRecord{h.pri, h.usec, when, late_data_, h.frag_total, late_got_};
    return Fed::taken;
  }
  if (!r) {  // its record was handed back already
    fragment_event(NetconsoleEvent::Kind::duplicate, id, h, when);
    return Fed::taken;
  }
  memcpy(r->data + h.frag_off, payload, n);
  r->have += mark_received(r->got, h.frag_off, h.frag_off + uint32_t(n));
  if (r->have == r->total) finish(r, when, NetconsoleEvent::Why::complete);
  return Fed::taken;
}

NetconsoleEvent* Netconsole::fragment_event(NetconsoleEvent::Kind kind, uint32_t id,
                                            const ExtHeader& h, const timespec& when) {
  NetconsoleEvent* e = event(kind, id, when);
  e->seq = h.seq;
  e->off = h.frag_off;
  e->total = h.frag_total;
  return e;
}

// The reassembly of this fragment's record: found, or started (making
// room if needed); null when the record was handed back already.
Reassembly* Netconsole::reassembly_for(uint32_t id, const in6_addr& addr, const ExtHeader& h,
                                       const timespec& when) {
  int32_t* inflight = senders_[id].inflight;
  int oldest = -1;
  for (int i = 0; i < kInflightPerSender; i++) {
    if (inflight[i] < 0) continue;
    Reassembly* r = &pool_[inflight[i]];
    if (r->seq == h.seq && r->total == h.frag_total) return r;
    if (oldest < 0 || timespec_le(r->first, pool_[inflight[oldest]].first)) oldest = i;
  }
  if (seen_before(id, h.seq, when)) return nullptr;
  int free_slot = -1;
  for (int i = 0; i < kInflightPerSender && free_slot < 0; i++)
    if (inflight[i] < 0) free_slot = i;
  if (free_slot < 0) {
    free_slot = oldest;
    finish(&pool_[inflight[oldest]], when, NetconsoleEvent::Why::newer_of_sender);
  }
  limit_host(addr, when);
  if (in_use_ == frags_) finish(&pool_[ages_.head], when, NetconsoleEvent::Why::table_full);
  int32_t idx;
  if (free_head_ >= 0) {
    idx = free_head_;
    free_head_ = pool_[idx].age_next;
  } else {
    idx = int32_t(pool_used_++);  // never past frags + kFinishedPerFeed: see init
  }
  Reassembly* r = &pool_[idx];
  r->sender = int32_t(id);
  r->addr = addr;
  r->seq = h.seq;
  r->usec = h.usec;
  r->pri = h.pri;
  r->total = h.frag_total;
  r->have = 0;
  r->first = when;
  memset(r->got, 0, (r->total + 7) / 8);
  ages_.append(pool_, idx);
  in_use_++;
  inflight[free_slot] = idx;
  return r;
}

// One sender address holds at most kInflightPerSender records in
// reassembly, across all its ports: beyond that it gives up its own oldest,
// so one host (however many ports it sends from) cannot push out the
// records of others.
void Netconsole::limit_host(const in6_addr& addr, const timespec& when) {
  int held = 0;
  int32_t oldest = -1;
  for (int32_t i = ages_.head; i >= 0; i = pool_[i].age_next) {
    if (memcmp(&pool_[i].addr, &addr, sizeof addr) != 0) continue;
    if (oldest < 0) oldest = i;
    held++;
  }
  if (held >= kInflightPerSender) finish(&pool_[oldest], when, NetconsoleEvent::Why::newer_of_address);
}

// True for a SEQ this sender's record was recently handed back incomplete with.
bool Netconsole::written_incomplete(uint32_t id, uint64_t seq) const {
  for (uint64_t c : senders_[id].cut_seq)
    if (c == seq + 1) return true;
  return false;
}

// Hands back a reassembled record, whole or (why says why) with bytes
// missing.  Its entry is taken out of reassembly, and reused only after
// the caller has pulled the event.
void Netconsole::finish(Reassembly* r, const timespec& now, NetconsoleEvent::Why why) {
  uint32_t id = uint32_t(r->sender);
  NetconsoleState& n = senders_[id];
  bool whole = r->have == r->total;
  if (whole) check_msgid(id, r->data, r->total, now);
  else n.cut_seq[n.cut_next++ % kInflightPerSender] = r->seq + 1;
  NetconsoleEvent* e = event(whole ? NetconsoleEvent::Kind::record : NetconsoleEvent::Kind::incomplete, id,
                             now);
  e->why = why;
  e->reassembled = whole;
  e->seq = r->seq;
  e->total = r->total;
  e->bytes = r->total - r->have;
  e->record = ExtRecord{r->pri, r->usec, r->first, r->data, r->total, whole ? nullptr : r->got};
  int32_t idx = int32_t(r - pool_);
  ages_.unlink(pool_, idx);
  in_use_--;
  for (int32_t& i : n.inflight)
    if (i == idx) i = -1;
  r->sender = -1;
  r->age_next = finished_head_;
  finished_head_ = idx;
}

void Netconsole::drop(uint32_t id, const timespec& now) {
  begin_call();
  if (!fed_[id]) return;
  for (int32_t idx : senders_[id].inflight)
    if (idx >= 0) finish(&pool_[idx], now, NetconsoleEvent::Why::slot_reused);
}

void Netconsole::expire(const timespec& now, bool all) {
  begin_call();
  while (ages_.head >= 0) {
    Reassembly* r = &pool_[ages_.head];
    timespec due = r->first;
    due.tv_sec += timeout_;
    if (!all && !timespec_le(due, now)) break;
    finish(r, now, all ? NetconsoleEvent::Why::at_exit : NetconsoleEvent::Why::timed_out);
  }
}

timespec Netconsole::next_deadline() const {
  if (ages_.head < 0) return timespec{0, 0};
  timespec due = pool_[ages_.head].first;
  due.tv_sec += timeout_;
  return due;
}

// ------------------------------------------------------------ RecordWriter

void RecordWriter::write(const Origin& o, const ExtRecord& r) {
  origin_ = o;
  when_ = r.when;
  int n = snprintf(head_, sizeof head_, "<%u>[%5llu.%06llu] ", r.pri,
                   (unsigned long long)(r.usec / 1000000), (unsigned long long)(r.usec % 1000000));
  head_len_ = size_t(n);
  in_body_ = true;
  open_ = false;
  line_bytes_ = 0;
  esc_len_ = 0;
  uint32_t i = r.got ? 0 : r.len;
  if (!r.got) text(r.data, r.len);
  while (i < r.len) {  // runs of bytes received and gaps
    bool have = r.got[i >> 3] >> (i & 7) & 1;
    uint32_t j = i;
    while (j < r.len && bool(r.got[j >> 3] >> (j & 7) & 1) == have) j++;
    if (have) text(r.data + i, j - i);
    else gap(j - i);
    i = j;
  }
  flush_escape();
  if (open_) newline();
}

// Text lines carry "<pri>[sssss.uuuuuu] ", dictionary lines only their text.
void RecordWriter::open_line() {
  lines_->begin(origin_, when_);
  if (in_body_) lines_->text(head_, head_len_);
  open_ = true;
}

// Writes decoded bytes into the current line, opening it (and starting a
// new one at wbuf) as needed.
void RecordWriter::put(const char* p, size_t len) {
  while (len > 0) {
    if (!open_) open_line();
    size_t room = wbuf_ - line_bytes_;
    if (room == 0) {
      newline();
      continue;
    }
    size_t n = len < room ? len : room;
    lines_->text(p, n);
    line_bytes_ += n;
    p += n;
    len -= n;
  }
}

void RecordWriter::newline() {
  if (!open_) open_line();
  lines_->end();
  open_ = false;
  line_bytes_ = 0;
}

// An escape cut short (by a gap or the end) is written as it came.
void RecordWriter::flush_escape() {
  size_t n = esc_len_;
  esc_len_ = 0;
  if (n > 0) put(esc_, n);
}

// Feeds kernel-escaped record text: \xNN is decoded, a decoded newline
// starts a new text line, a raw newline ends the body (dictionary follows).
void RecordWriter::text(const char* p, size_t len) {
  const char* end = p + len;
  while (p < end) {
    if (esc_len_ > 0) {
      bool ok = esc_len_ == 1 ? *p == 'x' : hex_value(*p) >= 0;
      if (!ok) {
        flush_escape();
        continue;
      }
      esc_[esc_len_++] = *p++;
      if (esc_len_ == 4) {
        char c = char(unsigned(hex_value(esc_[2])) << 4 | unsigned(hex_value(esc_[3])));
        esc_len_ = 0;
        if (c == '\n') newline();
        else put(&c, 1);
      }
      continue;
    }
    const char* q = static_cast<const char*>(memchr(p, '\\', size_t(end - p)));
    if (!q) q = end;
    const char* nl = static_cast<const char*>(memchr(p, '\n', size_t(q - p)));
    if (nl) q = nl;
    if (q > p) {
      put(p, size_t(q - p));
      p = q;
    } else if (*p == '\\') {
      esc_[0] = '\\';
      esc_len_ = 1;
      p++;
    } else {
      if (open_ || in_body_) newline();
      in_body_ = false;
      p++;
    }
  }
}

void RecordWriter::gap(size_t missing) {
  flush_escape();
  char mark[48];
  int n = snprintf(mark, sizeof mark, "[... %zu bytes missing ...]", missing);
  put(mark, size_t(n));
}

// ------------------------------------------------------------- LineWriter

void LineWriter::init(const Options& opts, Output* out, Stats* stats) {
  out_ = out;
  stats_ = stats;
  escape_ = opts.escape;
  style_ = opts.stamp;
}

// The stamp is formatted once a second; ISO stamps get their microseconds
// per line.
const char* LineWriter::stamp(const timespec& when) {
  if (when.tv_sec != stamp_sec_) {
    stamp_len_ = format_stamp(style_, when, stamp_);
    stamp_sec_ = when.tv_sec;
  } else if (style_ == StampStyle::iso) {
    put_micros(stamp_ + kIsoMicros, when.tv_nsec);
  }
  return stamp_;
}

// Claims a new line's prefix ("STAMP NAME ") and `extra` bytes after it
// in one piece of the arena; returns where the extra bytes go.
char* LineWriter::prefix(const Origin& o, const timespec& when, size_t extra) {
  stamp(when);
  out_->to(o.host);
  out_->begin_line();
  size_t head = stamp_len_ + o.name_len + 1;
  char* d = out_->claim(head + extra);
  memcpy(d, stamp_, stamp_len_);
  memcpy(d + stamp_len_, o.name, o.name_len);
  d[head - 1] = ' ';
  return d + head;
}

void LineWriter::begin(const Origin& o, const timespec& when) { prefix(o, when, 0); }

void LineWriter::text(const char* p, size_t len) {
  if (len == 0) return;  // most lines: no partial line before them
  if (escape_ == Escape::hex) out_->copy_escaped(p, len);
  else out_->copy(p, len);
}

// A short clean line whose newline follows it, the most common one:
// prefix and text claimed at once.
void LineWriter::short_line(const Origin& o, const timespec& when, const char* p, size_t len) {
  memcpy(prefix(o, when, len + 1), p, len + 1);
  stats_->lines++;
}

void LineWriter::end_with(const char* p, size_t len, bool newline_follows, bool clean) {
  if (escape_ == Escape::hex && !clean && any_escape(p, len)) {
    out_->copy_escaped(p, len);
    out_->copy("\n", 1);
  } else if (newline_follows && len < kCopyMax) {
    out_->copy(p, len + 1);
  } else if (newline_follows) {
    out_->ref(p, len + 1);
  } else {
    out_->ref(p, len);
    out_->copy("\n", 1);
  }
  stats_->lines++;
}

void LineWriter::end() {
  out_->copy("\n", 1);
  stats_->lines++;
}

// Notices are always escaped and are not counted as lines received.
void LineWriter::notice(const in6_addr* host, const char* name, size_t name_len,
                        const timespec& when, const char* fmt, ...) {
  char text[512];
  int n = name ? snprintf(text, sizeof text, "%.*s: ", int(name_len), name) : 0;
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text + n, sizeof text - size_t(n), fmt, ap);
  va_end(ap);
  char line[sizeof text * 4 + kStampMax + 16];
  size_t len = format_notice(when, text, line, sizeof line);
  out_->to(host);
  out_->begin_line();
  out_->copy(line, len);
}

// The notice a sink owes its file, from its report.
size_t LineWriter::sink_notice(const WriteReport& r, char* out, size_t len) const {
  char since[kStampMax + 1], text[512];
  format_stamp(StampStyle::classic, r.since, since);
  since[19] = '\0';
  switch (r.owed) {
    case WriteReport::Owed::cut_found:
      snprintf(text, sizeof text, "the line before this notice was cut: the file did not end "
               "in a newline (udplogger or the system stopped while writing it)");
      break;
    case WriteReport::Owed::write_failed:
      snprintf(text, sizeof text, "%s%s%llu lines (%llu bytes) could not be written since %s: %s%s",
               r.file ? r.file : "", r.file ? ": " : "", (unsigned long long)r.lines,
               (unsigned long long)r.bytes, since,
               r.err == EAGAIN ? "its reader stopped reading" : strerror(r.err),
               r.cut ? "; the line before this notice was cut" : "");
      break;
    case WriteReport::Owed::directory_back:
      snprintf(text, sizeof text, "log directory %.200s could not be used since %s (%s): %zu "
               "bytes of lines kept in memory follow; %llu lines (%llu bytes) beyond them were "
               "lost", r.dir, since, r.why, r.kept, (unsigned long long)r.lines,
               (unsigned long long)r.bytes);
      break;
    case WriteReport::Owed::host_capped:
      snprintf(text, sizeof text, "split=host: %zu new host directories made today (newdirs=); "
               "until midnight, lines of hosts that have none go to this file", r.kept);
      break;
  }
  return format_notice(r.now, text, out, len);
}

// Its own stamp, not the cached one: a sink may ask for a notice while a
// line is being begun.
size_t LineWriter::format_notice(const timespec& when, const char* text, char* out,
                                 size_t len) const {
  char st[kStampMax + 1];
  size_t stlen = format_stamp(style_, when, st);
  size_t textlen = strlen(text);
  if (len < stlen + 12 + 4 * textlen + 1) textlen = (len - stlen - 13) / 4;
  static const char kName[11] = {'u', 'd', 'p', 'l', 'o', 'g', 'g', 'e', 'r', ':', ' '};
  memcpy(out, st, stlen);
  memcpy(out + stlen, kName, sizeof kName);
  size_t n = stlen + 11 + escape_text(text, textlen, out + stlen + 11);
  out[n++] = '\n';
  return n;
}

// ================================================================== output

bool Output::init(size_t arena_bytes, Sink* sink, const LineWriter* notices, bool by_host) {
  arena_ = static_cast<char*>(malloc(arena_bytes));
  arena_cap_ = arena_bytes;
  sink_ = sink;
  notices_ = notices;
  by_host_ = by_host;
  return arena_ != nullptr;
}

Output::~Output() { free(arena_); }

// Hands a batch to the sink and counts what it lost.  A sink that owes a
// notice first writes nothing and says which; it gets it as a preface.
void Output::deliver(const in6_addr* host, const iovec* iov, int iovcnt) {
  char preface[2048];
  size_t preface_len = 0;
  WriteReport r = sink_->write(host, iov, iovcnt, nullptr, 0);
  for (int tries = 0; r.kind == WriteReport::Kind::owes_notice && tries < 3; tries++) {
    preface_len = notices_->sink_notice(r, preface, sizeof preface);
    r = sink_->write(host, iov, iovcnt, preface, preface_len);
  }
  count(r);
}

void Output::count(const WriteReport& r) {
  if (r.kind != WriteReport::Kind::lost) return;
  add_saturating(&losses_.lines[r.cause], r.lines);
  add_saturating(&losses_.bytes[r.cause], r.bytes);
}

// Each round ends one thing the sink owes (a notice, kept lines), so the
// bound is only a guard: split=host owes at most one notice per file.
void Output::close() {
  flush();
  char preface[2048];
  size_t preface_len = 0;
  for (int round = 0; round < 2 * 65536 + 16; round++) {
    WriteReport r = sink_->close(preface_len ? preface : nullptr, preface_len);
    if (r.kind == WriteReport::Kind::written) return;
    count(r);
    preface_len = r.kind == WriteReport::Kind::owes_notice
                      ? notices_->sink_notice(r, preface, sizeof preface) : 0;
  }
}

void Output::flush() {
  if (iovcnt_ > 0) deliver(has_host_ ? &host_ : nullptr, iov_, iovcnt_);
  iovcnt_ = 0;
  arena_used_ = 0;
  line_start_ = 0;
  line_iov_ = 0;
}

void Output::begin_line() {
  line_start_ = arena_used_;
  line_iov_ = iovcnt_;
}

// When the arena or the iovec list is full in the middle of a line, the
// lines before it are written and the line moves to the front: a line is
// never cut between two writes (processes sharing one file with
// reuseport=1 append whole lines) unless it leaves no `need` bytes free in
// the arena (or no iovec) on its own.
void Output::make_room(size_t need) {
  bool nothing_yet = line_iov_ == iovcnt_ && line_start_ == arena_used_;
  if (line_iov_ == 0 || nothing_yet) return flush();  // no whole line before, or none of this one
  char* start = arena_ + line_start_;
  int k = line_iov_;  // the line's first iovec
  iovec& last = iov_[k - 1];
  char* merged = static_cast<char*>(last.iov_base);
  size_t rest = 0;  // the line's bytes appended to the iovec before it
  if (merged >= arena_ && merged < start && merged + last.iov_len > start)
    rest = size_t(merged + last.iov_len - start);
  last.iov_len -= rest;
  deliver(has_host_ ? &host_ : nullptr, iov_, k);
  if (rest) {
    k--;
    last = iovec{start, rest};
  }
  char* end = arena_ + arena_used_;
  for (int i = k; i < iovcnt_; i++) {
    char* p = static_cast<char*>(iov_[i].iov_base);
    if (p >= start && p < end) iov_[i].iov_base = p - line_start_;
  }
  memmove(arena_, start, size_t(end - start));
  memmove(iov_, iov_ + k, size_t(iovcnt_ - k) * sizeof(iovec));
  iovcnt_ -= k;
  arena_used_ -= line_start_;
  line_start_ = 0;
  line_iov_ = 0;
  if (iovcnt_ >= kMaxIov || arena_cap_ - arena_used_ < need) flush();  // cut after all
}

// Lines about another host go out in a batch of their own.
void Output::switch_host(const in6_addr* host) {
  bool same = host ? has_host_ && !memcmp(&host_, host, sizeof host_) : !has_host_;
  if (same) return;
  flush();
  has_host_ = host != nullptr;
  if (host) host_ = *host;
}

// Returns arena space for up to `want` bytes (at least 4), making room
// first when the arena or the iovec list is full.
char* Output::reserve(size_t want, size_t* got) {
  if (iovcnt_ >= kMaxIov || arena_cap_ - arena_used_ < 4) make_room(4);
  size_t room = arena_cap_ - arena_used_;
  *got = want < room ? want : room;
  return arena_ + arena_used_;
}

// Appends p to the iovec list, growing the last entry when p continues it.
void Output::push(const char* p, size_t len) {
  if (iovcnt_ > 0) {
    iovec& last = iov_[iovcnt_ - 1];
    if (static_cast<char*>(last.iov_base) + last.iov_len == p) {
      last.iov_len += len;
      return;
    }
  }
  iov_[iovcnt_].iov_base = const_cast<char*>(p);
  iov_[iovcnt_].iov_len = len;
  iovcnt_++;
}

void Output::ref(const char* p, size_t len) {
  if (len == 0) return;
  if (iovcnt_ >= kMaxIov) make_room(0);
  push(p, len);
}

void Output::copy(const char* p, size_t len) {
  while (len > 0) {
    size_t n;
    char* d = reserve(len, &n);
    memcpy(d, p, n);
    arena_used_ += n;
    push(d, n);
    p += n;
    len -= n;
  }
}

char* Output::claim(size_t len) {
  if (iovcnt_ >= kMaxIov || arena_cap_ - arena_used_ < len) make_room(len);
  char* d = arena_ + arena_used_;
  arena_used_ += len;
  push(d, len);
  return d;
}

// Clean runs are copied whole; only the bytes that need it are escaped.
void Output::copy_escaped(const char* p, size_t len) {
  const char* end = p + len;
  while (p < end) {
    const char* c = find_control(p, end);
    copy(p, size_t(c - p));
    if (c == end) break;
    char esc[4];
    escape_text(c, 1, esc);
    copy(esc, 4);
    p = c + 1;
  }
}

// ================================================================== pacing

long Pacer::woke(uint64_t n, int64_t now_ns) {
  count_ += n;
  int64_t span = now_ns - since_;
  if (span >= kWindowNs) {
    rate_ = uint64_t(double(count_) * 1e9 / double(span));
    count_ = 0;
    since_ = now_ns;
  }
  if (n == 0 || rate_ < kMinRate) return 0;
  long pause = long(kGather * 1000000000 / rate_);
  return pause < max_pause_ ? pause : max_pause_;
}

}  // namespace ul

// =================================================================== shell
namespace ul {
namespace {

int64_t monotonic_ns() {
  timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return int64_t(t.tv_sec) * 1000000000 + t.tv_nsec;
}

// writev to a descriptor that may be non-blocking (standard output or
// error into a pipe, see nonblocking_stdio): when it is full, waits for
// room while *budget_ms lasts, so that a reader that stopped reading
// cannot stall the loop.
ssize_t writev_patiently(int fd, const iovec* iov, int iovcnt, int* budget_ms) {
  for (;;) {
    ssize_t w = writev(fd, iov, iovcnt);
    if (w >= 0) return w;
    if (errno == EINTR) continue;
    if (errno != EAGAIN || *budget_ms <= 0) return -1;
    pollfd p = {fd, POLLOUT, 0};
    int64_t start = monotonic_ns();
    poll(&p, 1, *budget_ms);
    *budget_ms -= 1 + int((monotonic_ns() - start) / 1000000);
  }
}

// Messages on standard error that found it full (its reader stopped):
// counted, and said by the next one that gets through.
uint64_t stderr_lost = 0;

// Writes bytes to standard error, waiting for room at most budget_ms;
// false when not all of them could be written.
bool to_stderr(const iovec* iov, int iovcnt, int budget_ms) {
  iovec rest[1024];  // IOV_MAX, as many as an Output batch has
  memcpy(rest, iov, sizeof(iovec) * size_t(iovcnt));
  iovec* v = rest;
  while (iovcnt > 0) {
    ssize_t w = writev_patiently(STDERR_FILENO, v, iovcnt, &budget_ms);
    if (w < 0) return false;
    size_t done = size_t(w);
    while (iovcnt > 0 && done >= v->iov_len) done -= v->iov_len, v++, iovcnt--;
    if (iovcnt > 0) v->iov_base = static_cast<char*>(v->iov_base) + done, v->iov_len -= done;
  }
  return true;
}

// One line on stderr: "udplogger: text", waiting for room at most 100 ms,
// and not at all after a line that could not be written (counted).
void vwarn(const char* fmt, va_list ap) {
  char line[2048], lost[128];
  int n = vsnprintf(line, sizeof line - 1, fmt, ap);
  size_t len = n < 0 ? 0 : size_t(n) < sizeof line - 1 ? size_t(n) : sizeof line - 2;
  line[len++] = '\n';
  size_t lost_len = 0;
  if (stderr_lost)
    lost_len = size_t(snprintf(lost, sizeof lost, "udplogger: %llu messages could not be written "
                               "to standard error: it was not read\n",
                               (unsigned long long)stderr_lost));
  static const char kName[] = "udplogger: ";
  iovec iov[3] = {{lost, lost_len}, {const_cast<char*>(kName), sizeof kName - 1}, {line, len}};
  if (to_stderr(iov, 3, stderr_lost ? 0 : 100)) stderr_lost = 0;  // no wait while it is not read
  else stderr_lost++;
}

void warn(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vwarn(fmt, ap);
  va_end(ap);
}

}  // namespace
}  // namespace ul

// The daemon itself (the tests run it as a process): sockets and receiving.
#ifndef UDPLOGGER_NO_MAIN
namespace ul {
namespace {


constexpr int kBatch = 64;             // datagrams per recvmmsg
constexpr size_t kSlotBytes = 65536;   // room for the largest UDP datagram
constexpr int kBatchesPerWake = 64;    // then look at timers and signals
constexpr uint64_t kQueued = 16;       // datagrams found at once that make a queue
constexpr int kStopDrainSeconds = 3;      // at stop, the queue is read for at most this
// SO_MEMINFO's array (linux/sock_diag.h, a stable ABI; not in musl's headers).
constexpr int kMeminfoDrops = 8, kMeminfoVars = 9;
#ifndef SO_MEMINFO
#define SO_MEMINFO 55
#endif

// The exit status of a fatal error: 1, or 2 under --check (where every
// error is the set-up's, like a bad option's).
int fatal_status = 1;
// Started by socket activation: a start that fails holds the sockets
// instead of exiting (see hold).
bool hold_on_fatal = false;
[[noreturn]] void hold(const char* why);

[[noreturn]] void die(const char* fmt, ...) {
  char why[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(why, sizeof why, fmt, ap);
  va_end(ap);
  warn("%s", why);
  if (hold_on_fatal) hold(why);
  exit(fatal_status);
}

timespec wall_clock() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

// ---------------------------------------------------------------- listener

constexpr int kMaxListeners = 16;

// No initializers: the listeners live in static storage, zeroed, and the
// first nlisteners are filled in by create_listener or inherit_listeners.
struct Listener {
  int fd;
  char where[INET6_ADDRSTRLEN + 16];  // "[::]:6666" for messages
  bool dual_stack;
  bool inherited;                     // handed in by systemd or a parent
  int rbuf_granted;
  uint32_t drops_seen;                // the socket's drop counter when last reported
};

// A socket address as the core sees senders: IPv6, IPv4 as v4-mapped.
void address_of(const sockaddr_in6& sa, in6_addr* addr, uint16_t* port) {
  if (sa.sin6_family == AF_INET) {
    const auto& sin = reinterpret_cast<const sockaddr_in&>(sa);
    memset(addr, 0, sizeof *addr);
    addr->s6_addr[10] = addr->s6_addr[11] = 0xff;
    memcpy(&addr->s6_addr[12], &sin.sin_addr, 4);
    *port = ntohs(sin.sin_port);
  } else {
    *addr = sa.sin6_addr;
    *port = ntohs(sa.sin6_port);
  }
}

// Creates and binds the UDP socket for ip= and port=; every failure is
// fatal and names the address.
void create_listener(const Options& o, Listener* l) {
  sockaddr_storage ss = {};
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
  const char* ip = o.ip ? o.ip : "::";
  int family = inet_pton(AF_INET, ip, &sin->sin_addr) == 1 ? AF_INET : AF_INET6;
  if (family == AF_INET6) inet_pton(AF_INET6, ip, &sin6->sin6_addr);
  l->fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (l->fd < 0 && family == AF_INET6 && !o.ip && errno == EAFNOSUPPORT) {
    family = AF_INET;  // IPv6 disabled on this host: IPv4 only
    ip = "0.0.0.0";
    sin->sin_addr.s_addr = htonl(INADDR_ANY);
    l->fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  }
  snprintf(l->where, sizeof l->where, family == AF_INET6 ? "[%s]:%u" : "%s:%u", ip, o.port);
  if (l->fd < 0) die("cannot create UDP socket for %s: %s", l->where, strerror(errno));
  socklen_t sslen = sizeof *sin;
  if (family == AF_INET6) {
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(uint16_t(o.port));
    sslen = sizeof *sin6;
    int v6only = IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) ? 0 : 1;
    if (setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0)
      die("cannot set IPV6_V6ONLY on %s: %s", l->where, strerror(errno));
  } else {
    sin->sin_family = AF_INET;
    sin->sin_port = htons(uint16_t(o.port));
  }
  int on = 1;  // reuseport=1: processes of one user share the port, the kernel keeps each sender on one
  if (o.reuseport && setsockopt(l->fd, SOL_SOCKET, SO_REUSEPORT, &on, sizeof on) < 0)
    die("cannot set SO_REUSEPORT on %s: %s", l->where, strerror(errno));
  if (bind(l->fd, reinterpret_cast<sockaddr*>(&ss), sslen) < 0)
    die("cannot bind UDP %s: %s", l->where, strerror(errno));
}

// Socket activation: systemd (or any parent holding the sockets across
// restarts) passes them as fds 3.. with LISTEN_FDS and LISTEN_PID.  Each
// must be a UDP socket; returns how many were taken, 0 when none passed.
int inherit_listeners(Listener* ls) {
  const char* pid = getenv("LISTEN_PID");
  const char* fds = getenv("LISTEN_FDS");
  unsigned long listen_pid = 0, n = 0;
  if (!pid || !fds || !parse_number(pid, 10, &listen_pid) || listen_pid != unsigned(getpid()))
    return 0;
  if (!parse_number(fds, 10, &n) || n < 1 || n > kMaxListeners)
    die("socket activation: LISTEN_FDS=%s: expected a number of UDP sockets, 1..%d", fds,
        kMaxListeners);
  for (int i = 0; i < int(n); i++) {
    int fd = 3 + i, type = 0, domain = 0;
    socklen_t len = sizeof type;
    if (getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &len) < 0)
      die("socket activation: fd %d: not a socket: %s", fd, strerror(errno));
    len = sizeof domain;
    getsockopt(fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
    if (type != SOCK_DGRAM || (domain != AF_INET && domain != AF_INET6))
      die("socket activation: fd %d is not a UDP socket (ListenDatagram= in the .socket unit)",
          fd);
    sockaddr_in6 bound = {};
    len = sizeof bound;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&bound), &len) < 0 || bound.sin6_port == 0)
      die("socket activation: fd %d is not bound to a port (ListenDatagram= in the .socket unit)",
          fd);
    fcntl(fd, F_SETFD, FD_CLOEXEC);
    fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
    ls[i].fd = fd;
    ls[i].inherited = true;
  }
  unsetenv("LISTEN_PID");  // not for any child
  unsetenv("LISTEN_FDS");
  unsetenv("LISTEN_FDNAMES");
  return int(n);
}

// Sets what the loop relies on: the receive buffer, kernel arrival times
// and the drop counter.  Works on any UDP socket, made here or handed in;
// a buffer the socket unit already made larger is kept.
void tune_listener(const Options& o, Listener* l) {
  int rbuf = int(o.rbuf);
  socklen_t len = sizeof l->rbuf_granted;
  getsockopt(l->fd, SOL_SOCKET, SO_RCVBUF, &l->rbuf_granted, &len);
  if (!l->inherited || l->rbuf_granted / 2 < rbuf) {  // the kernel reports twice the size set
    if (setsockopt(l->fd, SOL_SOCKET, SO_RCVBUFFORCE, &rbuf, sizeof rbuf) < 0 &&
        setsockopt(l->fd, SOL_SOCKET, SO_RCVBUF, &rbuf, sizeof rbuf) < 0)
      die("cannot set receive buffer of %s to %d: %s", l->where, rbuf, strerror(errno));
    len = sizeof l->rbuf_granted;
    getsockopt(l->fd, SOL_SOCKET, SO_RCVBUF, &l->rbuf_granted, &len);
  }
  int on = 1;
  if (setsockopt(l->fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0 &&
      setsockopt(l->fd, SOL_SOCKET, SO_TIMESTAMP, &on, sizeof on) < 0)
    die("cannot ask for receive timestamps on %s: %s", l->where, strerror(errno));
  // An IPv4 datagram on an IPv6 socket brings its IPv4 TOS byte along; an
  // IPv6 one with a v4-mapped source does not: see datagram_of.
  int domain = 0;
  len = sizeof domain;
  getsockopt(l->fd, SOL_SOCKET, SO_DOMAIN, &domain, &len);
  if (domain == AF_INET6 && setsockopt(l->fd, IPPROTO_IP, IP_RECVTOS, &on, sizeof on) < 0)
    die("cannot ask for IPv4 TOS on %s: %s", l->where, strerror(errno));
}

// Names the address the socket serves, as the kernel sees it, and whether
// it takes IPv4 too.
void describe_listener(Listener* l) {
  sockaddr_in6 ss = {};
  socklen_t len = sizeof ss;
  if (getsockname(l->fd, reinterpret_cast<sockaddr*>(&ss), &len) < 0) return;
  in6_addr addr;
  uint16_t port;
  address_of(ss, &addr, &port);
  format_sender(addr, port, l->where);
  int v6only = 1;
  len = sizeof v6only;
  l->dual_stack = ss.sin6_family == AF_INET6 &&
                  getsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, &len) == 0 && !v6only;
}

// ---------------------------------------------------------------- receive

// Preallocated recvmmsg state.  Each slot has room for the largest
// datagram, but the ring is anonymous memory: only the pages a datagram
// actually fills become resident, so small datagrams cost one page a slot.
struct Ring {
  mmsghdr msgs[kBatch];
  iovec iov[kBatch];
  sockaddr_in6 names[kBatch];
  alignas(cmsghdr) char ctrl[kBatch][64];
  Datagram datagrams[kBatch];
  int filled = kBatch;  // messages the last recvmmsg wrote to
  char* data = nullptr;
  bool large = false;  // a datagram larger than a page made more of it resident
};

void ring_init(Ring* r) {
  void* p = mmap(nullptr, kBatch * kSlotBytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) die("cannot map %zu bytes of receive ring: %s",
                           kBatch * kSlotBytes, strerror(errno));
  r->data = static_cast<char*>(p);
  for (int i = 0; i < kBatch; i++) {
    r->iov[i].iov_base = r->data + size_t(i) * kSlotBytes;
    r->iov[i].iov_len = kSlotBytes;
    msghdr& h = r->msgs[i].msg_hdr;
    h.msg_iov = &r->iov[i];
    h.msg_iovlen = 1;
    h.msg_name = &r->names[i];
    h.msg_control = r->ctrl[i];
  }
}

// Message i of the ring as the core sees it: sender (IPv4 as v4-mapped),
// arrival time (else `fallback`), bytes.  On an IPv6 socket a v4-mapped
// source is an IPv4 sender only if the datagram came over IPv4 (it has
// the IPv4 TOS message); otherwise an IPv6 sender claims an IPv4 address.
Datagram datagram_of(const Ring& r, int i, const timespec& fallback) {
  Datagram d;
  address_of(r.names[i], &d.addr, &d.port);
  const msghdr& h = r.msgs[i].msg_hdr;
  d.when = fallback;
  bool over_ipv4 = false;
  for (cmsghdr* c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(const_cast<msghdr*>(&h), c)) {
    if (c->cmsg_level == IPPROTO_IP && c->cmsg_type == IP_TOS) {
      over_ipv4 = true;
    } else if (c->cmsg_level != SOL_SOCKET) {
      continue;
    } else if (c->cmsg_type == SCM_TIMESTAMPNS) {
      memcpy(&d.when, CMSG_DATA(c), sizeof d.when);
    } else if (c->cmsg_type == SCM_TIMESTAMP) {
      timeval tv;
      memcpy(&tv, CMSG_DATA(c), sizeof tv);
      d.when = timespec{tv.tv_sec, tv.tv_usec * 1000};
    }
  }
  d.spoofed_v4 = r.names[i].sin6_family == AF_INET6 && IN6_IS_ADDR_V4MAPPED(&d.addr) && !over_ipv4;
  d.data = static_cast<const char*>(r.iov[i].iov_base);
  d.len = r.msgs[i].msg_len;
  d.truncated = h.msg_flags & MSG_TRUNC;
  return d;
}

// Receives one batch into the ring and feeds it to the core; returns
// the number of datagrams, 0 when the socket is empty.
int receive_batch(Listener* l, Ring* r, Core* core, Clock clock) {
  for (int i = 0; i < r->filled; i++) {
    msghdr& h = r->msgs[i].msg_hdr;  // the lengths the kernel changed last time
    h.msg_namelen = sizeof r->names[i];
    h.msg_controllen = sizeof r->ctrl[i];
    h.msg_flags = 0;
  }
  int n = recvmmsg(l->fd, r->msgs, kBatch, MSG_DONTWAIT, nullptr);
  r->filled = n > 0 ? n : 0;
  if (n <= 0) {
    if (n < 0 && errno != EAGAIN && errno != EINTR) warn("recvmmsg: %s", strerror(errno));
    return 0;
  }
  timespec now = clock();
  for (int i = 0; i < n; i++) {
    r->large |= r->msgs[i].msg_len > 4096;
    r->datagrams[i] = datagram_of(*r, i, now);
  }
  core->datagrams(r->datagrams, size_t(n));
  return n;
}

}  // namespace
}  // namespace ul
#endif  // UDPLOGGER_NO_MAIN

namespace ul {

// ------------------------------------------------------------------- sinks

bool open_log_dir(const char* dir, unsigned perm, LogDir* d, char* why, size_t whylen) {
  d->perm = perm;
  snprintf(d->given, sizeof d->given, "%s", dir);
  if (!realpath(dir, d->path) ||
      (d->fd = open(d->path, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
    snprintf(why, whylen, "cannot use log directory %s: %s", dir, strerror(errno));
    return false;
  }
  return true;
}

bool reopen_log_dir(LogDir* d, char* why, size_t whylen) {
  int fd = open(d->given, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) {
    snprintf(why, whylen, "%s", strerror(errno));
    return false;
  }
  close(d->fd);
  d->fd = fd;
  char path[sizeof d->path];
  if (realpath(d->given, path)) memcpy(d->path, path, sizeof path);
  return true;
}

int open_log_file(int dirfd, const char* name, unsigned perm, bool* cut, char* why,
                  size_t whylen) {
  // Read as well as append: the last byte tells whether a line was cut.
  const int flags = O_RDWR | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
  bool created = true;
  int fd = openat(dirfd, name, flags | O_CREAT | O_EXCL, perm);
  if (fd < 0 && errno == EEXIST) {
    created = false;
    fd = openat(dirfd, name, flags);
  }
  if (fd < 0) {
    snprintf(why, whylen, "%s", errno == ELOOP ? "is a symbolic link" :
             errno == ENXIO ? "is not a regular file" : strerror(errno));
    return -1;
  }
  struct stat st;
  if (fstat(fd, &st) < 0) {
    snprintf(why, whylen, "%s", strerror(errno));
  } else if (!S_ISREG(st.st_mode)) {
    snprintf(why, whylen, "is not a regular file");
  } else if (st.st_mode & 0111) {
    snprintf(why, whylen, "is executable (mode %04o); refusing to append to it",
             unsigned(st.st_mode & 07777));
  } else if (st.st_nlink != 1) {  // a link planted to another file
    snprintf(why, whylen, "has %lu hard links; refusing to append to it",
             (unsigned long)st.st_nlink);
  } else if (st.st_uid != geteuid()) {
    snprintf(why, whylen, "is owned by uid %lu, not by udplogger's uid %lu; refusing to "
             "append to it", (unsigned long)st.st_uid, (unsigned long)geteuid());
  } else if (created && fchmod(fd, perm) < 0) {
    snprintf(why, whylen, "cannot set mode %04o: %s", perm, strerror(errno));
  } else if (fcntl(fd, F_SETFL, O_RDWR | O_APPEND) < 0) {  // writes may block again
    snprintf(why, whylen, "cannot clear O_NONBLOCK: %s", strerror(errno));
  } else {
    char last = '\n';
    *cut = st.st_size > 0 && pread(fd, &last, 1, st.st_size - 1) == 1 && last != '\n';
    return fd;
  }
  close(fd);
  return -1;
}

namespace {

WriteLoss::Cause cause_of(int err) {
  return err == ENOSPC ? WriteLoss::disk_full : err == EDQUOT ? WriteLoss::quota
       : err == EIO ? WriteLoss::io : err == EAGAIN ? WriteLoss::stalled : WriteLoss::other;
}

// Whether the last byte of iov is a newline (true when it is empty).
bool ends_in_newline(const iovec* iov, int iovcnt) {
  for (int i = iovcnt - 1; i >= 0; i--)
    if (iov[i].iov_len) return static_cast<const char*>(iov[i].iov_base)[iov[i].iov_len - 1] == '\n';
  return true;
}

// Newlines in iov: lines, for counting what was lost.
size_t count_lines(const iovec* iov, int iovcnt) {
  size_t n = 0;
  for (int i = 0; i < iovcnt; i++) {
    const char* p = static_cast<const char*>(iov[i].iov_base);
    const char* end = p + iov[i].iov_len;
    while ((p = static_cast<const char*>(memchr(p, '\n', size_t(end - p))))) p++, n++;
  }
  return n;
}

// r; when it is a loss, with a batch that was not written after it.
WriteReport also_lost(WriteReport r, const iovec* iov, int iovcnt) {
  if (r.kind != WriteReport::Kind::lost) return r;
  r.lines += count_lines(iov, iovcnt);
  for (int i = 0; i < iovcnt; i++) r.bytes += iov[i].iov_len;
  return r;
}

}  // namespace

void LogFile::adopt(int fd, bool cut) {
  fd_ = fd;
  mid_line_ = found_cut_ = cut;
}

void LogFile::close_file() {
  if (fd_ > STDERR_FILENO) close(fd_);
  fd_ = -1;
}

// Before the first lines after a write error, or into a file found cut, a
// notice is owed: without it (preface null) nothing is written.
WriteReport LogFile::write(const iovec* iov, int iovcnt, const char* preface, size_t preface_len,
                           const char* dir, const char* name, Clock clock) {
  if (failing_ || found_cut_) {
    if (!preface) return owed(clock);
    if (!mend(preface, preface_len, dir, name)) return lose(iov, iovcnt, errno, dir, name, clock);
  }
  iovec rest[1024];
  if (iovcnt > 0) memcpy(rest, iov, sizeof(iovec) * size_t(iovcnt));
  iovec* v = rest;
  bool ends_line = ends_in_newline(iov, iovcnt);
  while (iovcnt > 0) {
    int budget = stall_left_ms_;
    ssize_t w = writev_patiently(fd_, v, iovcnt, &budget);
    stall_left_ms_ = budget < stall_left_ms_ ? budget : kStallMs;  // waits add up while they last
    if (w < 0) return lose(v, iovcnt, errno, dir, name, clock);
    size_t done = size_t(w);
    while (iovcnt > 0 && done >= v->iov_len) {
      done -= v->iov_len;
      v++;
      iovcnt--;
    }
    if (iovcnt > 0) {  // a short write: the rest follows (or fails) next
      v->iov_base = static_cast<char*>(v->iov_base) + done;
      v->iov_len -= done;
      mid_line_ = true;
    }
  }
  mid_line_ = !ends_line;  // a batch may end inside a line the next one ends
  return WriteReport();
}

// The time is read only when something went wrong, not for every batch.
static timespec now_of(Clock clock) { return clock ? clock() : timespec{0, 0}; }

WriteReport LogFile::owed(Clock clock) const {
  WriteReport r;
  r.kind = WriteReport::Kind::owes_notice;
  r.owed = failing_ ? WriteReport::Owed::write_failed : WriteReport::Owed::cut_found;
  r.cut = mid_line_;
  r.err = error_;
  r.lines = lost_lines_;
  r.bytes = lost_bytes_;
  r.since = since_;
  r.now = now_of(clock);
  return r;
}

// Counts what could not be written; the first error of an episode is said
// on stderr, the rest only counted.
WriteReport LogFile::lose(const iovec* iov, int iovcnt, int err, const char* dir,
                          const char* name, Clock clock) {
  WriteReport r;
  r.kind = WriteReport::Kind::lost;
  r.cause = cause_of(err);
  r.lines = count_lines(iov, iovcnt);
  for (int i = 0; i < iovcnt; i++) r.bytes += iov[i].iov_len;
  r.err = err;
  lost_lines_ += r.lines;
  lost_bytes_ += r.bytes;
  if (!failing_) {
    failing_ = true;
    error_ = err;
    since_ = now_of(clock);
    warn("cannot write %s%s%s: %s; counting the lines lost until writing works again", dir,
         *dir ? "/" : "", name, err == EAGAIN ? "its reader has stopped reading" : strerror(err));
  }
  errno = err;
  return r;
}

// Before the next lines: a cut mark if a line was cut, then the notice.
// False (errno set) when they cannot be written.
bool LogFile::mend(const char* preface, size_t preface_len, const char* dir, const char* name) {
  static const char kCut[] = "[... line cut here ...]\n";
  iovec iov[2] = {{const_cast<char*>(kCut), mid_line_ ? sizeof kCut - 1 : 0},
                  {const_cast<char*>(preface), preface_len}};
  ssize_t w = writev(fd_, iov, 2);
  if (w != ssize_t(iov[0].iov_len + preface_len)) {
    if (w >= 0) errno = ENOSPC;  // a short write: still no room
    return false;
  }
  if (failing_)
    warn("writing %s%s%s again: %llu lines (%llu bytes) were lost, said in the file", dir,
         *dir ? "/" : "", name, (unsigned long long)lost_lines_,
         (unsigned long long)lost_bytes_);
  failing_ = found_cut_ = mid_line_ = false;
  lost_lines_ = lost_bytes_ = 0;
  return true;
}

bool DailyFile::open(LogDir* dir, time_t now, Clock clock, char* why, size_t whylen) {
  dir_ = dir;
  clock_ = clock;
  char reason[256];
  if (switch_to(now, reason, sizeof reason)) return true;
  char name[16];
  log_file_name(now, name);
  snprintf(why, whylen, "cannot open log file %s/%s: %s", dir->path, name, reason);
  return false;
}

DailyFile::~DailyFile() {
  file_.close_file();
  free(kept_);
}

// Points the log at the file for the local date of `now`; on failure keeps
// the current file (if any) and returns false with *why set.
bool DailyFile::switch_to(time_t now, char* why, size_t whylen) {
  char name[16];
  log_file_name(now, name);
  bool cut = false;
  int fd = open_log_file(dir_->fd, name, dir_->perm, &cut, why, whylen);
  if (fd < 0) return false;
  file_.close_file();
  file_.adopt(fd, cut);
  memcpy(name_, name, sizeof name);
  next_switch_ = next_local_midnight(now);
  return true;
}

// Once DIR is back, the notice of the outage and the kept lines come
// before anything else (after the file's own notice, if it owes one).
WriteReport DailyFile::write(const in6_addr*, const iovec* iov, int iovcnt, const char* preface,
                             size_t preface_len) {
  if (away_ && closed_) return hand_over(iov, iovcnt);
  if (away_) return keep(iov, iovcnt);
  if (back_) {
    if (file_.owes()) {
      WriteReport r = file_.write(nullptr, 0, preface, preface_len, dir_->path, name_, clock_);
      if (r.kind != WriteReport::Kind::written) return also_lost(r, iov, iovcnt);
      preface = nullptr;  // spent on the file's own notice
    }
    if (!preface) {
      WriteReport r;
      r.kind = WriteReport::Kind::owes_notice;
      r.owed = WriteReport::Owed::directory_back;
      r.dir = dir_->given;
      r.since = timespec{away_since_, 0};
      r.why = away_why_;
      r.kept = kept_len_;
      r.lines = lost_lines_;
      r.bytes = lost_bytes_;
      r.now = now_of(clock_);
      return r;
    }
    iovec first[2] = {{const_cast<char*>(preface), preface_len}, {kept_, kept_len_}};
    warn("log directory %s is back: %zu bytes kept in memory written, %llu lines lost",
         dir_->given, kept_len_, (unsigned long long)lost_lines_);
    WriteReport r = file_.write(first, kept_len_ ? 2 : 1, nullptr, 0, dir_->path, name_, clock_);
    back_ = false;
    free(kept_);
    kept_ = nullptr;
    kept_len_ = 0;
    lost_lines_ = lost_bytes_ = 0;
    if (r.kind != WriteReport::Kind::written) return also_lost(r, iov, iovcnt);
    preface = nullptr;
  }
  return file_.write(iov, iovcnt, preface, preface_len, dir_->path, name_, clock_);
}

// At local midnight: DIR looked up again, and the new day's file; if that
// file cannot be opened, the current one and a message saying why, as
// udplogger 1.1 did.  While DIR is gone: another try.
void DailyFile::tick(time_t now) {
  if (away_) {
    if (now >= retry_at_) come_back(now);
    return;
  }
  if (now < next_switch_) return;
  char why[256];
  if (!reopen_log_dir(dir_, why, sizeof why)) return go_away(now, why);
  if (switch_to(now, why, sizeof why)) return;
  char name[16];
  log_file_name(now, name);
  warn("cannot switch to log file %s/%s: %s; still writing %s", dir_->path, name, why, name_);
  next_switch_ = now + 60;  // try again in a minute
}

void DailyFile::reopen(time_t now) {
  if (away_) return come_back(now);
  char why[256];
  if (!reopen_log_dir(dir_, why, sizeof why)) return go_away(now, why);
  if (!switch_to(now, why, sizeof why))
    warn("SIGHUP: cannot reopen log file: %s; still writing %s/%s", why, dir_->path, name_);
}

// DIR is gone or unusable: the old file (moved or removed with it) gets no
// more lines; they wait in memory.
void DailyFile::go_away(time_t now, const char* why) {
  warn("cannot use log directory %s: %s; keeping up to %zu KiB of lines in memory and trying "
       "again every %d s", dir_->given, why, kKeptMax >> 10, kRetrySeconds);
  file_.close_file();
  away_ = true;
  away_since_ = now;
  retry_at_ = now + kRetrySeconds;
  snprintf(away_why_, sizeof away_why_, "%s", why);
}

// Keeps a batch while DIR is gone, whole or (no room) not at all, counted.
WriteReport DailyFile::keep(const iovec* iov, int iovcnt) {
  static const char kCut[] = "[... line cut here ...]\n";
  WriteReport r;
  for (int i = 0; i < iovcnt; i++) r.bytes += iov[i].iov_len;
  if (!kept_) kept_ = static_cast<char*>(malloc(kKeptMax));
  if (kept_ && kept_len_ + r.bytes + sizeof kCut <= kKeptMax) {
    for (int i = 0; i < iovcnt; i++) {
      memcpy(kept_ + kept_len_, iov[i].iov_base, iov[i].iov_len);
      kept_len_ += iov[i].iov_len;
    }
    return WriteReport();
  }
  if (kept_ && kept_len_ > 0 && kept_[kept_len_ - 1] != '\n') {  // its rest is lost
    memcpy(kept_ + kept_len_, kCut, sizeof kCut - 1);
    kept_len_ += sizeof kCut - 1;
  }
  r.kind = WriteReport::Kind::lost;
  r.cause = WriteLoss::no_directory;
  r.lines = count_lines(iov, iovcnt);
  lost_lines_ += r.lines;
  lost_bytes_ += r.bytes;
  return r;
}

// At stop: DIR is tried once more; if it is back, the notice and the kept
// lines are written as usual; if not, they go to standard error (the
// journal under systemd) rather than nowhere, and so do any lines after.
WriteReport DailyFile::close(const char* preface, size_t preface_len) {
  if (away_ && !closed_) come_back(now_of(clock_).tv_sec);
  if (!away_) return back_ ? write(nullptr, nullptr, 0, preface, preface_len) : WriteReport();
  closed_ = true;
  if (!kept_len_) return WriteReport();
  warn("log directory %s is still gone at stop: the %zu bytes of lines kept in memory follow "
       "here", dir_->given, kept_len_);
  iovec kept = {kept_, kept_len_};
  WriteReport r = hand_over(&kept, 1);
  free(kept_);
  kept_ = nullptr;
  kept_len_ = 0;
  return r;
}

// Lines that can reach no log file, at stop: to standard error, and
// reported lost from the log.
WriteReport DailyFile::hand_over(const iovec* iov, int iovcnt) {
  WriteReport r;
  r.kind = WriteReport::Kind::lost;
  r.cause = WriteLoss::no_directory;
  r.lines = count_lines(iov, iovcnt);
  for (int i = 0; i < iovcnt; i++) r.bytes += iov[i].iov_len;
  if (iovcnt > 0 && !to_stderr(iov, iovcnt, 1000))
    warn("standard error: %s; %llu lines kept for %s are lost", strerror(errno),
         (unsigned long long)r.lines, dir_->given);
  return r;
}

// DIR is back: today's file, which owes the notice of the gap and the
// kept lines (see write).
void DailyFile::come_back(time_t now) {
  char why[256];
  if (!reopen_log_dir(dir_, why, sizeof why) || !switch_to(now, why, sizeof why)) {
    retry_at_ = now + kRetrySeconds;
    return;
  }
  away_ = false;
  back_ = true;
}

bool HostFiles::open(LogDir* dir, unsigned files, unsigned newdirs, time_t now, Clock clock,
                     char* why, size_t whylen) {
  dir_ = dir;
  clock_ = clock;
  today_ = now;
  capacity_ = files;
  newdirs_ = newdirs;
  open_ = static_cast<HostFile*>(calloc(files, sizeof(HostFile)));
  if (!open_) {
    snprintf(why, whylen, "out of memory for files=%u", files);
    return false;
  }
  for (unsigned i = 0; i < files; i++) open_[i].file = LogFile();
  return daemon_.open(dir, now, clock, why, whylen);
}

HostFiles::~HostFiles() {
  if (open_) close_all();
  free(open_);
}

// Closes every file; a slot in a write-error episode stays its host's.
void HostFiles::close_all() {
  for (unsigned i = 0; i < capacity_; i++) open_[i].file.close_file();
}

unsigned HostFiles::open_files() const {
  unsigned n = 0;
  for (unsigned i = 0; i < capacity_; i++) n += open_[i].file.fd() >= 0;
  return n;
}

// Whether a message with this reason may go to stderr now: one per
// reason a minute, however many hosts share it.
bool HostFiles::say(const char* why) {
  uint32_t cause = 2166136261u;
  for (const char* p = why; *p; p++) cause = (cause ^ uint8_t(*p)) * 16777619u;
  time_t now = now_of(clock_).tv_sec;
  Said* oldest = &said_[0];
  for (Said& s : said_) {
    if (s.cause == cause) {
      if (now - s.at < 60) return false;
      oldest = &s;
      break;
    }
    if (s.at < oldest->at) oldest = &s;
  }
  *oldest = Said{cause, now};
  return true;
}

// Opens the host directory addr, made if need be (up to newdirs= a day);
// -1 with *why set, or with *capped when newdirs= was reached.
int HostFiles::open_host_dir(const char* addr, bool* capped, char* why, size_t whylen) {
  const int flags = O_RDONLY | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC;
  int dirfd = openat(dir_->fd, addr, flags);
  bool created = false;
  if (dirfd < 0 && errno == ENOENT) {
    if (made_today_ >= newdirs_) {
      *capped = true;
      return -1;
    }
    created = mkdirat(dir_->fd, addr, 0750) == 0;
    if (created) made_today_++;
    dirfd = created || errno == EEXIST ? openat(dir_->fd, addr, flags) : -1;
  }
  if (dirfd < 0) {
    snprintf(why, whylen, "%s", errno == ELOOP || errno == ENOTDIR
                                    ? "is not a directory (or is a symbolic link)"
                                    : strerror(errno));
  } else if (created && fchmod(dirfd, 0750) < 0) {
    snprintf(why, whylen, "cannot set mode 0750: %s", strerror(errno));
    ::close(dirfd);
    dirfd = -1;
  }
  return dirfd;
}

// The open file of host, or its file opened in the slot of the least
// recently written one; null when it cannot be had.  The slot's file is
// closed only once the host's directory is open (a host beyond newdirs=
// closes nothing), and before the new file opens: never more than files=.
HostFiles::HostFile* HostFiles::file_for(const in6_addr& host, bool* capped) {
  HostFile* slot = nullptr;
  for (unsigned i = 0; i < capacity_; i++) {
    HostFile* f = &open_[i];
    if (f->used() && !memcmp(&f->host, &host, sizeof host)) {
      f->last_used = ++uses_;
      if (f->file.fd() >= 0) return f;
      slot = f;  // its episode outlived the file (midnight, SIGHUP): the new one owes the notice
      break;
    }
    if (f->file.failing()) continue;  // kept until its notice is written
    if (!slot || (slot->used() && (!f->used() || f->last_used < slot->last_used))) slot = f;
  }
  if (!slot) return nullptr;  // every slot in an episode: the daemon's file
  char addr[kHostNameMax], day[16], name[sizeof slot->name], why[256];
  format_host(host, addr);
  log_file_name(today_, day);
  snprintf(name, sizeof name, "%s/%s", addr, day);
  bool cut = false;
  int fd = -1, dirfd = open_host_dir(addr, capped, why, sizeof why);
  if (dirfd >= 0) {
    if (!slot->used() || memcmp(&slot->host, &host, sizeof host) != 0) {
      slot->file.close_file();
      slot->file = LogFile();  // a new file owes nothing of the last one's
    }
    fd = open_log_file(dirfd, day, dir_->perm, &cut, why, sizeof why);
    ::close(dirfd);
  }
  if (fd < 0) {
    if (!*capped && say(why))
      warn("cannot open log file %s/%s: %s; lines of such hosts go to %s/%s (said once a minute)",
           dir_->path, name, why, dir_->path, daemon_.name());
    return nullptr;
  }
  slot->file.adopt(fd, cut);
  memcpy(slot->name, name, sizeof name);
  slot->host = host;
  slot->last_used = ++uses_;
  return slot;
}

// A host whose file cannot be had writes into the daemon's file; beyond
// newdirs= the first such batch of the day brings a notice.
WriteReport HostFiles::write(const in6_addr* host, const iovec* iov, int iovcnt,
                             const char* preface, size_t preface_len) {
  bool capped = false;  // while DIR is gone, every line waits with the daemon's own
  HostFile* f = host && !daemon_.away() ? file_for(*host, &capped) : nullptr;
  if (f) return f->file.write(iov, iovcnt, preface, preface_len, dir_->path, f->name, clock_);
  if (!capped) return daemon_.write(nullptr, iov, iovcnt, preface, preface_len);
  if (capped_said_ || daemon_.owes()) {  // the daemon's file's own notice comes first
    WriteReport r = daemon_.write(nullptr, iov, iovcnt, preface, preface_len);
    if (r.kind != WriteReport::Kind::owes_notice) beyond_newdirs_ += count_lines(iov, iovcnt);
    return r;
  }
  if (!preface) {
    WriteReport r;
    r.kind = WriteReport::Kind::owes_notice;
    r.owed = WriteReport::Owed::host_capped;
    r.kept = made_today_;
    r.now = now_of(clock_);
    return r;
  }
  capped_said_ = true;
  warn("split=host: newdirs=%u new host directories made today; until midnight, lines of "
       "hosts that have none go to %s/%s", newdirs_, dir_->path, daemon_.name());
  beyond_newdirs_ += count_lines(iov, iovcnt);
  iovec notice = {const_cast<char*>(preface), preface_len};
  WriteReport r = daemon_.write(nullptr, &notice, 1, nullptr, 0);
  if (r.kind != WriteReport::Kind::written) return also_lost(r, iov, iovcnt);
  return daemon_.write(nullptr, iov, iovcnt, nullptr, 0);
}

// Host files are named after the day they are opened in: at midnight they
// are closed, and reopened under the new name when next written.
void HostFiles::tick(time_t now) {
  if (now < daemon_.next_switch()) return;
  daemon_.tick(now);
  close_all();
  if (now >= next_local_midnight(today_)) made_today_ = 0, capped_said_ = false;
  today_ = now;
}

void HostFiles::reopen(time_t now) {
  daemon_.reopen(now);
  close_all();
  today_ = now;
}

// At stop: a host file still failing gets its notice in the daemon's file,
// one per round; then the daemon's file closes.
WriteReport HostFiles::close(const char* preface, size_t preface_len) {
  if (closing_ >= 0 && !held_len_ && preface) {
    held_len_ = preface_len < sizeof held_ ? preface_len : sizeof held_;
    memcpy(held_, preface, held_len_);
    preface = nullptr;
  }
  if (held_len_) {
    iovec notice = {held_, held_len_};
    WriteReport r = daemon_.write(nullptr, &notice, 1, preface, preface_len);
    if (r.kind == WriteReport::Kind::owes_notice) return r;
    open_[closing_].file.close_file();
    open_[closing_].file = LogFile();
    closing_ = -1;
    held_len_ = 0;
    if (r.kind == WriteReport::Kind::lost) return r;
    preface = nullptr;
  }
  for (unsigned i = 0; i < capacity_; i++) {
    if (!open_[i].file.failing()) continue;
    closing_ = int(i);
    WriteReport r = open_[i].file.owed(clock_);
    r.file = open_[i].name;
    r.cut = false;  // that file's last line, not the one before the notice here
    return r;
  }
  return daemon_.close(preface, preface_len);
}

WriteReport StdoutSink::write(const in6_addr*, const iovec* iov, int iovcnt, const char* preface,
                              size_t preface_len) {
  if (gone_) return WriteReport();
  WriteReport r = out_.write(iov, iovcnt, preface, preface_len, "", "standard output", clock_);
  if (r.kind == WriteReport::Kind::lost && r.err == EPIPE) gone_ = true;
  return r;
}

}  // namespace ul


// The daemon itself: readiness, privileges, the loop and main.
#ifndef UDPLOGGER_NO_MAIN
namespace ul {
namespace {

// ------------------------------------------------------------------ notify

// systemd's readiness protocol, without libsystemd: one datagram per state
// to $NOTIFY_SOCKET ("/path" or "@abstract").  Connected before privileges
// are dropped; a failure is said once and never stops the daemon.
struct Notifier {
  int fd = -1;
  uint64_t lost = 0;  // messages systemd did not take (never waited for)
};

// Leaves NOTIFY_SOCKET set: hold() may need it after setup has opened it.
void notify_open(Notifier* n) {
  const char* path = getenv("NOTIFY_SOCKET");
  if (!path || (path[0] != '/' && path[0] != '@')) return;
  sockaddr_un sa = {};
  sa.sun_family = AF_UNIX;
  size_t len = strlen(path);
  if (len >= sizeof sa.sun_path) {
    warn("NOTIFY_SOCKET=%s: path too long; not notifying systemd", path);
    return;
  }
  memcpy(sa.sun_path, path, len);
  if (path[0] == '@') sa.sun_path[0] = '\0';
  n->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
  if (n->fd < 0 || connect(n->fd, reinterpret_cast<sockaddr*>(&sa),
                           socklen_t(offsetof(sockaddr_un, sun_path) + len)) < 0) {
    warn("NOTIFY_SOCKET=%s: %s; not notifying systemd", path, strerror(errno));
    if (n->fd >= 0) close(n->fd);
    n->fd = -1;
  }
}

// Never waits: a manager that does not read must not stall the loop.
void notify(Notifier* n, const char* fmt, ...) {
  if (n->fd < 0) return;
  char msg[1024];
  va_list ap;
  va_start(ap, fmt);
  int len = vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  if (len <= 0) return;
  if (send(n->fd, msg, size_t(len) < sizeof msg ? size_t(len) : sizeof msg - 1,
           MSG_NOSIGNAL | MSG_DONTWAIT) < 0) {
    if (n->lost++ == 0) warn("NOTIFY_SOCKET: %s; not waiting for it", strerror(errno));
  } else if (n->lost) {
    warn("NOTIFY_SOCKET: %llu messages to systemd were not taken", (unsigned long long)n->lost);
    n->lost = 0;
  }
}

// Whether systemd (or another manager) handed this process its sockets.
bool activated() {
  const char* pid = getenv("LISTEN_PID");
  unsigned long n = 0;
  return pid && getenv("LISTEN_FDS") && parse_number(pid, 10, &n) && n == unsigned(getpid());
}

// An activated start that cannot go on (a bad option, a directory it
// cannot use): exiting would leave the datagram that started it queued, so
// systemd would start it again at once, and after five failures its start
// limit would close the socket for every sender.  Instead it says why,
// tells systemd it is up (with the reason as its status) and holds the
// sockets, unread, until it is stopped: what arrives meanwhile waits for
// the start after the fix.
[[noreturn]] void hold(const char* why) {
  Notifier n;
  notify_open(&n);
  notify(&n, "READY=1\nSTATUS=not started: %s; fix it and restart (datagrams wait in the socket)",
         why);
  sigset_t stop;
  sigemptyset(&stop);
  sigaddset(&stop, SIGTERM);
  sigaddset(&stop, SIGINT);
  sigprocmask(SIG_BLOCK, &stop, nullptr);
  int sig = 0;
  sigwait(&stop, &sig);
  exit(fatal_status);
}

// -------------------------------------------------------------- fleet view

// metrics=: the Prometheus text exposition format, written to PATH.tmp
// and renamed over PATH, so that a reader (node_exporter's textfile
// collector) sees a whole file or the one before.
struct Metrics {
  const char* path = nullptr;  // null: no metrics=
  char tmp[kPathMax + 8];
  time_t started = 0;
  int error = 0;               // the last write's errno, said once an episode
  // The file being written: buffered, and written a buffer at a time.
  int fd = -1;
  int write_error = 0;
  size_t len = 0;
  char buf[1 << 16];
};

void metrics_flush(Metrics* m) {
  const char* p = m->buf;
  while (m->len > 0 && m->write_error == 0) {
    ssize_t w = write(m->fd, p, m->len);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) m->write_error = errno;
    else p += w, m->len -= size_t(w);
  }
  m->len = 0;
}

void put(Metrics* m, const char* fmt, ...) __attribute__((format(printf, 2, 3)));
void put(Metrics* m, const char* fmt, ...) {
  if (m->len > sizeof m->buf - 1024) metrics_flush(m);
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(m->buf + m->len, sizeof m->buf - m->len, fmt, ap);
  va_end(ap);
  if (n > 0) m->len += size_t(n) < sizeof m->buf - m->len ? size_t(n) : sizeof m->buf - m->len - 1;
}

// "# HELP" and "# TYPE" of a family; its samples follow.
void family(Metrics* m, const char* name, const char* type, const char* help) {
  put(m, "# HELP udplogger_%s %s\n# TYPE udplogger_%s %s\n", name, help, name, type);
}

void counter(Metrics* m, const char* name, const char* help, uint64_t v) {
  family(m, name, "counter", help);
  put(m, "udplogger_%s %llu\n", name, (unsigned long long)v);
}

// A host's address as a label value: text, escaped as any label value.
void host_label(const HostState& h, char out[2 * kHostNameMax]) {
  char name[kHostNameMax];
  format_host(h.addr, name);
  escape_label_value(name, out, 2 * kHostNameMax);
}

// Everything but the per-host families; hosts: the hosts known now.
void put_totals(Metrics* m, const Core& core, const Options& o, uint64_t beyond_newdirs,
                size_t hosts) {
  const Stats& t = core.stats();
  family(m, "build_info", "gauge", "The running udplogger's version; always 1.");
  char version[32];
  escape_label_value(kVersion, version, sizeof version);
  put(m, "udplogger_build_info{version=\"%s\"} 1\n", version);
  family(m, "start_time_seconds", "gauge", "When udplogger started, in Unix seconds.");
  put(m, "udplogger_start_time_seconds %lld\n", (long long)m->started);
  counter(m, "datagrams_total", "Datagrams received, refused ones included.", t.datagrams);
  counter(m, "received_bytes_total", "Bytes of the datagrams received.", t.bytes);
  counter(m, "lines_total", "Log lines written from senders (not udplogger's notices).", t.lines);
  counter(m, "records_total", "Extended netconsole records written.", t.records);
  counter(m, "fragments_total", "Extended netconsole fragment datagrams received.", t.fragments);
  counter(m, "records_reassembled_total", "Records joined from fragments.", t.reassembled);
  counter(m, "records_incomplete_total", "Records written with bytes missing.", t.incomplete);
  counter(m, "records_missing_total", "Extended netconsole records missing by SEQ: lost on the "
          "way or filtered by the sender's console loglevel.", t.missing);
  counter(m, "records_lost_in_transit_total", "Records missing by msgid: lost on the way.",
          t.lost_in_transit);
  counter(m, "fragments_duplicate_total", "Fragments seen before, ignored.", t.duplicates);
  counter(m, "fragments_late_total", "Fragments of records written incomplete, written alone.",
          t.late_fragments);
  counter(m, "malformed_total", "Bad extended netconsole headers or fragments, written as text.",
          t.malformed);
  counter(m, "lines_timed_out_total", "Partial lines written after timeout= without a newline.",
          t.lines_timed_out);
  counter(m, "lines_flushed_for_memory_total", "Partial lines written early: partials= reached.",
          t.flushed_for_memory);
  counter(m, "kernel_drops_total", "Datagrams the kernel dropped: the receive buffer was full.",
          t.kernel_drops);
  counter(m, "refused_total", "Datagrams refused: not in allow=, or IPv6 from a v4-mapped "
          "address.", t.refused);
  counter(m, "senders_reused_total", "Senders whose slot went to a new one (clients=).",
          t.senders_reused);
  counter(m, "hosts_forgotten_total", "Hosts whose state went to a new one (hosts=).",
          t.hosts_forgotten);
  if (o.split == Split::host)
    counter(m, "lines_beyond_newdirs_total", "split=host: lines written to the daemon's file, "
            "newdirs= being reached.", beyond_newdirs);
  static const char* const kCauses[WriteLoss::kCauses] = {
      "disk_full", "quota", "io", "no_directory", "stalled", "other"};
  const WriteLoss& w = core.losses();
  for (int bytes = 0; bytes < 2; bytes++) {
    family(m, bytes ? "unwritten_bytes_total" : "unwritten_lines_total", "counter",
           bytes ? "Bytes of log lines that could not be written, by cause."
                 : "Log lines that could not be written, by cause.");
    for (int c = 0; c < WriteLoss::kCauses; c++)
      put(m, "udplogger_unwritten_%s_total{cause=\"%s\"} %llu\n", bytes ? "bytes" : "lines",
          kCauses[c], (unsigned long long)(bytes ? w.bytes[c] : w.lines[c]));
  }
  family(m, "kernel_crashes_total", "counter", "Kernel crash events found in senders' lines, "
         "by kind.");
  for (int k = 1; k < kCrashKinds; k++)
    put(m, "udplogger_kernel_crashes_total{kind=\"%s\"} %llu\n", crash_kind_name(CrashKind(k)),
        (unsigned long long)t.crashes[k]);
  family(m, "senders", "gauge", "Senders (address and port) known now.");
  put(m, "udplogger_senders %zu\n", core.senders());
  family(m, "hosts", "gauge", "Sending hosts (addresses) known now.");
  put(m, "udplogger_hosts %zu\n", hosts);
  family(m, "hosts_limit", "gauge", "Sending hosts known at most (hosts=).");
  put(m, "udplogger_hosts_limit %u\n", o.hosts);
}

// One family a host, for the hosts known now, hosts[0..n-1].
void put_hosts(Metrics* m, const HostState* hosts, size_t n) {
  char host[2 * kHostNameMax];
  family(m, "host_last_heard_timestamp_seconds", "gauge",
         "When the host's last datagram arrived, in Unix seconds.");
  for (size_t i = 0; i < n; i++) {
    if (hosts[i].last_heard == 0) continue;  // taken back for a late line: not heard since
    host_label(hosts[i], host);
    put(m, "udplogger_host_last_heard_timestamp_seconds{host=\"%s\"} %lld\n", host,
        (long long)hosts[i].last_heard);
  }
  family(m, "host_lines_total", "counter", "Log lines written from the host.");
  for (size_t i = 0; i < n; i++) {
    host_label(hosts[i], host);
    put(m, "udplogger_host_lines_total{host=\"%s\"} %llu\n", host,
        (unsigned long long)hosts[i].lines);
  }
  family(m, "host_records_missing_total", "counter",
         "Extended netconsole records of the host missing by SEQ.");
  for (size_t i = 0; i < n; i++) {
    host_label(hosts[i], host);
    put(m, "udplogger_host_records_missing_total{host=\"%s\"} %llu\n", host,
        (unsigned long long)hosts[i].missing);
  }
  // Only hosts that had a crash: thousands of zero series say nothing.
  family(m, "host_kernel_crashes_total", "counter", "Kernel crash events of the host, by kind.");
  for (size_t i = 0; i < n; i++) {
    if (hosts[i].last_crash == 0) continue;
    host_label(hosts[i], host);
    for (int k = 1; k < kCrashKinds; k++)
      if (hosts[i].crashes[k])
        put(m, "udplogger_host_kernel_crashes_total{host=\"%s\",kind=\"%s\"} %llu\n", host,
            crash_kind_name(CrashKind(k)), (unsigned long long)hosts[i].crashes[k]);
  }
  family(m, "host_last_kernel_crash_timestamp_seconds", "gauge",
         "When the host's last kernel crash event began, in Unix seconds.");
  for (size_t i = 0; i < n; i++) {
    if (hosts[i].last_crash == 0) continue;
    host_label(hosts[i], host);
    put(m, "udplogger_host_last_kernel_crash_timestamp_seconds{host=\"%s\"} %lld\n", host,
        (long long)hosts[i].last_crash);
  }
}

// Writes the metrics file; 0, or the errno of what failed.
int write_metrics(Metrics* m, Core& core, const Options& o, uint64_t beyond_newdirs) {
  m->fd = open(m->tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC, 0644);
  if (m->fd < 0) return errno;
  fchmod(m->fd, 0644);  // for the collector's user, whatever the umask
  m->write_error = 0;
  m->len = 0;
  size_t n = 0;
  const HostState* hosts = core.hosts(&n);  // brought up to date once
  put_totals(m, core, o, beyond_newdirs, n);
  put_hosts(m, hosts, n);
  metrics_flush(m);
  int err = m->write_error;
  if (close(m->fd) < 0 && err == 0) err = errno;
  m->fd = -1;
  if (err == 0 && rename(m->tmp, m->path) < 0) err = errno;
  if (err != 0) unlink(m->tmp);
  return err;
}

// Writes the metrics, saying on stderr when that starts or stops failing.
void update_metrics(Metrics* m, Core& core, const Options& o, uint64_t beyond_newdirs) {
  if (!m->path) return;
  int err = write_metrics(m, core, o, beyond_newdirs);
  if (err != 0 && m->error == 0)
    warn("metrics=%s: cannot write %s: %s; trying again every 15 s", m->path, m->tmp,
         strerror(err));
  else if (err == 0 && m->error != 0)
    warn("metrics=%s: written again", m->path);
  m->error = err;
}

// What an operator looks at first, in one line: "120 lines/s, 14 hosts
// in the last minute, 0 kernel drops, last crash: 10.1.2.3 panic at
// 2026-12-02 15:15:28".
void fleet_summary(Core& core, double lines_per_second, time_t now, char* out,
                   size_t len) {
  const LastCrash& c = core.last_crash();
  char crash[kHostNameMax + 64] = "none";
  if (c.kind != CrashKind::none) {
    char host[kHostNameMax], when[kStampMax + 1];
    format_host(c.host, host);
    format_stamp(StampStyle::classic, timespec{c.at, 0}, when);
    when[19] = '\0';
    snprintf(crash, sizeof crash, "%s %s at %s", host, crash_kind_name(c.kind), when);
  }
  snprintf(out, len, "%.*f lines/s, %zu hosts in the last minute, %llu kernel drops, "
           "last crash: %s", lines_per_second < 10 ? 2 : 0, lines_per_second,
           core.hosts_heard_since(now - 60),
           (unsigned long long)core.stats().kernel_drops, crash);
}

// ------------------------------------------------------------- privileges

// Switches to gid and uid (supplementary groups cleared first) and checks
// that it cannot switch back; any failure is fatal.
void drop_privileges(const Options& o) {
  if (o.uid < 0 && o.gid < 0) return;
  if (geteuid() == 0 && setgroups(0, nullptr) < 0)
    die("cannot clear supplementary groups: %s", strerror(errno));
  if (o.gid >= 0) {
    gid_t g = gid_t(o.gid);
    if (setresgid(g, g, g) < 0) die("cannot set gid to %ld: %s", o.gid, strerror(errno));
    if (getgid() != g || getegid() != g) die("gid is not %ld after setresgid", o.gid);
  }
  if (o.uid >= 0) {
    uid_t u = uid_t(o.uid);
    if (setresuid(u, u, u) < 0) die("cannot set uid to %ld: %s", o.uid, strerror(errno));
    if (getuid() != u || geteuid() != u) die("uid is not %ld after setresuid", o.uid);
    if (u != 0 && setuid(0) == 0) die("could regain root after dropping to uid %ld", o.uid);
  }
}

// split=host keeps up to files= log files open: make sure the limit allows
// them, raising the soft limit towards the hard one if needed.
void ensure_file_limit(const Options& o) {
  if (o.split != Split::host) return;
  rlim_t need = rlim_t(o.files) + 32;  // the socket, epoll, signals, stdio, the day file
  rlimit rl;
  if (getrlimit(RLIMIT_NOFILE, &rl) < 0 || rl.rlim_cur >= need) return;
  rl.rlim_cur = rl.rlim_max == RLIM_INFINITY || rl.rlim_max >= need ? need : rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
  if (rl.rlim_cur < need)
    die("files=%u: needs %llu open files, but the limit is %llu (raise ulimit -n or "
        "LimitNOFILE=, or lower files=)", o.files, (unsigned long long)need,
        (unsigned long long)rl.rlim_cur);
}

// -------------------------------------------------------------------- loop

// The fleet view every kReportSeconds: the metrics file, systemd's status,
// and by hand (no systemd; dir=- or a terminal on stderr; debug=0) the
// summary on stderr once a minute, when it changed.
constexpr int kReportSeconds = 15;
struct Reports {
  time_t next = 0;
  unsigned count = 0;
  bool by_hand = false;
  uint64_t lines = 0, minute_lines = 0;  // stats().lines at the last report, the last minute's
  int64_t at_ns = 0, minute_ns = 0;      // when (monotonic)
  char said[256] = "";                   // the last summary on stderr
};

// Everything the loop works with; static storage, set up once.
struct Server {
  Options opts;
  Listener listeners[kMaxListeners];
  int nlisteners = 0;
  LogDir dir;
  DailyFile daily;
  HostFiles hosts;
  StdoutSink stdout_sink;
  Sink* sink = nullptr;
  Core core;
  Ring ring;
  Notifier notifier;
  Metrics metrics;
  Reports reports;
  int sigfd = -1, ep = -1;
  Clock clock = wall_clock;
};

void trace_to_stderr(const char* line) { warn("%s", line); }

// Standard output and error into a pipe or socket are written without
// blocking (see writev_patiently): a reader that stops reading must not
// stop the loop.  Only this process writes to them there; a terminal or
// file is shared with others and left as it is.
void nonblocking_stdio() {
  for (int fd = STDOUT_FILENO; fd <= STDERR_FILENO; fd++) {
    struct stat st;
    int flags = fcntl(fd, F_GETFL);
    if (fstat(fd, &st) == 0 && flags >= 0 && (S_ISFIFO(st.st_mode) || S_ISSOCK(st.st_mode)))
      fcntl(fd, F_SETFL, flags | O_NONBLOCK);
  }
}

// dir=- with standard error where standard output goes (2>&1): the
// summary would be mixed into the log's own stream.
bool stderr_is_the_log(const Options& o) {
  struct stat out, err;
  return o.to_stdout() && fstat(STDOUT_FILENO, &out) == 0 && fstat(STDERR_FILENO, &err) == 0 &&
         out.st_dev == err.st_dev && out.st_ino == err.st_ino;
}

int milliseconds_until(const timespec& due, const timespec& now) {
  long long ms = (long long)(due.tv_sec - now.tv_sec) * 1000 +
                 (due.tv_nsec - now.tv_nsec) / 1000000 + 1;
  if (ms < 0) return 0;
  return ms > 60000 ? 60000 : int(ms);
}

int open_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGUSR1);
  if (sigprocmask(SIG_BLOCK, &set, nullptr) < 0) die("sigprocmask: %s", strerror(errno));
  int fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
  if (fd < 0) die("signalfd: %s", strerror(errno));
  signal(SIGPIPE, SIG_IGN);  // a closed stdout is EPIPE, handled by its sink
  return fd;
}

// "listening on UDP ..., writing ...; options": the start-up line on
// stdout, the start notice in the log and systemd's status.
// The word for value i of a keyword option (kWordOptions), for the start-up line.
const char* word_of(const char* key, int i) {
  for (const WordOption& w : kWordOptions)
    if (!strcmp(key, w.key)) return w.words[i];
  return "?";
}

void describe_start(const Server& s, char* out, size_t len) {
  const Options& o = s.opts;
  size_t n = size_t(snprintf(out, len, "listening on UDP "));
  for (int i = 0; i < s.nlisteners && n < len; i++) {
    const Listener& l = s.listeners[i];
    n += size_t(snprintf(out + n, len - n, "%s%s%s%s", i ? " and " : "", l.where,
                         l.dual_stack ? " (IPv4 and IPv6)" : "",
                         l.inherited ? " (from socket activation)" : ""));
  }
  if (n < len) n += size_t(snprintf(out + n, len - n, ", writing "));
  if (n >= len) return;
  if (o.to_stdout())
    n += size_t(snprintf(out + n, len - n, "standard output"));
  else if (o.split == Split::host)
    n += size_t(snprintf(out + n, len - n, "%s/ADDR/YYYY-MM-DD.log per sender, own notices to %s/%s",
                         s.dir.path, s.dir.path, s.hosts.name()));
  else
    n += size_t(snprintf(out + n, len - n, "%s/%s", s.dir.path, s.daily.name()));
  if (n >= len) return;
  n += size_t(snprintf(out + n, len - n,
                       "; timeout=%u clients=%u wbuf=%u rbuf=%lu (granted %d) escape=%s ext=%s "
                       "frags=%u perm=%04o stamp=%s split=%s eol=%s dict=%s", o.timeout,
                       o.clients, o.wbuf, o.rbuf, s.listeners[0].rbuf_granted,
                       word_of("escape", int(o.escape)), word_of("ext", int(o.ext)), o.frags,
                       o.perm, word_of("stamp", int(o.stamp)), word_of("split", int(o.split)),
                       word_of("eol", int(o.eol)), word_of("dict", int(o.dict))));
  if (n < len)
    n += size_t(snprintf(out + n, len - n, " hosts=%u (%zu KiB)", o.hosts,
                         (o.hosts * sizeof(HostState) + 1023) / 1024));
  if (n < len && o.metrics) n += size_t(snprintf(out + n, len - n, " metrics=%s", o.metrics));
  if (n < len && o.allow.count) n += size_t(snprintf(out + n, len - n, " allow=%s", o.allow.given));
  if (n < len && o.split == Split::host)
    n += size_t(snprintf(out + n, len - n, " files=%u newdirs=%u", o.files, o.newdirs));
  if (n < len && o.uid >= 0) n += size_t(snprintf(out + n, len - n, " uid=%ld", o.uid));
  if (n < len && o.gid >= 0) n += size_t(snprintf(out + n, len - n, " gid=%ld", o.gid));
  if (n < len && o.reuseport) n += size_t(snprintf(out + n, len - n, " reuseport=1"));
  if (n < len && o.debug) snprintf(out + n, len - n, " debug=1");
}

// Opens the log directory and the sockets, drops privileges, opens the
// sink and prepares the loop; every failure is fatal and says why.
void setup(Server* s, const Options& o, Clock clock) {
  s->opts = o;
  s->clock = clock;
  char why[4400];
  if (!o.to_stdout() && !open_log_dir(o.dir, o.perm, &s->dir, why, sizeof why)) die("%s", why);
  ensure_file_limit(o);
  s->nlisteners = inherit_listeners(s->listeners);
  if (s->nlisteners == 0) {
    create_listener(o, &s->listeners[0]);
    s->nlisteners = 1;
  } else if (o.ip || o.port != Options().port) {
    warn("ip= and port= are not used: the sockets come from socket activation");
  }
  for (int i = 0; i < s->nlisteners; i++) {
    tune_listener(o, &s->listeners[i]);
    describe_listener(&s->listeners[i]);
  }
  notify_open(&s->notifier);
  drop_privileges(o);

  time_t now = clock().tv_sec;
  if (o.to_stdout()) {
    s->stdout_sink.open(clock);
    s->sink = &s->stdout_sink;
  } else if (o.split == Split::host) {
    if (!s->hosts.open(&s->dir, o.files, o.newdirs, now, clock, why, sizeof why)) die("%s", why);
    s->sink = &s->hosts;
  } else {
    if (!s->daily.open(&s->dir, now, clock, why, sizeof why)) die("%s", why);
    s->sink = &s->daily;
  }
  uint64_t seed = 0;
  if (getrandom(&seed, sizeof seed, GRND_NONBLOCK) != ssize_t(sizeof seed))
    seed = uint64_t(clock().tv_nsec) * 0x9e3779b97f4a7c15ULL ^ uint64_t(getpid());
  if (!s->core.init(o, s->sink, seed)) die("out of memory for clients=%u", o.clients);
  if (o.debug) s->core.set_trace(trace_to_stderr);
  ring_init(&s->ring);

  s->sigfd = open_signals();
  s->ep = epoll_create1(EPOLL_CLOEXEC);
  if (s->ep < 0) die("epoll: %s", strerror(errno));
  epoll_event ev = {};
  ev.events = EPOLLIN;
  for (int i = 0; i <= s->nlisteners; i++) {  // the listeners by index, then the signals
    int fd = i < s->nlisteners ? s->listeners[i].fd : s->sigfd;
    ev.data.u32 = uint32_t(i);
    if (epoll_ctl(s->ep, EPOLL_CTL_ADD, fd, &ev) < 0) die("epoll: %s", strerror(errno));
  }

  if (o.metrics) {
    s->metrics.path = o.metrics;
    s->metrics.started = now;
    snprintf(s->metrics.tmp, sizeof s->metrics.tmp, "%s.tmp", o.metrics);
    int err = write_metrics(&s->metrics, s->core, o, 0);
    if (err) die("metrics=%s: cannot write %s: %s", o.metrics, s->metrics.tmp, strerror(err));
  }
  s->reports.by_hand = s->notifier.fd < 0 && !o.debug &&
                       (o.to_stdout() || isatty(STDERR_FILENO)) && !stderr_is_the_log(o);
  s->reports.at_ns = s->reports.minute_ns = monotonic_ns();
  s->reports.next = now + kReportSeconds;
  fleet_summary(s->core, 0, now, s->reports.said, sizeof s->reports.said);  // idle: unsaid

  char start[8192];
  describe_start(*s, start, sizeof start);
  fprintf(o.to_stdout() ? stderr : stdout, "udplogger %s: %s\n", kVersion, start);
  fflush(o.to_stdout() ? stderr : stdout);
  nonblocking_stdio();
  // The log itself says when the daemon began listening (and, at exit, when
  // it stopped), so a gap in the log is never a silent one.
  s->core.notice(clock(), "started (version %s): %s", kVersion, start);
  notify(&s->notifier, "READY=1\nSTATUS=%s", start);
}

// The statistics line, into the log (after `why`) and on stderr, and a
// short status for systemd.
void report_stats(Server* s, const char* why) {
  char line[768];
  s->core.format_stats(line, sizeof line);
  const WriteLoss& w = s->core.losses();
  uint64_t lines = 0, bytes = 0;
  for (int c = 0; c < WriteLoss::kCauses; c++) lines += w.lines[c], bytes += w.bytes[c];
  size_t n = strlen(line);
  n += size_t(snprintf(line + n, sizeof line - n, " unwritten_lines=%llu unwritten_bytes=%llu "
           "(disk_full=%llu quota=%llu io=%llu no_directory=%llu stalled=%llu other=%llu)",
           (unsigned long long)lines, (unsigned long long)bytes,
           (unsigned long long)w.lines[WriteLoss::disk_full],
           (unsigned long long)w.lines[WriteLoss::quota], (unsigned long long)w.lines[WriteLoss::io],
           (unsigned long long)w.lines[WriteLoss::no_directory],
           (unsigned long long)w.lines[WriteLoss::stalled],
           (unsigned long long)w.lines[WriteLoss::other]));
  if (s->opts.split == Split::host && n < sizeof line)
    snprintf(line + n, sizeof line - n, " beyond_newdirs=%llu",
             (unsigned long long)s->hosts.beyond_newdirs());
  s->core.notice(s->clock(), "%s%s", why, line);
  warn("%s%s", why, line);
}

// Every kReportSeconds, on SIGUSR1 and at stop: the metrics file and
// systemd's status; by hand, once a minute, the summary if it changed.
void report_fleet(Server* s, time_t now, bool periodic) {
  Reports* r = &s->reports;
  update_metrics(&s->metrics, s->core, s->opts,
                 s->opts.split == Split::host ? s->hosts.beyond_newdirs() : 0);
  int64_t now_ns = monotonic_ns();
  uint64_t lines = s->core.stats().lines;
  char summary[256];
  if (s->notifier.fd >= 0) {
    double seconds = double(now_ns - r->at_ns) / 1e9;
    fleet_summary(s->core, seconds > 0.5 ? double(lines - r->lines) / seconds : 0, now, summary,
                  sizeof summary);
    notify(&s->notifier, "STATUS=%s", summary);
  }
  r->lines = lines;
  r->at_ns = now_ns;
  r->next = now + kReportSeconds;
  if (periodic && r->by_hand && ++r->count % (60 / kReportSeconds) == 0) {
    fleet_summary(s->core, double(lines - r->minute_lines) / (double(now_ns - r->minute_ns) / 1e9),
                  now, summary, sizeof summary);
    r->minute_lines = lines;
    r->minute_ns = now_ns;
    if (strcmp(summary, r->said) != 0) warn("status: %s", summary);
    memcpy(r->said, summary, sizeof summary);
  }
}

// Waits for datagrams, signals, the next timeout or midnight.  Under load
// (pause_ns > 0) it first pauses: waking for every datagram or two costs
// more than the datagrams themselves, so a batch gathers.  Arrival times
// are the kernel's, so no line's time changes.  While busy it only looks,
// so that the loop sees itself go idle.
int wait_for_events(Server* s, long pause_ns, bool busy, epoll_event* events) {
  int timeout = 0;
  if (pause_ns > 0) {
    timespec pause = {0, pause_ns};
    nanosleep(&pause, nullptr);
  } else if (!busy) {
    timespec due = s->core.next_deadline();
    time_t midnight = s->sink->next_switch();
    if (midnight != 0 && (due.tv_sec == 0 || midnight < due.tv_sec)) due = timespec{midnight, 0};
    if (due.tv_sec == 0 || s->reports.next < due.tv_sec) due = timespec{s->reports.next, 0};
    timeout = due.tv_sec == 0 ? 60000 : milliseconds_until(due, s->clock());
  }
  int n = epoll_wait(s->ep, events, kMaxListeners + 1, timeout);
  if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
  return n < 0 ? 0 : n;
}

// Reads batches until the socket is empty (or a bound, to stay responsive);
// returns the datagrams read, *drained false when some are still queued.
uint64_t drain_socket(Server* s, Listener* l, bool* drained) {
  uint64_t total = 0;
  for (int b = 0; b < kBatchesPerWake; b++) {
    int got = receive_batch(l, &s->ring, &s->core, s->clock);
    total += uint64_t(got);
    if (got < kBatch) return total;
  }
  *drained = false;  // look again at once
  return total;
}

// The socket's own drop counter (SO_MEMINFO), read without waiting for a
// datagram to carry it: a burst's last drops are reported too.
void check_drops(Server* s, Listener* l) {
  uint32_t info[kMeminfoVars];
  socklen_t len = sizeof info;
  if (getsockopt(l->fd, SOL_SOCKET, SO_MEMINFO, info, &len) < 0 || len <= kMeminfoDrops * 4)
    return;
  uint32_t n = info[kMeminfoDrops] - l->drops_seen;
  l->drops_seen = info[kMeminfoDrops];
  s->core.kernel_dropped(n, s->clock());
}

void check_all_drops(Server* s) {
  for (int i = 0; i < s->nlisteners; i++) check_drops(s, &s->listeners[i]);
}

// At stop: reads everything queued, for at most kStopDrainSeconds; what is
// still queued then is read, counted and said in a notice, not written.
void drain_for_stop(Server* s) {
  timespec deadline = s->clock();
  deadline.tv_sec += kStopDrainSeconds;
  for (int i = 0; i < s->nlisteners; i++) {
    Listener* l = &s->listeners[i];
    unsigned long long left = 0;
    for (;;) {
      timespec now = s->clock();
      bool late = now.tv_sec > deadline.tv_sec ||
                  (now.tv_sec == deadline.tv_sec && now.tv_nsec >= deadline.tv_nsec);
      int got;
      if (!late) {
        got = receive_batch(l, &s->ring, &s->core, s->clock);
      } else {
        got = recvmmsg(l->fd, s->ring.msgs, kBatch, MSG_DONTWAIT, nullptr);
        s->ring.filled = kBatch;  // reset them all before the next receive_batch
        if (got > 0) left += unsigned(got);
      }
      if (got < kBatch) break;
    }
    if (left > 0)
      s->core.notice(s->clock(), "%llu datagrams still queued on %s after %d s of "
                          "reading at stop were not written", left, l->where, kStopDrainSeconds);
  }
  check_all_drops(s);
}

// Acts on the signals received; returns the stopping signal, or 0.
int handle_signals(Server* s) {
  int stop = 0;
  signalfd_siginfo si;
  while (read(s->sigfd, &si, sizeof si) == ssize_t(sizeof si)) {
    if (si.ssi_signo == SIGHUP) {  // the core has written everything it had
      s->sink->reopen(s->clock().tv_sec);
      s->core.files_changed();
    } else if (si.ssi_signo == SIGUSR1) {
      check_all_drops(s);
      report_stats(s, "");
      report_fleet(s, s->clock().tv_sec, false);
    } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
      stop = int(si.ssi_signo);
    }
  }
  return stop;
}

// The loop only routes: datagrams to the core, lines to the sink, signals
// and timers to their handlers.  Returns the exit status.
int loop(Server* s) {
  epoll_event events[kMaxListeners + 1];
  // A pause lets arrivals at ~100k datagrams/s (~1 KiB of buffer each)
  // fill at most a quarter of the smallest receive buffer.
  long max_pause_ns = Pacer::kMaxPauseNs;
  for (int i = 0; i < s->nlisteners; i++)
    if (long(s->listeners[i].rbuf_granted) / 400 * 1000 < max_pause_ns)
      max_pause_ns = long(s->listeners[i].rbuf_granted) / 400 * 1000;
  Pacer pacer(max_pause_ns);
  long pause_ns = 0;
  bool busy = false;  // the last wakeup found a queue
  bool was_busy = false;
  int64_t drops_read_ns = 0;
  for (;;) {
    // The kernel drops only while the loop is behind, that is busy: when it
    // goes idle again, the socket's counter has the burst's drops; under
    // a load that never lets it go idle, it is read once a second.
    int64_t now_ns = monotonic_ns();
    if ((was_busy && !busy) || (busy && now_ns - drops_read_ns > 1000000000)) {
      check_all_drops(s);
      drops_read_ns = now_ns;
    }
    was_busy = busy;
    if (!busy && s->ring.large) {  // idle again: large datagrams' pages go back
      madvise(s->ring.data, kBatch * kSlotBytes, MADV_DONTNEED);
      s->ring.large = false;
    }
    int n = wait_for_events(s, pause_ns, busy, events);
    time_t now = s->clock().tv_sec, due = s->sink->next_switch();
    if (due != 0 && now >= due) {  // midnight, or a retry for a vanished dir=
      s->sink->tick(now);
      s->core.files_changed();
    }
    if (now >= s->reports.next || s->reports.next - now > kReportSeconds)  // due, or the clock
      report_fleet(s, now, true);                                          // went back
    int stop = 0;
    uint64_t got = 0;
    bool drained = true;
    for (int i = 0; i < n; i++) {
      int which = int(events[i].data.u32);
      if (which < s->nlisteners) got += drain_socket(s, &s->listeners[which], &drained);
      else stop = handle_signals(s);
    }
    long pause = pacer.woke(got, monotonic_ns());
    pause_ns = drained ? pause : 0;  // not drained: look again at once
    busy = got >= kQueued || !drained;
    if (s->sink->gone()) {
      warn("standard output was closed (EPIPE): the reader went away; exiting");
      return 0;
    }
    if (stop) {  // take what is queued, write every partial line, leave
      notify(&s->notifier, "STOPPING=1");
      drain_for_stop(s);
      s->core.stop(s->clock());
      report_stats(s, stop == SIGTERM ? "stopped by SIGTERM; " : "stopped by SIGINT; ");
      report_fleet(s, s->clock().tv_sec, false);
      return 0;
    }
    s->core.expire(s->clock());
  }
}

}  // namespace

// --check, like sshd -t: what a start would do up to the loop, without
// writing anything: the log directory opened, the sockets bound (or
// inherited), privileges dropped, then a file made and dropped in the
// directory (O_TMPFILE) and today's file checked as it would be opened.
// One line, and exit 0; or the one-line error, exit 2.
int check_setup(const Options& o) {
  fatal_status = 2;
  LogDir dir;
  char why[4400];
  if (!o.to_stdout() && !open_log_dir(o.dir, o.perm, &dir, why, sizeof why)) die("%s", why);
  Listener listeners[kMaxListeners];
  int n = inherit_listeners(listeners);
  if (n == 0) create_listener(o, &listeners[0]);
  describe_listener(&listeners[0]);
  drop_privileges(o);
  char day[16] = "";
  if (!o.to_stdout()) {
    int fd = openat(dir.fd, ".", O_TMPFILE | O_WRONLY | O_CLOEXEC, 0600);
    if (fd < 0 && errno != EOPNOTSUPP && errno != EISDIR)  // no O_TMPFILE there: not a verdict
      die("cannot write into log directory %s as uid %lu: %s", dir.path,
          (unsigned long)geteuid(), strerror(errno));
    if (fd >= 0) close(fd);
    log_file_name(time(nullptr), day);
    struct stat st;
    if (fstatat(dir.fd, day, &st, AT_SYMLINK_NOFOLLOW) == 0 &&
        (!S_ISREG(st.st_mode) || st.st_nlink != 1 || st.st_uid != geteuid() || (st.st_mode & 0111)))
      die("log file %s/%s would be refused: %s", dir.path, day,
          S_ISLNK(st.st_mode) ? "a symbolic link" : !S_ISREG(st.st_mode) ? "not a regular file"
          : st.st_nlink != 1 ? "more than one hard link"
          : st.st_uid != geteuid() ? "owned by another user" : "executable");
  }
  if (o.metrics) {  // its directory, as for the log
    char mdir[kPathMax];
    snprintf(mdir, sizeof mdir, "%s", o.metrics);
    char* slash = strrchr(mdir, '/');
    if (slash == mdir) slash[1] = '\0';
    else if (slash) *slash = '\0';
    else snprintf(mdir, sizeof mdir, ".");
    int fd = open(mdir, O_TMPFILE | O_WRONLY | O_CLOEXEC, 0644);
    if (fd < 0 && errno != EOPNOTSUPP && errno != EISDIR)
      die("metrics=%s: cannot write into %s as uid %lu: %s", o.metrics, mdir,
          (unsigned long)geteuid(), strerror(errno));
    if (fd >= 0) close(fd);
  }
  printf("udplogger %s: --check: usable: would listen on UDP %s%s, write %s%s%s as uid %lu gid %lu\n",
         kVersion, listeners[0].where, n ? " (from socket activation)" : "",
         o.to_stdout() ? "standard output" : dir.path, o.to_stdout() ? "" : "/",
         o.split == Split::host ? "ADDR/YYYY-MM-DD.log per sender" : day,
         (unsigned long)geteuid(), (unsigned long)getegid());
  return 0;
}

}  // namespace ul

namespace {
// The ring and the output's iovecs are large: static storage, not the stack.
ul::Server server;
}

int main(int argc, char** argv) {
  // Started with 0, 1 or 2 closed, the log file would become one of them and
  // messages would land in it: hold them on /dev/null.
  bool stdout_closed = fcntl(STDOUT_FILENO, F_GETFD) < 0;
  for (int fd = 0; fd <= 2; fd++)
    if (fcntl(fd, F_GETFD) < 0 && open("/dev/null", O_RDWR) < 0) break;
  ul::Options opts;
  char err[512];
  switch (ul::parse_options(argc, argv, &opts, err, sizeof err)) {
    case ul::ParseStatus::help:
      fputs(ul::kUsage, stdout);
      return 0;
    case ul::ParseStatus::version:
      printf("udplogger %s\n", ul::kVersion);
      return 0;
    case ul::ParseStatus::usage_error:  // one line: in a journal, the usage would bury it
      strncat(err, " (udplogger --help lists the options)", sizeof err - strlen(err) - 1);
      [[fallthrough]];
    case ul::ParseStatus::value_error:
      ul::fatal_status = 2;
      ul::hold_on_fatal = ul::activated();
      ul::die("%s", err);
    case ul::ParseStatus::ok:
      break;
  }
  if (opts.check) return ul::check_setup(opts);
  ul::hold_on_fatal = ul::activated();
  if (opts.to_stdout() && stdout_closed)  // every line would be lost, counted as written
    ul::die("dir=-: standard output is closed");
  ul::setup(&server, opts, ul::wall_clock);
  ul::hold_on_fatal = false;  // started: a later fatal error exits, and Restart= applies
  return ul::loop(&server);
}
#endif  // UDPLOGGER_NO_MAIN

