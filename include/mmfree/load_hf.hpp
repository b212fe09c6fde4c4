// mmfree: load a Hugging Face checkpoint directory (config.json + safetensors) and
// ternarise its latent weights at load time.
#pragma once

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "mmfree/config.hpp"
#include "mmfree/embedding.hpp"
#include "mmfree/model.hpp"
#include "mmfree/safetensors.hpp"
#include "mmfree/ternary_format.hpp"
#include "mmfree/thread_pool.hpp"
#include "mmfree/weight_arena.hpp"

namespace mmfree {

// lb = cumsum(softmax(raw, over layers)) - P[0]; row l is layer l's lower bound.
inline std::vector<std::vector<float>> lower_bounds_from_raw(const std::vector<float>& raw, int64_t layers, int64_t dim) {
  std::vector<std::vector<float>> lb(static_cast<size_t>(layers), std::vector<float>(static_cast<size_t>(dim)));
  std::vector<double> p(static_cast<size_t>(layers));
  for (int64_t c = 0; c < dim; ++c) {
    double mx = -INFINITY;
    for (int64_t l = 0; l < layers; ++l) mx = std::max(mx, double(raw[size_t(l * dim + c)]));
    double z = 0;
    for (int64_t l = 0; l < layers; ++l) z += (p[size_t(l)] = std::exp(double(raw[size_t(l * dim + c)]) - mx));
    double cum = 0;
    for (int64_t l = 0; l < layers; ++l) {
      cum += p[size_t(l)] / z;
      lb[size_t(l)][size_t(c)] = float(cum - p[0] / z);
    }
  }
  return lb;
}

class HfLoader {
 public:
  explicit HfLoader(const std::string& dir) : dir_(dir) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(dir, ec)) fail(dir, "no such file or directory");
    if (!fs::is_directory(dir, ec)) fail(dir, "is not a checkpoint directory (config.json + model.safetensors) or a GGUF file");
    cfg_ = Config::from_file((fs::path(dir) / "config.json").string());
    store_ = std::make_unique<TensorStore>(dir);
  }

  // Ternarises every BitLinear into format `fmt`, straight into one arena (in 2 MiB pages when
  // `huge_pages`), rows spread over `pool`.
  ModelWeights load(TernaryFormat fmt, bool huge_pages, ThreadPool& pool) {
    const Config& c = cfg_;
    const int64_t H = c.hidden_size, D = c.input_dim(), I = c.intermediate_size, V = c.vocab_size;
    const int64_t L = c.num_hidden_layers;
    if (c.use_lower_bound && D != H)
      fail(dir_ + "/config.json", "use_lower_bound with expand_ratio != 1 is not supported (the bounds have H entries)");
    ModelWeights w;
    w.config = c;
    fmt_ = fmt;
    pool_ = &pool;
    size_t total = 0;
    for (auto [out, in] : {std::pair{D, H}, {D, H}, {D, H}, {H, D}, {2 * I, H}, {H, I}})
      total += size_t(L) * WeightArena::slice_bytes(TernaryMatrix::shape(fmt, out, in).nbytes());
    total += WeightArena::slice_bytes(TernaryMatrix::shape(fmt, V, H).nbytes());
    w.arena = arena_ = std::make_shared<WeightArena>(total, huge_pages);
    w.embeddings = Embedding::copy_of(get("model.embeddings.weight", {V, H}));
    std::vector<std::vector<float>> lb;
    if (c.use_lower_bound) lb = lower_bounds_from_raw(floats("model.lower_bounds", {L, H}), L, H);
    for (int64_t l = 0; l < L; ++l) {
      const std::string p = "model.layers." + std::to_string(l) + ".";
      Block b;
      b.attn_norm = floats(p + "attn_norm.weight", {H});
      b.mlp_norm = floats(p + "mlp_norm.weight", {H});
      b.attn.i_proj = bitlinear(p + "attn.i_proj", D, H);
      b.attn.f_proj = bitlinear(p + "attn.f_proj", D, H);
      b.attn.g_proj = bitlinear(p + "attn.g_proj", D, H);
      b.attn.o_proj = bitlinear(p + "attn.o_proj", H, D);
      b.attn.g_norm = floats(p + "attn.g_norm.weight", {D});
      if (c.use_lower_bound && l > 0) b.attn.lower_bound = lb[size_t(l)];
      b.mlp.gate_proj = bitlinear(p + "mlp.gate_proj", 2 * I, H);
      b.mlp.down_proj = bitlinear(p + "mlp.down_proj", H, I);
      w.blocks.push_back(std::move(b));
    }
    w.final_norm = floats("model.norm.weight", {H});
    const bool tied = c.tie_word_embeddings && !store_->find("lm_head.weight");
    w.lm_head = bitlinear("lm_head", V, H, tied ? "model.embeddings.weight" : "lm_head.weight");
    return w;
  }

  const Config& config() const { return cfg_; }
  const TensorStore& store() const { return *store_; }

 private:
  const TensorView& get(const std::string& name, std::vector<int64_t> shape) const {
    const TensorView* t = store_->find(name);
    if (!t) fail(dir_, "missing tensor '" + name + "'");
    if (t->shape != shape)
      fail(t->where(), "has shape " + shape_str(t->shape) + ", expected " + shape_str(shape));
    return *t;
  }
  std::vector<float> floats(const std::string& name, std::vector<int64_t> shape) const {
    return get(name, std::move(shape)).to_floats();
  }
  BitLinear bitlinear(const std::string& prefix, int64_t out, int64_t in, std::string weight_name = "") const {
    if (weight_name.empty()) weight_name = prefix + ".weight";
    const std::vector<float> latent = floats(weight_name, {out, in});
    TernaryMatrix m = TernaryMatrix::shape(fmt_, out, in);
    m.scale = absmean_scale(latent.data(), latent.size());
    const float s_w = 1.0f / m.scale;
    m = pack_into(*arena_, m, *pool_, [&](int64_t r, int64_t c0, int64_t c1, uint8_t* d) {
      for (int64_t c = c0; c < c1; ++c) d[c - c0] = uint8_t(ternarize(latent[size_t(r * in + c)], s_w) + 1);
    });
    return BitLinear(std::move(m), floats(prefix + ".norm.weight", {in}));
  }

  std::string dir_;
  TernaryFormat fmt_ = TernaryFormat::TQ2;
  ThreadPool* pool_ = nullptr;
  std::shared_ptr<WeightArena> arena_;
  Config cfg_;
  std::unique_ptr<TensorStore> store_;
};

}  // namespace mmfree
