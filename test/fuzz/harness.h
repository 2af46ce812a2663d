// The fuzz harness: an input is a run of datagrams, each
//   [sender: 1 byte][time step: 1 byte][length: 2 bytes, little endian][bytes]
// fed to a core on a fake clock; the log it writes is checked for the
// invariants a log reader relies on.  Any violation aborts (a finding).
#ifndef UDPLOGGER_FUZZ_HARNESS_H
#define UDPLOGGER_FUZZ_HARNESS_H

#include <stddef.h>
#include <stdint.h>

// raw: ext=raw escape=none, and every byte a sender sent must appear in
// its lines, once, in order.  Otherwise the options come from the input.
void fuzz_one(const uint8_t* data, size_t size, bool raw);

#endif
