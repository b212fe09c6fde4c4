// mmfree: BitLinear's front (rmsnorm + per-token int8 quantisation) in AVX2 and AVX-512.
//
// The scalar reference is rmsnorm_quantize in ops.hpp; these return the same bits:
//  - the sum of squares keeps its 8 double lanes and reduction tree (ops.hpp, sum_squares);
//  - y = (x * r) * w is two float multiplies, as in the reference;
//  - round half away from zero is decided by |v| >= |trunc(v)| + 0.5, which compares
//    the rounded product itself, so a compiler fusing multiply and subtract (FMA
//    contraction) cannot change the answer.
// Decoding calls this ~150 times per token on the critical path, so it matters.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include "mmfree/kernels/simd_warnings.hpp"
#include "mmfree/ops.hpp"

MMFREE_SIMD_WARNINGS_PUSH

namespace mmfree::kernels {

// Rows [0, rows) in tiles of 4 and one smaller tile for the rest: tile(R, first row), R an
// std::integral_constant<int, 1..4>.
template <class Tile>
inline void in_tiles_of_4(int64_t rows, const Tile& tile) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) tile(std::integral_constant<int, 4>{}, r);
  switch (rows - r) {
    case 3: tile(std::integral_constant<int, 3>{}, r); break;
    case 2: tile(std::integral_constant<int, 2>{}, r); break;
    case 1: tile(std::integral_constant<int, 1>{}, r); break;
    default: break;
  }
}

namespace avx512 {

#define MMFREE_TARGET_AVX512_Q __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

// sum_squares of up to 4 rows at once, R chains side by side, each row's lanes and reduction
// tree as in sum_squares: a row's own chain is bound by the latency of its adds.
template <int R>
MMFREE_TARGET_AVX512_Q inline void sum_squares_tile(const float* x, int64_t ld, int64_t n, double* out) {
  __m512d acc[R];
  #pragma GCC unroll 4
  for (int r = 0; r < R; ++r) acc[r] = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    #pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const __m512d d = _mm512_cvtps_pd(_mm256_loadu_ps(x + r * ld + i));
      acc[r] = _mm512_fmadd_pd(d, d, acc[r]);  // d*d is exact in double: fused or not, same sum
    }
  if (i < n) {
    const __mmask8 m = __mmask8((1u << (n - i)) - 1);
    for (int r = 0; r < R; ++r) {
      const __m512d d = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, x + r * ld + i));
      acc[r] = _mm512_fmadd_pd(d, d, acc[r]);
    }
  }
  for (int r = 0; r < R; ++r) {  // lanes (s0..s3) + (s4..s7), then pairs, then the last two: the reference's tree
    const __m256d a = _mm256_add_pd(_mm512_castpd512_pd256(acc[r]), _mm512_extractf64x4_pd(acc[r], 1));
    const __m128d b = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    out[r] = _mm_cvtsd_f64(b) + _mm_cvtsd_f64(_mm_unpackhi_pd(b, b));
  }
}
MMFREE_TARGET_AVX512_Q inline double sum_squares(const float* x, int64_t n) {
  double s;
  sum_squares_tile<1>(x, n, n, &s);
  return s;
}
inline void sum_squares_rows(const float* x, int64_t ld, int64_t rows, int64_t n, double* out) {
  in_tiles_of_4(rows, [&](auto R, int64_t r) { sum_squares_tile<decltype(R)::value>(x + r * ld, ld, n, out + r); });
}

// One vector of v = y * s to int8: round half away from zero as trunc(v + copysign(0.49999997, v)),
// which equals std::round on every float (checked exhaustively over |v| <= 300; beyond, the clamp
// decides) because 0.5's lower neighbour keeps v + c below the next integer exactly when v is below
// the half. The product is pinned in a register first: fused into the add by FMA contraction it
// would round once instead of twice. The int32 lanes are added to `sum` (the kernels' offset term).
MMFREE_TARGET_AVX512_Q inline __m128i round_to_int8(__m512 v, __m512i& sum) {
  __asm__("" : "+v"(v));
  const __m512 c = _mm512_set1_ps(0.49999997f);
  const __m512 sign = _mm512_castsi512_ps(_mm512_set1_epi32(int32_t(0x80000000u)));
  const __m512 a = _mm512_add_ps(v, _mm512_or_ps(_mm512_and_ps(v, sign), c));
  const __m512i i = _mm512_cvttps_epi32(_mm512_min_ps(_mm512_max_ps(a, _mm512_set1_ps(-128.0f)), _mm512_set1_ps(127.0f)));
  sum = _mm512_add_epi32(sum, i);
  return _mm512_cvtepi32_epi8(i);
}

// Full vectors unmasked: AMD Zen 4/5 run masked stores far slower than plain ones (a 2560-float
// row took 25% longer with every store masked).
MMFREE_TARGET_AVX512_Q inline float scale_quantize(const float* x, float rs, const float* w, int64_t n, int8_t* q,
                                                   int64_t n_padded, int32_t* qsum = nullptr) {
  const __m512 r = _mm512_set1_ps(rs);
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  __m512 amax = _mm512_setzero_ps();
  const int64_t full = n / 16 * 16;
  const __mmask16 tail = __mmask16((1u << (n - full)) - 1);
  for (int64_t i = 0; i < full; i += 16) {
    const __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), _mm512_loadu_ps(w + i));
    amax = _mm512_max_ps(amax, _mm512_and_ps(y, abs_mask));
  }
  if (tail) {
    const __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + full), r), _mm512_maskz_loadu_ps(tail, w + full));
    amax = _mm512_max_ps(amax, _mm512_and_ps(y, abs_mask));
  }
  const float s = 127.0f / std::max(_mm512_reduce_max_ps(amax), 1e-5f);
  const __m512 vs = _mm512_set1_ps(s);
  __m512i sum = _mm512_setzero_si512();
  for (int64_t i = 0; i < full; i += 16) {
    const __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_loadu_ps(x + i), r), _mm512_loadu_ps(w + i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + i), round_to_int8(_mm512_mul_ps(y, vs), sum));
  }
  if (tail) {
    const __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(tail, x + full), r), _mm512_maskz_loadu_ps(tail, w + full));
    _mm_mask_storeu_epi8(q + full, tail, round_to_int8(_mm512_mul_ps(y, vs), sum));
  }
  if (n_padded > n) std::memset(q + n, 0, size_t(n_padded - n));
  if (qsum) *qsum = _mm512_reduce_add_epi32(sum);
  return s;
}

