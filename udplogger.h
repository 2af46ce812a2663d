// udplogger: receive line-oriented UDP log streams (Linux netconsole and
// others) and append them to daily log files.
//
// This header is the contract of the pure core, which does no I/O:
// options, datagrams and times go in; log lines go out to a Sink, which
// reports what became of them; Core says when it next needs to be called.
// The shell (sockets, epoll, the sinks, signals, main) drives it.  What
// the tests need of the internals follows the contract, fenced.
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

constexpr const char kVersion[] = "2.4";  // the one place the version is set

// ================================================================ contract

// ---------------------------------------------------------------- options

enum class Escape { hex, none };
enum class Ext { automatic, raw };
enum class StampStyle { classic, iso };  // "2026-11-22 02:04:05" or RFC 3339
enum class Split { none, host };         // one daily file, or one per sender address
enum class Eol { automatic, newline, datagram };  // what ends a line besides a newline
enum class Dict { changes, all, none };  // extended records' KEY=VALUE lines written

// allow=: the networks whose datagrams are taken.  IPv4 networks are kept
// as v4-mapped IPv6 ones, so one comparison serves both families.
constexpr unsigned kAllowMax = 64;
struct AllowList {
  struct Net {
    uint64_t addr[2], mask[2];  // the address as two words, in memory order
  };
  Net nets[kAllowMax];
  unsigned count = 0;           // 0: everyone
  const char* given = nullptr;  // allow= as given
  bool allows(const in6_addr& a) const;
};

constexpr size_t kPathMax = 4096;  // dir= and where it is found, with the final NUL

struct Options {
  const char* ip = nullptr;  // null: dual-stack any address
  unsigned port = 6666;
  const char* dir = ".";     // "-": standard output
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
  StampStyle stamp = StampStyle::classic;
  Split split = Split::none;
  unsigned files = 64;         // split=host: log files open at once
  unsigned newdirs = 4096;     // split=host: host directories made a day
  unsigned hosts = 4096;       // sending hosts (addresses) tracked at once
  const char* metrics = nullptr;  // Prometheus text file, rewritten every 15 s; null: none
  unsigned debug = 0;          // 1: trace every datagram on stderr
  unsigned reuseport = 0;      // 1: SO_REUSEPORT, several processes on one port
  unsigned long partials = 4UL << 20;  // bytes all partial lines may hold at once
  Eol eol = Eol::automatic;    // auto: a syslog datagram ("<N>...") is one message
  Dict dict = Dict::changes;   // changes: a sender's dictionary only when it changes
  AllowList allow;
  bool check = false;          // --check: test the set-up as a start would, then exit
  bool to_stdout() const { return dir[0] == '-' && dir[1] == '\0'; }
};

enum class ParseStatus { ok, help, version, usage_error, value_error };

// Parses key=value (or --key=value) arguments into *opts.  On an error,
// err holds one line naming the option, the value and what is allowed.
ParseStatus parse_options(int argc, char* const* argv, Options* opts,
                          char* err, size_t errlen);

extern const char kUsage[];

// ---------------------------------------------------------------- datagram

// One arriving datagram, from receive to the core: the one place where a
// per-datagram feature hooks in.
struct Datagram {
  in6_addr addr;               // IPv6, or v4-mapped IPv4
  uint16_t port;
  timespec when;               // the kernel's arrival time
  const char* data;            // valid until Core::datagrams returns
  size_t len;
  bool truncated;              // cut to fit the receive slot
  bool spoofed_v4 = false;     // IPv6, from a v4-mapped address: not an IPv4
                               // sender, refused
};

// The shell's clock: wall time now.  Tests give the sinks a fake one.
using Clock = timespec (*)();

// ------------------------------------------------------------------ sinks

// What could not be written, by cause.
struct WriteLoss {
  // stalled: a pipe's reader stopped reading (dir=-).
  enum Cause { disk_full, quota, io, no_directory, stalled, other, kCauses };
  uint64_t lines[kCauses] = {}, bytes[kCauses] = {};
};

// What a sink did with a batch.  A sink writes bytes and says what
// happened; the notices about it are the core's, made where every line is.
struct WriteReport {
  enum class Kind : uint8_t {
    written,      // in the file (with the preface first, if one was given)
    lost,         // not written: `lines` and `bytes` counted under `cause`
    owes_notice,  // nothing written: call again with the notice `owed` as preface
  };
  enum class Owed : uint8_t {
    cut_found,       // the file did not end in a newline when opened
    write_failed,    // `lines` (`bytes`) could not be written since `since`: error `err`
    directory_back,  // `dir` could not be used since `since` (`why`); `kept` bytes follow,
                     // `lines` (`bytes`) beyond them were lost
    host_capped,     // split=host: `kept` (newdirs=) host directories were made
                     // today; lines of hosts without one go to the daemon's file
  };
  Kind kind = Kind::written;
  Owed owed = Owed::cut_found;
  WriteLoss::Cause cause = WriteLoss::other;
  bool cut = false;        // write_failed: the line before the notice was cut
  int err = 0;
  uint64_t lines = 0, bytes = 0;
  size_t kept = 0;
  timespec since = {0, 0};
  timespec now = {0, 0};   // when the notice is due
  const char* dir = nullptr;
  const char* why = nullptr;
  const char* file = nullptr;  // write_failed: the file the notice is about, when the
                               // notice cannot go into that file itself
};

