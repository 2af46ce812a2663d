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
enum class Ext { automatic, raw };

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
  Ext ext = Ext::automatic;    // extended netconsole: parse, or text as 1.1
  unsigned frags = 64;         // fragmented records reassembled at once
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

// ---------------------------------------------------- extended netconsole

// The header of an extended netconsole datagram:
// [RELEASE,]PRI,SEQ,USEC,FLAG[,ncfrag=OFF/TOTAL];
struct ExtHeader {
  const char* release = nullptr;  // points into the datagram
  size_t release_len = 0;
  unsigned pri = 0;
  uint64_t seq = 0, usec = 0;
  char flag = '-';
  bool fragment = false;
  uint32_t frag_off = 0, frag_total = 0;
  size_t body = 0;                // offset of the byte after ';'
};

// True when data starts with an extended netconsole header (parsed into
// *h); false for anything else, which is plain text.
bool parse_ext_header(const char* data, size_t len, ExtHeader* h);

// Decodes the kernel's \xNN escapes; an incomplete or invalid escape stays
// as it is.  dst needs room for len bytes; returns the bytes written.
size_t kernel_unescape(const char* src, size_t len, char* dst);

// Longest record the kernel sends (CONSOLE_EXT_LOG_MAX): body, newline and
// dictionary, escaped.
constexpr uint32_t kRecordMax = 8192;

// Records of one sender in reassembly at once; a further one pushes out the
// oldest (written with its gaps marked).
constexpr int kInflightPerSender = 4;

// ------------------------------------------------------------------ output

// Collects log text as an iovec list for one writev: pieces that live in
// the receive ring are referenced, everything else (prefixes, escaped text,
// partial lines) is copied into a fixed arena.  When either fills up, the
// flush callback is called and collection starts over.
class Output {
 public:
  using FlushFn = void (*)(void* ctx, const iovec* iov, int iovcnt);

  bool init(size_t arena_bytes, FlushFn fn, void* ctx);
  ~Output();
  void ref(const char* p, size_t len);        // zero copy; valid until flush
  void copy(const char* p, size_t len);
  void copy_escaped(const char* p, size_t len);
  void flush();

 private:
  char* reserve(size_t want, size_t* got);
  void push(const char* p, size_t len);

  static constexpr int kMaxIov = 1024;
  iovec iov_[kMaxIov];
  int iovcnt_ = 0;
  char* arena_ = nullptr;
  size_t arena_cap_ = 0;
  size_t arena_used_ = 0;
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

// A doubly linked list threaded through the elements of an array by index
// (-1 ends it), so that taking an element out is O(1) and allocates nothing.
template <typename T, int32_t T::*Prev, int32_t T::*Next>
struct IndexList {
  int32_t head = -1, tail = -1;

  void append(T* base, int32_t i) {
    base[i].*Prev = tail;
    base[i].*Next = -1;
    if (tail >= 0) base[tail].*Next = i;
    else head = i;
    tail = i;
  }
  void unlink(T* base, int32_t i) {
    if (base[i].*Prev >= 0) base[base[i].*Prev].*Next = base[i].*Next;
    else head = base[i].*Next;
    if (base[i].*Next >= 0) base[base[i].*Next].*Prev = base[i].*Prev;
    else tail = base[i].*Prev;
  }
};

struct Sender {
  in6_addr addr;
  uint16_t port;
  uint8_t name_len;            // "IP:PORT " including the trailing space
  time_t prefix_sec;           // the second prefix's stamp is for
  // "YYYY-MM-DD hh:mm:ss IP:PORT ": the whole prefix of a line, kept so
  // that a line costs one copy of it.
  char prefix[20 + kSenderNameMax + 1];
  const char* name() const { return prefix + 20; }
  int32_t hash_next;           // chain in the hash bucket
  int32_t lru_prev, lru_next;  // least recently heard first
  int32_t pend_prev, pend_next;  // senders holding a partial line, oldest first
  // The partial line: bytes received without their newline yet.
  char* partial;
  uint32_t partial_len, partial_cap;
  timespec partial_time;       // arrival of its first byte
  // Extended netconsole: what was seen of this sender's records.
  bool seq_known, msgid_known;
  bool seq_resumable;          // a SEQ came again: resume_seq + 1 may follow
  uint64_t resume_seq;
  uint64_t first_seq;          // lowest SEQ since it (re)started
  uint64_t last_seq;           // highest SEQ seen
  uint64_t seq_window;         // bit i: record last_seq - i was seen
  uint64_t last_msgid;
  uint8_t release_len;
  char release[64];
  int32_t inflight[kInflightPerSender];  // its records in reassembly, -1: none
};

struct Stats {
  uint64_t datagrams = 0, bytes = 0, lines = 0;
  uint64_t senders_reused = 0;
  uint64_t lines_timed_out = 0;
  uint64_t records = 0;             // extended records written
  uint64_t fragments = 0;           // fragment datagrams taken in
  uint64_t reassembled = 0;         // records joined from fragments
  uint64_t incomplete = 0;          // records written with bytes missing
  uint64_t missing = 0;             // records missing by SEQ
  uint64_t lost_in_transit = 0;     // records missing by msgid
  uint64_t duplicates = 0;          // fragments seen before, ignored
  uint64_t malformed = 0;           // bad extended headers, written as text
  uint64_t kernel_drops = 0;        // datagrams the kernel dropped
};

// One fragmented record being reassembled.
struct Reassembly {
  int32_t sender;                   // -1: free
  int32_t age_prev, age_next;       // oldest first
  uint64_t seq, usec;
  unsigned pri;
  uint32_t total, have;             // bytes expected, bytes received
  timespec first;                   // arrival of its first fragment
  uint8_t got[kRecordMax / 8];      // bit per byte received
  char data[kRecordMax];
};

// The sender table and line assembly.  Holds up to opts.clients senders;
// a new sender beyond that takes the slot of the one idle longest, whose
// partial line is written out first.
class Assembler {
 public:
  bool init(const Options& opts, Output* out);
  ~Assembler();