MMFREE_TARGET_AVX512_Q inline float rmsnorm_quantize(const float* x, const float* w, int64_t n, int8_t* q,
                                                     int64_t n_padded, int32_t* qsum = nullptr) {
  return scale_quantize(x, rms_factor(sum_squares(x, n), n, kBitLinearEps), w, n, q, n_padded, qsum);
}

}  // namespace avx512

namespace avx2 {


// sum_squares of up to 4 rows at once (8 chains), each as sum_squares computes it.
template <int R>
MMFREE_TARGET_AVX2 inline void sum_squares_tile(const float* x, int64_t ld, int64_t n, double* out) {
  __m256d a0[R], a1[R];
  #pragma GCC unroll 4
  for (int r = 0; r < R; ++r) a0[r] = a1[r] = _mm256_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8)
    #pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const float* p = x + r * ld + i;
      const __m256d d0 = _mm256_cvtps_pd(_mm_loadu_ps(p)), d1 = _mm256_cvtps_pd(_mm_loadu_ps(p + 4));
      a0[r] = _mm256_fmadd_pd(d0, d0, a0[r]);
      a1[r] = _mm256_fmadd_pd(d1, d1, a1[r]);
    }
  for (int r = 0; r < R; ++r) {
    if (i < n) {
      float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
      std::memcpy(buf, x + r * ld + i, size_t(n - i) * sizeof(float));
      const __m256d d0 = _mm256_cvtps_pd(_mm_loadu_ps(buf)), d1 = _mm256_cvtps_pd(_mm_loadu_ps(buf + 4));
      a0[r] = _mm256_fmadd_pd(d0, d0, a0[r]);
      a1[r] = _mm256_fmadd_pd(d1, d1, a1[r]);
    }
    const __m256d a = _mm256_add_pd(a0[r], a1[r]);
    const __m128d b = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    out[r] = _mm_cvtsd_f64(b) + _mm_cvtsd_f64(_mm_unpackhi_pd(b, b));
  }
}
MMFREE_TARGET_AVX2 inline double sum_squares(const float* x, int64_t n) {
  double s;
  sum_squares_tile<1>(x, n, n, &s);
  return s;
}
inline void sum_squares_rows(const float* x, int64_t ld, int64_t rows, int64_t n, double* out) {
  in_tiles_of_4(rows, [&](auto R, int64_t r) { sum_squares_tile<decltype(R)::value>(x + r * ld, ld, n, out + r); });
}

// The AVX-512 version's rounding (trunc(v + copysign(0.49999997, v))) and offset sum.
MMFREE_TARGET_AVX2 inline float scale_quantize(const float* x, float rs, const float* w, int64_t n, int8_t* q,
                                                 int64_t n_padded, int32_t* qsum = nullptr) {
  const __m256 r = _mm256_set1_ps(rs);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 amax = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), r), _mm256_loadu_ps(w + i));
    amax = _mm256_max_ps(amax, _mm256_and_ps(y, abs_mask));
  }
  float a8[8];
  _mm256_storeu_ps(a8, amax);
  float a = 0;
  for (float v : a8) a = std::max(a, v);
  for (; i < n; ++i) a = std::max(a, std::fabs(x[i] * rs * w[i]));
  const float s = 127.0f / std::max(a, 1e-5f);
  const __m256 vs = _mm256_set1_ps(s), c = _mm256_set1_ps(0.49999997f);
  const __m256 sign = _mm256_castsi256_ps(_mm256_set1_epi32(int32_t(0x80000000u)));
  const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
  __m256i sum = _mm256_setzero_si256();
  i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 v = _mm256_mul_ps(_mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), r), _mm256_loadu_ps(w + i)), vs);
    __asm__("" : "+x"(v));  // no FMA contraction into the add (see avx512::round_to_int8)
    const __m256 t = _mm256_add_ps(v, _mm256_or_ps(_mm256_and_ps(v, sign), c));
    const __m256i i32 = _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(t, lo), hi));
    sum = _mm256_add_epi32(sum, i32);
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64((__m128i*)(q + i), _mm_packs_epi16(i16, i16));
  }
  int32_t s8[8];
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(s8), sum);
  int32_t total = 0;
  for (int32_t v : s8) total += v;
  for (; i < n; ++i) {
    q[i] = int8_t(std::clamp(std::round(x[i] * rs * w[i] * s), -128.0f, 127.0f));
    total += q[i];
  }
  if (n_padded > n) std::memset(q + n, 0, size_t(n_padded - n));
  if (qsum) *qsum = total;
  return s;
}

MMFREE_TARGET_AVX2 inline float rmsnorm_quantize(const float* x, const float* w, int64_t n, int8_t* q,
                                                   int64_t n_padded, int32_t* qsum = nullptr) {
  return scale_quantize(x, rms_factor(sum_squares(x, n), n, kBitLinearEps), w, n, q, n_padded, qsum);
}

}  // namespace avx2

}  // namespace mmfree::kernels

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__