// Where finished lines go: the daily file, per-host daily files, standard
// output, or a test's string.
class Sink {
 public:
  // Writes a batch of lines about host (null: the daemon's own), preceded
  // by preface (a notice the sink asked for in its last report, or null).
  virtual WriteReport write(const in6_addr* host, const iovec* iov, int iovcnt,
                            const char* preface, size_t preface_len) = 0;
  // Switches to the new day's file(s) when now has reached next_switch().
  virtual void tick(time_t now) { (void)now; }
  // Reopens every file (SIGHUP), after logrotate moved them.
  virtual void reopen(time_t now) { (void)now; }
  // When tick() next has work to do; 0: never.
  virtual time_t next_switch() const { return 0; }
  // True when writing can no longer succeed (stdout's reader went away).
  virtual bool gone() const { return false; }
  // At stop, after the last lines: what the sink still owes or holds, as
  // write() does with a batch.  Called again until it reports written;
  // lines that can reach no log file go to standard error, reported lost.
  // Lines written after it reaches no log file go there too.
  virtual WriteReport close(const char* preface, size_t preface_len) {
    (void)preface, (void)preface_len;
    return WriteReport();
  }

 protected:
  ~Sink() = default;  // never deleted through a Sink* (no operator delete: libc alone)
};

// ---------------------------------------------------------------- the fleet

// Kernel crash events, found at the start of a sender's line (after its
// printk time and, for syslog, a header with the tag "kernel").
enum class CrashKind : uint8_t {
  none, panic, oops, bug, warning, hung_task, lockup, rcu_stall, oom,
};
constexpr int kCrashKinds = 9;  // none included: an array indexed by kind
const char* crash_kind_name(CrashKind k);  // "panic", "hung_task", ...: metric labels
const char* crash_kind_words(CrashKind k);  // "panic", "hung task", ...: notices

// What the core knows of one sending host: an address, whatever its ports.
// What a fold (Fleet::fold) touches comes first, in one cache line.
struct alignas(64) HostState {
  in6_addr addr;
  time_t last_heard;           // Unix seconds, its last datagram's arrival
  uint64_t lines;              // log lines written from it
  uint64_t missing;            // extended netconsole records missing by SEQ
  int32_t hash_next, lru_prev, lru_next;  // the table's links
  // The crash event being followed: further lines of its kind within
  // kCrashFollowSeconds of the last one belong to it.
  CrashKind event;
  time_t event_seen;
  time_t last_crash;           // when its last crash event began; 0: none
  uint64_t crashes[kCrashKinds];
};
constexpr time_t kCrashFollowSeconds = 60;

// The fleet's last crash event, for the status.
struct LastCrash {
  in6_addr host;
  CrashKind kind = CrashKind::none;  // none: no crash yet
  time_t at = 0;
};

// ---------------------------------------------------------------- statistics

// What the core counted; the statistics notice and the metrics say it.
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
  uint64_t late_fragments = 0;      // fragments of records written incomplete, written alone
  uint64_t malformed = 0;           // bad extended headers, written as text
  uint64_t kernel_drops = 0;        // datagrams the kernel dropped
  uint64_t flushed_for_memory = 0;  // partial lines written early: partials= reached
  uint64_t refused = 0;             // datagrams from senders not in allow=
  uint64_t hosts_forgotten = 0;     // hosts whose state made room for another (hosts=)
  uint64_t crashes[kCrashKinds] = {};  // kernel crash events, by kind
};

// ---------------------------------------------------------------- the core

