// libFuzzer entry point; the target itself is in targets.hpp.
#include "entry.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const auto& run = mmfree::fuzz::target("fuzz_prefix_record");
  return run(data, size);
}
