// libFuzzer entry point; the target itself is in targets.hpp.
#include "targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) { return mmfree::fuzz::grammar(data, size, MMFREE_FUZZ_TOKENIZER); }
