// mmfree: models of the published shapes with random weights, for benchmarks and tests:
// preset_config, write_random_gguf (streamed row by row) and write_random_hf.
#pragma once

#include <cmath>
#include <filesystem>
#include <fstream>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "mmfree/safetensors.hpp"
#include "mmfree/write_gguf.hpp"

namespace mmfree {

// The published MatMul-free model shapes (vocab 32000).
inline Config preset_config(const std::string& name) {
  Config c;
  c.vocab_size = 32000;
  if (name == "370m") c.hidden_size = 1024, c.num_hidden_layers = 24;
  else if (name == "1.3b") c.hidden_size = 2048, c.num_hidden_layers = 24;
  else if (name == "2.7b") c.hidden_size = 2560, c.num_hidden_layers = 32;
  else if (name == "tiny") c.hidden_size = 128, c.num_hidden_layers = 2, c.vocab_size = 4096;  // for tests
  else fail("--preset " + name, "unknown (expected 370m, 1.3b or 2.7b)");
  c.intermediate_size = Config::derive_intermediate(c.hidden_size, 4);
  return c;
}

// Writes a randomly initialised model of config `c` as GGUF, streaming row by row: memory
// use stays at one row whatever the size. Values are random; speed does not depend on them.
inline void write_random_gguf(const Config& c, const std::string& out, TernaryFormat f, uint64_t seed = 1,
                              const std::function<void(double)>& progress = {}, const std::string& tokenizer_json = "") {
  gguf::Writer wr(out);
  detail::write_config_keys(wr, c, f, "random-" + std::to_string(c.hidden_size) + "x" + std::to_string(c.num_hidden_layers));
  if (!tokenizer_json.empty()) detail::write_tokenizer_keys(wr, tokenizer_json);
  const auto decls = detail::tensor_decls(c, f, gguf::F16);
  for (auto& d : decls) wr.declare(d.name, d.dims, d.type);
  wr.begin();
  std::mt19937_64 rng(seed);
  for (size_t i = 0; i < decls.size(); ++i) {
    const auto& d = decls[i];
    const uint64_t numel = [&] { uint64_t n = 1; for (auto x : d.dims) n *= x; return n; }();
    if (d.kind == TensorKind::BitLinear && !d.scale) {
      const int64_t cols = int64_t(d.dims[0]), rows = int64_t(d.dims[1]);
      const auto type = TernaryFileType(d.type);
      std::vector<uint8_t> digits(static_cast<size_t>(cols)), row(static_cast<size_t>(file_row_bytes(type, cols)));
      wr.begin_tensor();
      for (int64_t r = 0; r < rows; ++r) {
        for (int64_t c = 0; c < cols; c += 32) {  // 2 random bits per digit, 3 mapped to 1: w = 0 half the time
          uint64_t x = rng();
          for (int64_t k = c; k < std::min(cols, c + 32); ++k, x >>= 2) digits[size_t(k)] = uint8_t((x & 3) == 3 ? 1 : x & 3);
        }
        encode_file_row(type, digits.data(), cols, row.data());
        wr.append(row.data(), row.size());
      }
      wr.end_tensor();
    } else if (d.scale) {
      // A plausible absmean scale: keeps activations in range for long random runs.
      const auto& wd = decls[i - 1].dims;
      const float s = 1.0f / std::sqrt(float(wd[0]));
      wr.write_tensor(&s, 4);
    } else if (d.kind == TensorKind::Embeddings) {
      std::normal_distribution<float> nd(0.0f, 0.02f);
      std::vector<uint16_t> row(size_t(d.dims[0]));
      wr.begin_tensor();
      for (uint64_t r = 0; r < d.dims[1]; ++r) {
        for (auto& v : row) v = float_to_f16(nd(rng));
        wr.append(row.data(), row.size() * 2);
      }
      wr.end_tensor();
    } else if (d.kind == TensorKind::LowerBounds) {
      std::vector<float> z(size_t(numel), 0.0f);
      wr.write_tensor(z.data(), z.size() * 4);
    } else {  // norm weights
      std::vector<float> one(size_t(numel), 1.0f);
      wr.write_tensor(one.data(), one.size() * 4);
    }
    detail::progress_bar(progress, i + 1, decls.size());
  }
  wr.finish();
}

// Writes a randomly initialised Hugging Face checkpoint directory (config.json and one BF16
// model.safetensors), streaming tensor by tensor. Latent weights are +-0.02 or 0, so the
// load-time ternarisation recovers them exactly.
inline void write_random_hf(const Config& c, const std::string& dir, uint64_t seed = 1,
                            const std::function<void(double)>& progress = {}) {
  namespace fs = std::filesystem;
  fs::create_directories(dir);
  {
    nlohmann::json j = {{"model_type", "hgrn_bit"}, {"architectures", {"HGRNBitForCausalLM"}}, {"vocab_size", c.vocab_size},
                        {"hidden_size", c.hidden_size}, {"num_hidden_layers", c.num_hidden_layers}, {"num_heads", c.num_heads},
                        {"expand_ratio", c.expand_ratio}, {"hidden_ratio", c.hidden_ratio},
                        {"intermediate_size", c.intermediate_size}, {"use_lower_bound", c.use_lower_bound},
                        {"rms_norm_eps", c.rms_norm_eps}, {"attn_mode", "fused_recurrent"}, {"use_short_conv", false},
                        {"bos_token_id", c.bos_token_id}, {"eos_token_id", c.eos_token_id},
                        {"max_position_embeddings", c.max_position_embeddings}, {"torch_dtype", "bfloat16"}};
    std::ofstream o(fs::path(dir) / "config.json");
    o << j.dump(2) << "\n";
    if (!o) fail(dir + "/config.json", "write failed");
  }
  // The model's tensors with Hugging Face shapes [out, in]; a BitLinear is its latent weight
  // and its norm (the scale is not stored: the loader computes it).
  struct Tensor {
    std::string name;
    int64_t rows, cols;
    TensorKind kind;
  };
  std::vector<Tensor> ts;
  for (auto& t : tensor_list(c)) {
    if (t.kind == TensorKind::BitLinear) {
      ts.push_back({tensor_name::weight(t.name), t.rows, t.cols, t.kind});
      ts.push_back({tensor_name::norm(t.name), 1, t.cols, TensorKind::Vector});
    } else {
      ts.push_back({t.name, t.rows, t.cols, t.kind});
    }
  }
  std::vector<SafetensorsWriter::Decl> decls;
  for (auto& t : ts)
    decls.push_back({t.name, DType::BF16, t.kind == TensorKind::Vector ? std::vector<int64_t>{t.cols} : std::vector<int64_t>{t.rows, t.cols}});
  SafetensorsWriter out((fs::path(dir) / "model.safetensors").string(), decls);
  std::mt19937_64 rng(seed);
  const uint16_t pos = float_to_bf16(0.02f), neg = float_to_bf16(-0.02f), zero = 0;
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (size_t i = 0; i < ts.size(); ++i) {
    std::vector<uint16_t> row(static_cast<size_t>(ts[i].cols));
    for (int64_t r = 0; r < ts[i].rows; ++r) {
      for (auto& v : row) {
        switch (ts[i].kind) {
          case TensorKind::Embeddings: v = float_to_bf16(nd(rng)); break;
          case TensorKind::LowerBounds: v = zero; break;
          case TensorKind::BitLinear: { const uint64_t x = rng() % 3; v = x == 0 ? neg : x == 1 ? zero : pos; break; }
          case TensorKind::Vector: v = float_to_bf16(1.0f); break;
        }
      }
      out.append(row.data(), row.size() * 2);
    }
    detail::progress_bar(progress, i + 1, ts.size());
  }
  out.finish();
}

}  // namespace mmfree
