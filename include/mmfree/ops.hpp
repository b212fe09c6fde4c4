// mmfree: element-wise and per-token operations of the model (float, scalar).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>

// Element-wise loops over many channels are compiled for AVX-512 and AVX2 as well as the
// baseline, chosen at load time by the dynamic linker (GCC/Clang function multiversioning),
// so the library still needs no -march flag from its users. Not with clang: clang 14 emits the
// resolver of an inline multiversioned function as a strong symbol in every translation unit,
// so a program of two files that include mmfree fails to link ("multiple definition of
// ...[clone .resolver]"); there these loops are compiled for the baseline only.
// No contraction into fused multiply-adds: the AVX-512 clone may use them and the AVX2 and
// baseline clones may not, and AArch64 always may, so sigmoid and silu would differ in their last
// bits from one CPU to the next (GCC contracts by default under -std=gnu++).
#if defined(__x86_64__) && defined(__linux__) && !defined(__SANITIZE_ADDRESS__) && !defined(__clang__)
#define MMFREE_ELEMENTWISE_CLONES \
  __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off")))
#elif defined(__GNUC__) && !defined(__clang__)
#define MMFREE_ELEMENTWISE_CLONES __attribute__((optimize("fp-contract=off")))
#else
#define MMFREE_ELEMENTWISE_CLONES
#endif
// The same for a scan that leaves early, which -O2's very cheap cost model leaves scalar.
#if defined(__x86_64__) && defined(__linux__) && !defined(__SANITIZE_ADDRESS__) && !defined(__clang__)
#define MMFREE_SCAN_CLONES \
  __attribute__((target_clones("avx512f", "avx2", "default"), optimize("fp-contract=off", "vect-cost-model=dynamic")))
#elif defined(__GNUC__) && !defined(__clang__)
#define MMFREE_SCAN_CLONES __attribute__((optimize("fp-contract=off", "vect-cost-model=dynamic")))
#else
#define MMFREE_SCAN_CLONES
#endif

namespace mmfree {

// BitLinear's own rmsnorm epsilon: 1e-6, whatever the checkpoint's rms_norm_eps (the module
// declares 1e-8, but the fused kernel the reference runs passes its default 1e-6; docs/model.md).
inline constexpr double kBitLinearEps = 1e-6;

// e^x within 2 ulp of the correctly rounded value on [-87, 88] (clamped outside, where
// sigmoid and silu no longer change). Straight-line float arithmetic, no library call,
// so the compiler vectorises loops over it: the model evaluates ~300,000 exponentials per
// token, and libm's expf one at a time was 5% of prefill. Range reduction and polynomial
// are Cephes' expf: x = n ln2 + r, |r| <= ln2/2, e^r = 1 + r + r^2 p(r).
[[gnu::always_inline]] inline float exp_approx(float x) {
  // Clamp x to [-87, 88] on its bits: |x| as an integer orders like |x| as a float, and
  // integer selects vectorise where float comparisons (which may trap) do not.
  int32_t xb;
  std::memcpy(&xb, &x, sizeof xb);
  const int32_t sign = xb & int32_t(0x80000000u), mag = xb & 0x7fffffff;
  const int32_t limit = sign ? 0x42ae0000 /* 87.0f */ : 0x42b00000 /* 88.0f */;
  xb = sign | (mag < limit ? mag : limit);  // NaN (mag > inf) clamps too
  std::memcpy(&x, &xb, sizeof x);
  const float magic = 12582912.0f;  // 1.5 * 2^23: adding it rounds to an integer
  const float n = (x * 1.44269504088896341f + magic) - magic;
  const float r = (x - n * 0.693359375f) - n * -2.12194440e-4f;
  float p = 1.9875691500e-4f;
  p = p * r + 1.3981999507e-3f;
  p = p * r + 8.3334519073e-3f;
  p = p * r + 4.1665795894e-2f;
  p = p * r + 1.6666665459e-1f;
  p = p * r + 5.0000001201e-1f;
  const float er = p * (r * r) + r + 1.0f;
  const int32_t bits = (int32_t(n) + 127) << 23;  // 2^n, n in [-126, 127]
  float two_n;
  std::memcpy(&two_n, &bits, sizeof two_n);
  return er * two_n;
}

[[gnu::always_inline]] inline float sigmoid(float x) { return 1.0f / (1.0f + exp_approx(-x)); }
[[gnu::always_inline]] inline float silu(float x) { return x * sigmoid(x); }

// Sum of x[i]^2 in double. Each square is exact in double; the terms go into 8 partial
// sums (lane i mod 8) that are combined as ((s0+s4)+(s2+s6)) + ((s1+s5)+(s3+s7)). That
// order is part of the definition: the SIMD versions in kernels/ return the same bits.
inline double sum_squares(const float* x, int64_t n) {
  double s[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  for (int64_t i = 0; i < n; ++i) s[i % 8] += double(x[i]) * double(x[i]);
  return ((s[0] + s[4]) + (s[2] + s[6])) + ((s[1] + s[5]) + (s[3] + s[7]));
}
// sum_squares of `rows` rows of n floats, ld apart, into out[0 .. rows). The SIMD twins
// (kernels/quantize_simd.hpp) run several rows' chains side by side: one row's sum is a chain
// of dependent adds, bound by their latency.
inline void sum_squares_rows(const float* x, int64_t ld, int64_t rows, int64_t n, double* out) {
  for (int64_t r = 0; r < rows; ++r) out[r] = sum_squares(x + r * ld, n);
}

// Element-wise loops a pass runs over every token (each result exactly rounded, so every SIMD
// width returns the same bits): out = float(acc) * s, x += y, x *= y.
// Fixed groups of 16 and a remainder loop: -O2's very cheap vectoriser takes the groups (it left
// the plain loops scalar: dequantisation was 6% of a 5-token step of the 2.7B preset at -O2).
MMFREE_ELEMENTWISE_CLONES inline void scale_ints(const int32_t* __restrict acc, float s, int64_t n, float* __restrict out) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; ++k) out[i + k] = float(acc[i + k]) * s;
  for (; i < n; ++i) out[i] = float(acc[i]) * s;
}
MMFREE_ELEMENTWISE_CLONES inline void add_into(float* __restrict x, const float* __restrict y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; ++k) x[i + k] += y[i + k];
  for (; i < n; ++i) x[i] += y[i];
}
MMFREE_ELEMENTWISE_CLONES inline void mul_into(float* __restrict x, const float* __restrict y, int64_t n) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; ++k) x[i + k] *= y[i + k];
  for (; i < n; ++i) x[i] *= y[i];
}

