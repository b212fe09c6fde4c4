#include "mmfree/config.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto j = nlohmann::json::parse(data, data + size, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) return 0;
  try {
    mmfree::Config c = mmfree::Config::from_json(j, "fuzz");
    (void)c.input_dim();
  } catch (const mmfree::Error&) {
  }
  return 0;
}
