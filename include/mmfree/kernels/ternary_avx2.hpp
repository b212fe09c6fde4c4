// mmfree: AVX2 ternary kernels (for CPUs without AVX-512 VNNI).
//
// vpmaddubsw multiplies unsigned digits d in {0,1,2} by signed int8 activations and adds
// pairs into int16: |sum| <= 2 * 2 * 128 = 512, so nothing saturates, and up to 64 such
// vectors can be added in int16 before widening. sum w*q = sum d*q - sum q, as in AVX-512.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "mmfree/kernels/row_driver.hpp"
#include "mmfree/kernels/simd_warnings.hpp"
#include "mmfree/ternary_format.hpp"

MMFREE_SIMD_WARNINGS_PUSH

#define MMFREE_TARGET_AVX2 __attribute__((target("avx2,fma")))

namespace mmfree::kernels::avx2 {

MMFREE_TARGET_AVX2 inline int32_t hsum(__m256i v) {
  __m128i s = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
  s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
  return _mm_cvtsi128_si32(s);
}

MMFREE_TARGET_AVX2 inline int32_t sum_q(const int8_t* q, int64_t n) {
  __m256i acc = _mm256_setzero_si256();
  const __m256i ones8 = _mm256_set1_epi8(1), ones16 = _mm256_set1_epi16(1);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32)
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(ones8, _mm256_loadu_si256((const __m256i*)(q + i))), ones16));
  int32_t s = hsum(acc);
  for (; i < n; ++i) s += q[i];
  return s;
}

// One row against one token, TQ2: each 64-byte block is two 32-byte halves.
MMFREE_TARGET_AVX2 inline int32_t dot_tq2(const uint8_t* w, const int8_t* q, int64_t nblocks) {
  const __m256i m3 = _mm256_set1_epi8(3), ones16 = _mm256_set1_epi16(1);
  __m256i acc = _mm256_setzero_si256();
  for (int64_t b = 0; b < nblocks; ++b, w += 64, q += 256) {
    __m256i s16 = _mm256_setzero_si256();
    for (int h = 0; h < 2; ++h) {
      const __m256i raw = _mm256_loadu_si256((const __m256i*)(w + 32 * h));
      const int8_t* x = q + 32 * h;
      s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(raw, m3), _mm256_loadu_si256((const __m256i*)(x))));
      s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(raw, 2), m3),
                                                       _mm256_loadu_si256((const __m256i*)(x + 64))));
      s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(raw, 4), m3),
                                                       _mm256_loadu_si256((const __m256i*)(x + 128))));
      s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(_mm256_and_si256(_mm256_srli_epi16(raw, 6), m3),
                                                       _mm256_loadu_si256((const __m256i*)(x + 192))));
    }
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s16, ones16));  // 8 int16 terms of <= 512: no overflow
  }
  return hsum(acc);
}

// TQ1 digit: d = [m >= 86] + [m >= 171], unsigned, via max+cmpeq (which give -1 for true).
MMFREE_TARGET_AVX2 inline __m256i tq1_digit_of(__m256i m) {
  const __m256i c86 = _mm256_set1_epi8(86), c171 = _mm256_set1_epi8(char(171));
  const __m256i ge86 = _mm256_cmpeq_epi8(_mm256_max_epu8(m, c86), m);
  const __m256i ge171 = _mm256_cmpeq_epi8(_mm256_max_epu8(m, c171), m);
  return _mm256_sub_epi8(_mm256_setzero_si256(), _mm256_add_epi8(ge86, ge171));
}

MMFREE_TARGET_AVX2 inline int32_t dot_tq1(const uint8_t* w, const int8_t* q, int64_t nblocks) {
  const __m256i ones16 = _mm256_set1_epi16(1);
  __m256i acc = _mm256_setzero_si256();
  for (int64_t b = 0; b < nblocks; ++b, w += 32, q += 160) {
    __m256i m = _mm256_loadu_si256((const __m256i*)w);
    __m256i s16 = _mm256_setzero_si256();
    for (int k = 0; k < 5; ++k) {
      s16 = _mm256_add_epi16(s16, _mm256_maddubs_epi16(tq1_digit_of(m), _mm256_loadu_si256((const __m256i*)(q + 32 * k))));
      m = _mm256_add_epi8(_mm256_add_epi8(m, m), m);
    }
    acc = _mm256_add_epi32(acc, _mm256_madd_epi16(s16, ones16));
  }
  return hsum(acc);
}

// Same contract as ternary_gemm_scalar.
inline void ternary_gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out, int64_t ldo,
                         int64_t r0, int64_t r1) {
  gemm_row_by_row<sum_q, dot_tq2, dot_tq1>(W, Q, ldq, n, out, ldo, r0, r1);
}

}  // namespace mmfree::kernels::avx2

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__
