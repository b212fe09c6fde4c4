// mmfree: AVX-512 (BW + VNNI) ternary kernels.
//
// Digits d = w + 1 are in {0, 1, 2}, so vpdpbusd (unsigned x signed bytes, 4-way sums into
// int32) computes sum d*q exactly; the result is sum w*q = sum d*q - sum q. No weight
// multiplication happens: d is a selector, and the instruction is the CPU's fastest adder
// of int8 terms.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mmfree/kernels/simd_warnings.hpp"
#include "mmfree/ternary_format.hpp"

MMFREE_SIMD_WARNINGS_PUSH

#define MMFREE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

namespace mmfree::kernels::avx512 {

// How far ahead single-token kernels prefetch weights, in bytes from the address being
// read. Measured end to end on the 1.3B model (2 threads, 2 MiB pages): 2048 B 14.4 ms per
// token, 3072 B 13.5 ms, 4096 B 19 ms, 8192 B 24 ms. Multiples of 4 KiB collide with the
// demand loads in the L1 sets (4K aliasing); shorter distances hide less latency.
inline constexpr int64_t kPrefetchBytes = 3072;
// Per matrix: at least the same block of the next 4-row tile, so that with long rows each
// row's prefetch stream stays ahead of the next row's loads; never a multiple of 4 KiB.
inline int64_t prefetch_distance(const TernaryMatrix& W) {
  int64_t d = std::max<int64_t>(kPrefetchBytes, 4 * W.row_bytes);
  if (d % 4096 == 0) d += 1024;
  return d;
}

MMFREE_TARGET_AVX512 inline int32_t sum_q(const int8_t* q, int64_t n) {
  // sum of int8 = dpbusd with u8 ones.
  __m512i acc = _mm512_setzero_si512();
  const __m512i ones = _mm512_set1_epi8(1);
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) acc = _mm512_dpbusd_epi32(acc, ones, _mm512_loadu_si512(q + i));
  int32_t s = _mm512_reduce_add_epi32(acc);
  for (; i < n; ++i) s += q[i];
  return s;
}

// An R x T tile of accumulators: cleared, and stored as out[j * ldo + i] = sum - qsum[j].
template <int R, int T>
MMFREE_TARGET_AVX512 inline void zero_tile(__m512i (*acc)[T]) {
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_si512();
}
template <int R, int T>
MMFREE_TARGET_AVX512 inline void store_tile(__m512i (*acc)[T], const int32_t* qsum, int32_t* out, int64_t ldo) {
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < T; ++j) out[j * ldo + i] = _mm512_reduce_add_epi32(acc[i][j]) - qsum[j];
}

// ---- TQ2: 64 bytes -> 4 x 64 digits, one shift and one mask each ---------------------

template <int K>
MMFREE_TARGET_AVX512 inline __m512i tq2_digits(__m512i raw) {
  const __m512i m3 = _mm512_set1_epi8(3);
  if constexpr (K == 0) return _mm512_and_si512(raw, m3);
  else return _mm512_and_si512(_mm512_srli_epi16(raw, 2 * K), m3);
}

template <int K, int R, int T>
MMFREE_TARGET_AVX512 inline void tq2_tile_digit(const __m512i* raw, const int8_t* Q, int64_t ldq, int64_t b,
                                                __m512i (*acc)[T]) {
  __m512i d[R];
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) d[i] = tq2_digits<K>(raw[i]);
  #pragma GCC unroll 16
  for (int j = 0; j < T; ++j) {
    const __m512i x = _mm512_loadu_si512(Q + j * ldq + b * 256 + K * 64);
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], d[i], x);
  }
}

// R rows x T tokens register tile; acc[i][j] accumulates row r+i against token t+j.
template <int R, int T>
MMFREE_TARGET_AVX512 inline void tq2_tile(const TernaryMatrix& W, int64_t r, const int8_t* Q, int64_t ldq,
                                          const int32_t* qsum, int32_t* out, int64_t ldo) {
  __m512i acc[R][T];
  zero_tile<R, T>(acc);
  const uint8_t* w[R];
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) w[i] = W.row(r + i);
  for (int64_t b = 0; b < W.blocks_per_row; ++b) {
    __m512i raw[R];
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i) raw[i] = _mm512_loadu_si512(w[i] + b * 64);
    tq2_tile_digit<0, R, T>(raw, Q, ldq, b, acc);
    tq2_tile_digit<1, R, T>(raw, Q, ldq, b, acc);
    tq2_tile_digit<2, R, T>(raw, Q, ldq, b, acc);
    tq2_tile_digit<3, R, T>(raw, Q, ldq, b, acc);
  }
  store_tile<R, T>(acc, qsum, out + r, ldo);
}

