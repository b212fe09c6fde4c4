// Encode and decode arbitrary bytes with the real kjv tokenizer.
#include "mmfree/tokenizer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static const mmfree::Tokenizer tok = mmfree::Tokenizer::from_file(MMFREE_FUZZ_TOKENIZER);
  const std::string text(reinterpret_cast<const char*>(data), size);
  const auto ids = tok.encode(text);
  const std::string back = tok.decode(ids);
  // Valid UTF-8 round-trips exactly, unless it contains special-token text or the
  // metaspace character U+2581 itself (which decodes to a space, as in the HF library).
  if (mmfree::utf8::valid(text) && text.find('<') == std::string::npos &&
      text.find("\xe2\x96\x81") == std::string::npos && back != text)
    __builtin_trap();
  // Ids from raw bytes (in range) decode, in one go and streamed, without failing.
  std::vector<int32_t> raw;
  for (size_t i = 0; i + 1 < size; i += 2) raw.push_back(int32_t((data[i] | data[i + 1] << 8) % tok.vocab_size()));
  (void)tok.decode(raw);
  mmfree::IncrementalDecoder d(tok);
  for (int32_t id : raw) (void)d.push(id);
  (void)d.finish();
  return 0;
}
