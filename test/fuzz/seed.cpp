// Turns netconsole captures (4-byte big-endian length, then the datagram)
// into fuzz inputs: one file per capture, a few hundred datagrams each.
#include <stdio.h>

#include <fstream>
#include <sstream>
#include <string>

int main(int argc, char** argv) {
  if (argc < 3) {
    fprintf(stderr, "usage: seed OUTDIR CAPTURE.dump...\n");
    return 2;
  }
  for (int a = 2; a < argc; a++) {
    std::ifstream in(argv[a], std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string d = ss.str(), out(1, '\0');
    for (size_t i = 0, n = 0; i + 4 <= d.size() && n < 400; n++) {
      size_t len = size_t(uint8_t(d[i])) << 24 | size_t(uint8_t(d[i + 1])) << 16 |
                   size_t(uint8_t(d[i + 2])) << 8 | uint8_t(d[i + 3]);
      out += char(1);  // one sender, 7 ms apart
      out += char(1);
      out += char(len & 0xff);
      out += char(len >> 8);
      out += d.substr(i + 4, len);
      i += 4 + len;
    }
    std::string name = std::string(argv[1]) + "/capture-" + std::to_string(a - 1);
    std::ofstream(name, std::ios::binary) << out;
  }
  return 0;
}
