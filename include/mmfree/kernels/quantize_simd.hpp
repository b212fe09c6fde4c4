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

#include "mmfree/kernels/simd_warnings.hpp"
#include "mmfree/ops.hpp"

MMFREE_SIMD_WARNINGS_PUSH

namespace mmfree::kernels {

namespace avx512 {

#define MMFREE_TARGET_AVX512_Q __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq")))

MMFREE_TARGET_AVX512_Q inline double sum_squares(const float* x, int64_t n) {
  __m512d acc = _mm512_setzero_pd();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m512d d = _mm512_cvtps_pd(_mm256_loadu_ps(x + i));
    acc = _mm512_fmadd_pd(d, d, acc);  // d*d is exact in double: fused or not, same sum
  }
  if (i < n) {
    const __mmask8 m = __mmask8((1u << (n - i)) - 1);
    const __m512d d = _mm512_cvtps_pd(_mm256_maskz_loadu_ps(m, x + i));
    acc = _mm512_fmadd_pd(d, d, acc);
  }
  // lanes (s0..s3) + (s4..s7), then pairs, then the last two: the reference's tree.
  const __m256d a = _mm256_add_pd(_mm512_castpd512_pd256(acc), _mm512_extractf64x4_pd(acc, 1));
  const __m128d b = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  return _mm_cvtsd_f64(b) + _mm_cvtsd_f64(_mm_unpackhi_pd(b, b));
}

MMFREE_TARGET_AVX512_Q inline float scale_quantize(const float* x, float rs, const float* w, int64_t n, float* tmp,
                                                   int8_t* q, int64_t n_padded) {
  const __m512 r = _mm512_set1_ps(rs);
  const __m512 abs_mask = _mm512_castsi512_ps(_mm512_set1_epi32(0x7fffffff));
  __m512 amax = _mm512_setzero_ps();
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 y = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), r), _mm512_maskz_loadu_ps(m, w + i));
    _mm512_mask_storeu_ps(tmp + i, m, y);
    amax = _mm512_max_ps(amax, _mm512_and_ps(y, abs_mask));
  }
  const float s = 127.0f / std::max(_mm512_reduce_max_ps(amax), 1e-5f);
  const __m512 vs = _mm512_set1_ps(s), half = _mm512_set1_ps(0.5f), one = _mm512_set1_ps(1.0f);
  const __m512 lo = _mm512_set1_ps(-128.0f), hi = _mm512_set1_ps(127.0f);
  for (int64_t i = 0; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : __mmask16((1u << (n - i)) - 1);
    const __m512 v = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, tmp + i), vs);
    const __m512 t = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m512 av = _mm512_and_ps(v, abs_mask), at = _mm512_and_ps(t, abs_mask);
    const __mmask16 up = _mm512_cmp_ps_mask(av, _mm512_add_ps(at, half), _CMP_GE_OQ);
    const __m512 sign1 = _mm512_or_ps(_mm512_andnot_ps(abs_mask, v), one);  // copysign(1, v)
    const __m512 rv = _mm512_min_ps(_mm512_max_ps(_mm512_mask_add_ps(t, up, t, sign1), lo), hi);
    _mm_mask_storeu_epi8(q + i, m, _mm512_cvtepi32_epi8(_mm512_cvttps_epi32(rv)));
  }
  if (n_padded > n) std::memset(q + n, 0, size_t(n_padded - n));
  return s;
}

MMFREE_TARGET_AVX512_Q inline float rmsnorm_quantize(const float* x, const float* w, int64_t n, float* tmp,
                                                     int8_t* q, int64_t n_padded) {
  return scale_quantize(x, rms_factor(sum_squares(x, n), n, kBitLinearEps), w, n, tmp, q, n_padded);
}

}  // namespace avx512

