// mmfree: the model configuration: the shape of an hgrn_bit model. Reading it from a checkpoint's
// `config.json` (or a GGUF file's copy of it) is config_json.hpp's, so that the model's headers
// do not pull in a JSON parser.
#pragma once

#include <cstdint>

namespace mmfree {

struct Config {
  int64_t vocab_size = 32000;
  int64_t hidden_size = 2048;
  int64_t num_hidden_layers = 24;
  int64_t num_heads = 1;
  int64_t expand_ratio = 1;
  int64_t hidden_ratio = 4;
  int64_t intermediate_size = 0;  // derived when null in the file
  bool use_lower_bound = true;
  double rms_norm_eps = 1e-6;
  int64_t bos_token_id = 1;
  int64_t eos_token_id = 2;
  bool tie_word_embeddings = false;
  int64_t max_position_embeddings = 2048;

  int64_t input_dim() const { return hidden_size * expand_ratio; }  // D of the token mixer

  // I = int(H * hidden_ratio * 2 / 3) rounded up to a multiple of 256 (the reference's rule).
  static int64_t derive_intermediate(int64_t hidden, int64_t ratio) {
    int64_t i = hidden * ratio * 2 / 3;
    return 256 * ((i + 255) / 256);
  }
};

}  // namespace mmfree
