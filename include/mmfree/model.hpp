// mmfree: the MatMul-free language model (HGRNBit): weights, state and the forward pass.
//
// The forward pass (Model::forward) reads top to bottom like SPEC.md:
//   h = embed(ids); for each block: h += mlgru(norm(h)); h += glu(norm(h));
//   logits = lm_head(norm(h)).
#pragma once

#include <cmath>
#include <cstring>
#include <cstdint>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mmfree/bitlinear.hpp"
#include "mmfree/config.hpp"
#include "mmfree/embedding.hpp"
#include "mmfree/glu.hpp"
#include "mmfree/huge_pages.hpp"
#include "mmfree/mlgru.hpp"
#include "mmfree/ops.hpp"
#include "mmfree/thread_pool.hpp"

namespace mmfree {

struct Block {
  std::vector<float> attn_norm, mlp_norm;  // [H]
  MLGRU attn;
  GLU mlp;
};

// What decoding carries from one token to the next: one D-vector per layer. It does not
// grow with the context.
struct State {
  std::vector<std::vector<float>> h;
  int64_t position = 0;  // tokens consumed so far
};

// All weights of a model, as the loaders (Hugging Face directory, GGUF file) produce them.
struct ModelWeights {
  Config config;
  Embedding embeddings;
  std::vector<Block> blocks;
  std::vector<float> final_norm;
  BitLinear lm_head;
};

struct ModelOptions {
  int threads = 1;
  std::optional<kernels::Isa> isa;            // default: the best this CPU has
  TernaryFormat format = TernaryFormat::TQ2;  // packing used when ternarising at load
  int64_t max_batch = 128;                    // tokens per prefill chunk (bounds scratch memory)
  // Copy the packed weights into 2 MiB pages at load: decoding streams them ~1.3x faster
  // (huge_pages.hpp) for a copy at start-up. Off: weights stay where the loader put them
  // (for a GGUF file, the page cache, shared between processes).
  bool huge_pages = true;
};

// Scratch memory of one forward pass. Kept per thread so that one Model can serve
// several threads at once, each with its own State.
struct ForwardScratch {
  std::vector<float> x, xn, y;  // [n, H]
  MixerScratch mixer;
  GluScratch glu;
  BitLinearScratch bl;
  void reserve(int64_t n, int64_t hidden) {
    for (auto* v : {&x, &xn, &y})
      if (v->size() < size_t(n * hidden)) v->resize(size_t(n * hidden));
  }
};

class Model {
 public:
  Model(ModelWeights w, const ModelOptions& opt) : w_(std::move(w)), opt_(opt) {
    exec_.kernels = opt.isa ? kernels::kernel_table(*opt.isa) : kernels::best_kernels();
    if (opt.threads < 1) fail("threads", "must be at least 1, got " + std::to_string(opt.threads));
    if (opt.max_batch < 1) fail("max_batch", "must be at least 1");
    pool_ = std::make_unique<ThreadPool>(opt.threads);
    pool_mutex_ = std::make_unique<std::mutex>();
    if (opt.huge_pages) move_weights_to_huge_pages();
  }

  const Config& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }
  const ModelOptions& options() const { return opt_; }
  kernels::Isa isa() const { return exec_.kernels.isa; }
  int64_t vocab_size() const { return w_.config.vocab_size; }

  State new_state() const {
    State s;
    s.h.assign(size_t(w_.config.num_hidden_layers), std::vector<float>(size_t(w_.config.input_dim()), 0.0f));
    return s;
  }

  // Logits for every position of `ids` ([T, V], row-major), continuing from `state`.
  std::vector<float> prefill(std::span<const int32_t> ids, State& state) const {
    std::vector<float> logits(ids.size() * size_t(vocab_size()));
    run(ids, state, logits.data(), /*all_logits=*/true);
    return logits;
  }
  std::vector<float> prefill(std::span<const int32_t> ids) const {
    State s = new_state();
    return prefill(ids, s);
  }
  // Consume `ids` and return only the logits of the last position ([V]).
  std::vector<float> prefill_last(std::span<const int32_t> ids, State& state) const {
    std::vector<float> logits(static_cast<size_t>(vocab_size()));
    if (ids.empty()) fail("prefill", "no tokens given");
    run(ids, state, logits.data(), /*all_logits=*/false);
    return logits;
  }
  // One decoding step: consume `id`, return its logits ([V]).
  std::vector<float> step(int32_t id, State& state) const {
    const int32_t one[1] = {id};
    return prefill_last(one, state);
  }

 private:
  void check_ids(std::span<const int32_t> ids) const {
    for (int32_t id : ids)
      if (id < 0 || id >= vocab_size())
        fail("token id " + std::to_string(id), "out of range [0, " + std::to_string(vocab_size()) + ")");
  }

  // Runs the model over ids in chunks of max_batch tokens.
  void run(std::span<const int32_t> ids, State& state, float* logits, bool all_logits) const {
    check_ids(ids);
    if (state.h.size() != size_t(w_.config.num_hidden_layers))
      fail("State", "does not belong to this model (wrong number of layers)");
    // Only one caller at a time may drive the pool; others compute on their own thread.
    std::unique_lock<std::mutex> lock(*pool_mutex_, std::try_to_lock);
    Exec ex = exec_;
    ex.pool = lock.owns_lock() ? pool_.get() : nullptr;
    static thread_local ForwardScratch scratch;
    const int64_t n = int64_t(ids.size());
    const int64_t V = vocab_size();
    for (int64_t t0 = 0; t0 < n; t0 += opt_.max_batch) {
      const int64_t m = std::min(opt_.max_batch, n - t0);
      const bool last_chunk = t0 + m == n;
      float* out = all_logits ? logits + t0 * V : (last_chunk ? logits : nullptr);
      forward(ids.data() + t0, m, state, out, all_logits, scratch, ex);
    }
  }