// The pure core: fed datagrams and times, it writes log lines (the
// senders' and its own notices) to the sink and says when it next needs
// to be called.  It allocates at init() only.
class Core {
 public:
  // False: out of memory for what the options ask.  seed: random, so that
  // senders cannot aim at one hash bucket.
  bool init(const Options& opts, Sink* sink, uint64_t seed);
  ~Core();
  // Datagrams in arrival order, written out before it returns: their bytes
  // may be reused then.
  void datagrams(const Datagram* d, size_t n);
  // Writes every partial line and record due at now (timeout=), or all of
  // them (at exit).
  void expire(const timespec& now, bool all = false);
  // When expire() next has work to do; {0,0}: nothing waits.
  timespec next_deadline() const;
  // The kernel dropped n datagrams (receive buffer full): a notice.
  void kernel_dropped(uint32_t n, const timespec& now);
  // The sink switched files (midnight, SIGHUP): a notice it owes is written
  // now, and each sender's next record carries its dictionary again.
  void files_changed();
  // At stop: every partial line and record written, then the sink closed
  // (Sink::close), what reached no log file counted in losses().
  void stop(const timespec& now);
  // "udplogger: text" in the daemon's own log, written at once.
  void notice(const timespec& now, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
  // debug=1: fn gets one line (no newline) per datagram saying what
  // became of it.
  using TraceFn = void (*)(const char* line);
  void set_trace(TraceFn fn);
  const Stats& stats() const;
  const WriteLoss& losses() const;  // what the sink could not write, by cause
  size_t senders() const;           // senders known now
  // The hosts known now (hosts=): hosts[0..*n-1], in no particular order,
  // brought up to date first (each sender's lines and time go to its host
  // here, not with every datagram).
  const HostState* hosts(size_t* n);
  // Hosts whose last datagram arrived at `since` or later (up to date too).
  size_t hosts_heard_since(time_t since);
  const LastCrash& last_crash() const;
  // "statistics: datagrams=... senders=... reused=..." into buf.
  void format_stats(char* buf, size_t len);

 private:
  struct Parts;  // the internals below, allocated by init()
  Parts* parts_ = nullptr;
};

// ===================================================================
// Internals: not the contract.  Declared here so that the tests can drive
// each part alone; the daemon uses Core and the sinks.
// ===================================================================

// ------------------------------------------------------- formatting pieces

// True for the bytes written as \xNN: control bytes except TAB, and DEL.
inline bool needs_escape(unsigned char c) {
  return (c < 0x20 && c != '\t') || c == 0x7f;
}

// Writes src as log text into dst (room for 4 * len bytes), escaping
// control bytes as \xNN; returns the bytes written.
size_t escape_text(const char* src, size_t len, char* dst);

// The longest stamp with its trailing space: "YYYY-MM-DDThh:mm:ss.uuuuuu+hh:mm ".
constexpr size_t kStampMax = 33;

// Formats the stamp of t (local time) and a space into out; returns its
// length: 20 for the classic form, 33 for ISO.
size_t format_stamp(StampStyle style, const timespec& t, char out[kStampMax + 1]);

// The sender's address alone: "a.b.c.d" (IPv4 or v4-mapped) or the IPv6
// literal without brackets; returns the length (< kHostNameMax).
constexpr size_t kHostNameMax = 46;
size_t format_host(const in6_addr& addr, char* out);

// The sender as "a.b.c.d:port" or "[v6addr]:port"; returns the length
// (< kSenderNameMax).
constexpr size_t kSenderNameMax = 56;
size_t format_sender(const in6_addr& addr, uint16_t port, char* out);

// A Prometheus label value as the text format wants it (\\, \" and \n
// escaped) into out, cut to fit len; returns its length.
size_t escape_label_value(const char* value, char* out, size_t len);

// Local midnight following t, as a time_t.
time_t next_local_midnight(time_t t);

// "YYYY-MM-DD.log" for the local date of t.
void log_file_name(time_t t, char out[16]);

// ------------------------------------------------------------ line writing

class Output;

// Adds n to a counter without wrapping: a sender choosing sequence numbers
// must not be able to make a count small again.
inline void add_saturating(uint64_t* counter, uint64_t n) {
  *counter = *counter + n < *counter ? UINT64_MAX : *counter + n;
}


// Who a line is about: the name after the stamp, and the host whose file
// it goes to with split=host (null: the daemon's own file).
struct Origin {
  const in6_addr* host;
  const char* name;
  size_t name_len;
};

// The one birthplace of a log line: stamp, origin, text (escaped as the
// options say), newline, for data lines and notices alike.
class LineWriter {
 public:
  void init(const Options& opts, Output* out, Stats* stats);
  void begin(const Origin& o, const timespec& when);  // stamp and name
  void text(const char* p, size_t len);               // copied, escaped
  // Ends the line with p, referenced in place where no escaping is needed;
  // p[len] is its newline when newline_follows.  clean: p needs no escaping.
  void end_with(const char* p, size_t len, bool newline_follows, bool clean);
  void end();
  // What begin, then end_with(p, len, true, true) write, in one piece of
  // the arena: for a clean line under 512 bytes, the most common one.
  void short_line(const Origin& o, const timespec& when, const char* p, size_t len);
  // "STAMP udplogger: [NAME: ]text": a notice, about host (null: the
  // daemon) and the sender called name (null: none).
  void notice(const in6_addr* host, const char* name, size_t name_len, const timespec& when,
              const char* fmt, ...) __attribute__((format(printf, 6, 7)));
  // The notice a sink's report asks for, into out; returns its length.
  size_t sink_notice(const WriteReport& r, char* out, size_t len) const;

 private:
  size_t format_notice(const timespec& when, const char* text, char* out, size_t len) const;
  const char* stamp(const timespec& when);  // this second's stamp, cached
  char* prefix(const Origin& o, const timespec& when, size_t extra);
  Output* out_ = nullptr;
  Stats* stats_ = nullptr;
  Escape escape_ = Escape::hex;
  StampStyle style_ = StampStyle::classic;
  time_t stamp_sec_ = -1;         // the second stamp_ holds
  size_t stamp_len_ = 0;
  char stamp_[kStampMax + 1];
};

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

// ------------------------------------------------------------------ output

// Collects log text as an iovec list: pieces that live in the receive ring
// are referenced, everything else is copied into a fixed arena.  When
// either fills up, or the next line is about another host while lines are
// grouped by host, what was collected goes to the sink; what the sink
// reports is counted, and a notice it owes is made by the LineWriter.
class Output {
 public:
  // arena_bytes of room for copies; by_host: a batch never mixes hosts.
  bool init(size_t arena_bytes, Sink* sink, const LineWriter* notices, bool by_host);
  ~Output();
  // The lines that follow are about host; only matters when grouped by host.
  void to(const in6_addr* host) {
    if (by_host_) switch_host(host);
  }
  void ref(const char* p, size_t len);        // zero copy; valid until flush
  void copy(const char* p, size_t len);       // into the arena
  void copy_escaped(const char* p, size_t len);  // into the arena, control bytes as \xNN
  char* claim(size_t len);                    // len (< 1 KiB) contiguous bytes to fill
  void flush();                               // hands what was collected to the sink
  // A sink that owes a notice with nothing to write (its directory came
  // back): it gets its chance now.
  void settle() { deliver(nullptr, nullptr, 0); }
  // At stop: the sink closed (Sink::close), asked again until it is done.
  void close();
  // A line starts: making room later writes the lines before it, not a
  // part of it.
  void begin_line();
  // What the sink could not write, by cause.
  const WriteLoss& losses() const { return losses_; }

 private:
  char* reserve(size_t want, size_t* got);
  void make_room(size_t need);
  void push(const char* p, size_t len);
  void switch_host(const in6_addr* host);
  void deliver(const in6_addr* host, const iovec* iov, int iovcnt);
  void count(const WriteReport& r);

