// mmfree: reading a model from a GGUF file (architecture "hgrn_bit"; the keys and tensor types
// are listed in write_gguf.hpp, the tensors in weights.hpp).
#pragma once

#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <string>
#include <vector>

#include "mmfree/config_json.hpp"
#include "mmfree/gguf.hpp"
#include "mmfree/file_ternary.hpp"
#include "mmfree/kernels/repack.hpp"
#include "mmfree/tokenizer_json.hpp"
#include "mmfree/weight_arena.hpp"
#include "mmfree/weights.hpp"

namespace mmfree {

inline bool is_gguf_file(const std::string& path) {
  std::error_code ec;
  if (!std::filesystem::is_regular_file(path, ec)) return false;
  FILE* f = std::fopen(path.c_str(), "rb");
  if (!f) return false;
  char m[4] = {};
  const size_t n = std::fread(m, 1, 4, f);
  std::fclose(f);
  return n == 4 && std::memcmp(m, "GGUF", 4) == 0;
}

class GgufLoader {
 public:
  explicit GgufLoader(const std::string& path) : r_(path) {
    if (!r_.has("general.architecture") || r_.get_string("general.architecture") != "hgrn_bit")
      fail(path, "general.architecture is not \"hgrn_bit\"");
  }

  Config config() const {
    const std::string a = "hgrn_bit.";
    nlohmann::json j = {
        {"vocab_size", r_.get_int(a + "vocab_size")},
        {"hidden_size", r_.get_int(a + "embedding_length")},
        {"num_hidden_layers", r_.get_int(a + "block_count")},
        {"num_heads", r_.get_int(a + "head_count")},
        {"expand_ratio", r_.get_int(a + "expand_ratio")},
        {"hidden_ratio", r_.get_int(a + "hidden_ratio")},
        {"intermediate_size", r_.get_int(a + "feed_forward_length")},
        {"use_lower_bound", r_.get_bool(a + "use_lower_bound")},
        {"rms_norm_eps", r_.get_float(a + "layer_norm_rms_epsilon")},
        {"tie_word_embeddings", r_.get_bool(a + "tie_word_embeddings")},
        {"max_position_embeddings", r_.get_int(a + "context_length")},
        {"bos_token_id", r_.has("tokenizer.ggml.bos_token_id") ? r_.get_int("tokenizer.ggml.bos_token_id") : 1},
        {"eos_token_id", r_.has("tokenizer.ggml.eos_token_id") ? r_.get_int("tokenizer.ggml.eos_token_id") : 2},
    };
    return parse_config(j, r_.path());
  }

  // The ternary format the file was written in (hgrn_bit.ternary_format; tq2 when absent).
  TernaryFormat file_format() const {
    const std::string key = "hgrn_bit.ternary_format";
    if (!r_.has(key)) return TernaryFormat::TQ2;
    const std::string& f = r_.get_string(key);
    return parse_format(f, r_.path() + ": metadata '" + key + "' is");
  }

  // Repacks every ternary tensor into format `fmt` (strips, ternary_format.hpp), straight into
  // one arena, rows spread over `pool`; each tensor's file pages are released once read.
  ModelWeights load(TernaryFormat fmt, bool huge_pages, ThreadPool& pool) const {
    ModelWeights w;
    w.config = config();
    const Config& c = w.config;
    w.blocks.resize(size_t(c.num_hidden_layers));
    w.arena = std::make_shared<WeightArena>(arena_bytes(c, fmt), huge_pages);
    const Packing pk{fmt, w.arena.get(), &pool};
    for (auto& t : tensor_list(c, &w)) {
      switch (t.kind) {
        case TensorKind::Embeddings: w.embeddings = embeddings(t.name, t.rows, t.cols); break;
        case TensorKind::LowerBounds: set_lower_bounds(w, f32(t.name, dims(t))); break;
        case TensorKind::Vector: *t.vector = f32(t.name, dims(t)); break;
        case TensorKind::BitLinear: *t.bitlinear = bitlinear(t.name, t.rows, t.cols, pk); break;
      }
    }
    return w;
  }