  // One datagram from addr:port, arrived at `when`.
  void datagram(const in6_addr& addr, uint16_t port, const char* data,
                size_t len, const timespec& when);

  // Writes every partial line that arrived at or before `now - timeout`,
  // or every partial line when `all` is set (exit).
  void expire(const timespec& now, bool all = false);

  // Earliest time a partial line or record times out; {0,0} when none.
  timespec next_deadline() const;

  // The kernel's count of datagrams dropped on this socket (SO_RXQ_OVFL,
  // cumulative); writes a notice when it grew.
  void kernel_drops(uint32_t total, const timespec& now);

  // Writes "YYYY-MM-DD hh:mm:ss udplogger: text" into the log.
  void notice(const timespec& now, const char* fmt, ...)
      __attribute__((format(printf, 3, 4)));

  // The statistics line (without newline) into buf.
  void format_stats(char* buf, size_t len) const;

  size_t senders() const { return used_; }
  const Stats& stats() const { return stats_; }

 private:
  Sender* lookup(const in6_addr& addr, uint16_t port, const timespec& when);
  Sender* take_slot(const timespec& when);
  void unhash(Sender* s);
  void put_text(const char* p, size_t len);
  void write_line(Sender* s, time_t sec, const char* a, size_t alen,
                  const char* b, size_t blen, bool newline_in_b, bool b_clean = false);
  void write_partial(Sender* s, const char* rest, size_t rest_len,
                     bool newline_in_rest);
  void keep_partial(Sender* s, const char* p, size_t len,
                    const timespec& when);
  void text(Sender* s, const char* data, size_t len, const timespec& when);
  void text_whole(Sender* s, const char* data, size_t len, const timespec& when);
  void record(Sender* s, const ExtHeader& h, const char* data, size_t len,
              const timespec& when);
  void fragment(Sender* s, const ExtHeader& h, const char* data, size_t len,
                const timespec& when);
  bool seen_before(Sender* s, uint64_t seq, const timespec& when);
  void restart_seq(Sender* s, uint64_t seq);
  void seen_again(Sender* s, uint64_t seq, const timespec& when);
  void check_release(Sender* s, const ExtHeader& h, const timespec& when);
  void check_msgid(Sender* s, const char* text, size_t len, const timespec& when);
  void finish(Reassembly* r, const timespec& now, const char* why);
  Reassembly* reassembly_for(Sender* s, const ExtHeader& h, const timespec& when);
  void release_reassembly(Reassembly* r);
  void drop_inflight(Sender* s, const timespec& now, const char* why);
  // Writing one record: prefix per line, \xNN decoded, lines split.
  void rec_begin(Sender* s, unsigned pri, uint64_t usec, time_t sec);
  void rec_text(const char* p, size_t len);
  void rec_gap(size_t missing);
  void rec_end();
  void rec_put(const char* p, size_t len);
  void rec_newline();
  void rec_flush_escape();
  void notice_sender(const timespec& now, Sender* s, const char* fmt, ...)
      __attribute__((format(printf, 4, 5)));
  int32_t index(const Sender* s) const { return int32_t(s - slots_); }
  uint32_t bucket(const in6_addr& addr, uint16_t port) const;

  Options opts_;
  Output* out_ = nullptr;
  StampCache stamps_;
  Sender* slots_ = nullptr;
  int32_t* buckets_ = nullptr;
  uint32_t bucket_mask_ = 0;
  size_t used_ = 0;
  IndexList<Sender, &Sender::lru_prev, &Sender::lru_next> lru_;  // idle longest first
  IndexList<Sender, &Sender::pend_prev, &Sender::pend_next> pending_;  // oldest partial first
  Reassembly* pool_ = nullptr;      // opts.frags entries
  IndexList<Reassembly, &Reassembly::age_prev, &Reassembly::age_next> ages_;  // oldest first
  int32_t free_head_ = -1;          // released entries, linked by age_next
  uint32_t pool_used_ = 0;          // entries ever used: the rest untouched
  uint32_t drops_seen_ = 0;
  Stats stats_;
  // State of the record being written (rec_*).
  struct RecordLine {
    char prefix[kSenderNameMax + 64];
    size_t stamp_len;      // "time sender " for dictionary lines
    size_t prefix_len;     // plus "<pri>[sssss.uuuuuu] " for text lines
    bool in_body, open;
    size_t line_bytes;
    char esc[4];
    size_t esc_len;
  } rl_;
};

}  // namespace ul

#endif
