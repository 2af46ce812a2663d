// libFuzzer target: the core with options chosen by the input.
#include "harness.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  fuzz_one(data, size, false);
  return 0;
}