  // The forward pass over m consecutive tokens. Writes logits of all m positions, or of
  // the last one only, when `logits` is not null.
  void forward(const int32_t* ids, int64_t m, State& st, float* logits, bool all_logits, ForwardScratch& s,
               const Exec& ex) const {
    const Config& c = w_.config;
    const int64_t H = c.hidden_size;
    s.reserve(m, H);
    float* x = s.x.data();
    float* xn = s.xn.data();
    float* y = s.y.data();

    for (int64_t t = 0; t < m; ++t) w_.embeddings.row(ids[t], x + t * H);

    // x += y (when y is given), then xn = rmsnorm(x, w): per token, tokens over the pool.
    auto residual_norm = [&](const float* add, const float* w) {
      ex.for_range(m, 1, [&](int64_t t0, int64_t t1) {
        for (int64_t t = t0; t < t1; ++t) {
          if (add)
            for (int64_t i = t * H; i < (t + 1) * H; ++i) x[i] += add[i];
          ex.rmsnorm(x + t * H, w, H, c.rms_norm_eps, xn + t * H);
        }
      });
    };

    for (size_t l = 0; l < w_.blocks.size(); ++l) {
      const Block& b = w_.blocks[l];
      // Token mixer: x += mlgru(rmsnorm(x)), carrying this layer's recurrent state.
      residual_norm(l == 0 ? nullptr : y, b.attn_norm.data());
      b.attn.forward(xn, m, st.h[l].data(), y, c.rms_norm_eps, s.mixer, s.bl, ex);
      // Channel mixer: x += glu(rmsnorm(x)).
      residual_norm(y, b.mlp_norm.data());
      b.mlp.forward(xn, m, y, s.glu, s.bl, ex);
    }
    ex.for_range(m * H, 4096, [&](int64_t i0, int64_t i1) {
      for (int64_t i = i0; i < i1; ++i) x[i] += y[i];
    });
    st.position += m;
    if (!logits) return;

    const int64_t first = all_logits ? 0 : m - 1;
    const int64_t rows = m - first;
    for (int64_t t = first; t < m; ++t) ex.rmsnorm(x + t * H, w_.final_norm.data(), H, c.rms_norm_eps, xn + (t - first) * H);
    w_.lm_head.forward(xn, rows, logits, s.bl, ex);
  }

  // Every BitLinear, in the order decoding reads them, so the copy is one forward stream.
  std::vector<BitLinear*> bitlinears() {
    std::vector<BitLinear*> v;
    for (auto& b : w_.blocks)
      for (BitLinear* l : {&b.attn.f_proj, &b.attn.i_proj, &b.attn.g_proj, &b.attn.o_proj, &b.mlp.gate_proj, &b.mlp.down_proj})
        v.push_back(l);
    v.push_back(&w_.lm_head);
    return v;
  }
  void move_weights_to_huge_pages() {
    std::vector<BitLinear*> ls = bitlinears();
    std::vector<size_t> offset(ls.size() + 1, 0);  // in the arena, 64-byte aligned
    for (size_t i = 0; i < ls.size(); ++i) offset[i + 1] = offset[i] + (ls[i]->weights().nbytes() + 63) / 64 * 64;
    auto arena = alloc_huge(offset.back());
    // Copy with every pool thread, 2 MiB at a time: first touch of each huge page (the
    // kernel zeroing it) is most of the cost, and it parallelises.
    const int64_t granules = int64_t((offset.back() + kHugePage - 1) / kHugePage);
    pool_->for_range(granules, 1, [&](int64_t g0, int64_t g1) {
      const size_t lo = size_t(g0) * kHugePage, hi = std::min(offset.back(), size_t(g1) * kHugePage);
      for (size_t i = 0; i < ls.size(); ++i) {
        const TernaryMatrix& m = ls[i]->weights();
        const size_t b = std::max(lo, offset[i]), e = std::min(hi, offset[i] + m.nbytes());
        if (b >= e) continue;
        std::memcpy(arena.get() + b, m.data + (b - offset[i]), e - b);
        // A file mapping's pages would otherwise stay resident beside the copy. (Dropping
        // them is safe even if another thread still reads them: they refault from the file.)
        if (m.mapped) release_mapped(m.data + (b - offset[i]), e - b);
      }
    });
    for (size_t i = 0; i < ls.size(); ++i) {
      TernaryMatrix m = ls[i]->weights();
      m.data = arena.get() + offset[i];
      m.owner = arena;
      m.mapped = false;
      *ls[i] = BitLinear(std::move(m), ls[i]->norm());
    }
  }

  ModelWeights w_;
  ModelOptions opt_;
  Exec exec_;
  std::unique_ptr<ThreadPool> pool_;
  std::unique_ptr<std::mutex> pool_mutex_;
};

}  // namespace mmfree
