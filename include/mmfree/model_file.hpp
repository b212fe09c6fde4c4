// mmfree: model files. One entry point, load_model(path), takes a Hugging Face
// checkpoint directory or a .gguf file; convert_to_gguf writes the latter from the former;
// write_random_gguf writes a randomly initialised model of the published shapes.
//
// GGUF keys (architecture "hgrn_bit"): hgrn_bit.{vocab_size, embedding_length, block_count,
// head_count, expand_ratio, hidden_ratio, feed_forward_length, use_lower_bound,
// layer_norm_rms_epsilon (F64), tie_word_embeddings, context_length, ternary_format};
// tokenizer.ggml.{model, tokens, token_type, merges, bos/eos/unknown_token_id,
// add_bos_token, add_eos_token}, tokenizer.huggingface.json (the whole tokenizer.json),
// mmfree.normalizer. Tensors keep the Hugging Face names; ternary ones are ggml's TQ2_0/TQ1_0
// (I8 for rows that are not whole 256-weight blocks) with "<name>.scale" (F32 [1]); norms and model.lower_bounds (raw, F32) are F32;
// model.embeddings.weight is F16 or BF16.
#pragma once

#include <cmath>
#include <cstdio>
#include <filesystem>
#include <functional>
#include <random>
#include <thread>
#include <string>
#include <vector>

#include "mmfree/gguf.hpp"
#include "mmfree/load_hf.hpp"
#include "mmfree/model.hpp"
#include "mmfree/tokenizer.hpp"

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

// ---- reading ------------------------------------------------------------------------------

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
    return Config::from_json(j, r_.path());
  }

  // The ternary format the file was written in (hgrn_bit.ternary_format; tq2 when absent).
  TernaryFormat file_format() const {
    const std::string key = "hgrn_bit.ternary_format";
    if (!r_.has(key)) return TernaryFormat::TQ2;
    const std::string& f = r_.get_string(key);
    if (f == "tq2") return TernaryFormat::TQ2;
    if (f == "tq1") return TernaryFormat::TQ1;
    fail(r_.path(), "metadata '" + key + "' is \"" + f + "\" (expected \"tq2\" or \"tq1\")");
  }

  // Repacks every ternary tensor into format `fmt` (strips, ternary_format.hpp), straight into
  // one arena, rows spread over `pool`; each tensor's file pages are released once read.
  ModelWeights load(TernaryFormat fmt, bool huge_pages, ThreadPool& pool) const {
    ModelWeights w;
    w.config = config();
    const Config& c = w.config;
    const int64_t H = c.hidden_size, D = c.input_dim(), I = c.intermediate_size, V = c.vocab_size,
                  L = c.num_hidden_layers;
    if (c.use_lower_bound && D != H) fail(r_.path(), "use_lower_bound with expand_ratio != 1 is not supported");
    {
      const auto& t = get("model.embeddings.weight", {uint64_t(H), uint64_t(V)});
      if (t.type != gguf::F16 && t.type != gguf::BF16 && t.type != gguf::F32)
        fail(where(t), std::string("type ") + gguf::type_name(t.type) + " is not F16, BF16 or F32");
      w.embeddings.dtype = t.type == gguf::F16 ? DType::F16 : t.type == gguf::BF16 ? DType::BF16 : DType::F32;
      w.embeddings.rows = V;
      w.embeddings.cols = H;
      w.embeddings.data = t.data;
      w.embeddings.owner = r_.file();
      w.embeddings.check_finite_rows = true;  // checked per row as used: scanning would page in the whole table
    }
    size_t total = 0;
    for (auto [out, in] : {std::pair{D, H}, {D, H}, {D, H}, {H, D}, {2 * I, H}, {H, I}})
      total += size_t(L) * WeightArena::slice_bytes(TernaryMatrix::shape(fmt, out, in).nbytes());
    total += WeightArena::slice_bytes(TernaryMatrix::shape(fmt, V, H).nbytes());
    w.arena = std::make_shared<WeightArena>(total, huge_pages);
    Packing pk{fmt, w.arena.get(), &pool};
    std::vector<std::vector<float>> lb;
    if (c.use_lower_bound) lb = lower_bounds_from_raw(f32("model.lower_bounds", {uint64_t(H), uint64_t(L)}), L, H);
    for (int64_t l = 0; l < L; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      Block b;
      b.attn_norm = f32(p + "attn_norm.weight", {uint64_t(H)});
      b.mlp_norm = f32(p + "mlp_norm.weight", {uint64_t(H)});
      b.attn.i_proj = bitlinear(p + "attn.i_proj", D, H, pk);
      b.attn.f_proj = bitlinear(p + "attn.f_proj", D, H, pk);
      b.attn.g_proj = bitlinear(p + "attn.g_proj", D, H, pk);
      b.attn.o_proj = bitlinear(p + "attn.o_proj", H, D, pk);
      b.attn.g_norm = f32(p + "attn.g_norm.weight", {uint64_t(D)});
      if (c.use_lower_bound && l > 0) b.attn.lower_bound = lb[size_t(l)];
      b.mlp.gate_proj = bitlinear(p + "mlp.gate_proj", 2 * I, H, pk);
      b.mlp.down_proj = bitlinear(p + "mlp.down_proj", H, I, pk);
      w.blocks.push_back(std::move(b));
    }
    w.final_norm = f32("model.norm.weight", {uint64_t(H)});
    w.lm_head = bitlinear("lm_head", V, H, pk);
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
      return Tokenizer::from_json(j, cfg, r_.path() + " (tokenizer.huggingface.json)");
    } catch (const nlohmann::json::exception& e) {
      fail(r_.path(), std::string("tokenizer: unexpected structure: ") + e.what());
    }
  }

  const gguf::Reader& reader() const { return r_; }

 private:
  std::string where(const gguf::TensorInfo& t) const { return r_.path() + ": tensor '" + t.name + "'"; }
  struct Packing {
    TernaryFormat format;
    WeightArena* arena;
    ThreadPool* pool;
  };
  const gguf::TensorInfo& get(const std::string& name, const std::vector<uint64_t>& dims) const {
    const gguf::TensorInfo* t = r_.find(name);
    if (!t) fail(r_.path(), "missing tensor '" + name + "'");
    if (t->dims != dims) fail(where(*t), "has dims " + gguf::dims_str(t->dims) + ", expected " + gguf::dims_str(dims));
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
    const auto& t = get(prefix + ".weight", {uint64_t(in), uint64_t(out)});
    if (!is_ternary_file_type(t.type))
      fail(where(t), std::string("type ") + gguf::type_name(t.type) + " is not a ternary type (TQ2_0, TQ1_0 or I8)");
    const auto type = TernaryFileType(t.type);
    const int64_t row_bytes = file_row_bytes(type, in);  // the reader checked the tensor's size
    const auto s = f32(prefix + ".weight.scale", {1});
    if (!(s[0] > 0)) fail(r_.path() + ": tensor '" + prefix + ".weight.scale'", "must be positive");
    TernaryMatrix m = TernaryMatrix::shape(pk.format, out, in);
    m.scale = s[0];
    const std::string at = where(t);
    m = pack_into(*pk.arena, m, *pk.pool, [&](int64_t r, int64_t c0, int64_t c1, uint8_t* d) {
      kernels::decode_file_row_fast(type, t.data + r * row_bytes, in, c0, c1, d, at, r);
    });
    release_mapped(t.data, t.nbytes);  // read once: its pages need not stay resident
    return BitLinear(std::move(m), f32(prefix + ".norm.weight", {uint64_t(in)}));
  }

  gguf::Reader r_;
};