  Tokenizer tokenizer() const {
    if (!r_.has("tokenizer.huggingface.json")) fail(r_.path(), "has no tokenizer (tokenizer.huggingface.json)");
    nlohmann::json j, cfg = nlohmann::json::object();
    try {
      j = nlohmann::json::parse(r_.get_string("tokenizer.huggingface.json"));
    } catch (const nlohmann::json::exception& e) {
      fail(r_.path(), std::string("tokenizer.huggingface.json is not valid JSON: ") + e.what());
    }
    if (r_.has("tokenizer.ggml.add_bos_token")) cfg["add_bos_token"] = r_.get_bool("tokenizer.ggml.add_bos_token");
    if (r_.has("tokenizer.ggml.add_eos_token")) cfg["add_eos_token"] = r_.get_bool("tokenizer.ggml.add_eos_token");
    try {
      return parse_tokenizer(j, cfg, r_.path() + " (tokenizer.huggingface.json)");
    } catch (const nlohmann::json::exception& e) {
      fail(r_.path(), std::string("tokenizer: unexpected structure: ") + e.what());
    }
  }

  const gguf::Reader& reader() const { return r_; }

 private:
  std::string where(const gguf::TensorInfo& t) const { return r_.path() + ": tensor '" + t.name + "'"; }
  // GGUF dims are innermost first: [rows, cols] is {cols, rows}; a vector is {n}.
  template <class Slot>
  static std::vector<uint64_t> dims(const Slot& t) {
    if (t.rows == 1 && t.kind == TensorKind::Vector) return {uint64_t(t.cols)};
    return {uint64_t(t.cols), uint64_t(t.rows)};
  }
  // The table stays in the file mapping: rows are converted as tokens use them.
  Embedding embeddings(const std::string& name, int64_t V, int64_t H) const {
    const auto& t = get(name, {uint64_t(H), uint64_t(V)});
    if (t.type != gguf::F16 && t.type != gguf::BF16 && t.type != gguf::F32)
      fail(where(t), std::string("type ") + gguf::type_name(t.type) + " is not F16, BF16 or F32");
    Embedding e;
    e.dtype = t.type == gguf::F16 ? DType::F16 : t.type == gguf::BF16 ? DType::BF16 : DType::F32;
    e.rows = V;
    e.cols = H;
    e.data = t.data;
    e.owner = r_.file();
    e.check_finite_rows = true;  // checked per row as used: scanning would page in the whole table
    return e;
  }
  struct Packing {
    TernaryFormat format;
    WeightArena* arena;
    ThreadPool* pool;
  };
  const gguf::TensorInfo& get(const std::string& name, const std::vector<uint64_t>& dims) const {
    const gguf::TensorInfo* t = r_.find(name);
    if (!t) fail(r_.path(), "missing tensor '" + name + "'");
    if (t->dims != dims) fail(where(*t), "has dims " + shape_str(t->dims) + ", expected " + shape_str(dims));
    return *t;
  }
  std::vector<float> f32(const std::string& name, const std::vector<uint64_t>& dims) const {
    const auto& t = get(name, dims);
    if (t.type != gguf::F32) fail(where(t), std::string("type ") + gguf::type_name(t.type) + ", expected F32");
    std::vector<float> v(t.nbytes / 4);
    std::memcpy(v.data(), t.data, t.nbytes);
    for (float x : v)
      if (!std::isfinite(x)) fail(where(t), "contains NaN or Inf");
    return v;
  }
  BitLinear bitlinear(const std::string& prefix, int64_t out, int64_t in, const Packing& pk) const {
    const auto& t = get(tensor_name::weight(prefix), {uint64_t(in), uint64_t(out)});
    if (!is_ternary_file_type(t.type))
      fail(where(t), std::string("type ") + gguf::type_name(t.type) + " is not a ternary type (TQ2_0, TQ1_0 or I8)");
    const auto type = TernaryFileType(t.type);
    const int64_t row_bytes = file_row_bytes(type, in);  // the reader checked the tensor's size
    const auto s = f32(tensor_name::scale(prefix), {1});
    if (!(s[0] > 0)) fail(r_.path() + ": tensor '" + tensor_name::scale(prefix) + "'", "must be positive");
    TernaryMatrix m = TernaryMatrix::shape(pk.format, out, in);
    m.scale = s[0];
    const std::string at = where(t);
    m = pack_into(*pk.arena, m, *pk.pool, [&](int64_t r, int64_t c0, int64_t c1, uint8_t* d) {
      kernels::decode_file_row_fast(type, t.data + r * row_bytes, in, c0, c1, d, at, r);
    });
    release_mapped(t.data, t.nbytes);  // read once: its pages need not stay resident
    return BitLinear(std::move(m), f32(tensor_name::norm(prefix), {uint64_t(in)}));
  }

  gguf::Reader r_;
};

}  // namespace mmfree
