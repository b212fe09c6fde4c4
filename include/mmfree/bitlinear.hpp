// mmfree: BitLinear, the only "matrix product" of the model, with no multiplications.
//
//   y = rmsnorm(x, w_norm, kBitLinearEps);  q = int8(y * s_x);  out = (T q) * scale / s_x
//
// T is ternary and packed; T q is an integer sum of +q and -q terms, computed by the
// execution context's accumulate (exec.hpp: the CPU kernels by default, or the Verilog core).
// The weights are plain data; every computing member is a template over that accumulate.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mmfree/activations.hpp"
#include "mmfree/exec.hpp"
#include "mmfree/ops.hpp"
#include "mmfree/ternary_format.hpp"

namespace mmfree {

class BitLinear {
 public:
  BitLinear() = default;
  BitLinear(TernaryMatrix w, std::vector<float> norm) : w_(std::move(w)), norm_(std::move(norm)) {}

  int64_t in_features() const { return w_.cols; }
  int64_t out_features() const { return w_.rows; }
  const TernaryMatrix& weights() const { return w_; }
  const std::vector<float>& norm() const { return norm_; }

  // Step 1-2: rmsnorm + int8 quantisation of n tokens into s.q / s.s_x; `r`, when given, holds
  // the tokens' rms factors (ex.rms_factors with kBitLinearEps: projections that read the same x
  // compute them once). Tokens spread over the pool.
  template <class Acc>
  void quantize_input(const float* x, int64_t n, BitLinearScratch& s, const BasicExec<Acc>& ex, const float* r = nullptr) const {
    reserve(n, s);
    ex.for_tokens(n, [&](int64_t t0, int64_t t1) { quantize_tokens(x, t0, t1, s, ex, r); });
  }
  // The same for tokens [t0, t1) on the calling thread (scratch reserved by the caller).
  template <class Acc>
  void quantize_tokens(const float* x, int64_t t0, int64_t t1, BitLinearScratch& s, const BasicExec<Acc>& ex,
                       const float* r = nullptr) const {
    const int64_t k = w_.cols, kp = activation_cols(k);
    float own[4];  // the rms factors of 4 tokens at a time, where r is not given
    for (int64_t t = t0; t < t1; ++t) {
      if (!r && (t - t0) % 4 == 0) ex.rms_factors(x + t * k, k, std::min<int64_t>(4, t1 - t), k, kBitLinearEps, own);
      const float rt = r ? r[t] : own[(t - t0) % 4];
      s.s_x[size_t(t)] = ex.kernels.scale_quantize(x + t * k, rt, norm_.data(), k, s.q.data() + t * kp, kp,
                                                   &s.qsum[size_t(t)]);
      s.deq[size_t(t)] = w_.scale / s.s_x[size_t(t)];
    }
  }
  void reserve(int64_t n, BitLinearScratch& s) const { s.reserve(n, activation_cols(w_.cols), w_.rows); }

  // Step 3 for rows [r0, r1) only, on the calling thread: acc[t, r] = T[r] . q[t].
  template <class Acc>
  void accumulate_rows(int64_t n, BitLinearScratch& s, const BasicExec<Acc>& ex, int64_t r0, int64_t r1) const {
    ex.ternary_accumulate(w_, s.q.data(), activation_cols(w_.cols), n, s.acc.data(), w_.rows, r0, r1);
  }
  // Step 4 for rows [r0, r1): out[t, r] = acc * scale / s_x[t]; out has row stride `ldo`.
  void dequantize_rows(int64_t n, const BitLinearScratch& s, float* out, int64_t ldo, int64_t r0, int64_t r1) const {
    for (int64_t t = 0; t < n; ++t) scale_ints(s.acc.data() + t * w_.rows + r0, s.deq[size_t(t)], r1 - r0, out + t * ldo + r0);
  }
  // Steps 3-4 for rows [r0, r1) on the calling thread: in one pass where the kernel dequantises
  // in its store (several tokens; the same bits), else through s.acc.
  template <class Acc>
  void forward_rows(int64_t n, BitLinearScratch& s, const BasicExec<Acc>& ex, float* out, int64_t ldo, int64_t r0,
                    int64_t r1) const {
    if (n > 1 && ex.ternary_accumulate_scaled(w_, s.q.data(), activation_cols(w_.cols), n, s.deq.data(), s.qsum.data(),
                                              out, ldo, r0, r1))
      return;
    accumulate_rows(n, s, ex, r0, r1);
    dequantize_rows(n, s, out, ldo, r0, r1);
  }

  // Steps 3-4 for n tokens already in s (quantize_input or quantize_tokens): out[t, r], rows
  // spread over the pool.
  template <class Acc>
  void forward_quantized(int64_t n, float* out, int64_t ldo, BitLinearScratch& s, const BasicExec<Acc>& ex) const {
    ex.for_rows(w_.rows, n, [&](int64_t r0, int64_t r1) { forward_rows(n, s, ex, out, ldo, r0, r1); },
                ex.row_grain(w_, n), &w_);
  }
  // The whole layer: out[t, r] for n tokens.
  template <class Acc>
  void forward(const float* x, int64_t n, float* out, int64_t ldo, BitLinearScratch& s, const BasicExec<Acc>& ex) const {
    quantize_input(x, n, s, ex);
    forward_quantized(n, out, ldo, s, ex);
  }
  template <class Acc>
  void forward(const float* x, int64_t n, float* out, BitLinearScratch& s, const BasicExec<Acc>& ex) const {
    forward(x, n, out, w_.rows, s, ex);
  }

 private:
  TernaryMatrix w_;
  std::vector<float> norm_;
};

}  // namespace mmfree
