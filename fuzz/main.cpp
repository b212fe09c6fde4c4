// The libFuzzer entry point of one target, compiled once per binary with MMFREE_FUZZ_TARGET set
// to its name (fuzz/CMakeLists.txt); the targets themselves are in targets.hpp.
#include "entry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto& run = mmfree::fuzz::target(MMFREE_FUZZ_TARGET);
  return run(data, size);
}
