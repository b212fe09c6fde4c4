// mmfree: a Config from a checkpoint's config.json (or a GGUF file's copy of it), validated: an
// unsupported architecture or option is refused by name, and every size is bounded so that no
// derived size can overflow.
#pragma once

#include <cstdint>
#include <fstream>
#include <nlohmann/json.hpp>
#include <string>

#include "mmfree/config.hpp"
#include "mmfree/error.hpp"
#include "mmfree/json_field.hpp"

namespace mmfree {

// Parses and validates a config.json object. `where` names the source in error messages.
inline Config parse_config(const nlohmann::json& j, const std::string& where) {
  if (!j.is_object()) fail(where, "config is not a JSON object");
  Config c;
  using namespace json_field;
  auto get_int = [&](const char* key, int64_t def, int64_t lo, int64_t hi) { return integer_or(j, key, def, where, lo, hi); };
  auto get_bool = [&](const char* key, bool def) { return boolean_or(j, key, def, where); };
  if (has(j, "model_type") && string(j["model_type"], where, "model_type") != "hgrn_bit")
    fail(where, "unsupported model_type " + j["model_type"].dump() + " (expected \"hgrn_bit\")");
  if (get_bool("use_short_conv", false))
    fail(where, "use_short_conv: true is not supported (no released checkpoint uses it)");
  if (has(j, "attn_mode") && string(j["attn_mode"], where, "attn_mode") != "fused_recurrent")
    fail(where, "unsupported attn_mode " + j["attn_mode"].dump() + " (only \"fused_recurrent\")");
  // Bounds keep every derived size far from integer overflow.
  c.vocab_size = get_int("vocab_size", 32000, 1, 1 << 22);
  c.hidden_size = get_int("hidden_size", 2048, 1, 1 << 16);
  c.num_hidden_layers = get_int("num_hidden_layers", 24, 1, 1024);
  c.num_heads = get_int("num_heads", 1, 1, 1 << 16);
  c.expand_ratio = get_int("expand_ratio", 1, 1, 64);
  c.hidden_ratio = get_int("hidden_ratio", 4, 1, 64);
  c.intermediate_size = get_int("intermediate_size", 0, 1, 1 << 20);
  if (c.intermediate_size == 0) c.intermediate_size = Config::derive_intermediate(c.hidden_size, c.hidden_ratio);
  c.use_lower_bound = get_bool("use_lower_bound", true);
  c.tie_word_embeddings = get_bool("tie_word_embeddings", false);
  c.bos_token_id = get_int("bos_token_id", 1, -1, c.vocab_size - 1);
  c.eos_token_id = get_int("eos_token_id", 2, -1, c.vocab_size - 1);
  c.max_position_embeddings = get_int("max_position_embeddings", 2048, 1, int64_t(1) << 40);
  c.rms_norm_eps = number_or(j, "rms_norm_eps", 1e-6, where, 1e-30, 0.5);
  if (c.input_dim() % c.num_heads != 0)
    fail(where, "hidden_size * expand_ratio is not divisible by num_heads");
  if (c.use_lower_bound && c.expand_ratio != 1)
    fail(where, "use_lower_bound with expand_ratio != 1 is not supported (the bounds have hidden_size entries)");
  return c;
}

// Reads and validates a config.json file.
inline Config read_config(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(path, std::string("not valid JSON: ") + e.what());
  }
  return parse_config(j, path);
}

}  // namespace mmfree
