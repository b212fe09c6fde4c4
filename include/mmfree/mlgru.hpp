// mmfree: the MLGRU token mixer (the checkpoint calls it "attn"): a gated linear recurrence,
// element-wise over D channels, whose only state is one vector h of D floats.
//
//   f = sigmoid(f_proj(x)), lifted by the layer's lower bound: f = lb + (1 - lb) * f
//   c = silu(i_proj(x)) * (1 - f);   h = f * h + c
//   o = rmsnorm(g_proj(x), g_norm) * silu(h);   out = o_proj(o)
#pragma once

#include <cstdint>
#include <cstring>
#include <vector>

#include "mmfree/activations.hpp"
#include "mmfree/bitlinear.hpp"
#include "mmfree/exec.hpp"
#include "mmfree/ops.hpp"

namespace mmfree {

// One time step of the recurrence for one channel, without its output: h = f * h + c
// (lb = 0: no lower bound).
[[gnu::always_inline]] inline void mlgru_update_one(float f_pre, float i_pre, float lb, float& h) {
  const float f = lb + (1.0f - lb) * sigmoid(f_pre);
  h = f * h + silu(i_pre) * (1.0f - f);
}
// The whole step for one channel: h advanced, o = silu(h).
[[gnu::always_inline]] inline void mlgru_step_one(float f_pre, float i_pre, float lb, float& h, float& o) {
  mlgru_update_one(f_pre, i_pre, lb, h);
  o = silu(h);
}
// One time step of the recurrence for channels [0, d). f_pre, i_pre are BitLinear
// outputs; on return h is h_t and o holds silu(h_t). lb may be null (no lower bound).
// (Two loops rather than a template: clang cannot multiversion function templates.)
MMFREE_ELEMENTWISE_CLONES inline void mlgru_step(const float* __restrict f_pre, const float* __restrict i_pre,
                                                 const float* __restrict lb, int64_t d, float* __restrict h,
                                                 float* __restrict o) {
  // Blocks of 64 channels, each in two loops: the new h, then silu(h). In one loop, the third
  // exponential waits on the first two through h, and the core's window holds too few
  // iterations to hide that chain (1.6 against 1.2 ns per channel on AMD Zen 5). The inner
  // loops are fixed groups so that -O2's cheap vectoriser takes them.
  // Then blocks of 16: a thread's share of channels comes in pieces of whole row groups of the
  // interleaved copies (80 for TQ1), and the scalar tail took 16 of every 80 channels at several
  // times the cost (mlgru_step was 3.8% of a 1.3B TQ1 prefill, 1.4% with 64-row groups; AMD Zen 5).
  int64_t c = 0;
  if (lb) {
    for (; c + 64 <= d; c += 64) {
      for (int k = 0; k < 64; ++k) mlgru_update_one(f_pre[c + k], i_pre[c + k], lb[c + k], h[c + k]);
      for (int k = 0; k < 64; ++k) o[c + k] = silu(h[c + k]);
    }
    for (; c + 16 <= d; c += 16) {
      for (int k = 0; k < 16; ++k) mlgru_update_one(f_pre[c + k], i_pre[c + k], lb[c + k], h[c + k]);
      for (int k = 0; k < 16; ++k) o[c + k] = silu(h[c + k]);
    }
    for (; c < d; ++c) mlgru_step_one(f_pre[c], i_pre[c], lb[c], h[c], o[c]);
  } else {
    for (; c + 64 <= d; c += 64) {
      for (int k = 0; k < 64; ++k) mlgru_update_one(f_pre[c + k], i_pre[c + k], 0.0f, h[c + k]);
      for (int k = 0; k < 64; ++k) o[c + k] = silu(h[c + k]);
    }
    for (; c + 16 <= d; c += 16) {
      for (int k = 0; k < 16; ++k) mlgru_update_one(f_pre[c + k], i_pre[c + k], 0.0f, h[c + k]);
      for (int k = 0; k < 16; ++k) o[c + k] = silu(h[c + k]);
    }
    for (; c < d; ++c) mlgru_step_one(f_pre[c], i_pre[c], 0.0f, h[c], o[c]);
  }
}

struct MLGRU {
  BitLinear i_proj, f_proj, g_proj, o_proj;
  std::vector<float> g_norm;       // [D]
  std::vector<float> lower_bound;  // [D], empty when the layer has none

  int64_t dim() const { return i_proj.out_features(); }