  static constexpr int kMaxIov = 1024;
  iovec iov_[kMaxIov];
  int iovcnt_ = 0;
  char* arena_ = nullptr;
  size_t arena_cap_ = 0;
  size_t arena_used_ = 0;
  size_t line_start_ = 0;  // where the line being collected begins in the arena
  int line_iov_ = 0;       // iovcnt_ when it began
  Sink* sink_ = nullptr;
  const LineWriter* notices_ = nullptr;
  WriteLoss losses_;
  bool by_host_ = false;
  bool has_host_ = false;  // the collected lines are about host_, not the daemon
  in6_addr host_;
};

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

// PRI and a kernel release ("6.12.1...") both start with a digit: most
// plain text is told apart by its first byte, without a call.
inline bool may_be_ext_header(const char* data, size_t len) {
  return len > 0 && data[0] >= '0' && data[0] <= '9';
}

// True when data starts with an extended netconsole header (parsed into
// *h); false for anything else, which is plain text.
bool parse_ext_header(const char* data, size_t len, ExtHeader* h);

// Longest record the kernel sends (CONSOLE_EXT_LOG_MAX): body, newline and
// dictionary, escaped.
constexpr uint32_t kRecordMax = 8192;

// A record Netconsole hands back: whole, or with the bytes whose bit in
// `got` is 0 missing.  Its text is still kernel-escaped.
struct ExtRecord {
  unsigned pri;
  uint64_t usec;
  timespec when;               // arrival of its first datagram
  const char* data;
  uint32_t len;
  const uint8_t* got;          // null: every byte arrived
};

// What happened to a sender's extended netconsole stream, pulled one at a
// time after each call that feeds the machine.  Pointers are valid until
// the next such call.
struct NetconsoleEvent {
  enum class Kind : uint8_t {
    record,           // `record`, whole (reassembled: joined from fragments)
    incomplete,       // `record` seq with `bytes` of `total` missing, because `why`
    release,          // the sender's kernel release, first seen
    release_changed,  // from `previous` to `release`: its SEQ counts from 0 again
    gap,              // records seq..last never arrived
    lost,             // msgid seq..last lost in transit
    restart,          // SEQ restarted at seq after last: a reboot
    again,            // a record with seq again after last: a reboot, or a duplicate
    late,             // fragment seq off/total of a record handed back incomplete: `record` is it alone
    duplicate,        // fragment seq off/total of a record handed back already: ignored
    malformed,        // fragment seq off/total with `bytes` bytes that fits no record
    inconsistent,     // fragment seq says `total` bytes in all, earlier ones `bytes`
  };
  enum class Why : uint8_t {  // why a record was handed back before it was whole
    complete, timed_out, at_exit, newer_of_sender, newer_of_address, table_full, slot_reused,
  };
  Kind kind = Kind::record;
  Why why = Why::complete;
  bool reassembled = false;
  bool msgid_known = false;  // gap: msgid says nothing was lost in transit
  uint32_t sender = 0;       // the id it was fed with
  timespec when = {0, 0};
  uint64_t seq = 0, last = 0;
  uint32_t off = 0, total = 0, bytes = 0;
  const char* release = nullptr;
  size_t release_len = 0;
  const char* previous = nullptr;
  size_t previous_len = 0;
  ExtRecord record = {};
};

// Records of one sender in reassembly at once; a further one pushes out the
// oldest (handed back with its gaps marked).
constexpr int kInflightPerSender = 4;

// One sender's extended netconsole state.
struct NetconsoleState {
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
  uint64_t cut_seq[kInflightPerSender];  // SEQ + 1 of records handed back incomplete, 0: none
  uint8_t cut_next;
};

// One fragmented record being reassembled.
struct Reassembly {
  int32_t sender;                   // -1: free
  int32_t age_prev, age_next;       // oldest first
  in6_addr addr;                    // its sender's address
  uint64_t seq, usec;
  unsigned pri;
  uint32_t total, have;             // bytes expected, bytes received
  timespec first;                   // arrival of its first fragment
  uint8_t got[kRecordMax / 8];      // bit per byte received
  char data[kRecordMax];
};

// The extended netconsole state machine, in the spirit of netconsd's ncrx:
// fed each sender's headers, bytes and times by a sender id, it tracks SEQ
// and msgid, reassembles fragments and queues events for the caller to
// pull.  No I/O, no text, no counters.
class Netconsole {
 public:
  // senders: ids 0..senders-1; frags: records in reassembly at once.
  bool init(unsigned senders, unsigned frags, unsigned timeout);
  ~Netconsole();
  void forget(uint32_t id);  // a new sender with this id: nothing known of it
  enum class Fed { taken, not_extended };
  // One datagram whose header parsed, from sender id at addr: a whole
  // record or a fragment.  not_extended: a fragment that fits no record,
  // to be written as text (after the events).
  Fed feed(uint32_t id, const in6_addr& addr, const ExtHeader& h, const char* data, size_t len,
           const timespec& when);
  // Hands back every record in reassembly since now - timeout, or all.
  void expire(const timespec& now, bool all);
  // Hands back sender id's records in reassembly: its slot goes to another.
  void drop(uint32_t id, const timespec& now);
  // The next event of the last call, false when there is none.
  bool next(NetconsoleEvent* e);
  timespec next_deadline() const;  // {0,0}: none in reassembly

 private:
  static constexpr unsigned kFinishedPerFeed = 3;  // records one feed may push out
  static constexpr unsigned kEventsPerFeed = 16;
  void begin_call();
  NetconsoleState& state(uint32_t id);
  NetconsoleEvent* event(NetconsoleEvent::Kind kind, uint32_t id, const timespec& when);
  NetconsoleEvent* fragment_event(NetconsoleEvent::Kind kind, uint32_t id, const ExtHeader& h,
                                  const timespec& when);
  void check_release(uint32_t id, const ExtHeader& h, const timespec& when);
  bool seen_before(uint32_t id, uint64_t seq, const timespec& when);
  void restart_seq(NetconsoleState* n, uint64_t seq);
  void seen_again(uint32_t id, uint64_t seq, const timespec& when);
  void check_msgid(uint32_t id, const char* text, size_t len, const timespec& when);
  void record(uint32_t id, const ExtHeader& h, const char* data, size_t len, const timespec& when);
  Fed fragment(uint32_t id, const in6_addr& addr, const ExtHeader& h, const char* data,
               size_t len, const timespec& when);
  Reassembly* reassembly_for(uint32_t id, const in6_addr& addr, const ExtHeader& h,
                             const timespec& when);
  void limit_host(const in6_addr& addr, const timespec& when);
  bool written_incomplete(uint32_t id, uint64_t seq) const;
  void finish(Reassembly* r, const timespec& now, NetconsoleEvent::Why why);

