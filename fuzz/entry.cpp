// Every fuzz target in one instrumented translation unit (see entry.hpp).
#include "entry.hpp"

#include "targets.hpp"

namespace mmfree::fuzz {

const std::function<int(const uint8_t*, size_t)>& target(const std::string& name) {
  static const auto targets = all(MMFREE_FUZZ_TOKENIZER);
  return targets.at(name);
}

}  // namespace mmfree::fuzz
