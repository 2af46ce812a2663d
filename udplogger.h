// udplogger: receive line-oriented UDP log streams (Linux netconsole and
// others) and append them to daily log files.
//
// This header declares the pure core: option parsing, escaping, formatting,
// the sender table and per-sender line assembly.  None of it does I/O: bytes
// and times go in, finished log text comes out through an Output, whose flush
// callback the shell (udplogger.cpp) points at writev().  Tests point it at a
// string instead and need no sockets.
//
// Copyright (C) 2026 the udplogger authors.  GPL version 2, see COPYING.
#ifndef UDPLOGGER_H
#define UDPLOGGER_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>
#include <time.h>

namespace ul {

constexpr const char kVersion[] = "2.0";

// ---------------------------------------------------------------- options

enum class Escape { hex, none };

struct Options {
  const char* ip = nullptr;  // null: dual-stack any address
  unsigned port = 6666;
  const char* dir = ".";
  unsigned timeout = 10;       // seconds
  unsigned clients = 1024;     // senders tracked at once
  unsigned wbuf = 65536;       // longest line kept, bytes
  unsigned long rbuf = 8UL << 20;
  long uid = -1;               // -1: unchanged
  long gid = -1;
  unsigned perm = 0600;
  Escape escape = Escape::hex;
};

enum class ParseStatus { ok, help, version, usage_error, value_error };

// Parses key=value (or --key=value) arguments into *opts.  On an error,
// err holds one line naming the option, the value and what is allowed.
ParseStatus parse_options(int argc, char* const* argv, Options* opts,
                          char* err, size_t errlen);

extern const char kUsage[];

// ------------------------------------------------------ escaping, prefix

// True for the bytes written as \xNN: control bytes except TAB, and DEL.
inline bool needs_escape(unsigned char c) {
  return (c < 0x20 && c != '\t') || c == 0x7f;
}

// Writes src as log text into dst (room for 4 * len bytes), escaping
// control bytes as \xNN; returns the bytes written.
size_t escape_text(const char* src, size_t len, char* dst);

// Formats "YYYY-MM-DD hh:mm:ss " (20 bytes, local time) into out.
void format_stamp(time_t t, char out[21]);

// Formats the sender as "a.b.c.d:port" (IPv4 or v4-mapped) or
// "[v6addr]:port"; returns the length (< kSenderNameMax).
constexpr size_t kSenderNameMax = 56;
size_t format_sender(const in6_addr& addr, uint16_t port, char* out);

// Local midnight following t, as a time_t.
time_t next_local_midnight(time_t t);

// "YYYY-MM-DD.log" for the local date of t.
void log_file_name(time_t t, char out[16]);

// ------------------------------------------------------------------ output

// Collects log text as an iovec list for one writev: pieces that live in
// the receive ring are referenced, everything else (prefixes, escaped text,
// partial lines) is copied into a fixed arena.  When either fills up, the
// flush callback is called and collection starts over.
class Output {
 public:
  using FlushFn = void (*)(void* ctx, const iovec* iov, int iovcnt);

  bool init(size_t arena_bytes, FlushFn fn, void* ctx);
  void ref(const char* p, size_t len);        // zero copy; valid until flush
  void copy(const char* p, size_t len);
  void copy_escaped(const char* p, size_t len);
  void flush();
  size_t pending_bytes() const { return pending_; }

 private:
  char* reserve(size_t want, size_t* got);
  void push(const char* p, size_t len);

  static constexpr int kMaxIov = 1024;
  iovec iov_[kMaxIov];
  int iovcnt_ = 0;
  char* arena_ = nullptr;
  size_t arena_cap_ = 0;
  size_t arena_used_ = 0;
  size_t pending_ = 0;
  FlushFn fn_ = nullptr;
  void* ctx_ = nullptr;
};

// Caches the "YYYY-MM-DD hh:mm:ss " text of the current second.
class StampCache {
 public:
  const char* get(time_t t) {
    if (t != sec_ || !valid_) {
      format_stamp(t, text_);
      sec_ = t;
      valid_ = true;
    }
    return text_;
  }

 private:
  time_t sec_ = 0;
  bool valid_ = false;
  char text_[21];
};

// ----------------------------------------------------------------- senders

struct Sender {
  in6_addr addr;
  uint16_t port;
  uint8_t name_len;            // "IP:PORT " including the trailing space
  char name[kSenderNameMax + 1];
  int32_t hash_next;           // chain in the hash bucket
  int32_t lru_prev, lru_next;  // least recently heard first
  int32_t pend_prev, pend_next;  // senders holding a partial line, oldest first
  bool in_use;
  // The partial line: bytes received without their newline yet.
  char* partial;
  uint32_t partial_len, partial_cap;
  timespec partial_time;       // arrival of its first byte
};

struct Stats {
  uint64_t datagrams = 0, bytes = 0, lines = 0;
  uint64_t senders_reused = 0;
  uint64_t lines_timed_out = 0;
};

// The sender table and line assembly.  Holds up to opts.clients senders;
// a new sender beyond that takes the slot of the one idle longest, whose
// partial line is written out first.
class Assembler {
 public:
  bool init(const Options& opts, Output* out);

  // One datagram from addr:port, arrived at `when`.
  void datagram(const in6_addr& addr, uint16_t port, const char* data,
                size_t len, const timespec& when);

  // Writes every partial line that arrived at or before `now - timeout`,
  // or every partial line when `all` is set (exit).
  void expire(const timespec& now, bool all = false);

  // Earliest time a partial line times out; {0,0} when none is pending.
  timespec next_deadline() const;

  size_t senders() const { return used_; }
  const Stats& stats() const { return stats_; }

 private:
  Sender* lookup(const in6_addr& addr, uint16_t port);
  Sender* take_slot();
  void unhash(Sender* s);
  void lru_unlink(Sender* s);
  void lru_append(Sender* s);
  void pend_unlink(Sender* s);
  void pend_append(Sender* s);
  void write_line(Sender* s, time_t sec, const char* a, size_t alen,
                  const char* b, size_t blen, bool newline_in_b);
  void write_partial(Sender* s, const char* rest, size_t rest_len,
                     bool newline_in_rest);
  void keep_partial(Sender* s, const char* p, size_t len,
                    const timespec& when);
  int32_t index(const Sender* s) const { return int32_t(s - slots_); }
  uint32_t bucket(const in6_addr& addr, uint16_t port) const;

  Options opts_;
  Output* out_ = nullptr;
  StampCache stamps_;
  Sender* slots_ = nullptr;
  int32_t* buckets_ = nullptr;
  uint32_t bucket_mask_ = 0;
  size_t used_ = 0;
  int32_t lru_head_ = -1, lru_tail_ = -1;
  int32_t pend_head_ = -1, pend_tail_ = -1;
  Stats stats_;
};

}  // namespace ul

#endif