  unsigned timeout_ = 10;
  unsigned frags_ = 0;
  NetconsoleState* senders_ = nullptr;
  uint8_t* fed_ = nullptr;          // 0: the sender's state is not set up yet
  Reassembly* pool_ = nullptr;      // frags + kFinishedPerFeed entries
  IndexList<Reassembly, &Reassembly::age_prev, &Reassembly::age_next> ages_;  // oldest first
  uint32_t in_use_ = 0;             // entries in ages_, at most frags
  int32_t free_head_ = -1;          // released entries, linked by age_next
  int32_t finished_head_ = -1;      // handed back in this call: free at the next
  uint32_t pool_used_ = 0;          // entries ever used: the rest untouched
  NetconsoleEvent* events_ = nullptr;
  uint32_t event_head_ = 0, event_count_ = 0;
  char previous_release_[64];
  char late_data_[kRecordMax];      // a late fragment, handed back alone
  uint8_t late_got_[kRecordMax / 8];
};

// Writes one record as log lines: "<pri>[sssss.uuuuuu] " before each text
// line, the kernel's \xNN decoded, lines split at decoded newlines and at
// wbuf, dictionary lines after the body, "[... N bytes missing ...]" at gaps.
class RecordWriter {
 public:
  void init(LineWriter* lines, size_t wbuf, Stats* stats) {
    lines_ = lines;
    wbuf_ = wbuf;
    stats_ = stats;
  }
  void write(const Origin& o, const ExtRecord& r);

 private:
  void text(const char* p, size_t len);
  void gap(size_t missing);
  void put(const char* p, size_t len);
  void newline();
  void flush_escape();
  void open_line();

  LineWriter* lines_ = nullptr;
  Stats* stats_ = nullptr;
  size_t wbuf_ = 0;
  Origin origin_;
  timespec when_;
  char head_[48];          // "<pri>[sssss.uuuuuu] "
  size_t head_len_;
  bool in_body_, open_;
  size_t line_bytes_;
  char esc_[4];
  size_t esc_len_;
};

// ----------------------------------------------------------------- senders

// What a lookup reads comes first: a chain walk touches one cache line.
struct alignas(64) Sender {
  in6_addr addr;
  uint16_t port;
  uint8_t name_len;            // "IP:PORT"
  int32_t hash_next;           // chain in the hash bucket
  int32_t lru_prev, lru_next;  // least recently heard first
  int32_t pend_prev, pend_next;  // senders holding a partial line, oldest first
  uint32_t host;               // its host's slot in the Fleet, checked before use;
                               // UINT32_MAX: none yet
  // What its host has not been told yet (Fleet::fold): a datagram and a
  // line touch only the sender, which is in the cache already.
  uint64_t unfolded_lines;
  time_t heard;                // its last datagram's arrival; 0: folded
  char name[kSenderNameMax];
  // The partial line: bytes received without their newline yet, in a
  // buffer held only while there is one.
  char* partial;
  uint32_t partial_len, partial_cap;
  timespec partial_time;       // arrival of its first byte
  uint64_t dict_written;       // hash of the dictionary last written, 0: none yet
  Origin origin() const { return Origin{&addr, name, name_len}; }
};

// The senders known at once: a fixed array, a hash index and an order of
// last hearing.  It never writes: before add() reuses the slot of the
// sender idle longest, the caller writes that sender's pending text.
class SenderTable {
 public:
  bool init(unsigned capacity, uint64_t seed);  // seed: random, so buckets cannot be aimed at
  ~SenderTable();
  // The sender, marked heard now; bucket is bucket(addr, port).
  Sender* find(const in6_addr& addr, uint16_t port, uint32_t bucket);
  Sender* find(const in6_addr& addr, uint16_t port) { return find(addr, port, bucket(addr, port)); }
  // Asks the CPU to fetch a bucket for the find() to come.
  __attribute__((always_inline)) void prefetch_bucket(uint32_t bucket) const {
    __builtin_prefetch(&buckets_[bucket]);
  }
  // Once the bucket is in the cache: the sender it leads to, the two lines
  // a lookup and a line's prefix read.
  // (Inlined always: GCC sees a call to a function of prefetches alone as
  // free of side effects and deletes it.)
  __attribute__((always_inline)) void prefetch_sender(uint32_t bucket) const {
    int32_t i = buckets_[bucket];
    if (i < 0) return;
    const char* s = reinterpret_cast<const char*>(&slots_[i]);
    __builtin_prefetch(s);
    __builtin_prefetch(s + 64);
  }
  bool full() const { return used_ == capacity_; }
  Sender* idle_longest() { return &slots_[lru_.head]; }
  // A new sender: a free slot, or idle_longest()'s when full.
  Sender* add(const in6_addr& addr, uint16_t port);
  size_t size() const { return used_; }
  Sender* slots() { return slots_; }
  const Sender* slots() const { return slots_; }
  int32_t index(const Sender* s) const { return int32_t(s - slots_); }
  uint32_t bucket(const in6_addr& addr, uint16_t port) const;

 private:
  void unhash(Sender* s);