  // x: [n, H] normalised inputs of n consecutive tokens; h: [D] state, advanced n steps;
  // out: [n, H].
  template <class Acc>
  void forward(const float* x, int64_t n, float* h, float* out, double eps, Activations& a,
               const BasicExec<Acc>& ex) const {
    a.h.assign(size_t(n), h);
    forward(x, n, a.h.data(), out, eps, a, ex);
  }
  // The same with token t's state in hs[t]: n consecutive tokens of one sequence (every hs[t]
  // the same vector, advanced in order), or n sequences decoding one token each (a batch).
  // With `snaps` (optional, one per token, null where not wanted), the state after token t is
  // also copied to snaps[t]: the states a verification pass rolls back to (speculative.hpp).
  template <class Acc>
  void forward(const float* x, int64_t n, float* const* hs, float* out, double eps, Activations& s,
               const BasicExec<Acc>& ex, float* const* snaps = nullptr) const {
    reserve(n, s);
    ex.for_tokens(n, [&](int64_t t0, int64_t t1) { quantize_tokens(x, t0, t1, s, ex); });
    forward_quantized(n, hs, out, eps, s, ex, snaps);
  }

  // The two halves of forward, so that a caller can join the quantisation to its own per-token
  // work (the model: residual add and rmsnorm) in one parallel section.
  void reserve(int64_t n, Activations& s) const {
    s.reserve_mixer(n, dim());
    f_proj.reserve(n, s.fq), i_proj.reserve(n, s.iq), g_proj.reserve(n, s.gq), o_proj.reserve(n, s.bl);
  }
  // f, i and g read the same x: one rms factor per token, then three quantisations, for tokens
  // [t0, t1) on the calling thread.
  template <class Acc>
  void quantize_tokens(const float* x, int64_t t0, int64_t t1, Activations& s, const BasicExec<Acc>& ex) const {
    const int64_t k = f_proj.in_features();
    ex.rms_factors(x + t0 * k, k, t1 - t0, k, kBitLinearEps, s.rms.data() + t0);
    f_proj.quantize_tokens(x, t0, t1, s.fq, ex, s.rms.data());
    i_proj.quantize_tokens(x, t0, t1, s.iq, ex, s.rms.data());
    g_proj.quantize_tokens(x, t0, t1, s.gq, ex, s.rms.data());
  }
  // Everything after the quantisation (reserve and quantize_tokens first, for all n tokens).
  template <class Acc>
  void forward_quantized(int64_t n, float* const* hs, float* out, double eps, Activations& s, const BasicExec<Acc>& ex,
                         float* const* snaps = nullptr) const {
    const int64_t d = dim();
    const float* lb = lower_bound.empty() ? nullptr : lower_bound.data();
    // Channels are independent until g's norm: each thread computes its channels' rows of
    // f, i and g for all n tokens, then runs the recurrence over them. One parallel
    // section, and the exponentials are shared out too.
    ex.for_rows(d, n, [&](int64_t c0, int64_t c1) {
      f_proj.forward_rows(n, s.fq, ex, s.f.data(), d, c0, c1);
      i_proj.forward_rows(n, s.iq, ex, s.i.data(), d, c0, c1);
      g_proj.forward_rows(n, s.gq, ex, s.g.data(), d, c0, c1);
      for (int64_t t = 0; t < n; ++t) {
        mlgru_step(s.f.data() + t * d + c0, s.i.data() + t * d + c0, lb ? lb + c0 : nullptr, c1 - c0, hs[t] + c0,
                   s.o.data() + t * d + c0);
        if (snaps && snaps[t]) std::memcpy(snaps[t] + c0, hs[t] + c0, size_t(c1 - c0) * sizeof(float));
      }
    }, ex.row_grain(f_proj.weights(), n), &f_proj.weights());
    // o = rmsnorm(g) * silu(h), and o_proj's quantisation of it, per token in one section, 4
    // tokens at a time (their rows stay in L1 from the norm to the quantisation).
    ex.for_tokens(n, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; t += 4) {
        const int64_t k = std::min<int64_t>(4, t1 - t);
        ex.rmsnorm_rows(s.g.data() + t * d, g_norm.data(), k, d, d, eps, s.g.data() + t * d);
        for (int64_t j = t; j < t + k; ++j) mul_into(s.o.data() + j * d, s.g.data() + j * d, d);
        o_proj.quantize_tokens(s.o.data(), t, t + k, s.bl, ex);
      }
    });
    o_proj.forward_quantized(n, out, o_proj.out_features(), s.bl, ex);
  }
};

}  // namespace mmfree
