// libFuzzer entry point; the target itself is in targets.hpp.
#include <filesystem>

#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const std::string dir = std::filesystem::path(MMFREE_FUZZ_TOKENIZER).parent_path().string();
  return mmfree::fuzz::prefix_record(data, size, dir);
}