  Sender* slots_ = nullptr;
  int32_t* buckets_ = nullptr;
  uint32_t bucket_mask_ = 0;
  uint64_t seed_ = 0;
  size_t used_ = 0, capacity_ = 0;
  IndexList<Sender, &Sender::lru_prev, &Sender::lru_next> lru_;  // idle longest first
};

// ------------------------------------------------------------------ fleet

// Mixes an address (and a port, or 0) with a random seed into a hash:
// nobody who does not know the seed can aim senders at one bucket.
uint64_t address_hash(const in6_addr& addr, uint16_t port, uint64_t seed);

// The bytes at a line's start that crash detection reads, at most.
constexpr size_t kCrashLook = 256;

// The kernel crash event that text (a line's first bytes) begins, and in
// *start where its message starts.  Skipped first: "<PRI>" (the kernel's
// facility only: PRI 0..7), then an RFC 3164 or 5424 header whose tag is
// "kernel", then a printk time "[    5.016402] " (and a caller "[T1] ").
CrashKind crash_kind(const char* text, size_t len, size_t* start);

// "udplogger: HOST: kernel KIND: text", in the log right after the line
// that began a crash event of host h; text is cut at its first newline.
void note_crash(LineWriter* lines, const HostState& h, CrashKind k, const char* text, size_t len,
                const timespec& when);

// The sending hosts, by address: a fixed table (hosts=), hashed, in order
// of last hearing (to the last fold); a new host in a full table takes the
// slot of the one heard longest ago (counted).  Senders count their lines
// and keep their time, and fold them into their host when asked: before
// the host is read, before the sender's slot is reused, at a crash event.
// A sender keeps its host's slot number and checks it before use, so a
// slot given to another host is never written.
class Fleet {
 public:
  bool init(unsigned capacity, uint64_t seed, Stats* stats);
  ~Fleet();
  // s's lines and time told to its host (taken again if its slot went to
  // another meanwhile); its host.
  HostState* fold(Sender* s);
  void fold_all(SenderTable* senders);
  // A line of host h at t began a crash event of kind k: true when it is
  // a new event (counted), false when it follows h's event of that kind.
  bool begins_event(HostState* h, CrashKind k, time_t t);
  const HostState* all(size_t* n) const {
    *n = used_;
    return hosts_;
  }
  size_t heard_since(time_t since) const;
  const LastCrash& last_crash() const { return last_crash_; }

 private:
  HostState* take(Sender* s);
  uint32_t bucket(const in6_addr& addr) const {
    return uint32_t(address_hash(addr, 0, seed_)) & bucket_mask_;
  }

  HostState* hosts_ = nullptr;
  int32_t* buckets_ = nullptr;
  uint32_t bucket_mask_ = 0;
  uint32_t used_ = 0, capacity_ = 0;
  uint64_t seed_ = 0;
  Stats* stats_ = nullptr;
  LastCrash last_crash_;
  IndexList<HostState, &HostState::lru_prev, &HostState::lru_next> lru_;  // heard longest ago first
};

// ------------------------------------------------------------ text lines

// Plain text joined into lines per sender, across datagrams.  A sender's
// unfinished line waits in its slot's buffer until its newline, wbuf
// bytes, the end of a datagram that ends lines, timeout=, or until the one
// cap on all of them (partials=) needs its room; then it is written, never
// dropped.
class TextLines {
 public:
  void init(const Options& opts, LineWriter* lines, SenderTable* table, Fleet* fleet,
            Stats* stats);
  ~TextLines();
  // data from s; ends_line: its end ends s's line.
  void join(Sender* s, const char* data, size_t len, const timespec& when, bool ends_line);
  // Writes s's unfinished line, if any (s's slot is about to be reused).
  void finish(Sender* s) {
    if (s->partial_len > 0) write_partial(s, nullptr, 0, false);
  }
  // Writes the unfinished lines due at now (timeout=), or all of them.
  void expire(const timespec& now, bool all);
  // When the oldest unfinished line is due; {0,0}: none waits.
  timespec next_deadline() const;

 private:
  void write_line(Sender* s, const timespec& when, const char* a, size_t alen, const char* b,
                  size_t blen, bool newline_in_b, bool b_clean);
  void write_partial(Sender* s, const char* rest, size_t rest_len, bool newline_in_rest);
  void keep_partial(Sender* s, const char* p, size_t len, const timespec& when);
  bool make_room(Sender* s, size_t cap);
  bool resize_partial(Sender* s, size_t cap);
  void release_partial(Sender* s);
  void watch(Sender* s, const timespec& when, const char* a, size_t alen, const char* b,
             size_t blen);

  size_t wbuf_ = 0, partials_ = 0;
  unsigned timeout_ = 0;
  LineWriter* lines_ = nullptr;
  SenderTable* table_ = nullptr;
  Fleet* fleet_ = nullptr;
  Stats* stats_ = nullptr;
  IndexList<Sender, &Sender::pend_prev, &Sender::pend_next> pending_;  // oldest first
  size_t partial_bytes_ = 0;  // held by the buffers, at most partials=
};

// ----------------------------------------------------------------- routing

// Routes each datagram: extended netconsole to Netconsole, everything else
// into lines joined across datagrams per sender.
class Assembler {
 public:
  bool init(const Options& opts, Output* out, uint64_t hash_seed = 0);

  void datagram(const Datagram& d) { datagrams(&d, 1); }
  // n datagrams in arrival order.  With many senders each lookup is a
  // cache miss or two: each sender's bucket is fetched 8 datagrams ahead
  // and the sender 4 ahead, so that the misses overlap (all of a batch's
  // buckets at once filled the CPU's miss buffers and stalled).
  void datagrams(const Datagram* d, size_t n);

  // With debug=1: fn gets one line (no newline) per datagram saying what
  // became of it; the shell prints it on stderr.
  using TraceFn = void (*)(const char* line);
  void set_trace(TraceFn fn) { trace_ = fn; }

  // Writes every partial line and record due at `now` (timeout=), or all
  // of them when `all` is set (exit).
  void expire(const timespec& now, bool all = false);

  // Earliest time a partial line or record times out; {0,0} when none.
  timespec next_deadline() const;

  // n more datagrams dropped by the kernel (receive buffer full): a notice.
  void kernel_dropped(uint32_t n, const timespec& now);

