#include "mmfree/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const auto j = nlohmann::json::parse(data, data + size, nullptr, false);
  if (j.is_discarded()) return 0;
  try {
    mmfree::Tokenizer t = mmfree::Tokenizer::from_json(j, nlohmann::json(), "fuzz");
    const auto ids = t.encode("Hello <s> w\xc3\xb6rld \xff", true);
    (void)t.decode(ids);
  } catch (const mmfree::Error&) {
  } catch (const nlohmann::json::exception&) {  // from_file maps these to mmfree::Error
  }
  return 0;
}