// Single token: two accumulators per row so consecutive vpdpbusd do not wait on each other.
template <int R>
MMFREE_TARGET_AVX512 inline void tq2_gemv_tile(const TernaryMatrix& W, int64_t r, const int8_t* q, int32_t qsum,
                                               int32_t* out) {
  __m512i a0[R], a1[R];
  const uint8_t* w[R];
  const int64_t pf = prefetch_distance(W);
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) a0[i] = a1[i] = _mm512_setzero_si512(), w[i] = W.row(r + i);
  for (int64_t b = 0; b < W.blocks_per_row; ++b) {
    const __m512i x0 = _mm512_loadu_si512(q + b * 256), x1 = _mm512_loadu_si512(q + b * 256 + 64);
    const __m512i x2 = _mm512_loadu_si512(q + b * 256 + 128), x3 = _mm512_loadu_si512(q + b * 256 + 192);
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      // Rows are contiguous: fetch a few rows ahead, so several DRAM requests are in
      // flight while this tile computes.
      _mm_prefetch((const char*)(w[i] + b * 64 + pf), _MM_HINT_T0);
      const __m512i raw = _mm512_loadu_si512(w[i] + b * 64);
      a0[i] = _mm512_dpbusd_epi32(a0[i], tq2_digits<0>(raw), x0);
      a1[i] = _mm512_dpbusd_epi32(a1[i], tq2_digits<1>(raw), x1);
      a0[i] = _mm512_dpbusd_epi32(a0[i], tq2_digits<2>(raw), x2);
      a1[i] = _mm512_dpbusd_epi32(a1[i], tq2_digits<3>(raw), x3);
    }
  }
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) out[r + i] = _mm512_reduce_add_epi32(_mm512_add_epi32(a0[i], a1[i])) - qsum;
}

// ---- TQ1: 32-byte blocks of 160; two blocks fill one register ---------------------------
//
// Digit k of byte q: m = q * 3^k mod 256 (byte adds: m <- m + m + m), d = [m >= 86] + [m >= 171].
// The activations are re-laid once per call so that the two blocks of a register read one
// contiguous 64-byte vector per digit: for block pair p, digit k, bytes
// [q(2p*160 + k*32 ...+32), q((2p+1)*160 + k*32 ...+32)].

MMFREE_TARGET_AVX512 inline __m512i tq1_digit_of(__m512i m) {
  const __m512i one = _mm512_set1_epi8(1);
  const __mmask64 ge86 = _mm512_cmpge_epu8_mask(m, _mm512_set1_epi8(86));
  const __mmask64 ge171 = _mm512_cmpge_epu8_mask(m, _mm512_set1_epi8(char(171)));
  return _mm512_mask_add_epi8(_mm512_maskz_mov_epi8(ge86, one), ge171, _mm512_maskz_mov_epi8(ge86, one), one);
}
MMFREE_TARGET_AVX512 inline __m512i times3(__m512i m) { return _mm512_add_epi8(_mm512_add_epi8(m, m), m); }

// Re-lay one token's activations for TQ1 (see above). `dst` holds blocks*160 bytes.
inline void tq1_relayout(const int8_t* q, int64_t blocks, int8_t* dst) {
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2)
    #pragma GCC unroll 16
    for (int k = 0; k < 5; ++k) {
      std::memcpy(dst + b * 160 + k * 64, q + b * 160 + k * 32, 32);
      std::memcpy(dst + b * 160 + k * 64 + 32, q + (b + 1) * 160 + k * 32, 32);
    }
  if (b < blocks) std::memcpy(dst + b * 160, q + b * 160, 160);  // odd last block: as is
}

