#include "fuzz_common.hpp"
#include "mmfree/model_file.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string p = fuzz_file(data, size, ".gguf");
  try {
    mmfree::gguf::Reader r(p);
    (void)r.tensors().size();
  } catch (const mmfree::Error&) {
    return 0;
  }
  try {  // a readable file: the model loader and a forward pass must cope too
    mmfree::Model m = mmfree::load_model(p);
    mmfree::State s = m.new_state();
    (void)m.step(0, s);
  } catch (const mmfree::Error&) {
  }
  return 0;
}
