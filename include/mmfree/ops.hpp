// mmfree: element-wise and per-token operations of the model (float, scalar).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>

namespace mmfree {

inline float sigmoid(float x) { return 1.0f / (1.0f + std::exp(-x)); }
inline float silu(float x) { return x * sigmoid(x); }

// y = x / sqrt(mean(x^2) + eps) * w. The sum of squares is taken in double so the
// result is the correctly rounded float whatever the length.
template <class T>
inline void rmsnorm(const T* x, const T* w, int64_t n, double eps, T* y) {
  double ss = 0;
  for (int64_t i = 0; i < n; ++i) ss += double(x[i]) * double(x[i]);
  const T r = T(1.0 / std::sqrt(ss / double(n) + eps));
  for (int64_t i = 0; i < n; ++i) y[i] = x[i] * r * w[i];
}

// Per-token int8 quantisation: s_x = 127 / max(max|y|, 1e-5), q = clamp(round(y * s_x)).
// Writes n codes and zeros up to n_padded; returns s_x.
inline float quantize_int8(const float* y, int64_t n, int8_t* q, int64_t n_padded) {
  float amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(y[i]));
  const float s = 127.0f / std::max(amax, 1e-5f);
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::round(y[i] * s);  // half away from zero, as the reference
    q[i] = int8_t(std::clamp(v, -128.0f, 127.0f));
  }
  for (int64_t i = n; i < n_padded; ++i) q[i] = 0;
  return s;
}

// The fused front of BitLinear: rmsnorm(x, w_norm, 1e-6) then quantize_int8, one token.
// `tmp` holds n floats.
inline float rmsnorm_quantize(const float* x, const float* w_norm, int64_t n, float* tmp, int8_t* q,
                              int64_t n_padded) {
  rmsnorm(x, w_norm, n, 1e-6, tmp);
  return quantize_int8(tmp, n, q, n_padded);
}

}  // namespace mmfree