// The index of the largest of x[0, n): the lowest such index on ties (as std::max_element), NaNs
// ignored, 0 when there is no number. Greedy decoding takes it once per token over the whole
// vocabulary: std::max_element compiles to a compare-and-select chain through memory, 126 us for
// 32,000 logits on Zen 5, against a few us for 16 running maxima and a second pass for the index.
MMFREE_ELEMENTWISE_CLONES inline int64_t argmax(const float* __restrict x, int64_t n) {
  float m[16];
  for (int k = 0; k < 16; ++k) m[k] = -INFINITY;
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; ++k) m[k] = x[i + k] > m[k] ? x[i + k] : m[k];
  float best = -INFINITY;
  for (; i < n; ++i) best = x[i] > best ? x[i] : best;
  for (int k = 0; k < 16; ++k) best = m[k] > best ? m[k] : best;
  for (i = 0; i + 16 <= n; i += 16) {
    bool hit = false;
    for (int k = 0; k < 16; ++k) hit |= x[i + k] == best;
    if (hit) break;
  }
  for (; i < n; ++i)
    if (x[i] == best) return i;
  return 0;
}

// A float's bits as an integer that orders like the float (NaNs above +inf): integer compares
// vectorise where float ones (which may trap) do not.
[[gnu::always_inline]] inline int32_t float_order_key(float f) {
  int32_t b;
  std::memcpy(&b, &f, sizeof b);
  return b ^ ((b >> 31) & 0x7fffffff);
}
// The start of the first block of 16 in [from, n) (the last block shorter) that may hold an
// x[i] > t: every such i is in a block returned (NaNs and -0 against +0 may be returned too: the
// caller compares each value again); n when there is none. Top-k sampling's scan.
MMFREE_SCAN_CLONES inline int64_t next_block_above(const float* __restrict x, int64_t from, int64_t n, float t) {
  const int32_t kt = float_order_key(t);
  int64_t i = from;
  for (; i + 16 <= n; i += 16) {
    int32_t any = 0;
    for (int k = 0; k < 16; ++k) any |= float_order_key(x[i + k]) > kt;
    if (any) return i;
  }
  return i < n ? i : n;
}

