// udplogger: receive line-oriented UDP log streams (Linux netconsole and
// others) and append them to daily log files.
//
// The first half of this file implements the pure core declared in
// udplogger.h (no I/O); the second half is the shell: sockets, epoll, files,
// signals and main.
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
#include <sys/epoll.h>
#include <sys/mman.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>

namespace ul {

// ================================================================= options

const char kUsage[] =
    "usage: udplogger [key=value ...]\n"
    "  ip=ADDR      address to bind, IPv4 or IPv6 literal (default: any, dual stack)\n"
    "  port=N       UDP port (default 6666)\n"
    "  dir=PATH     log directory (default .)\n"
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
    "  --help, --version\n"
    "Every key=value may also be written --key=value.\n";

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
    {"frags", 4, 4096, 10},
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
}

// A keyword option that allows the words first or second.
ParseStatus parse_choice(const char* key, const char* value, const char* first,
                         const char* second, bool* is_second, char* err, size_t errlen) {
  *is_second = !strcmp(value, second);
  if (*is_second || !strcmp(value, first)) return ParseStatus::ok;
  snprintf(err, errlen, "%s=%s: unknown (allowed: %s, %s)", key, value, first, second);
  return ParseStatus::value_error;
}

// Parses one key=value; returns usage_error for an unknown key.
ParseStatus parse_one(const char* key, size_t keylen, const char* value,
                      Options* o, char* err, size_t errlen) {
  char k[16];
  if (keylen >= sizeof k) return ParseStatus::usage_error;
  memcpy(k, key, keylen);
  k[keylen] = '\0';
  for (const NumberOption& n : kNumberOptions) {
    if (strcmp(k, n.key)) continue;
    unsigned long v = 0;
    const char* range_fmt = n.base == 8 ? "%s=%s: %s (allowed: octal %04lo..%04lo)"
                                        : "%s=%s: %s (allowed: %lu..%lu)";
    if (!parse_number(value, n.base, &v)) {
      snprintf(err, errlen, range_fmt, k, value, "not a number", n.min, n.max);
      return ParseStatus::value_error;
    }
    if (v < n.min || v > n.max) {
      snprintf(err, errlen, range_fmt, k, value, "out of range", n.min, n.max);
      return ParseStatus::value_error;
    }
    if (n.base == 8 && (v & 0111)) {
      snprintf(err, errlen, "perm=%s: log files must not be executable "
               "(allowed: octal 0000..0666)", value);
      return ParseStatus::value_error;
    }
    store_number(o, k, v);
    return ParseStatus::ok;
  }
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
      snprintf(err, errlen, "dir=: empty (allowed: a directory path)");
      return ParseStatus::value_error;
    }
    o->dir = value;
    return ParseStatus::ok;
  }
  bool second;  // of the two words a keyword option allows
  if (!strcmp(k, "escape") || !strcmp(k, "ext")) {
    bool escape = !strcmp(k, "escape");
    ParseStatus st = parse_choice(k, value, escape ? "hex" : "auto", escape ? "none" : "raw",
                                  &second, err, errlen);
    if (st != ParseStatus::ok) return st;
    if (escape) o->escape = second ? Escape::none : Escape::hex;
    else o->ext = second ? Ext::raw : Ext::automatic;
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
    if (!strncmp(arg, "--", 2)) arg += 2;
    const char* eq = strchr(arg, '=');
    ParseStatus st = eq ? parse_one(arg, size_t(eq - arg), eq + 1, o, err, errlen)
                        : ParseStatus::usage_error;
    if (st == ParseStatus::usage_error)
      snprintf(err, errlen, "unknown option '%s'", argv[i]);
    if (st != ParseStatus::ok) return st;
  }
  return ParseStatus::ok;
}

// ====================================================== escaping, prefixes