template <int R, int T>
MMFREE_TARGET_AVX512 inline void tq1_tile(const TernaryMatrix& W, int64_t r, const int8_t* Q, int64_t ldq,
                                          const int32_t* qsum, int32_t* out, int64_t ldo) {
  __m512i acc[R][T];
  zero_tile<R, T>(acc);
  const uint8_t* w[R];
  #pragma GCC unroll 16
  for (int i = 0; i < R; ++i) w[i] = W.row(r + i);
  [[maybe_unused]] const int64_t pf = prefetch_distance(W);  // single-token tiles only
  const int64_t nb = W.blocks_per_row;
  int64_t b = 0;
  for (; b + 2 <= nb; b += 2) {
    __m512i m[R];
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i) {
      if constexpr (T == 1) _mm_prefetch((const char*)(w[i] + b * 32 + pf), _MM_HINT_T0);
      m[i] = _mm512_loadu_si512(w[i] + b * 32);
    }
    #pragma GCC unroll 16
    for (int k = 0; k < 5; ++k) {
      __m512i d[R];
      #pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        d[i] = tq1_digit_of(m[i]);
        m[i] = times3(m[i]);
      }
      #pragma GCC unroll 16
      for (int j = 0; j < T; ++j) {
        const __m512i x = _mm512_loadu_si512(Q + j * ldq + b * 160 + k * 64);
        #pragma GCC unroll 16
        for (int i = 0; i < R; ++i) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], d[i], x);
      }
    }
  }
  if (b < nb) {  // one 32-byte block left: the upper half of each register is zero
    __m512i m[R];
    #pragma GCC unroll 16
    for (int i = 0; i < R; ++i) m[i] = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)(w[i] + b * 32)));
    #pragma GCC unroll 16
    for (int k = 0; k < 5; ++k) {
      __m512i d[R];
      #pragma GCC unroll 16
      for (int i = 0; i < R; ++i) {
        d[i] = tq1_digit_of(m[i]);
        m[i] = times3(m[i]);
      }
      #pragma GCC unroll 16
      for (int j = 0; j < T; ++j) {
        const __m512i x = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)(Q + j * ldq + b * 160 + k * 32)));
        #pragma GCC unroll 16
        for (int i = 0; i < R; ++i) acc[i][j] = _mm512_dpbusd_epi32(acc[i][j], d[i], x);
      }
    }
  }
  store_tile<R, T>(acc, qsum, out + r, ldo);
}

// ---- drivers --------------------------------------------------------------------------

// Rows [r0, r1) against tokens [t, t+T): R-row tiles, then single rows.
template <int R, int T>
MMFREE_TARGET_AVX512 inline void run_tiles(bool tq1, const TernaryMatrix& W, const int8_t* A, int64_t lda,
                                           const int32_t* qsum, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  int64_t r = r0;
  for (; r + R <= r1; r += R)
    tq1 ? tq1_tile<R, T>(W, r, A, lda, qsum, out, ldo) : tq2_tile<R, T>(W, r, A, lda, qsum, out, ldo);
  for (; r < r1; ++r)
    tq1 ? tq1_tile<1, T>(W, r, A, lda, qsum, out, ldo) : tq2_tile<1, T>(W, r, A, lda, qsum, out, ldo);
}

MMFREE_TARGET_AVX512 inline void ternary_gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                              int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  const int64_t kp = W.padded_cols();
  thread_local std::vector<int32_t> qsum;
  thread_local std::vector<int8_t> relaid;
  qsum.resize(size_t(n));
  const bool tq1 = W.format == TernaryFormat::TQ1;
  const int8_t* A = Q;
  int64_t lda = ldq;
  if (tq1) {
    relaid.resize(size_t(n * kp) + 64);
    for (int64_t t = 0; t < n; ++t) tq1_relayout(Q + t * ldq, W.blocks_per_row, relaid.data() + t * kp);
    A = relaid.data();
    lda = kp;
  }
  for (int64_t t = 0; t < n; ++t) qsum[size_t(t)] = sum_q(Q + t * ldq, kp);

  if (n == 1 && !tq1) {
    int64_t r = r0;
    for (; r + 4 <= r1; r += 4) tq2_gemv_tile<4>(W, r, A, qsum[0], out);
    for (; r < r1; ++r) tq2_gemv_tile<1>(W, r, A, qsum[0], out);
    return;
  }
  // 4 rows x 6 tokens (TQ2) or x 4 (TQ1): 24 or 16 accumulators, digits, raw bytes and one
  // activation register, within the 32 registers.
  // Rows go in chunks whose weights stay in L2 while every token tile passes over them, so
  // each weight byte comes from memory once per call instead of once per tile.
  const int64_t chunk = std::max<int64_t>(4, (int64_t(256) << 10) / std::max<int64_t>(W.row_bytes, 1) / 4 * 4);
  for (int64_t c0 = r0; c0 < r1; c0 += chunk) {
    const int64_t c1 = std::min(r1, c0 + chunk);
    int64_t t = 0;
    if (!tq1)  // TQ2 digits cost less to unpack: 4 x 6 tiles (24 accumulators) fit in registers
      for (; t + 6 <= n; t += 6) run_tiles<4, 6>(false, W, A + t * lda, lda, qsum.data() + t, out + t * ldo, ldo, c0, c1);
    for (; t + 4 <= n; t += 4) run_tiles<4, 4>(tq1, W, A + t * lda, lda, qsum.data() + t, out + t * ldo, ldo, c0, c1);
    for (; t + 2 <= n; t += 2) run_tiles<4, 2>(tq1, W, A + t * lda, lda, qsum.data() + t, out + t * ldo, ldo, c0, c1);
    for (; t < n; ++t) run_tiles<4, 1>(tq1, W, A + t * lda, lda, qsum.data() + t, out + t * ldo, ldo, c0, c1);
  }
}

}  // namespace mmfree::kernels::avx512

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__