// A .gguf name, or the GGUF magic at the start of a regular file.
inline bool looks_like_gguf(const std::string& path) {
  std::error_code ec;
  const bool named = path.ends_with(".gguf");
  return is_gguf_file(path) || (named && !std::filesystem::is_directory(path, ec));
}

// The ternary weights are repacked into opt.format (default: the file's format; for a Hugging
// Face directory, kDefaultFormat) while they load, with opt.threads threads.
inline Model load_model(const std::string& path, const ModelOptions& opt = {}) {
  if (opt.threads < 1) fail("threads", "must be at least 1, got " + std::to_string(opt.threads));
  auto pool = std::make_unique<ThreadPool>(opt.threads);
  ModelWeights w;
  if (looks_like_gguf(path)) {
    GgufLoader g(path);
    w = g.load(opt.format.value_or(g.file_format()), opt.huge_pages, *pool);
  } else {
    w = HfLoader(path).load(opt.format.value_or(kDefaultFormat), opt.huge_pages, *pool);
  }
  return Model(std::move(w), opt, std::move(pool));
}

// The tokenizer that belongs to a model: tokenizer.json of the directory, or the one in the GGUF.
inline Tokenizer load_tokenizer(const std::string& model_path) {
  if (looks_like_gguf(model_path)) return GgufLoader(model_path).tokenizer();
  const std::string p = (std::filesystem::path(model_path) / "tokenizer.json").string();
  if (!std::filesystem::exists(p)) fail(model_path, "has no tokenizer.json");
  return Tokenizer::from_file(p);
}

// ---- writing ------------------------------------------------------------------------------

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
  const Tokenizer tok = Tokenizer::from_file(tokenizer_json_path);  // validates it
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

