// The "MatMul" baseline of the end-to-end benchmark: the same model, the same forward pass,
// with every BitLinear replaced by an ordinary float matrix product (Eigen, fp32) over the
// dequantised weights W = T * scale, and no activation quantisation. This is the model the
// paper compares against; it reads 16x more weight bytes per token than TQ2.
#pragma once

#include <memory>
#include <vector>

#include "eigen_gemm.hpp"
#include "mmfree/mmfree.hpp"

namespace mmfree::bench {

// One float linear layer with the BitLinear's own rmsnorm in front (same graph as mmfree).
struct FloatLinear {
  std::vector<float> W;  // [rows, cols], row-major
  int64_t rows = 0, cols = 0;
  std::vector<float> norm;

  static FloatLinear from(const BitLinear& b) {
    const TernaryMatrix& t = b.weights();
    FloatLinear f;
    f.rows = t.rows, f.cols = t.cols;
    f.W.resize(size_t(t.rows * t.cols));
    f.norm = b.norm();
    std::vector<int8_t> row(static_cast<size_t>(t.cols));
    for (int64_t r = 0; r < t.rows; ++r) {
      unpack_row(t, r, row.data());
      for (int64_t c = 0; c < t.cols; ++c) f.W[size_t(r * t.cols + c)] = float(row[size_t(c)]) * t.scale;
    }
    return f;
  }
  size_t nbytes() const { return W.size() * sizeof(float); }

  // out[t, :] = W rmsnorm(x[t, :]) for n tokens; rows of W shared out over the pool.
  void forward(const float* x, int64_t n, float* out, std::vector<float>& tmp, ThreadPool& pool) const {
    tmp.resize(size_t(n * cols));
    for (int64_t t = 0; t < n; ++t) rmsnorm(x + t * cols, norm.data(), cols, kBitLinearEps, tmp.data() + t * cols);
    pool.for_range(rows, 64, [&](int64_t r0, int64_t r1) { eigen_gemm(W.data(), rows, cols, tmp.data(), n, out, r0, r1); });
  }
};

class FloatModel {
 public:
  FloatModel(const ModelWeights& w, int threads) : c_(w.config), emb_(w.embeddings), pool_(threads) {
    for (const Block& b : w.blocks) {
      Layer l;
      l.attn_norm = b.attn_norm, l.mlp_norm = b.mlp_norm, l.g_norm = b.attn.g_norm, l.lb = b.attn.lower_bound;
      l.f = FloatLinear::from(b.attn.f_proj), l.i = FloatLinear::from(b.attn.i_proj);
      l.g = FloatLinear::from(b.attn.g_proj), l.o = FloatLinear::from(b.attn.o_proj);
      l.gate = FloatLinear::from(b.mlp.gate_proj), l.down = FloatLinear::from(b.mlp.down_proj);
      layers_.push_back(std::move(l));
    }
    final_norm_ = w.final_norm;
    head_ = FloatLinear::from(w.lm_head);
  }

  struct State {
    std::vector<std::vector<float>> h;
  };
  State new_state() const {
    return State{std::vector<std::vector<float>>(layers_.size(), std::vector<float>(size_t(c_.hidden_size), 0.0f))};
  }
  size_t weight_bytes() const {
    size_t s = head_.nbytes();
    for (auto& l : layers_) s += l.f.nbytes() + l.i.nbytes() + l.g.nbytes() + l.o.nbytes() + l.gate.nbytes() + l.down.nbytes();
    return s;
  }

  // Logits of the last of n tokens, as Model::prefill_last.
  std::vector<float> forward(const int32_t* ids, int64_t n, State& st) {
    const int64_t H = c_.hidden_size, I = layers_.front().down.cols;
    x_.resize(size_t(n * H)), xn_.resize(size_t(n * H)), y_.resize(size_t(n * H));
    f_.resize(size_t(n * H)), i_.resize(size_t(n * H)), g_.resize(size_t(n * H)), o_.resize(size_t(n * H));
    gu_.resize(size_t(n * 2 * I)), act_.resize(size_t(n * I));
    for (int64_t t = 0; t < n; ++t) emb_.row(ids[t], x_.data() + t * H);
    for (size_t li = 0; li < layers_.size(); ++li) {
      const Layer& l = layers_[li];
      for (int64_t t = 0; t < n; ++t) rmsnorm(x_.data() + t * H, l.attn_norm.data(), H, c_.rms_norm_eps, xn_.data() + t * H);
      l.f.forward(xn_.data(), n, f_.data(), tmp_, pool_);
      l.i.forward(xn_.data(), n, i_.data(), tmp_, pool_);
      l.g.forward(xn_.data(), n, g_.data(), tmp_, pool_);
      for (int64_t t = 0; t < n; ++t) {
        mlgru_step(f_.data() + t * H, i_.data() + t * H, l.lb.empty() ? nullptr : l.lb.data(), H, st.h[li].data(),
                   o_.data() + t * H);
        rmsnorm(g_.data() + t * H, l.g_norm.data(), H, c_.rms_norm_eps, g_.data() + t * H);
        for (int64_t c = 0; c < H; ++c) o_[size_t(t * H + c)] *= g_[size_t(t * H + c)];
      }
      l.o.forward(o_.data(), n, y_.data(), tmp_, pool_);
      for (size_t k = 0; k < size_t(n * H); ++k) x_[k] += y_[k];
      for (int64_t t = 0; t < n; ++t) rmsnorm(x_.data() + t * H, l.mlp_norm.data(), H, c_.rms_norm_eps, xn_.data() + t * H);
      l.gate.forward(xn_.data(), n, gu_.data(), tmp_, pool_);
      for (int64_t t = 0; t < n; ++t) silu_mul(gu_.data() + t * 2 * I, gu_.data() + t * 2 * I + I, I, act_.data() + t * I);
      l.down.forward(act_.data(), n, y_.data(), tmp_, pool_);
      for (size_t k = 0; k < size_t(n * H); ++k) x_[k] += y_[k];
    }
    std::vector<float> logits(size_t(head_.rows));
    rmsnorm(x_.data() + (n - 1) * H, final_norm_.data(), H, c_.rms_norm_eps, xn_.data());
    head_.forward(xn_.data(), 1, logits.data(), tmp_, pool_);
    return logits;
  }
  // Its workers asleep until the next step (ThreadPool::rest: before a probe).
  void rest() { pool_.rest(); }

 private:
  struct Layer {
    std::vector<float> attn_norm, mlp_norm, g_norm, lb;
    FloatLinear f, i, g, o, gate, down;
  };
  Config c_;
  Embedding emb_;
  std::vector<Layer> layers_;
  std::vector<float> final_norm_;
  FloatLinear head_;
  ThreadPool pool_;
  std::vector<float> x_, xn_, y_, f_, i_, g_, o_, gu_, act_, tmp_;
};

}  // namespace mmfree::bench