  // The sink switched to new files (midnight, SIGHUP): each sender's next
  // record carries its dictionary again, so every file stands on its own.
  void files_changed();

  // Writes "STAMP udplogger: text" into the daemon's log.
  void notice(const timespec& now, const char* fmt, ...)
      __attribute__((format(printf, 3, 4)));
  const LineWriter* lines() const { return &lines_; }

  // The statistics line (without newline) into buf.
  void format_stats(char* buf, size_t len) const;

  size_t senders() const { return table_.size(); }
  const Stats& stats() const { return stats_; }
  const Fleet& fleet() const { return fleet_; }
  // Every sender's lines and time told to its host (Fleet::fold_all).
  void tally() { fleet_.fold_all(&table_); }

 private:
  // What became of a datagram, for debug=1.
  enum class Outcome : uint8_t { refused, empty, text, record, held, completed, malformed, late,
                                 duplicate };
  void take(const Datagram& d, uint32_t bucket);
  Sender* sender_for(const Datagram& d, uint32_t bucket);
  Outcome route(const Datagram& d, uint32_t bucket, ExtHeader* h, const Sender** sender);
  Outcome netconsole(Sender* s, const Datagram& d, const ExtHeader& h);
  Outcome take_events(Outcome outcome);
  Outcome event(const NetconsoleEvent& e, Outcome outcome);
  void trace(const Datagram& d, const Sender* s, const ExtHeader& h, Outcome what,
             uint64_t lines);
  void refuse(const Datagram& d);
  void report_refused(const timespec& now);
  bool ends_with_datagram(const Sender* s, const char* data, size_t len) const;
  void sender_notice(Sender* s, const timespec& when, const char* fmt, ...)
      __attribute__((format(printf, 4, 5)));
  uint32_t dictionary_shown(Sender* s, const ExtRecord& r);
  void record(Sender* s, const ExtRecord& r);

  Options opts_;
  Output* out_ = nullptr;
  Stats stats_;
  LineWriter lines_;
  RecordWriter records_;
  SenderTable table_;
  Fleet fleet_;
  TextLines text_;
  Netconsole nc_;
  // Refused datagrams (allow=) not yet in a notice, the last refused
  // sender, and when the next notice may be written (one a minute).
  uint64_t refused_unreported_ = 0;
  in6_addr refused_addr_;
  uint16_t refused_port_ = 0;
  bool refused_spoofed_ = false;  // the last was an IPv6 datagram from a v4-mapped address
  timespec refused_notice_at_ = {0, 0};
  TraceFn trace_ = nullptr;
};

// ------------------------------------------------------------------ pacing

// How long the loop sleeps before it looks at a busy socket again, from
// the arrival rate.  A wakeup costs more than the few datagrams it finds
// at a few thousand a second, so at high rates the loop sleeps while a
// batch gathers (the kernel's arrival stamps keep line times true); at low
// rates it does not sleep at all, so a line is on disk at once.
class Pacer {
 public:
  static constexpr long kMaxPauseNs = 5000000;    // never more than 5 ms
  static constexpr uint64_t kGather = 64;         // datagrams a pause lets gather
  static constexpr uint64_t kMinRate = 8000;      // datagrams/s below which it never sleeps
  static constexpr int64_t kWindowNs = 20000000;  // the rate is measured over 20 ms

  explicit Pacer(long max_pause_ns = kMaxPauseNs) : max_pause_(max_pause_ns) {}
  // A wakeup at now_ns (a monotonic clock) found n datagrams; returns how
  // long to sleep before the next look, 0 for none.
  long woke(uint64_t n, int64_t now_ns);
  uint64_t rate() const { return rate_; }  // datagrams/s, as last measured

 private:
  long max_pause_;
  int64_t since_ = 0;   // start of the current window
  uint64_t count_ = 0;  // datagrams in it
  uint64_t rate_ = 0;
};

// ---------------------------------------------------------- the shell's sinks
// They live in the shell part of udplogger.cpp and do I/O.


// One log file open for appending.  It writes whole lines: after a write
// error (disk full, quota, I/O) it counts the lines and bytes it could not
// write, and once writing works again it owes a notice saying how many,
// since when and why, to be the first thing in the file (after a cut
// mark, if a line was cut).  A file found not ending in a newline owes one
// too.  dir and name are for messages on stderr.
class LogFile {
 public:
  // A reader of standard output may stop reading: writes wait for it at
  // most this long in all, then count what they lose until it reads again.
  static constexpr int kStallMs = 500;
  void adopt(int fd, bool cut);  // cut: the file does not end in a newline
  void close_file();
  int fd() const { return fd_; }
  bool owes() const { return failing_ || found_cut_; }  // a notice before the next lines
  bool failing() const { return failing_; }
  WriteReport write(const iovec* iov, int iovcnt, const char* preface, size_t preface_len,
                    const char* dir, const char* name, Clock clock);
  WriteReport owed(Clock clock) const;  // the notice owes() says is due

 private:
  bool mend(const char* preface, size_t preface_len, const char* dir, const char* name);
  WriteReport lose(const iovec* iov, int iovcnt, int err, const char* dir, const char* name,
                   Clock clock);