namespace {

// True when one of the 8 bytes in x is a control byte or DEL (the classic
// "has a byte less than n" and "has a zero byte" tricks); TAB counts too,
// so a hit is checked byte by byte.
inline bool word_may_need_escape(uint64_t x) {
  const uint64_t ones = 0x0101010101010101ULL, highs = 0x8080808080808080ULL;
  uint64_t del = x ^ (ones * 0x7f);
  return (((x - ones * 0x20) & ~x) | ((del - ones) & ~del)) & highs;
}

// The first byte from p that needs escaping (a newline is one), or end.
// Lines are scanned 8 bytes at a time: this is the loop every byte of
// plain text goes through.
const char* find_control(const char* p, const char* end) {
  for (;;) {
    while (end - p >= 8) {
      uint64_t x;
      memcpy(&x, p, 8);
      if (word_may_need_escape(x)) break;
      p += 8;
    }
    const char* stop = end - p >= 8 ? p + 8 : end;
    for (; p < stop; p++)
      if (needs_escape(static_cast<unsigned char>(*p))) return p;
    if (p == end) return end;
  }
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

// Two digits of v at p; the prefix formatter runs once a second, but
// snprintf would still be the biggest cost of a quiet second.
static void put2(char* p, int v) {
  p[0] = char('0' + v / 10 % 10);
  p[1] = char('0' + v % 10);
}

void format_stamp(time_t t, char out[21]) {
  struct tm tm;
  localtime_r(&t, &tm);
  int year = tm.tm_year + 1900;
  put2(out, year / 100);
  put2(out + 2, year % 100);
  out[4] = '-';
  put2(out + 5, tm.tm_mon + 1);
  out[7] = '-';
  put2(out + 8, tm.tm_mday);
  out[10] = ' ';
  put2(out + 11, tm.tm_hour);
  out[13] = ':';
  put2(out + 14, tm.tm_min);
  out[16] = ':';
  put2(out + 17, tm.tm_sec);
  out[19] = ' ';
  out[20] = '\0';
}

void log_file_name(time_t t, char out[16]) {
  char stamp[21];
  format_stamp(t, stamp);
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

size_t format_sender(const in6_addr& addr, uint16_t port, char* out) {
  char text[INET6_ADDRSTRLEN];
  int n;
  if (IN6_IS_ADDR_V4MAPPED(&addr)) {
    inet_ntop(AF_INET, &addr.s6_addr[12], text, sizeof text);
    n = snprintf(out, kSenderNameMax, "%s:%u", text, unsigned(port));
  } else {
    inet_ntop(AF_INET6, &addr, text, sizeof text);
    n = snprintf(out, kSenderNameMax, "[%s]:%u", text, unsigned(port));
  }
  return size_t(n);
}

// ================================================================== output

bool Output::init(size_t arena_bytes, FlushFn fn, void* ctx) {
  arena_ = static_cast<char*>(malloc(arena_bytes));
  arena_cap_ = arena_bytes;
  fn_ = fn;
  ctx_ = ctx;
  return arena_ != nullptr;
}

Output::~Output() { free(arena_); }

void Output::flush() {
  if (iovcnt_ > 0) fn_(ctx_, iov_, iovcnt_);
  iovcnt_ = 0;
  arena_used_ = 0;
}

// Returns arena space for up to `want` bytes (at least 4), flushing first
// when the arena or the iovec list is full.
char* Output::reserve(size_t want, size_t* got) {
  if (iovcnt_ >= kMaxIov || arena_cap_ - arena_used_ < 4) flush();
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
  if (iovcnt_ >= kMaxIov) flush();
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

// ================================================================= senders

namespace {

bool timespec_le(const timespec& a, const timespec& b) {
  return a.tv_sec < b.tv_sec || (a.tv_sec == b.tv_sec && a.tv_nsec <= b.tv_nsec);
}

bool any_escape(const char* p, size_t len) { return find_control(p, p + len) != p + len; }

}  // namespace

bool Assembler::init(const Options& opts, Output* out) {
  opts_ = opts;
  out_ = out;
  slots_ = static_cast<Sender*>(calloc(opts.clients, sizeof(Sender)));
  uint32_t nbuckets = 16;
  while (nbuckets < opts.clients * 2) nbuckets <<= 1;
  buckets_ = static_cast<int32_t*>(malloc(nbuckets * sizeof(int32_t)));
  if (!slots_ || !buckets_) return false;
  for (uint32_t i = 0; i < nbuckets; i++) buckets_[i] = -1;
  bucket_mask_ = nbuckets - 1;
  // Reassembly buffers: reserved now, resident only once used.
  pool_ = static_cast<Reassembly*>(calloc(opts.frags, sizeof(Reassembly)));
  return pool_ != nullptr;
}

Assembler::~Assembler() {
  for (size_t i = 0; i < used_; i++) free(slots_[i].partial);
  free(slots_);
  free(buckets_);
  free(pool_);
}

// FNV-1a over address and port: cheap, and good enough to spread the
// senders of one subnet over the buckets.
uint32_t Assembler::bucket(const in6_addr& addr, uint16_t port) const {
  uint32_t h = 2166136261u;
  for (unsigned char b : addr.s6_addr) h = (h ^ b) * 16777619u;
  h = (h ^ (port & 0xff)) * 16777619u;
  h = (h ^ (port >> 8)) * 16777619u;
  return h & bucket_mask_;
}

void Assembler::unhash(Sender* s) {
  int32_t* link = &buckets_[bucket(s->addr, s->port)];
  while (*link != index(s)) link = &slots_[*link].hash_next;
  *link = s->hash_next;
}

// A free slot, or the slot of the sender idle longest once the table is
// full; that sender's partial line is written out first, nothing is lost.
Sender* Assembler::take_slot(const timespec& when) {
  if (used_ < opts_.clients) return &slots_[used_++];
  Sender* s = &slots_[lru_.head];
  if (s->partial_len > 0) write_partial(s, nullptr, 0, false);
  drop_inflight(s, when, "as its sender's slot was reused (clients=)");
  unhash(s);
  lru_.unlink(slots_, index(s));
  stats_.senders_reused++;
  return s;
}

// Finds the sender, or makes it known; either way it becomes the most
// recently heard.
Sender* Assembler::lookup(const in6_addr& addr, uint16_t port,
                          const timespec& when) {
  uint32_t b = bucket(addr, port);
  for (int32_t i = buckets_[b]; i >= 0; i = slots_[i].hash_next) {
    Sender* s = &slots_[i];
    if (s->port == port && !memcmp(&s->addr, &addr, sizeof addr)) {
      if (lru_.tail != i) {
        lru_.unlink(slots_, i);
        lru_.append(slots_, i);
      }
      return s;
    }
  }
  Sender* s = take_slot(when);
  s->addr = addr;
  s->port = port;
  size_t n = format_sender(addr, port, s->prefix + 20);
  s->prefix[20 + n] = ' ';
  s->name_len = uint8_t(n + 1);
  s->prefix_sec = -1;
  s->partial_len = 0;
  s->seq_known = s->msgid_known = s->seq_resumable = false;
  s->release_len = 0;
  for (int32_t& r : s->inflight) r = -1;
  s->hash_next = buckets_[b];
  buckets_[b] = index(s);
  lru_.append(slots_, index(s));
  return s;
}

// Copies text into the log, escaped unless escape=none.
void Assembler::put_text(const char* p, size_t len) {
  if (opts_.escape == Escape::hex) out_->copy_escaped(p, len);
  else out_->copy(p, len);
}

// Writes one log line: prefix, then a (copied) and b (referenced in place,
// followed by its newline when newline_in_b), then a newline if needed.
void Assembler::write_line(Sender* s, time_t sec, const char* a, size_t alen,
                           const char* b, size_t blen, bool newline_in_b, bool b_clean) {
  if (s->prefix_sec != sec) {
    memcpy(s->prefix, stamps_.get(sec), 20);
    s->prefix_sec = sec;
  }
  out_->copy(s->prefix, 20 + s->name_len);
  put_text(a, alen);
  if (opts_.escape == Escape::hex && !b_clean && any_escape(b, blen)) {
    out_->copy_escaped(b, blen);
    out_->copy("\n", 1);
  } else if (newline_in_b) {
    out_->ref(b, blen + 1);
  } else {
    out_->ref(b, blen);
    out_->copy("\n", 1);
  }
  stats_.lines++;
}

// Writes the sender's partial line followed by rest, and forgets it.
void Assembler::write_partial(Sender* s, const char* rest, size_t rest_len,
                              bool newline_in_rest) {
  write_line(s, s->partial_time.tv_sec, s->partial, s->partial_len, rest,
             rest_len, newline_in_rest);
  s->partial_len = 0;
  pending_.unlink(slots_, index(s));
}

// Keeps bytes that have no newline yet.  The buffer grows (at most to
// wbuf) only when this sender's partial line is longer than ever before.
void Assembler::keep_partial(Sender* s, const char* p, size_t len,
                             const timespec& when) {
  size_t need = s->partial_len + len;
  if (need > s->partial_cap) {
    size_t cap = s->partial_cap ? s->partial_cap : 256;
    while (cap < need) cap *= 2;
    if (cap > opts_.wbuf) cap = opts_.wbuf;
    char* grown = static_cast<char*>(realloc(s->partial, cap));
    if (!grown) {  // out of memory: write the line now rather than lose it
      if (s->partial_len > 0) write_partial(s, p, len, false);
      else write_line(s, when.tv_sec, nullptr, 0, p, len, false);
      return;
    }
    s->partial = grown;
    s->partial_cap = uint32_t(cap);
  }
  if (s->partial_len == 0) {
    s->partial_time = when;
    pending_.append(slots_, index(s));
  }
  memcpy(s->partial + s->partial_len, p, len);
  s->partial_len += uint32_t(len);
}

void Assembler::datagram(const in6_addr& addr, uint16_t port, const char* data,
                         size_t len, const timespec& when) {
  stats_.datagrams++;
  stats_.bytes += len;
  if (len == 0) return;
  Sender* s = lookup(addr, port, when);
  // A header counts only at the start of a line: a datagram that continues
  // a partial line is text, whatever it looks like.
  ExtHeader h;
  if (opts_.ext == Ext::automatic && s->partial_len == 0 &&
      parse_ext_header(data, len, &h)) {
    check_release(s, h, when);
    if (h.fragment) fragment(s, h, data, len, when);
    else record(s, h, data, len, when);
    return;
  }
  text(s, data, len, when);
}

// Plain text: joined into lines across datagrams, split at wbuf.
void Assembler::text(Sender* s, const char* data, size_t len, const timespec& when) {
  const size_t wbuf = opts_.wbuf;
  const char* p = data;
  const char* end = data + len;
  while (p < end) {
    // One pass finds the newline, or first the byte that needs escaping;
    // no piece is longer than wbuf, so nothing beyond that is scanned.
    const char* limit = size_t(end - p) > wbuf ? p + wbuf + 1 : end;
    const char* c = find_control(p, limit);
    bool clean = c == limit || *c == '\n';
    const char* nl = c == limit ? nullptr : *c == '\n' ? c
        : static_cast<const char*>(memchr(c, '\n', size_t(limit - c)));
    size_t seg = size_t((nl ? nl : limit) - p);  // bytes before the newline
    if (s->partial_len > 0) {
      size_t room = wbuf - s->partial_len;
      if (nl && seg <= room) {  // completes the partial line
        write_partial(s, p, seg, true);
        p = nl + 1;
      } else if (seg > room) {  // partial line reaches wbuf: write a piece
        write_partial(s, p, room, false);
        p += room;
      } else {  // still no newline
        keep_partial(s, p, seg, when);
        p = end;
      }
    } else if (seg > wbuf) {
      write_line(s, when.tv_sec, nullptr, 0, p, wbuf, false, clean);
      p += wbuf;
    } else if (nl) {
      write_line(s, when.tv_sec, nullptr, 0, p, seg, true, clean);
      p = nl + 1;
    } else {
      keep_partial(s, p, seg, when);
      p = end;
    }
  }
}

void Assembler::expire(const timespec& now, bool all) {
  while (pending_.head >= 0) {
    Sender* s = &slots_[pending_.head];
    timespec due = s->partial_time;
    due.tv_sec += opts_.timeout;
    if (!all && !timespec_le(due, now)) break;
    write_partial(s, nullptr, 0, false);
    stats_.lines_timed_out++;
  }
  while (ages_.head >= 0) {
    Reassembly* r = &pool_[ages_.head];
    timespec due = r->first;
    due.tv_sec += opts_.timeout;
    if (!all && !timespec_le(due, now)) break;
    finish(r, now, all ? "at exit" : "after timeout=");
  }
}

timespec Assembler::next_deadline() const {
  timespec due = {0, 0};
  if (pending_.head >= 0) due = slots_[pending_.head].partial_time;
  if (ages_.head >= 0 && (due.tv_sec == 0 || timespec_le(pool_[ages_.head].first, due)))
    due = pool_[ages_.head].first;
  if (due.tv_sec != 0) due.tv_sec += opts_.timeout;
  return due;
}

// ====================================================== extended netconsole

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
  const char* end = data + (len < 160 ? len : 160);  // headers are short
  h->release = nullptr;
  h->release_len = 0;
  if (parse_ext_fields(data, end, data, h)) return true;
  // RELEASE, (the kernel's uname release: printable, no ',' or ';')
  const char* comma = static_cast<const char*>(memchr(data, ',', size_t(end - data)));
  if (!comma || comma == data || comma - data > 64) return false;
  for (const char* p = data; p < comma; p++)
    if (*p <= ' ' || *p >= 0x7f || *p == ';') return false;
  if (!parse_ext_fields(comma + 1, end, data, h)) return false;
  h->release = data;
  h->release_len = size_t(comma - data);
  return true;
}

size_t kernel_unescape(const char* src, size_t len, char* dst) {
  size_t w = 0;
  for (size_t i = 0; i < len; i++) {
    int hi, lo;
    if (src[i] == '\\' && i + 3 < len && src[i + 1] == 'x' &&
        (hi = hex_value(src[i + 2])) >= 0 && (lo = hex_value(src[i + 3])) >= 0) {
      dst[w++] = char(hi << 4 | lo);
      i += 3;
    } else {
      dst[w++] = src[i];
    }
  }
  return w;
}

void Assembler::notice(const timespec& now, const char* fmt, ...) {
  char text[512];
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  if (n < 0) return;
  size_t len = size_t(n) < sizeof text ? size_t(n) : sizeof text - 1;
  out_->copy(stamps_.get(now.tv_sec), 20);
  out_->copy("udplogger: ", 11);
  out_->copy_escaped(text, len);
  out_->copy("\n", 1);
}

// A notice about one sender: "udplogger: IP:PORT: text".
void Assembler::notice_sender(const timespec& now, Sender* s, const char* fmt, ...) {
  char text[400];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(text, sizeof text, fmt, ap);
  va_end(ap);
  notice(now, "%.*s: %s", int(s->name_len - 1), s->name(), text);
}

void Assembler::kernel_drops(uint32_t total, const timespec& now) {
  if (total == drops_seen_) return;
  uint32_t dropped = total - drops_seen_;  // the counter may wrap
  drops_seen_ = total;
  stats_.kernel_drops += dropped;
  notice(now, "%u datagram%s dropped by the kernel: receive buffer full (rbuf=%lu)",
         dropped, dropped == 1 ? "" : "s", opts_.rbuf);
}

void Assembler::format_stats(char* buf, size_t len) const {
  const Stats& t = stats_;
  snprintf(buf, len,
           "statistics: datagrams=%llu bytes=%llu lines=%llu records=%llu "
           "fragments=%llu reassembled=%llu incomplete=%llu missing_by_seq=%llu "
           "lost_in_transit=%llu kernel_drops=%llu duplicates=%llu malformed=%llu "
           "timed_out=%llu senders=%zu reused=%llu",
           (unsigned long long)t.datagrams, (unsigned long long)t.bytes,
           (unsigned long long)t.lines, (unsigned long long)t.records,
           (unsigned long long)t.fragments, (unsigned long long)t.reassembled,
           (unsigned long long)t.incomplete, (unsigned long long)t.missing,
           (unsigned long long)t.lost_in_transit, (unsigned long long)t.kernel_drops,
           (unsigned long long)t.duplicates, (unsigned long long)t.malformed,
           (unsigned long long)t.lines_timed_out, used_, (unsigned long long)t.senders_reused);
}

// Notes the kernel release when a sender first sends one or changes it.
void Assembler::check_release(Sender* s, const ExtHeader& h, const timespec& when) {
  if (h.release_len == 0 ||
      (h.release_len == s->release_len && !memcmp(h.release, s->release, h.release_len)))
    return;
  if (s->release_len == 0)
    notice_sender(when, s, "kernel release %.*s", int(h.release_len), h.release);
  else  // a new kernel: its records count from 0 again
    notice_sender(when, s, "kernel release changed from %.*s to %.*s", int(s->release_len),
                  s->release, int(h.release_len), h.release);
  s->seq_known = s->msgid_known = false;
  memcpy(s->release, h.release, h.release_len);
  s->release_len = uint8_t(h.release_len);
}

// Tracks SEQ: reports gaps and restarts; true for a record seen before.
bool Assembler::seen_before(Sender* s, uint64_t seq, const timespec& when) {
  if (!s->seq_known) {
    restart_seq(s, seq);
    return false;
  }
  if (seq > s->last_seq) {
    uint64_t gap = seq - s->last_seq - 1;
    bool resumed = s->seq_resumable && seq == s->resume_seq + 1;  // it was a duplicate
    if (gap > 0 && !resumed) {
      stats_.missing += gap;
      notice_sender(when, s, "%llu record%s not received: seq %llu..%llu; %s",
                    (unsigned long long)gap, gap == 1 ? "" : "s",
                    (unsigned long long)(s->last_seq + 1), (unsigned long long)(seq - 1),
                    s->msgid_known ? "filtered by the sender's console loglevel"
                                   : "lost on the way or filtered by the sender's console loglevel");
    }
    uint64_t shift = seq - s->last_seq;
    s->seq_window = shift >= 64 || resumed ? 1 : (s->seq_window << shift) | 1;
    s->last_seq = seq;
    s->seq_resumable = false;
    return false;
  }
  uint64_t back = s->last_seq - seq;
  if (back < 64 && seq >= s->first_seq && !(s->seq_window >> back & 1)) {
    s->seq_window |= uint64_t(1) << back;  // a late record filling a gap
    return false;
  }
  if (back < 64 && seq >= s->first_seq) return true;
  notice_sender(when, s, "sequence restarted at seq %llu after seq %llu: sender rebooted?",
                (unsigned long long)seq, (unsigned long long)s->last_seq);
  restart_seq(s, seq);
  return false;
}

// Counts this sender's records from seq on, forgetting what came before.
void Assembler::restart_seq(Sender* s, uint64_t seq) {
  s->seq_known = true;
  s->first_seq = s->last_seq = seq;
  s->seq_window = 1;
  s->seq_resumable = false;
  s->msgid_known = false;
}

// A whole record whose SEQ was seen before: a sender that rebooted early
// (its new records reuse the old numbers) or a duplicated datagram.  Either
// way it is written, never dropped; if the old numbering continues next, it
// was a duplicate and no gap is reported.
void Assembler::seen_again(Sender* s, uint64_t seq, const timespec& when) {
  notice_sender(when, s, "seq %llu again after seq %llu: sender restarted, or a duplicated "
                "datagram", (unsigned long long)seq, (unsigned long long)s->last_seq);
  uint64_t last = s->last_seq;
  bool msgid_known = s->msgid_known;
  restart_seq(s, seq);
  s->msgid_known = msgid_known;
  s->resume_seq = last;
  s->seq_resumable = true;
}

// msgid= (newer kernels) counts messages sent: a gap is a loss in transit.
void Assembler::check_msgid(Sender* s, const char* text, size_t len, const timespec& when) {
  const char* dict = static_cast<const char*>(memchr(text, '\n', len));  // after the body
  if (!dict) return;
  const char* m = static_cast<const char*>(
      memmem(dict, size_t(text + len - dict), "\n msgid=", 8));
  if (!m) return;
  const char* p = m + 8;
  uint64_t id;
  if (!parse_decimal(&p, text + len, 20, &id)) return;
  if (s->msgid_known && id > s->last_msgid + 1) {
    uint64_t lost = id - s->last_msgid - 1;
    stats_.lost_in_transit += lost;
    notice_sender(when, s, "%llu record%s lost in transit: msgid %llu..%llu",
                  (unsigned long long)lost, lost == 1 ? "" : "s",
                  (unsigned long long)(s->last_msgid + 1), (unsigned long long)(id - 1));
  }
  if (!s->msgid_known || id > s->last_msgid) s->last_msgid = id;
  s->msgid_known = true;
}

// Text that must go out on its own, as plain lines.
void Assembler::text_whole(Sender* s, const char* data, size_t len, const timespec& when) {
  text(s, data, len, when);
  if (s->partial_len > 0) write_partial(s, nullptr, 0, false);
}

// A whole record in one datagram.
void Assembler::record(Sender* s, const ExtHeader& h, const char* data, size_t len,
                       const timespec& when) {
  if (seen_before(s, h.seq, when)) seen_again(s, h.seq, when);
  const char* body = data + h.body;
  size_t n = len - h.body;
  check_msgid(s, body, n, when);
  rec_begin(s, h.pri, h.usec, when.tv_sec);
  rec_text(body, n);
  rec_end();
  stats_.records++;
}

// One fragment: kept until its record is whole or times out.
void Assembler::fragment(Sender* s, const ExtHeader& h, const char* data, size_t len,
                         const timespec& when) {
  stats_.fragments++;
  const char* payload = data + h.body;
  size_t n = len - h.body;
  if (h.frag_total == 0 || h.frag_total > kRecordMax || h.frag_off >= h.frag_total ||
      n > h.frag_total - h.frag_off || n == 0) {
    stats_.malformed++;
    notice_sender(when, s, "malformed fragment (seq %llu, ncfrag=%u/%u, %zu bytes): "
                  "written as text", (unsigned long long)h.seq, h.frag_off, h.frag_total, n);
    text_whole(s, data, len, when);
    return;
  }
  for (int32_t idx : s->inflight) {
    if (idx >= 0 && pool_[idx].seq == h.seq && pool_[idx].total != h.frag_total) {
      stats_.malformed++;
      notice_sender(when, s, "fragment of seq %llu says %u bytes in all, earlier ones %u: "
                    "written as text", (unsigned long long)h.seq, h.frag_total, pool_[idx].total);
      text_whole(s, data, len, when);
      return;
    }
  }
  Reassembly* r = reassembly_for(s, h, when);
  if (!r) {  // its record was written already
    stats_.duplicates++;
    notice_sender(when, s, "late or duplicate fragment of seq %llu (ncfrag=%u/%u) ignored: "
                  "its record was written already", (unsigned long long)h.seq, h.frag_off,
                  h.frag_total);
    return;
  }
  memcpy(r->data + h.frag_off, payload, n);
  r->have += mark_received(r->got, h.frag_off, h.frag_off + uint32_t(n));
  if (r->have == r->total) {
    stats_.reassembled++;
    finish(r, when, nullptr);
  }
}

// The reassembly of this fragment's record: found, or started (making
// room if needed); null when the record was written already.
Reassembly* Assembler::reassembly_for(Sender* s, const ExtHeader& h, const timespec& when) {
  int oldest = -1;
  for (int i = 0; i < kInflightPerSender; i++) {
    if (s->inflight[i] < 0) continue;
    Reassembly* r = &pool_[s->inflight[i]];
    if (r->seq == h.seq && r->total == h.frag_total) return r;
    if (oldest < 0 || timespec_le(r->first, pool_[s->inflight[oldest]].first)) oldest = i;
  }
  if (seen_before(s, h.seq, when)) return nullptr;
  int free_slot = -1;
  for (int i = 0; i < kInflightPerSender && free_slot < 0; i++)
    if (s->inflight[i] < 0) free_slot = i;
  if (free_slot < 0) {
    free_slot = oldest;
    finish(&pool_[s->inflight[oldest]], when, "with newer records of its sender in reassembly");
  }
  int32_t idx;
  if (free_head_ >= 0) {
    idx = free_head_;
    free_head_ = pool_[idx].age_next;
  } else if (pool_used_ < opts_.frags) {
    idx = int32_t(pool_used_++);
  } else {
    idx = ages_.head;
    finish(&pool_[idx], when, "to make room: reassembly table full (frags=)");
    free_head_ = pool_[idx].age_next;
  }
  Reassembly* r = &pool_[idx];
  r->sender = index(s);
  r->seq = h.seq;
  r->usec = h.usec;
  r->pri = h.pri;
  r->total = h.frag_total;
  r->have = 0;
  r->first = when;
  memset(r->got, 0, (r->total + 7) / 8);
  ages_.append(pool_, idx);
  s->inflight[free_slot] = idx;
  return r;
}

// Unlinks a reassembly from the age list and its sender; puts it on the
// free list.
void Assembler::release_reassembly(Reassembly* r) {
  int32_t idx = int32_t(r - pool_);
  ages_.unlink(pool_, idx);
  for (int32_t& i : slots_[r->sender].inflight)
    if (i == idx) i = -1;
  r->sender = -1;
  r->age_next = free_head_;
  free_head_ = idx;
}

// Writes a reassembled record; one with bytes missing gets a notice first
// and a mark where each gap is.
void Assembler::finish(Reassembly* r, const timespec& now, const char* why) {
  Sender* s = &slots_[r->sender];
  if (r->have < r->total) {
    stats_.incomplete++;
    notice_sender(now, s, "record seq %llu incomplete %s: %u of %u bytes missing",
                  (unsigned long long)r->seq, why, r->total - r->have, r->total);
  } else {
    check_msgid(s, r->data, r->total, now);
  }
  rec_begin(s, r->pri, r->usec, r->first.tv_sec);
  uint32_t i = r->have == r->total ? r->total : 0;
  if (i) rec_text(r->data, r->total);
  while (i < r->total) {
    bool have = r->got[i >> 3] >> (i & 7) & 1;
    uint32_t j = i;
    while (j < r->total && bool(r->got[j >> 3] >> (j & 7) & 1) == have) j++;
    if (have) rec_text(r->data + i, j - i);
    else rec_gap(j - i);
    i = j;
  }
  rec_end();
  stats_.records++;
  release_reassembly(r);
}

void Assembler::drop_inflight(Sender* s, const timespec& now, const char* why) {
  for (int32_t idx : s->inflight)
    if (idx >= 0) finish(&pool_[idx], now, why);
}

// ------------------------------------------------- writing one record

// Starts a record: "time sender " for dictionary lines, plus
// "<pri>[sssss.uuuuuu] " (the dmesg -r form) for text lines.
void Assembler::rec_begin(Sender* s, unsigned pri, uint64_t usec, time_t sec) {
  RecordLine& l = rl_;
  memcpy(l.prefix, stamps_.get(sec), 20);
  memcpy(l.prefix + 20, s->name(), s->name_len);
  l.stamp_len = 20 + s->name_len;
  int n = snprintf(l.prefix + l.stamp_len, sizeof l.prefix - l.stamp_len, "<%u>[%5llu.%06llu] ",
                   pri, (unsigned long long)(usec / 1000000), (unsigned long long)(usec % 1000000));
  l.prefix_len = l.stamp_len + size_t(n);
  l.in_body = true;
  l.open = false;
  l.line_bytes = 0;
  l.esc_len = 0;
}

// Writes decoded bytes into the current line, opening it (and starting a
// new one at wbuf) as needed.
void Assembler::rec_put(const char* p, size_t len) {
  RecordLine& l = rl_;
  while (len > 0) {
    if (!l.open) {
      out_->copy(l.prefix, l.in_body ? l.prefix_len : l.stamp_len);
      l.open = true;
    }
    size_t room = opts_.wbuf - l.line_bytes;
    if (room == 0) {
      rec_newline();
      continue;
    }
    size_t n = len < room ? len : room;
    put_text(p, n);
    l.line_bytes += n;
    p += n;
    len -= n;
  }
}

void Assembler::rec_newline() {
  RecordLine& l = rl_;
  if (!l.open) out_->copy(l.prefix, l.in_body ? l.prefix_len : l.stamp_len);
  out_->copy("\n", 1);
  l.open = false;
  l.line_bytes = 0;
  stats_.lines++;
}

// An escape cut short (by a gap or the end) is written as it came.
void Assembler::rec_flush_escape() {
  size_t n = rl_.esc_len;
  rl_.esc_len = 0;
  if (n > 0) rec_put(rl_.esc, n);
}

// Feeds kernel-escaped record text: \xNN is decoded, a decoded newline
// starts a new text line, a raw newline ends the body (dictionary follows).
void Assembler::rec_text(const char* p, size_t len) {
  RecordLine& l = rl_;
  const char* end = p + len;
  while (p < end) {
    if (l.esc_len > 0) {
      bool ok = l.esc_len == 1 ? *p == 'x' : hex_value(*p) >= 0;
      if (!ok) {
        rec_flush_escape();
        continue;
      }
      l.esc[l.esc_len++] = *p++;
      if (l.esc_len == 4) {
        char c = char(hex_value(l.esc[2]) << 4 | hex_value(l.esc[3]));
        l.esc_len = 0;
        if (c == '\n') rec_newline();
        else rec_put(&c, 1);
      }
      continue;
    }
    const char* q = static_cast<const char*>(memchr(p, '\\', size_t(end - p)));
    if (!q) q = end;
    const char* nl = static_cast<const char*>(memchr(p, '\n', size_t(q - p)));
    if (nl) q = nl;
    if (q > p) {
      rec_put(p, size_t(q - p));
      p = q;
    } else if (*p == '\\') {
      l.esc[0] = '\\';
      l.esc_len = 1;
      p++;
    } else {
      if (l.open || l.in_body) rec_newline();
      l.in_body = false;
      p++;
    }
  }
}

void Assembler::rec_gap(size_t missing) {
  rec_flush_escape();
  char mark[48];
  int n = snprintf(mark, sizeof mark, "[... %zu bytes missing ...]", missing);
  rec_put(mark, size_t(n));
}

void Assembler::rec_end() {
  rec_flush_escape();
  if (rl_.open) rec_newline();
}

}  // namespace ul

// =================================================================== shell
#ifndef UDPLOGGER_NO_MAIN
namespace {

using namespace ul;

constexpr int kBatch = 64;             // datagrams per recvmmsg
constexpr size_t kSlotBytes = 65536;   // room for the largest UDP datagram
constexpr int kBatchesPerWake = 64;    // then look at timers and signals
constexpr size_t kArenaBytes = 256 * 1024;
constexpr long kCoalesceMaxNs = 5000000;  // a batch gathers for up to 5 ms, under load

[[noreturn]] void die(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("udplogger: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
  exit(1);
}

void warn(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  fputs("udplogger: ", stderr);
  vfprintf(stderr, fmt, ap);
  fputc('\n', stderr);
  va_end(ap);
}

timespec now_realtime() {
  timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return ts;
}

// ------------------------------------------------------------------ socket

struct Listener {
  int fd = -1;
  char where[INET6_ADDRSTRLEN + 16];  // "[::]:6666" for messages
  bool dual_stack = false;
  int rbuf_granted = 0;
};

// Creates, tunes and binds the UDP socket; every failure is fatal and
// names the address.
void open_listener(const Options& o, Listener* l) {
  sockaddr_storage ss = {};
  socklen_t sslen;
  int family = AF_INET6;
  auto* sin6 = reinterpret_cast<sockaddr_in6*>(&ss);
  auto* sin = reinterpret_cast<sockaddr_in*>(&ss);
  const char* ip = o.ip ? o.ip : "::";
  if (inet_pton(AF_INET, ip, &sin->sin_addr) == 1) family = AF_INET;
  else inet_pton(AF_INET6, ip, &sin6->sin6_addr);
  l->fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  if (l->fd < 0 && family == AF_INET6 && !o.ip && errno == EAFNOSUPPORT) {
    family = AF_INET;  // IPv6 disabled on this host: IPv4 only
    ip = "0.0.0.0";
    sin->sin_addr.s_addr = htonl(INADDR_ANY);
    l->fd = socket(family, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
  }
  snprintf(l->where, sizeof l->where, family == AF_INET6 ? "[%s]:%u" : "%s:%u",
           ip, o.port);
  if (l->fd < 0) die("cannot create UDP socket for %s: %s", l->where, strerror(errno));
  if (family == AF_INET6) {
    sin6->sin6_family = AF_INET6;
    sin6->sin6_port = htons(uint16_t(o.port));
    sslen = sizeof *sin6;
    int v6only = IN6_IS_ADDR_UNSPECIFIED(&sin6->sin6_addr) ? 0 : 1;
    l->dual_stack = !v6only;
    if (setsockopt(l->fd, IPPROTO_IPV6, IPV6_V6ONLY, &v6only, sizeof v6only) < 0)
      die("cannot set IPV6_V6ONLY on %s: %s", l->where, strerror(errno));
  } else {
    sin->sin_family = AF_INET;
    sin->sin_port = htons(uint16_t(o.port));
    sslen = sizeof *sin;
  }
  int rbuf = int(o.rbuf);
  if (setsockopt(l->fd, SOL_SOCKET, SO_RCVBUFFORCE, &rbuf, sizeof rbuf) < 0 &&
      setsockopt(l->fd, SOL_SOCKET, SO_RCVBUF, &rbuf, sizeof rbuf) < 0)
    die("cannot set receive buffer of %s to %d: %s", l->where, rbuf, strerror(errno));
  socklen_t len = sizeof l->rbuf_granted;
  getsockopt(l->fd, SOL_SOCKET, SO_RCVBUF, &l->rbuf_granted, &len);
  int on = 1;
  if (setsockopt(l->fd, SOL_SOCKET, SO_TIMESTAMPNS, &on, sizeof on) < 0 &&
      setsockopt(l->fd, SOL_SOCKET, SO_TIMESTAMP, &on, sizeof on) < 0)
    die("cannot ask for receive timestamps on %s: %s", l->where, strerror(errno));
  setsockopt(l->fd, SOL_SOCKET, SO_RXQ_OVFL, &on, sizeof on);  // best effort
  if (bind(l->fd, reinterpret_cast<sockaddr*>(&ss), sslen) < 0)
    die("cannot bind UDP %s: %s", l->where, strerror(errno));
}

// --------------------------------------------------------------- log files

struct LogFile {
  int dirfd = -1;
  int fd = -1;
  char dir[PATH_MAX];
  char name[16];
  unsigned perm = 0600;
  time_t next_switch = 0;
  uint64_t bytes_lost = 0;  // bytes writev could not write
  int last_errno = 0;
};

// Opens dir/name for appending without following links or blocking on a
// FIFO, and refuses anything but a non-executable regular file.  A file it
// creates gets exactly `perm`, whatever the umask.  Returns -1 with *why set.
int open_log_file(const LogFile& lf, const char* name, char* why, size_t whylen) {
  const int flags = O_WRONLY | O_APPEND | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;
  bool created = true;
  int fd = openat(lf.dirfd, name, flags | O_CREAT | O_EXCL, lf.perm);
  if (fd < 0 && errno == EEXIST) {
    created = false;
    fd = openat(lf.dirfd, name, flags);
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
  } else if (created && fchmod(fd, lf.perm) < 0) {
    snprintf(why, whylen, "cannot set mode %04o: %s", lf.perm, strerror(errno));
  } else if (fcntl(fd, F_SETFL, O_WRONLY | O_APPEND) < 0) {  // writes may block again
    snprintf(why, whylen, "%s", strerror(errno));
  } else {
    return fd;
  }
  close(fd);
  return -1;
}

// Points the log at the file for the local date of `now`; on failure keeps
// the current file (if any) and returns false with *why set.
bool switch_log_file(LogFile* lf, time_t now, char* why, size_t whylen) {
  char name[16];
  log_file_name(now, name);
  int fd = open_log_file(*lf, name, why, whylen);
  if (fd < 0) return false;
  if (lf->fd >= 0) close(lf->fd);
  lf->fd = fd;
  memcpy(lf->name, name, sizeof name);
  lf->next_switch = next_local_midnight(now);
  return true;
}

// Writes one batch of log text; short writes continue, errors are counted
// and reported once per kind so a full disk does not flood stderr.
void write_batch(void* ctx, const iovec* iov, int iovcnt) {
  auto* lf = static_cast<LogFile*>(ctx);
  iovec rest[1024];
  memcpy(rest, iov, sizeof(iovec) * size_t(iovcnt));
  iovec* v = rest;
  while (iovcnt > 0) {
    ssize_t w = writev(lf->fd, v, iovcnt);
    if (w < 0) {
      if (errno == EINTR) continue;
      size_t lost = 0;
      for (int i = 0; i < iovcnt; i++) lost += v[i].iov_len;
      lf->bytes_lost += lost;
      if (errno != lf->last_errno)
        warn("cannot write %s/%s: %s (%llu bytes lost so far)", lf->dir, lf->name,
             strerror(errno), static_cast<unsigned long long>(lf->bytes_lost));
      lf->last_errno = errno;
      return;
    }
    lf->last_errno = 0;
    size_t done = size_t(w);
    while (iovcnt > 0 && done >= v->iov_len) {
      done -= v->iov_len;
      v++;
      iovcnt--;
    }
    if (iovcnt > 0) {
      v->iov_base = static_cast<char*>(v->iov_base) + done;
      v->iov_len -= done;
    }
  }
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

// ---------------------------------------------------------------- receive

// Preallocated recvmmsg state.  Each slot has room for the largest
// datagram, but the ring is anonymous memory: only the pages a datagram
// actually fills become resident, so small datagrams cost one page a slot.
struct Ring {
  mmsghdr msgs[kBatch];
  iovec iov[kBatch];
  sockaddr_in6 names[kBatch];
  alignas(cmsghdr) char ctrl[kBatch][64];
  char* data = nullptr;
};

Ring the_ring;  // 11 KiB of headers: static storage, not the stack

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

// The sender of message i as an IPv6 (or v4-mapped) address.
void sender_of(const Ring& r, int i, in6_addr* addr, uint16_t* port) {
  const sockaddr_in6& sa = r.names[i];
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

// What the kernel said about message i: its arrival time (else
// `fallback`) and, after drops, the socket's drop counter (else -1).
timespec arrival_of(const Ring& r, int i, const timespec& fallback, int64_t* drops) {
  const msghdr& h = r.msgs[i].msg_hdr;
  timespec ts = fallback;
  *drops = -1;
  for (cmsghdr* c = CMSG_FIRSTHDR(&h); c; c = CMSG_NXTHDR(const_cast<msghdr*>(&h), c)) {
    if (c->cmsg_level != SOL_SOCKET) continue;
    if (c->cmsg_type == SCM_TIMESTAMPNS) {
      memcpy(&ts, CMSG_DATA(c), sizeof ts);
    } else if (c->cmsg_type == SCM_TIMESTAMP) {
      timeval tv;
      memcpy(&tv, CMSG_DATA(c), sizeof tv);
      ts = timespec{tv.tv_sec, tv.tv_usec * 1000};
    } else if (c->cmsg_type == SO_RXQ_OVFL) {
      uint32_t n;
      memcpy(&n, CMSG_DATA(c), sizeof n);
      *drops = n;
    }
  }
  return ts;
}

// Receives one batch into the ring and feeds it to the assembler; returns
// the number of datagrams, 0 when the socket is empty.
int receive_batch(int fd, Ring* r, Assembler* a) {
  for (int i = 0; i < kBatch; i++) {
    msghdr& h = r->msgs[i].msg_hdr;  // the lengths the kernel changed last time
    h.msg_namelen = sizeof r->names[i];
    h.msg_controllen = sizeof r->ctrl[i];
    h.msg_flags = 0;
  }
  int n = recvmmsg(fd, r->msgs, kBatch, MSG_DONTWAIT, nullptr);
  if (n <= 0) {
    if (n < 0 && errno != EAGAIN && errno != EINTR) warn("recvmmsg: %s", strerror(errno));
    return 0;
  }
  timespec now = now_realtime();
  for (int i = 0; i < n; i++) {
    in6_addr addr;
    uint16_t port;
    sender_of(*r, i, &addr, &port);
    int64_t drops;
    timespec when = arrival_of(*r, i, now, &drops);
    if (drops >= 0) a->kernel_drops(uint32_t(drops), when);
    if (r->msgs[i].msg_hdr.msg_flags & MSG_TRUNC)
      a->notice(when, "datagram cut to %u bytes: larger than the receive slot",
                r->msgs[i].msg_len);
    a->datagram(addr, port, static_cast<char*>(r->iov[i].iov_base), r->msgs[i].msg_len, when);
  }
  return n;
}

// ------------------------------------------------------------------- main

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
  signal(SIGPIPE, SIG_IGN);
  return fd;
}

void print_startup(const Options& o, const Listener& l, const LogFile& lf) {
  printf("udplogger %s: listening on UDP %s%s, writing %s/%s; timeout=%u clients=%u "
         "wbuf=%u rbuf=%lu (granted %d) escape=%s ext=%s frags=%u perm=%04o",
         kVersion, l.where, l.dual_stack ? " (IPv4 and IPv6)" : "", lf.dir, lf.name,
         o.timeout, o.clients, o.wbuf, o.rbuf, l.rbuf_granted,
         o.escape == Escape::hex ? "hex" : "none", o.ext == Ext::raw ? "raw" : "auto",
         o.frags, o.perm);
  if (o.uid >= 0) printf(" uid=%ld", o.uid);
  if (o.gid >= 0) printf(" gid=%ld", o.gid);
  printf("\n");
  fflush(stdout);
}

// The statistics line, into the log and on stderr.
void report_stats(Assembler* a, Output* out) {
  char line[512];
  a->format_stats(line, sizeof line);
  a->notice(now_realtime(), "%s", line);
  out->flush();
  warn("%s", line);
}

// At local midnight: the new day's file, or (if it cannot be opened) the
// current one and a message saying why, as udplogger 1.1 did.
void midnight_switch(LogFile* lf, Output* out, time_t now) {
  out->flush();
  char old[16], why[256];
  memcpy(old, lf->name, sizeof old);
  if (!switch_log_file(lf, now, why, sizeof why)) {
    char name[16];
    log_file_name(now, name);
    warn("cannot switch to log file %s/%s: %s; still writing %s", lf->dir, name, why, old);
    lf->next_switch = now + 60;  // try again in a minute
  }
}

// Waits for datagrams, signals, the next timeout or midnight.  Under load
// (pause_ns > 0) it first pauses: waking for every datagram or two costs
// more than the datagrams themselves, so a batch gathers.  Arrival times
// are the kernel's, so no line's time changes.
int wait_for_events(int ep, const LogFile& lf, const Assembler& a, long pause_ns,
                    epoll_event* events) {
  int timeout = 0;
  if (pause_ns > 0) {
    timespec pause = {0, pause_ns};
    nanosleep(&pause, nullptr);
  } else {
    timespec due = {lf.next_switch, 0};
    timespec partial_due = a.next_deadline();
    if (partial_due.tv_sec != 0 && partial_due.tv_sec < due.tv_sec) due = partial_due;
    timeout = milliseconds_until(due, now_realtime());
  }
  int n = epoll_wait(ep, events, 2, timeout);
  if (n < 0 && errno != EINTR) die("epoll_wait: %s", strerror(errno));
  return n < 0 ? 0 : n;
}

// Reads batches until the socket is empty (or a bound, to stay responsive);
// returns true when more than one datagram was waiting: the loop is busy.
bool drain_socket(int fd, Ring* ring, Assembler* a, Output* out) {
  int total = 0;
  for (int b = 0; b < kBatchesPerWake; b++) {
    int got = receive_batch(fd, ring, a);
    out->flush();  // the ring is reused by the next batch
    total += got;
    if (got < kBatch) return total > 1;
  }
  return false;  // not drained: look again at once
}

// Acts on the signals received; returns true for SIGTERM or SIGINT.
bool handle_signals(int sigfd, LogFile* lf, Assembler* a, Output* out) {
  bool stop = false;
  signalfd_siginfo si;
  while (read(sigfd, &si, sizeof si) == ssize_t(sizeof si)) {
    if (si.ssi_signo == SIGHUP) {
      out->flush();
      char why[256];
      if (!switch_log_file(lf, now_realtime().tv_sec, why, sizeof why))
        warn("SIGHUP: cannot reopen log file: %s; still writing %s/%s", why, lf->dir, lf->name);
    } else if (si.ssi_signo == SIGUSR1) {
      report_stats(a, out);
    } else if (si.ssi_signo == SIGTERM || si.ssi_signo == SIGINT) {
      stop = true;
    }
  }
  return stop;
}

int run(const Options& o) {
  LogFile lf;
  lf.perm = o.perm;
  if (!realpath(o.dir, lf.dir)) die("cannot use log directory %s: %s", o.dir, strerror(errno));
  lf.dirfd = open(lf.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (lf.dirfd < 0) die("cannot use log directory %s: %s", lf.dir, strerror(errno));

  Listener l;
  open_listener(o, &l);
  drop_privileges(o);

  char why[256];
  timespec now = now_realtime();
  if (!switch_log_file(&lf, now.tv_sec, why, sizeof why)) {
    char name[16];
    log_file_name(now.tv_sec, name);
    die("cannot open log file %s/%s: %s", lf.dir, name, why);
  }

  Output out;
  Assembler assembler;
  Ring* ring = &the_ring;
  if (!out.init(kArenaBytes, write_batch, &lf) || !assembler.init(o, &out))
    die("out of memory for clients=%u", o.clients);
  ring_init(ring);

  int sigfd = open_signals();
  int ep = epoll_create1(EPOLL_CLOEXEC);
  epoll_event ev = {};
  ev.events = EPOLLIN;
  ev.data.fd = l.fd;
  if (ep < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, l.fd, &ev) < 0) die("epoll: %s", strerror(errno));
  ev.data.fd = sigfd;
  if (epoll_ctl(ep, EPOLL_CTL_ADD, sigfd, &ev) < 0) die("epoll: %s", strerror(errno));

  print_startup(o, l, lf);
  epoll_event events[2];

  // The pause lets arrivals at ~100k datagrams/s (~1 KiB of buffer each)
  // fill at most a quarter of the receive buffer.
  const long coalesce_ns = std::min(kCoalesceMaxNs, long(l.rbuf_granted) / 400 * 1000);
  bool busy = false;  // the last wakeup found more than one datagram
  for (;;) {
    int n = wait_for_events(ep, lf, assembler, busy ? coalesce_ns : 0, events);
    now = now_realtime();
    if (now.tv_sec >= lf.next_switch) midnight_switch(&lf, &out, now.tv_sec);
    bool stop = false;
    busy = false;
    for (int i = 0; i < n; i++) {
      if (events[i].data.fd == l.fd) busy = drain_socket(l.fd, ring, &assembler, &out);
      else stop = handle_signals(sigfd, &lf, &assembler, &out);
    }
    now = now_realtime();
    if (stop) {  // take what is queued, write every partial line, leave
      drain_socket(l.fd, ring, &assembler, &out);
      assembler.expire(now, true);
      report_stats(&assembler, &out);
      return 0;
    }
    assembler.expire(now);
    out.flush();
  }
}

}  // namespace

int main(int argc, char** argv) {
  ul::Options opts;
  char err[256];
  switch (ul::parse_options(argc, argv, &opts, err, sizeof err)) {
    case ul::ParseStatus::help:
      fputs(ul::kUsage, stdout);
      return 0;
    case ul::ParseStatus::version:
      printf("udplogger %s\n", ul::kVersion);
      return 0;
    case ul::ParseStatus::usage_error:
      fprintf(stderr, "udplogger: %s\n%s", err, ul::kUsage);
      return 2;
    case ul::ParseStatus::value_error:
      fprintf(stderr, "udplogger: %s\n", err);
      return 2;
    case ul::ParseStatus::ok:
      break;
  }
  return run(opts);
}
#endif  // UDPLOGGER_NO_MAIN