// The sum of n int8 values (the kernels' offset term: digits d = w + 1 sum d . q, then subtract it).
MMFREE_ELEMENTWISE_CLONES inline int32_t sum_int8(const int8_t* __restrict q, int64_t n) {
  int32_t acc[16] = {};
  int64_t i = 0;
  for (; i + 16 <= n; i += 16)
    for (int k = 0; k < 16; ++k) acc[k] += q[i + k];
  int32_t s = 0;
  for (; i < n; ++i) s += q[i];
  for (int k = 0; k < 16; ++k) s += acc[k];
  return s;
}

// y = x / sqrt(mean(x^2) + eps) * w, the mean taken in double (see sum_squares).
inline float rms_factor(double sum_sq, int64_t n, double eps) { return float(1.0 / std::sqrt(sum_sq / double(n) + eps)); }
// y = x * r * w: two float multiplies, each rounded, in the reference's order. y may be x.
// Each group of 16 is read before it is written, so the groups vectorise without alias checks.
MMFREE_ELEMENTWISE_CLONES inline void rms_scale(const float* x, float r, const float* __restrict w, int64_t n, float* y) {
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    float v[16];
    for (int k = 0; k < 16; ++k) v[k] = x[i + k] * r * w[i + k];
    for (int k = 0; k < 16; ++k) y[i + k] = v[k];
  }
  for (; i < n; ++i) y[i] = x[i] * r * w[i];
}
// `sum_sq` may be a SIMD twin of sum_squares (kernels/dispatch.hpp): the same bits.
inline void rmsnorm(const float* x, const float* w, int64_t n, double eps, float* y,
                    double (*sum_sq)(const float*, int64_t) = sum_squares) {
  rms_scale(x, rms_factor(sum_sq(x, n), n, eps), w, n, y);
}

// Per-token int8 quantisation of n values y(i): s_x = 127 / max(max|y|, 1e-5),
// q = clamp(round(y * s_x)). Writes n codes and zeros up to n_padded; returns s_x. `qsum`, when
// given, gets the sum of the codes (the kernels' offset term). y(i) is called twice per value
// (the scan for the maximum, then the codes): recomputing two products is cheaper than a
// buffer of n floats per token, which in a prefill is megabytes written and read back.
template <class Y>
inline float quantize_values(const Y& y, int64_t n, int8_t* q, int64_t n_padded, int32_t* qsum) {
  float amax = 0;
  for (int64_t i = 0; i < n; ++i) amax = std::max(amax, std::fabs(y(i)));
  const float s = 127.0f / std::max(amax, 1e-5f);
  int32_t sum = 0;
  for (int64_t i = 0; i < n; ++i) {
    const float v = std::round(y(i) * s);  // half away from zero, as the reference
    q[i] = int8_t(std::clamp(v, -128.0f, 127.0f));
    sum += q[i];
  }
  for (int64_t i = n; i < n_padded; ++i) q[i] = 0;
  if (qsum) *qsum = sum;
  return s;
}
inline float quantize_int8(const float* y, int64_t n, int8_t* q, int64_t n_padded, int32_t* qsum = nullptr) {
  return quantize_values([y](int64_t i) { return y[i]; }, n, q, n_padded, qsum);
}

// BitLinear's front given the rms factor r of x: quantize_int8 of y = x * r * w_norm, one
// token. Projections that read the same x (the MLGRU's f, i, g) share r.
inline float scale_quantize(const float* x, float r, const float* w_norm, int64_t n, int8_t* q, int64_t n_padded,
                            int32_t* qsum = nullptr) {
  return quantize_values([=](int64_t i) { return x[i] * r * w_norm[i]; }, n, q, n_padded, qsum);
}
// The whole front: rmsnorm(x, w_norm, kBitLinearEps) then quantize_int8.
inline float rmsnorm_quantize(const float* x, const float* w_norm, int64_t n, int8_t* q, int64_t n_padded,
                              int32_t* qsum = nullptr) {
  return scale_quantize(x, rms_factor(sum_squares(x, n), n, kBitLinearEps), w_norm, n, q, n_padded, qsum);
}

}  // namespace mmfree
