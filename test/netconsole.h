// The real netconsole captures in test/netconsole/: datagrams as sent by
// Linux 6.1 and 6.12, and the kernel's own log as ground truth.
#ifndef UDPLOGGER_TEST_NETCONSOLE_H
#define UDPLOGGER_TEST_NETCONSOLE_H

#include <stdint.h>

#include <string>
#include <vector>

extern const char* const kCaptureSets[7];

// The datagrams of K-MODE.dump, in arrival order.
std::vector<std::string> load_dump(const std::string& set);

struct KernelRecord {
  unsigned pri;
  uint64_t seq, usec;
  std::string text;                // decoded
  std::vector<std::string> dict;   // " KEY=value", decoded
};

// The records of K-MODE.kmsg.
std::vector<KernelRecord> load_kmsg(const std::string& set);

// What udplogger should write for each line of a record's text (after the
// sender): "<PRI>[sssss.uuuuuu] text" with control bytes escaped.
std::vector<std::string> expected_lines(const KernelRecord& r);

// The text escaped as udplogger writes it.
std::string log_escape(const std::string& s);

#endif
