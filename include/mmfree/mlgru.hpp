// mmfree: the MLGRU token mixer (the model's "attention"): a gated linear recurrence,
// element-wise over D channels, whose only state is one vector h of D floats.
//
//   f = sigmoid(f_proj(x)), lifted by the layer's lower bound: f = lb + (1 - lb) * f
//   c = silu(i_proj(x)) * (1 - f);   h = f * h + c
//   o = rmsnorm(g_proj(x), g_norm) * silu(h);   out = o_proj(o)
#pragma once

#include <cstdint>
#include <vector>

#include "mmfree/bitlinear.hpp"
#include "mmfree/ops.hpp"

namespace mmfree {

struct MixerScratch {
  std::vector<float> f, i, g, o;  // [n, D]
  void reserve(int64_t n, int64_t d) {
    for (auto* v : {&f, &i, &g, &o})
      if (v->size() < size_t(n * d)) v->resize(size_t(n * d));
  }
};

// One time step of the recurrence for D channels. f_pre, i_pre are BitLinear outputs;
// on return h is h_t and o holds silu(h_t). lb may be null (no lower bound).
inline void mlgru_step(const float* f_pre, const float* i_pre, const float* lb, int64_t d, float* h, float* o) {
  for (int64_t c = 0; c < d; ++c) {
    float f = sigmoid(f_pre[c]);
    if (lb) f = lb[c] + (1.0f - lb[c]) * f;
    const float in = silu(i_pre[c]) * (1.0f - f);
    h[c] = f * h[c] + in;
    o[c] = silu(h[c]);
  }
}

struct MLGRU {
  BitLinear i_proj, f_proj, g_proj, o_proj;
  std::vector<float> g_norm;       // [D]
  std::vector<float> lower_bound;  // [D], empty when the layer has none

  int64_t dim() const { return i_proj.out_features(); }

  // x: [n, H] normalised inputs of n consecutive tokens; h: [D] state, advanced n steps;
  // out: [n, H].
  void forward(const float* x, int64_t n, float* h, float* out, double eps, MixerScratch& s, BitLinearScratch& bs,
               const Exec& ex) const {
    const int64_t d = dim();
    s.reserve(n, d);
    f_proj.forward(x, n, s.f.data(), bs, ex);
    i_proj.forward(x, n, s.i.data(), bs, ex);
    g_proj.forward(x, n, s.g.data(), bs, ex);
    const float* lb = lower_bound.empty() ? nullptr : lower_bound.data();
    for (int64_t t = 0; t < n; ++t) {
      float* o = s.o.data() + t * d;
      mlgru_step(s.f.data() + t * d, s.i.data() + t * d, lb, d, h, o);
      // o = rmsnorm(g) * silu(h): normalise g in place, then gate.
      float* g = s.g.data() + t * d;
      ex.rmsnorm(g, g_norm.data(), d, eps, g);
      for (int64_t c = 0; c < d; ++c) o[c] *= g[c];
    }
    o_proj.forward(s.o.data(), n, out, bs, ex);
  }
};

}  // namespace mmfree