namespace avx2 {


MMFREE_TARGET_AVX2 inline double sum_squares(const float* x, int64_t n) {
  __m256d a0 = _mm256_setzero_pd(), a1 = _mm256_setzero_pd();  // lanes 0-3 and 4-7
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256d d0 = _mm256_cvtps_pd(_mm_loadu_ps(x + i)), d1 = _mm256_cvtps_pd(_mm_loadu_ps(x + i + 4));
    a0 = _mm256_fmadd_pd(d0, d0, a0);
    a1 = _mm256_fmadd_pd(d1, d1, a1);
  }
  if (i < n) {
    float buf[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    std::memcpy(buf, x + i, size_t(n - i) * sizeof(float));
    const __m256d d0 = _mm256_cvtps_pd(_mm_loadu_ps(buf)), d1 = _mm256_cvtps_pd(_mm_loadu_ps(buf + 4));
    a0 = _mm256_fmadd_pd(d0, d0, a0);
    a1 = _mm256_fmadd_pd(d1, d1, a1);
  }
  const __m256d a = _mm256_add_pd(a0, a1);
  const __m128d b = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
  return _mm_cvtsd_f64(b) + _mm_cvtsd_f64(_mm_unpackhi_pd(b, b));
}

MMFREE_TARGET_AVX2 inline float scale_quantize(const float* x, float rs, const float* w, int64_t n, float* tmp,
                                                 int8_t* q, int64_t n_padded) {
  const __m256 r = _mm256_set1_ps(rs);
  const __m256 abs_mask = _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff));
  __m256 amax = _mm256_setzero_ps();
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 y = _mm256_mul_ps(_mm256_mul_ps(_mm256_loadu_ps(x + i), r), _mm256_loadu_ps(w + i));
    _mm256_storeu_ps(tmp + i, y);
    amax = _mm256_max_ps(amax, _mm256_and_ps(y, abs_mask));
  }
  float a8[8];
  _mm256_storeu_ps(a8, amax);
  float a = 0;
  for (float v : a8) a = std::max(a, v);
  for (; i < n; ++i) {
    tmp[i] = x[i] * rs * w[i];
    a = std::max(a, std::fabs(tmp[i]));
  }
  const float s = 127.0f / std::max(a, 1e-5f);
  const __m256 vs = _mm256_set1_ps(s), half = _mm256_set1_ps(0.5f), one = _mm256_set1_ps(1.0f);
  const __m256 lo = _mm256_set1_ps(-128.0f), hi = _mm256_set1_ps(127.0f);
  i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m256 v = _mm256_mul_ps(_mm256_loadu_ps(tmp + i), vs);
    const __m256 t = _mm256_round_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __m256 up = _mm256_cmp_ps(_mm256_and_ps(v, abs_mask), _mm256_add_ps(_mm256_and_ps(t, abs_mask), half), _CMP_GE_OQ);
    const __m256 sign1 = _mm256_or_ps(_mm256_andnot_ps(abs_mask, v), one);
    const __m256 rv = _mm256_min_ps(_mm256_max_ps(_mm256_add_ps(t, _mm256_and_ps(up, sign1)), lo), hi);
    const __m256i i32 = _mm256_cvttps_epi32(rv);
    const __m128i i16 = _mm_packs_epi32(_mm256_castsi256_si128(i32), _mm256_extracti128_si256(i32, 1));
    _mm_storel_epi64((__m128i*)(q + i), _mm_packs_epi16(i16, i16));
  }
  for (; i < n; ++i) q[i] = int8_t(std::clamp(std::round(tmp[i] * s), -128.0f, 127.0f));
  if (n_padded > n) std::memset(q + n, 0, size_t(n_padded - n));
  return s;
}

MMFREE_TARGET_AVX2 inline float rmsnorm_quantize(const float* x, const float* w, int64_t n, float* tmp, int8_t* q,
                                                   int64_t n_padded) {
  return scale_quantize(x, rms_factor(sum_squares(x, n), n, kBitLinearEps), w, n, tmp, q, n_padded);
}

}  // namespace avx2

}  // namespace mmfree::kernels

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__
