// mmfree: writing GGUF model files. convert_to_gguf writes one from a Hugging Face checkpoint
// directory, tensor by tensor.
//
// GGUF keys (architecture "hgrn_bit"): hgrn_bit.{vocab_size, embedding_length, block_count,
// head_count, expand_ratio, hidden_ratio, feed_forward_length, use_lower_bound,
// layer_norm_rms_epsilon (F64), tie_word_embeddings, context_length, ternary_format};
// tokenizer.ggml.{model, tokens, token_type, merges, bos/eos/unknown_token_id,
// add_bos_token, add_eos_token}, tokenizer.huggingface.json (the whole tokenizer.json),
// mmfree.normalizer. Tensors (weights.hpp) keep the Hugging Face names; ternary ones are ggml's
// TQ2_0/TQ1_0 (I8 for rows that are not whole 256-weight blocks) with "<name>.scale" (F32 [1]);
// norms and model.lower_bounds (raw) are F32; model.embeddings.weight is F16 or BF16.
#pragma once

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "mmfree/file_ternary.hpp"
#include "mmfree/gguf.hpp"
#include "mmfree/half.hpp"
#include "mmfree/load_hf.hpp"
#include "mmfree/tokenizer_json.hpp"
#include "mmfree/weights.hpp"

namespace mmfree {

namespace detail {

// A packed matrix as rows of file type t.
inline void write_ternary(gguf::Writer& wr, const TernaryMatrix& m, TernaryFileType t) {
  std::vector<uint8_t> digits(size_t(m.padded_cols())), row(size_t(file_row_bytes(t, m.cols)));
  wr.begin_tensor();
  for (int64_t r = 0; r < m.rows; ++r) {
    row_digits(m, r, digits.data());
    encode_file_row(t, digits.data(), m.cols, row.data());
    wr.append(row.data(), row.size());
  }
  wr.end_tensor();
}

inline void write_config_keys(gguf::Writer& w, const Config& c, TernaryFormat f, const std::string& name) {
  w.add_string("general.architecture", "hgrn_bit");
  w.add_string("general.name", name);
  w.add_u32("general.alignment", 32);
  const std::string a = "hgrn_bit.";
  w.add_i64(a + "vocab_size", c.vocab_size);
  w.add_i64(a + "embedding_length", c.hidden_size);
  w.add_i64(a + "block_count", c.num_hidden_layers);
  w.add_i64(a + "head_count", c.num_heads);
  w.add_i64(a + "expand_ratio", c.expand_ratio);
  w.add_i64(a + "hidden_ratio", c.hidden_ratio);
  w.add_i64(a + "feed_forward_length", c.intermediate_size);
  w.add_bool(a + "use_lower_bound", c.use_lower_bound);
  w.add_f64(a + "layer_norm_rms_epsilon", c.rms_norm_eps);  // F64: the exact value, so results match the source
  w.add_bool(a + "tie_word_embeddings", false);              // lm_head is always stored
  w.add_i64(a + "context_length", c.max_position_embeddings);
  w.add_string(a + "ternary_format", format_name(f));
  w.add(std::string("tokenizer.ggml.bos_token_id"), gguf::UINT32, uint64_t(std::max<int64_t>(c.bos_token_id, 0)));
  w.add(std::string("tokenizer.ggml.eos_token_id"), gguf::UINT32, uint64_t(std::max<int64_t>(c.eos_token_id, 0)));
}

inline void write_tokenizer_keys(gguf::Writer& w, const std::string& tokenizer_json_path) {
  std::ifstream in(tokenizer_json_path, std::ios::binary);
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  const Tokenizer tok = read_tokenizer(tokenizer_json_path);  // validates it
  const nlohmann::json j = nlohmann::json::parse(text);
  std::vector<std::string> tokens(size_t(tok.vocab_size()));
  std::vector<int32_t> types(tokens.size(), 1);
  for (int32_t i = 0; i < int32_t(tokens.size()); ++i) {
    tokens[size_t(i)] = tok.piece(i);
    if (tok.is_special(i)) types[size_t(i)] = 3;
    if (tok.byte_value(i) >= 0) types[size_t(i)] = 6;
  }
  if (tok.unk_id() >= 0) types[size_t(tok.unk_id())] = 2;
  std::vector<std::string> merges;
  for (auto& m : j["model"]["merges"])
    merges.push_back(m.is_string() ? m.get<std::string>() : m[0].get<std::string>() + " " + m[1].get<std::string>());
  w.add_string("tokenizer.ggml.model", "llama");
  w.add_strings("tokenizer.ggml.tokens", tokens);
  w.add_i32s("tokenizer.ggml.token_type", types);
  w.add_strings("tokenizer.ggml.merges", merges);
  if (tok.unk_id() >= 0) w.add("tokenizer.ggml.unknown_token_id", gguf::UINT32, uint64_t(tok.unk_id()));
  w.add_bool("tokenizer.ggml.add_bos_token", tok.adds_bos());
  w.add_bool("tokenizer.ggml.add_eos_token", tok.adds_eos());
  w.add_string("tokenizer.huggingface.json", text);
  w.add_string("mmfree.normalizer", tok.normalizer_kind());
}

// The GGUF tensors of a model (weights.hpp's list), in file order: name, dims (innermost
// first), type. A BitLinear P is three: P.weight (ternary), P.weight.scale and P.norm.weight.
struct Decl {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
  TensorKind kind;    // the list entry it comes from
  bool scale = false;  // a BitLinear's scale (kind BitLinear, F32 [1])
};
inline std::vector<Decl> tensor_decls(const Config& c, TernaryFormat f, uint32_t emb_type) {
  std::vector<Decl> d;
  for (auto& t : tensor_list(c)) {
    const uint64_t rows = uint64_t(t.rows), cols = uint64_t(t.cols);
    switch (t.kind) {
      case TensorKind::Embeddings: d.push_back({t.name, {cols, rows}, emb_type, t.kind}); break;
      case TensorKind::LowerBounds: d.push_back({t.name, {cols, rows}, gguf::F32, t.kind}); break;
      case TensorKind::Vector: d.push_back({t.name, {cols}, gguf::F32, t.kind}); break;
      case TensorKind::BitLinear:
        d.push_back({tensor_name::weight(t.name), {cols, rows}, uint32_t(file_type_for(f, t.cols)), t.kind});
        d.push_back({tensor_name::scale(t.name), {1}, gguf::F32, t.kind, true});
        d.push_back({tensor_name::norm(t.name), {cols}, gguf::F32, TensorKind::Vector});
        break;
    }
  }
  return d;
}

inline void progress_bar(const std::function<void(double)>& cb, size_t i, size_t n) {
  if (cb) cb(double(i) / double(n));
}

}  // namespace detail

struct ConvertOptions {
  TernaryFormat weights = kDefaultFormat;
  std::optional<DType> embeddings;  // F16 or BF16; default: the source's if 16-bit, else F16
  std::function<void(double)> progress;
};

// Converts a Hugging Face checkpoint directory into one GGUF file, tensor by tensor.
inline void convert_to_gguf(const std::string& hf_dir, const std::string& out, const ConvertOptions& opt = {}) {
  HfLoader hf(hf_dir);
  const Config& c = hf.config();
  const TensorView* emb_src = hf.store().find(tensor_name::kEmbeddings);
  if (!emb_src) fail(hf_dir, "missing tensor '" + tensor_name::kEmbeddings + "'");
  DType emb = opt.embeddings ? *opt.embeddings : (emb_src->dtype == DType::BF16 ? DType::BF16 : DType::F16);
  if (emb != DType::F16 && emb != DType::BF16) fail("--embeddings", "must be f16 or bf16");
  // Loading validates everything and ternarises exactly as the directory path does.
  ThreadPool pool(std::max(1, int(std::thread::hardware_concurrency())));
  const ModelWeights w = hf.load(opt.weights, /*huge_pages=*/false, pool);
  gguf::Writer wr(out);
  detail::write_config_keys(wr, c, opt.weights, std::filesystem::path(hf_dir).filename().string());
  const std::string tok = (std::filesystem::path(hf_dir) / "tokenizer.json").string();
  if (std::filesystem::exists(tok)) detail::write_tokenizer_keys(wr, tok);
  for (auto& d : detail::tensor_decls(c, opt.weights, emb == DType::F16 ? gguf::F16 : gguf::BF16))
    wr.declare(d.name, d.dims, d.type);
  wr.begin();
  const auto list = tensor_list(c, &w);
  auto floats = [&](const std::vector<float>& v) { wr.write_tensor(v.data(), v.size() * 4); };
  for (size_t i = 0; i < list.size(); ++i) {
    const auto& t = list[i];
    switch (t.kind) {
      case TensorKind::Embeddings: {
        std::vector<uint16_t> row(size_t(c.hidden_size));
        std::vector<float> f(size_t(c.hidden_size));
        wr.begin_tensor();
        for (int64_t r = 0; r < c.vocab_size; ++r) {
          w.embeddings.row(r, f.data());
          for (size_t k = 0; k < f.size(); ++k) row[k] = emb == DType::F16 ? float_to_f16(f[k]) : float_to_bf16(f[k]);
          wr.append(row.data(), row.size() * 2);
        }
        wr.end_tensor();
        break;
      }
      case TensorKind::LowerBounds: floats(hf.store().find(t.name)->to_floats()); break;  // raw, as the source has them
      case TensorKind::Vector: floats(*t.vector); break;
      case TensorKind::BitLinear:
        detail::write_ternary(wr, t.bitlinear->weights(), file_type_for(opt.weights, t.cols));
        wr.write_tensor(&t.bitlinear->weights().scale, 4);
        floats(t.bitlinear->norm());
        break;
    }
    detail::progress_bar(opt.progress, i + 1, list.size());
  }
  wr.finish();
}

}  // namespace mmfree
