// mmfree: BitLinear, the only "matrix product" of the model, with no multiplications.
//
//   y = rmsnorm(x, w_norm, 1e-6);  q = int8(y * s_x);  out = (T q) * scale / s_x
//
// T is ternary and packed; T q is an integer sum of +q and -q terms (kernels/).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mmfree/kernels/dispatch.hpp"
#include "mmfree/ops.hpp"
#include "mmfree/thread_pool.hpp"
#include "mmfree/ternary_format.hpp"

namespace mmfree {

// Where and how to compute: the kernel table and the pool (may be null: one thread).
struct Exec {
  kernels::KernelTable kernels = kernels::make_table(kernels::incumbent(kernels::Regime::Decode, TernaryFormat::TQ2),
                                                     kernels::incumbent(kernels::Regime::Prefill, TernaryFormat::TQ2));
  ThreadPool* pool = nullptr;

  void for_range(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) const {
    if (pool && pool->size() > 1 && n > grain)
      pool->for_range(n, grain, fn);
    else if (n > 0)
      fn(0, n);
  }
  // rmsnorm of one row with this CPU's sum of squares (the same bits as ops.hpp's).
  void rmsnorm(const float* x, const float* w, int64_t n, double eps, float* y) const {
    mmfree::rmsnorm(x, w, n, eps, y, kernels.sum_squares);
  }
};

// Scratch for BitLinear calls, reused across calls to avoid allocation on the hot path.
struct BitLinearScratch {
  std::vector<int8_t> q;     // [n, padded K]
  std::vector<float> s_x;    // [n]
  std::vector<int32_t> acc;  // [n, out]
  std::vector<float> tmp;    // [n, K] normalised inputs

  void reserve(int64_t n, int64_t k_padded, int64_t k, int64_t out) {
    if (q.size() < size_t(n * k_padded)) q.resize(size_t(n * k_padded));
    if (s_x.size() < size_t(n)) s_x.resize(size_t(n));
    if (acc.size() < size_t(n * out)) acc.resize(size_t(n * out));
    if (tmp.size() < size_t(n * k)) tmp.resize(size_t(n * k));
  }
};

// Rows per unit of parallel work: one strip of the packed layout (ternary_format.hpp).
inline constexpr int64_t kRowGrain = kStripRows;

class BitLinear {
 public:
  BitLinear() = default;
  BitLinear(TernaryMatrix w, std::vector<float> norm) : w_(std::move(w)), norm_(std::move(norm)) {}

  int64_t in_features() const { return w_.cols; }
  int64_t out_features() const { return w_.rows; }
  const TernaryMatrix& weights() const { return w_; }
  const std::vector<float>& norm() const { return norm_; }

  // The rms factor of each of n tokens of x (K floats each), for quantize_input: projections
  // that read the same x compute it once.
  void rms_factors(const float* x, int64_t n, float* r, const Exec& ex) const {
    const int64_t k = w_.cols;
    for (int64_t t = 0; t < n; ++t) r[t] = rms_factor(ex.kernels.sum_squares(x + t * k, k), k, kBitLinearEps);
  }

  // Step 1-2: rmsnorm + int8 quantisation of n tokens into s.q / s.s_x; `r`, when given, holds
  // the tokens' rms factors (rms_factors). Tokens spread over the pool.
  void quantize_input(const float* x, int64_t n, BitLinearScratch& s, const Exec& ex, const float* r = nullptr) const {
    reserve(n, s);
    ex.for_range(n, 1, [&](int64_t t0, int64_t t1) { quantize_tokens(x, t0, t1, s, ex, r); });
  }
  // The same for tokens [t0, t1) on the calling thread (scratch reserved by the caller).
  void quantize_tokens(const float* x, int64_t t0, int64_t t1, BitLinearScratch& s, const Exec& ex,
                       const float* r = nullptr) const {
    const int64_t k = w_.cols, kp = activation_cols(k);
    for (int64_t t = t0; t < t1; ++t) {
      const float rt = r ? r[t] : rms_factor(ex.kernels.sum_squares(x + t * k, k), k, kBitLinearEps);
      s.s_x[size_t(t)] = ex.kernels.scale_quantize(x + t * k, rt, norm_.data(), k, s.tmp.data() + t * k, s.q.data() + t * kp, kp);
    }
  }
  void reserve(int64_t n, BitLinearScratch& s) const { s.reserve(n, activation_cols(w_.cols), w_.cols, w_.rows); }

  // Step 3 for rows [r0, r1) only, on the calling thread: acc[t, r] = T[r] . q[t].
  void accumulate_rows(int64_t n, BitLinearScratch& s, const Exec& ex, int64_t r0, int64_t r1) const {
    ex.kernels.gemm(w_, s.q.data(), activation_cols(w_.cols), n, s.acc.data(), w_.rows, r0, r1);
  }
  // Step 4 for rows [r0, r1): out[t, r] = acc * scale / s_x[t]; out has row stride `ldo`.
  void dequantize_rows(int64_t n, const BitLinearScratch& s, float* out, int64_t ldo, int64_t r0, int64_t r1) const {
    for (int64_t t = 0; t < n; ++t) {
      const float deq = w_.scale / s.s_x[size_t(t)];
      const int32_t* a = s.acc.data() + t * w_.rows;
      float* o = out + t * ldo;
      for (int64_t r = r0; r < r1; ++r) o[r] = float(a[r]) * deq;
    }
  }

  // The whole layer: out[t, r] for n tokens, rows spread over the pool.
  void forward(const float* x, int64_t n, float* out, int64_t ldo, BitLinearScratch& s, const Exec& ex) const {
    quantize_input(x, n, s, ex);
    ex.for_range(w_.rows, kRowGrain, [&](int64_t r0, int64_t r1) {
      accumulate_rows(n, s, ex, r0, r1);
      dequantize_rows(n, s, out, ldo, r0, r1);
    });
  }
  void forward(const float* x, int64_t n, float* out, BitLinearScratch& s, const Exec& ex) const {
    forward(x, n, out, w_.rows, s, ex);
  }

 private:
  TernaryMatrix w_;
  std::vector<float> norm_;
};

}  // namespace mmfree