  int fd_ = -1;
  bool mid_line_ = false;     // the last byte written was not a newline
  bool found_cut_ = false;    // ... and the file was found that way
  bool failing_ = false;      // in a write-error episode
  int error_ = 0;
  int stall_left_ms_ = kStallMs;
  uint64_t lost_lines_ = 0, lost_bytes_ = 0;
  timespec since_ = {0, 0};
};

// A log directory held open: files are opened relative to it, without
// following symbolic links, and only if they are safe to append to.
struct LogDir {
  int fd = -1;
  char given[kPathMax];  // dir= as given: looked up again on SIGHUP and at midnight
  char path[kPathMax];   // where it was found, for messages
  unsigned perm = 0600;
};

// Opens dir for writing log files into; false with *why set.
bool open_log_dir(const char* dir, unsigned perm, LogDir* d, char* why, size_t whylen);

// Looks dir= up again (it may have been moved, removed or recreated); on
// failure keeps the old handle and returns false with *why set.
bool reopen_log_dir(LogDir* d, char* why, size_t whylen);

// Opens name inside dirfd for appending: no symbolic link followed, no
// blocking on a FIFO, only a non-executable regular file with one link,
// owned by this user; a new file gets exactly perm.  *cut is set when it
// does not end in a newline.  Returns -1 with *why set.
int open_log_file(int dirfd, const char* name, unsigned perm, bool* cut, char* why,
                  size_t whylen);

// DIR/YYYY-MM-DD.log, switched at local midnight.  When DIR is gone (found
// on SIGHUP or at midnight) lines are kept in memory, up to kKeptMax bytes
// (the rest counted as lost), DIR is tried again every kRetrySeconds, and
// once it is back it owes a notice saying what happened, which the kept
// lines follow.  clock: the time for its reports.
class DailyFile : public Sink {
 public:
  static constexpr size_t kKeptMax = 1 << 20;
  static constexpr int kRetrySeconds = 2;
  // Opens today's file; false with *why set ("cannot open log file ...").
  bool open(LogDir* dir, time_t now, Clock clock, char* why, size_t whylen);
  ~DailyFile();
  WriteReport write(const in6_addr* host, const iovec* iov, int iovcnt, const char* preface,
                    size_t preface_len) override;
  void tick(time_t now) override;
  void reopen(time_t now) override;
  time_t next_switch() const override { return away_ ? retry_at_ : next_switch_; }
  WriteReport close(const char* preface, size_t preface_len) override;
  const char* name() const { return name_; }
  bool owes() const { return back_ || file_.owes(); }  // a notice before the next lines
  bool away() const { return away_; }  // DIR is gone: lines are kept

 private:
  bool switch_to(time_t now, char* why, size_t whylen);
  void go_away(time_t now, const char* why);
  WriteReport keep(const iovec* iov, int iovcnt);
  WriteReport hand_over(const iovec* iov, int iovcnt);
  void come_back(time_t now);
  LogDir* dir_ = nullptr;
  Clock clock_ = nullptr;
  LogFile file_;
  char name_[16] = "";
  time_t next_switch_ = 0;
  // While DIR is gone: since when, why, the lines kept and those lost;
  // back_: it is back, and the notice and the kept lines are owed.
  bool away_ = false, back_ = false;
  bool closed_ = false;  // stopping: with DIR away, lines go to standard error
  time_t away_since_ = 0, retry_at_ = 0;
  char away_why_[128] = "";
  char* kept_ = nullptr;
  size_t kept_len_ = 0;
  uint64_t lost_lines_ = 0, lost_bytes_ = 0;
};

// split=host: DIR/ADDR/YYYY-MM-DD.log per sender address, the daemon's own
// lines in DIR/YYYY-MM-DD.log; at most `files` host files open at once,
// the least recently written closed first, and at most `newdirs` host
// directories made a day.  A host whose file cannot be had writes into
// the daemon's file: its lines carry the sender, nothing is lost.  A file
// in a write-error episode keeps its slot until the notice is written in
// it, or, at stop, in the daemon's file.
class HostFiles : public Sink {
 public:
  bool open(LogDir* dir, unsigned files, unsigned newdirs, time_t now, Clock clock, char* why,
            size_t whylen);
  ~HostFiles();
  WriteReport write(const in6_addr* host, const iovec* iov, int iovcnt, const char* preface,
                    size_t preface_len) override;
  void tick(time_t now) override;
  void reopen(time_t now) override;
  time_t next_switch() const override { return daemon_.next_switch(); }
  WriteReport close(const char* preface, size_t preface_len) override;
  const char* name() const { return daemon_.name(); }
  unsigned open_files() const;
  uint64_t beyond_newdirs() const { return beyond_newdirs_; }  // lines, to the daemon's file

 private:
  struct HostFile {
    in6_addr host;
    LogFile file;        // fd -1 and not failing: slot free
    uint64_t last_used;
    char name[kHostNameMax + 16];  // "ADDR/YYYY-MM-DD.log", for messages
    bool used() const { return file.fd() >= 0 || file.failing(); }
  };
  HostFile* file_for(const in6_addr& host, bool* capped);
  int open_host_dir(const char* addr, bool* capped, char* why, size_t whylen);
  bool say(const char* why);
  void close_all();

  const LogDir* dir_ = nullptr;
  Clock clock_ = nullptr;
  DailyFile daemon_;
  HostFile* open_ = nullptr;
  unsigned capacity_ = 0;
  uint64_t uses_ = 0;
  time_t today_ = 0;   // the day host files are named after
  unsigned newdirs_ = 0, made_today_ = 0;
  bool capped_said_ = false;  // today's notice that newdirs= was reached
  uint64_t beyond_newdirs_ = 0;
  struct Said {
    uint32_t cause;    // a hash of the message's reason; 0: unused
    time_t at;
  } said_[8] = {};     // stderr: one line per cause a minute
  int closing_ = -1;   // at stop: the slot whose notice is being written
  char held_[2048];    // ... that notice
  size_t held_len_ = 0;
};

// dir=-: lines to standard output, written after every batch.
class StdoutSink : public Sink {
 public:
  StdoutSink() { out_.adopt(1, false); }
  void open(Clock clock) { clock_ = clock; }
  WriteReport write(const in6_addr* host, const iovec* iov, int iovcnt, const char* preface,
                    size_t preface_len) override;
  bool gone() const override { return gone_; }

 private:
  bool gone_ = false;
  Clock clock_ = nullptr;
  LogFile out_;
};

}  // namespace ul

#endif