// The tensor list of a model, in file order: name, dims (innermost first), type.
struct Decl {
  std::string name;
  std::vector<uint64_t> dims;
  uint32_t type;
};
inline std::vector<Decl> tensor_decls(const Config& c, TernaryFormat f, uint32_t emb_type) {
  const uint64_t H = uint64_t(c.hidden_size), D = uint64_t(c.input_dim()), I = uint64_t(c.intermediate_size),
                 V = uint64_t(c.vocab_size), L = uint64_t(c.num_hidden_layers);
  std::vector<Decl> d;
  auto bl = [&](const std::string& p, uint64_t out, uint64_t in) {
    d.push_back({p + ".weight", {in, out}, uint32_t(file_type_for(f, int64_t(in)))});
    d.push_back({p + ".weight.scale", {1}, gguf::F32});
    d.push_back({p + ".norm.weight", {in}, gguf::F32});
  };
  d.push_back({"model.embeddings.weight", {H, V}, emb_type});
  if (c.use_lower_bound) d.push_back({"model.lower_bounds", {H, L}, gguf::F32});
  for (uint64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    d.push_back({p + "attn_norm.weight", {H}, gguf::F32});
    d.push_back({p + "mlp_norm.weight", {H}, gguf::F32});
    bl(p + "attn.i_proj", D, H);
    bl(p + "attn.f_proj", D, H);
    bl(p + "attn.g_proj", D, H);
    bl(p + "attn.o_proj", H, D);
    d.push_back({p + "attn.g_norm.weight", {D}, gguf::F32});
    bl(p + "mlp.gate_proj", 2 * I, H);
    bl(p + "mlp.down_proj", H, I);
  }
  d.push_back({"model.norm.weight", {H}, gguf::F32});
  bl("lm_head", V, H);
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
  const TensorView* emb_src = hf.store().find("model.embeddings.weight");
  if (!emb_src) fail(hf_dir, "missing tensor 'model.embeddings.weight'");
  DType emb = opt.embeddings ? *opt.embeddings : (emb_src->dtype == DType::BF16 ? DType::BF16 : DType::F16);
  if (emb != DType::F16 && emb != DType::BF16) fail("--embeddings", "must be f16 or bf16");
  // Loading validates everything and ternarises exactly as the directory path does.
  ThreadPool pool(std::max(1, int(std::thread::hardware_concurrency())));
  const ModelWeights w = hf.load(opt.weights, /*huge_pages=*/false, pool);
  gguf::Writer wr(out);
  detail::write_config_keys(wr, c, opt.weights, std::filesystem::path(hf_dir).filename().string());
  const std::string tok = (std::filesystem::path(hf_dir) / "tokenizer.json").string();
  if (std::filesystem::exists(tok)) detail::write_tokenizer_keys(wr, tok);
  const auto decls = detail::tensor_decls(c, opt.weights, emb == DType::F16 ? gguf::F16 : gguf::BF16);
  for (auto& d : decls) wr.declare(d.name, d.dims, d.type);
  wr.begin();
  // Emit in declaration order.
  std::map<std::string, const BitLinear*> bls;
  std::map<std::string, const std::vector<float>*> vecs;
  for (size_t l = 0; l < w.blocks.size(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const Block& b = w.blocks[l];
    bls[p + "attn.i_proj"] = &b.attn.i_proj, bls[p + "attn.f_proj"] = &b.attn.f_proj;
    bls[p + "attn.g_proj"] = &b.attn.g_proj, bls[p + "attn.o_proj"] = &b.attn.o_proj;
    bls[p + "mlp.gate_proj"] = &b.mlp.gate_proj, bls[p + "mlp.down_proj"] = &b.mlp.down_proj;
    vecs[p + "attn_norm.weight"] = &b.attn_norm, vecs[p + "mlp_norm.weight"] = &b.mlp_norm;
    vecs[p + "attn.g_norm.weight"] = &b.attn.g_norm;
  }
  bls["lm_head"] = &w.lm_head;
  vecs["model.norm.weight"] = &w.final_norm;
  std::vector<float> lb_raw;
  if (c.use_lower_bound) lb_raw = hf.store().find("model.lower_bounds")->to_floats();
  for (size_t i = 0; i < decls.size(); ++i) {
    const std::string& n = decls[i].name;
    auto ends = [&](const std::string& s) { return n.size() >= s.size() && n.compare(n.size() - s.size(), s.size(), s) == 0; };
    if (n == "model.embeddings.weight") {
      std::vector<uint16_t> row(size_t(c.hidden_size));
      std::vector<float> f(size_t(c.hidden_size));
      wr.begin_tensor();
      for (int64_t r = 0; r < c.vocab_size; ++r) {
        w.embeddings.row(r, f.data());
        for (size_t k = 0; k < f.size(); ++k) row[k] = emb == DType::F16 ? float_to_f16(f[k]) : float_to_bf16(f[k]);
        wr.append(row.data(), row.size() * 2);
      }
      wr.end_tensor();
    } else if (n == "model.lower_bounds") {
      wr.write_tensor(lb_raw.data(), lb_raw.size() * 4);
    } else if (ends(".weight.scale")) {
      const float s = bls.at(n.substr(0, n.size() - 13))->weights().scale;
      wr.write_tensor(&s, 4);
    } else if (ends(".norm.weight") && bls.count(n.substr(0, n.size() - 12))) {
      const auto& v = bls.at(n.substr(0, n.size() - 12))->norm();
      wr.write_tensor(v.data(), v.size() * 4);
    } else if (ends(".weight") && bls.count(n.substr(0, n.size() - 7))) {
      detail::write_ternary(wr, bls.at(n.substr(0, n.size() - 7))->weights(), TernaryFileType(decls[i].type));
    } else {
      const auto& v = *vecs.at(n);
      wr.write_tensor(v.data(), v.size() * 4);
    }
    detail::progress_bar(opt.progress, i + 1, decls.size());
  }
  wr.finish();
}

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
    if (is_ternary_file_type(d.type) && d.name.ends_with(".weight")) {
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
    } else if (d.name.ends_with(".weight.scale")) {
      // A plausible absmean scale: keeps activations in range for long random runs.
      const auto& wd = decls[i - 1].dims;
      const float s = 1.0f / std::sqrt(float(wd[0]));
      wr.write_tensor(&s, 4);
    } else if (d.type == gguf::F16) {  // embeddings
      std::normal_distribution<float> nd(0.0f, 0.02f);
      std::vector<uint16_t> row(size_t(d.dims[0]));
      wr.begin_tensor();
      for (uint64_t r = 0; r < d.dims[1]; ++r) {
        for (auto& v : row) v = float_to_f16(nd(rng));
        wr.append(row.data(), row.size() * 2);
      }
      wr.end_tensor();
    } else if (d.name == "model.lower_bounds") {
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
  // Same tensors as the GGUF layout, with HF shapes [out, in]; scales are not stored.
  std::vector<std::pair<std::string, std::vector<int64_t>>> ts;
  for (auto& d : detail::tensor_decls(c, TernaryFormat::TQ2, gguf::BF16)) {
    if (d.name.ends_with(".weight.scale")) continue;
    std::vector<int64_t> shape(d.dims.rbegin(), d.dims.rend());
    ts.push_back({d.name, shape});
  }
  nlohmann::ordered_json h = nlohmann::ordered_json::object();
  uint64_t off = 0;
  for (auto& [name, shape] : ts) {
    uint64_t n = 1;
    for (auto x : shape) n *= uint64_t(x);
    h[name] = {{"dtype", "BF16"}, {"shape", shape}, {"data_offsets", {off, off + 2 * n}}};
    off += 2 * n;
  }
  std::string hs = h.dump();
  while ((hs.size() + 8) % 8) hs.push_back(' ');
  const std::string path = (fs::path(dir) / "model.safetensors").string();
  FILE* f = std::fopen(path.c_str(), "wb");
  if (!f) fail(path, "cannot open for writing");
  auto put = [&](const void* p, size_t n) {
    if (std::fwrite(p, 1, n, f) != n) {
      std::fclose(f);
      fail(path, "write failed (disk full?)");
    }
  };
  const uint64_t hn = hs.size();
  put(&hn, 8);
  put(hs.data(), hs.size());
  std::mt19937_64 rng(seed);
  const uint16_t pos = float_to_bf16(0.02f), neg = float_to_bf16(-0.02f), zero = 0;
  std::normal_distribution<float> nd(0.0f, 0.02f);
  for (size_t i = 0; i < ts.size(); ++i) {
    const auto& [name, shape] = ts[i];
    const bool matrix = shape.size() == 2 && name != "model.lower_bounds";
    const bool emb = name == "model.embeddings.weight";
    const bool lb = name == "model.lower_bounds";
    const int64_t cols = shape.back(), rows = shape.size() == 2 ? shape[0] : 1;
    std::vector<uint16_t> row(static_cast<size_t>(cols));
    for (int64_t r = 0; r < rows; ++r) {
      for (auto& v : row) {
        if (emb) v = float_to_bf16(nd(rng));
        else if (lb) v = zero;
        else if (matrix) { const uint64_t x = rng() % 3; v = x == 0 ? neg : x == 1 ? zero : pos; }
        else v = float_to_bf16(1.0f);
      }
      put(row.data(), row.size() * 2);
    }
    detail::progress_bar(progress, i + 1, ts.size());
  }
  if (std::fclose(f) != 0) fail(path, "write failed (disk full?)");
}

}  // namespace mmfree
