// mmfree: load a Hugging Face checkpoint directory (config.json + safetensors) and
// ternarise its latent weights at load time.
#pragma once

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "mmfree/config_json.hpp"
#include "mmfree/embedding.hpp"
#include "mmfree/safetensors.hpp"
#include "mmfree/ternary_format.hpp"
#include "mmfree/thread_pool.hpp"
#include "mmfree/weight_arena.hpp"
#include "mmfree/weights.hpp"

namespace mmfree {

class HfLoader {
 public:
  explicit HfLoader(const std::string& dir) : dir_(dir) {
    namespace fs = std::filesystem;
    std::error_code ec;
    if (!fs::exists(dir, ec)) fail(dir, "no such file or directory");
    if (!fs::is_directory(dir, ec)) fail(dir, "is not a checkpoint directory (config.json + model.safetensors) or a GGUF file");
    cfg_ = read_config((fs::path(dir) / "config.json").string());
    store_ = std::make_unique<TensorStore>(dir);
  }

  // Ternarises every BitLinear into format `fmt`, straight into one arena (in 2 MiB pages when
  // `huge_pages`), rows spread over `pool`.
  ModelWeights load(TernaryFormat fmt, bool huge_pages, ThreadPool& pool) {
    const Config& c = cfg_;
    ModelWeights w;
    w.config = c;
    w.blocks.resize(size_t(c.num_hidden_layers));
    fmt_ = fmt;
    pool_ = &pool;
    w.arena = arena_ = std::make_shared<WeightArena>(arena_bytes(c, fmt), huge_pages);
    // A tied lm_head (no tensor of its own) ternarises the embeddings.
    const bool tied = c.tie_word_embeddings && !store_->find(tensor_name::weight(tensor_name::kLmHead));
    for (auto& t : tensor_list(c, &w)) {
      switch (t.kind) {
        case TensorKind::Embeddings: w.embeddings = Embedding::copy_of(get(t.name, {t.rows, t.cols})); break;
        case TensorKind::LowerBounds: set_lower_bounds(w, floats(t.name, {t.rows, t.cols})); break;
        case TensorKind::Vector: *t.vector = floats(t.name, {t.cols}); break;
        case TensorKind::BitLinear:
          *t.bitlinear = bitlinear(t.name, t.rows, t.cols,
                                   tied && t.name == tensor_name::kLmHead ? tensor_name::kEmbeddings : tensor_name::weight(t.name));
          break;
      }
    }
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
  BitLinear bitlinear(const std::string& prefix, int64_t out, int64_t in, const std::string& weight_name) const {
    const std::vector<float> latent = floats(weight_name, {out, in});
    TernaryMatrix m = TernaryMatrix::shape(fmt_, out, in);
    m.scale = absmean_scale(latent.data(), latent.size());
    const float s_w = 1.0f / m.scale;
    m = pack_into(*arena_, m, *pool_, [&](int64_t r, int64_t c0, int64_t c1, uint8_t* d) {
      for (int64_t c = c0; c < c1; ++c) d[c - c0] = uint8_t(ternarize(latent[size_t(r * in + c)], s_w) + 1);
    });
    return BitLinear(std::move(m), floats(tensor_name::norm(prefix), {in}));
  }

  std::string dir_;
  TernaryFormat fmt_ = TernaryFormat::TQ2;
  ThreadPool* pool_ = nullptr;
  std::shared_ptr<WeightArena> arena_;
  Config cfg_;
  std::unique_ptr<TensorStore> store_;
};

}  // namespace mmfree
