#include "mmfree/parse.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view s(reinterpret_cast<const char*>(data), size);
  try {
    (void)mmfree::parse_int(s, "-n", -5, 1 << 24);
  } catch (const mmfree::Error&) {
  }
  try {
    const double v = mmfree::parse_double(s, "--top-p", 0, 1);
    if (!(v >= 0 && v <= 1)) __builtin_trap();
  } catch (const mmfree::Error&) {
  }
  try {
    for (int32_t id : mmfree::parse_id_list(s, "--ids", 4095))
      if (id < 0 || id > 4095) __builtin_trap();
  } catch (const mmfree::Error&) {
  }
  return 0;
}
