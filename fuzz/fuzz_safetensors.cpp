#include "fuzz_common.hpp"
#include "mmfree/safetensors.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    mmfree::SafetensorsFile f(fuzz_file(data, size, ".safetensors"));
    for (auto& [name, t] : f.tensors()) {
      if (t.dtype == mmfree::DType::F32 || t.dtype == mmfree::DType::F16 || t.dtype == mmfree::DType::BF16) (void)t.to_floats(true);
      if (t.dtype == mmfree::DType::I32) (void)t.to_int32();
    }
  } catch (const mmfree::Error&) {
  }
  return 0;
}
