// libFuzzer target: ext=raw escape=none, every byte sent must be written.
#include "harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz_one(data, size, true);
  return 0;
}
