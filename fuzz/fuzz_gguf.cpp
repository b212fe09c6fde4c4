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
    // The preferred kernels, named instead of measured: measuring at every load would cost
    // most of each run (the measurement itself is tested in test_kernels).
    using mmfree::kernels::Regime;
    mmfree::ModelOptions o;
    o.kernels = std::string(mmfree::kernels::incumbent(Regime::Decode, mmfree::TernaryFormat::TQ2).name) + "," +
                mmfree::kernels::incumbent(Regime::Prefill, mmfree::TernaryFormat::TQ2).name;
    mmfree::Model m = mmfree::load_model(p, o);
    mmfree::State s = m.new_state();
    (void)m.step(0, s);
  } catch (const mmfree::Error&) {
  }
  return 0;
}
