// Loading the real netconsole captures.
#include "netconsole.h"

#include <ctype.h>
#include <stdio.h>

#include <stdexcept>

#include "helpers.h"
#include "udplogger.h"

const char* const kCaptureSets[7] = {"6.1-legacy",  "6.1-extended",  "6.1-configfs",
                                     "6.12-legacy", "6.12-extended", "6.12-extended-release",
                                     "6.12-configfs"};

static std::string capture_path(const std::string& file) {
  return "netconsole/" + file;
}

std::vector<std::string> load_dump(const std::string& set) {
  std::string d = read_file(capture_path(set + ".dump"));
  if (d.empty()) throw std::runtime_error("missing capture " + set + ".dump");
  std::vector<std::string> out;
  size_t i = 0;
  while (i + 4 <= d.size()) {
    const unsigned char* p = reinterpret_cast<const unsigned char*>(&d[i]);
    size_t len = size_t(p[0]) << 24 | size_t(p[1]) << 16 | size_t(p[2]) << 8 | p[3];
    out.push_back(d.substr(i + 4, len));
    i += 4 + len;
  }
  return out;
}

// The kernel's \xNN escapes decoded, written here rather than with the
// code under test; an incomplete or invalid escape stays as it is.
static std::string unescape(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); i++) {
    if (s[i] == '\\' && i + 3 < s.size() && s[i + 1] == 'x' && isxdigit((unsigned char)s[i + 2]) &&
        isxdigit((unsigned char)s[i + 3])) {
      out += char(std::stoi(s.substr(i + 2, 2), nullptr, 16));
      i += 3;
    } else {
      out += s[i];
    }
  }
  return out;
}

std::vector<KernelRecord> load_kmsg(const std::string& set) {
  std::string k = read_file(capture_path(set + ".kmsg"));
  std::vector<KernelRecord> out;
  size_t i = 0;
  while (i < k.size()) {
    size_t e = k.find('\n', i);
    if (e == std::string::npos) e = k.size();
    std::string line = k.substr(i, e - i);
    i = e + 1;
    if (line.empty()) continue;
    if (line[0] == ' ') {
      if (!out.empty()) out.back().dict.push_back(unescape(line));
      continue;
    }
    KernelRecord r;
    unsigned long long seq, usec;
    int n = 0;
    if (sscanf(line.c_str(), "%u,%llu,%llu,%*c%n", &r.pri, &seq, &usec, &n) < 3) continue;
    size_t semi = line.find(';');
    r.seq = seq;
    r.usec = usec;
    r.text = unescape(line.substr(semi + 1));
    out.push_back(r);
  }
  return out;
}

// Written here, not with the core's escaping, so the check is independent.
std::string log_escape(const std::string& s) {
  std::string out;
  for (unsigned char c : s) {
    if ((c < 0x20 && c != '\t') || c == 0x7f) {
      char buf[5];
      snprintf(buf, sizeof buf, "\\x%02x", c);
      out += buf;
    } else {
      out += char(c);
    }
  }
  return out;
}

std::vector<std::string> expected_lines(const KernelRecord& r) {
  char tag[64];
  snprintf(tag, sizeof tag, "<%u>[%5llu.%06llu] ", r.pri,
           (unsigned long long)(r.usec / 1000000), (unsigned long long)(r.usec % 1000000));
  std::vector<std::string> out;
  size_t i = 0;
  for (;;) {
    size_t e = r.text.find('\n', i);
    out.push_back(tag + log_escape(r.text.substr(i, e == std::string::npos ? e : e - i)));
    if (e == std::string::npos) break;
    i = e + 1;
  }
  return out;
}
