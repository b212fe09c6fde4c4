// mmfree: AVX-VNNI ternary kernels on the strip layouts, for CPUs that have the VEX-encoded
// vpdpbusd on 256-bit registers but no AVX-512 (Intel's client cores since Alder Lake, its
// E-core Xeons; AMD Zen 5 has it too, and runs its AVX-512 kernels).
//
// vpdpbusd adds the 4 products of unsigned digits and signed activations into each int32 lane in
// one instruction, where AVX2 alone takes vpmaddubsw, an int16 add and a widening vpmaddwd
// (ternary_avx2.hpp). Chunks, planes and tiles are the AVX2 direct kernels': each chunk is decoded
// in registers once per tile of tokens and multiplied against every token of it.
//  - TQ2: one shift by 4 per chunk half. Planes 0 and 2 (u & 3, (u >> 4) & 3) add into one sum per
//    token, planes 1 and 3 (u & 12, (u >> 4) & 12: the digits times 4) into another, shifted back
//    at the store (exact: a multiple of 4). Two sums per half and token, each 2 vpdpbusd deep per
//    chunk, so a tile of one token is not bound by the instruction's latency (tiles of 3-4 tokens
//    have one sum each: tile_tq2).
//  - TQ1: the AVX2 kernels' digits times 27 (tq1_planes_times27); planes 0-2 and 3-4 in two sums,
//    their total times the inverse of 27 modulo 2^32 at the store (exact whatever the int32 sums
//    wrapped to).
// One core of AMD Zen 5 (which has AVX-VNNI), a 1024 x 1024 matrix in L2, GMAC/s at tiles of 1 /
// 2 / 3 / 4 tokens: TQ2 110 / 176 / 145 / 170 against the AVX2 direct kernel's 107 / 132 / 129,
// TQ1 57 / 89 / 104 / 109 against 44 / 62 / 73.
#pragma once

#if defined(__x86_64__)
#include <cpuid.h>
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mmfree/kernels/simd_warnings.hpp"
#include "mmfree/kernels/strip_loop.hpp"
#include "mmfree/kernels/ternary_avx2.hpp"
#include "mmfree/ternary_format.hpp"

MMFREE_SIMD_WARNINGS_PUSH

#define MMFREE_TARGET_AVX_VNNI __attribute__((target("avx2,fma,avxvnni")))

namespace mmfree::kernels::avx_vnni {

// CPUID leaf 7, subleaf 1, EAX bit 4 (compilers differ in what __builtin_cpu_supports knows).
inline bool available() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  return __get_cpuid_count(7, 1, &a, &b, &c, &d) && ((a >> 4) & 1);
}

// Tokens per tile, at most.
inline constexpr int kTile = 4;
// TQ2's sums of planes 1 and 3 in tiles of 1 or 2 tokens grow by at most 2 x 4 x 8 x 128 per
// chunk: rows of up to this many (padded) columns keep them below 2^31; longer rows take the AVX2
// kernel.
inline constexpr int64_t kMaxCols = 16 * (((int64_t(1) << 31) - 1) / (2 * 4 * 8 * 128));
static_assert(kMaxCols / 16 * (2 * 4 * 8 * 128) < (int64_t(1) << 31));

// acc += d (u8) . (the 4 bytes at x, in every lane). Written out: GCC 12 copied the accumulator
// around every _mm256_dpbusd_avx_epi32 and spilled a tile's sums to the stack, and it hoisted
// the broadcasts shared by a chunk's two halves into registers the tile needs for its sums.
MMFREE_TARGET_AVX_VNNI inline void dot(__m256i& acc, __m256i d, const int8_t* x) {
  __m256i b;
  __asm__("vpbroadcastd %3, %1\n\t%{vex%} vpdpbusd %1, %2, %0"
          : "+x"(acc), "=&x"(b)
          : "x"(d), "m"(*reinterpret_cast<const int32_t*>(x)));
}

// Strip s of a TQ2 matrix against T tokens. S = 2 (tiles of 1 or 2 tokens): one shift per chunk
// half, planes 0 + 2 and 4 x (planes 1 + 3) in two sums per token, each 2 vpdpbusd deep per
// chunk half. S = 1 (3 or 4 tokens, whose 2 sums each would not fit the 16 registers): the
// planes shifted down (3 shifts) into one sum per token, 4 deep, with 3-4 tokens to interleave.
template <int T, int S>
MMFREE_TARGET_AVX_VNNI inline void tile_tq2(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                            const int32_t* qsum, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  const uint8_t* w = W.strip(s);
  const __m256i m3 = _mm256_set1_epi8(3), m12 = _mm256_set1_epi8(12);
  __m256i acc[2][T][S];  // [chunk half][token][sum]
  #pragma GCC unroll 2
  for (int h = 0; h < 2; ++h)
    #pragma GCC unroll 4
    for (int j = 0; j < T; ++j)
      #pragma GCC unroll 2
      for (int k = 0; k < S; ++k) acc[h][j][k] = _mm256_setzero_si256();
  for (int64_t c = 0; c < W.chunks; ++c) {
    #pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      const __m256i u = _mm256_loadu_si256((const __m256i*)(w + c * 64 + 32 * h));
      __m256i d[4];
      if constexpr (S == 2) {
        const __m256i v = _mm256_srli_epi16(u, 4);
        d[0] = _mm256_and_si256(u, m3), d[1] = _mm256_and_si256(u, m12);
        d[2] = _mm256_and_si256(v, m3), d[3] = _mm256_and_si256(v, m12);
      } else {
        avx2::tq2_planes(u, d);
      }
      #pragma GCC unroll 4
      for (int j = 0; j < T; ++j) {
        const int8_t* x = Q + j * ldq + 16 * c;
        #pragma GCC unroll 4
        for (int p = 0; p < 4; ++p) dot(acc[h][j][S == 2 ? p % 2 : 0], d[p], x + 4 * p);
      }
    }
  }
  #pragma GCC unroll 4
  for (int j = 0; j < T; ++j) {
    __m256i r[2];
    #pragma GCC unroll 2
    for (int h = 0; h < 2; ++h)
      r[h] = S == 2 ? _mm256_add_epi32(acc[h][j][0], _mm256_srai_epi32(acc[h][j][S - 1], 2)) : acc[h][j][0];
    avx2::store_rows(out + j * ldo, r[0], r[1], qsum[j], s, r0, r1);
  }
}

// Strip s of a TQ1 matrix against T tokens.
template <int T>
MMFREE_TARGET_AVX_VNNI inline void tile_tq1(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                            const int32_t* qsum, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  const uint8_t* w = W.strip(s);
  __m256i a[2][T], b[2][T];  // [chunk half][token]: 27 x planes 0-2, 27 x planes 3-4
  #pragma GCC unroll 2
  for (int h = 0; h < 2; ++h)
    #pragma GCC unroll 4
    for (int j = 0; j < T; ++j) a[h][j] = b[h][j] = _mm256_setzero_si256();
  for (int64_t c = 0; c < W.chunks; ++c) {
    #pragma GCC unroll 2
    for (int h = 0; h < 2; ++h) {
      __m256i d[5];
      avx2::tq1_planes_times27(_mm256_loadu_si256((const __m256i*)(w + c * 64 + 32 * h)), d);
      #pragma GCC unroll 4
      for (int j = 0; j < T; ++j) {
        const int8_t* x = Q + j * ldq + 20 * c;
        dot(a[h][j], d[0], x), dot(a[h][j], d[1], x + 4), dot(a[h][j], d[2], x + 8);
        dot(b[h][j], d[3], x + 12), dot(b[h][j], d[4], x + 16);
      }
    }
  }
  const __m256i inv = _mm256_set1_epi32(int32_t(avx2::kInverseOf27));
  #pragma GCC unroll 4
  for (int j = 0; j < T; ++j)
    avx2::store_rows(out + j * ldo, _mm256_mullo_epi32(_mm256_add_epi32(a[0][j], b[0][j]), inv),
                     _mm256_mullo_epi32(_mm256_add_epi32(a[1][j], b[1][j]), inv), qsum[j], s, r0, r1);
}

template <int T>
MMFREE_TARGET_AVX_VNNI inline void tile(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                        const int32_t* qsum, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (W.format == TernaryFormat::TQ2) tile_tq2<T, T <= 2 ? 2 : 1>(W, s, Q, ldq, qsum, out, ldo, r0, r1);
  else tile_tq1<T>(W, s, Q, ldq, qsum, out, ldo, r0, r1);
}

// Same contract as ternary_gemm_scalar: one token streams the strips in tiles of one, several in
// blocks of avx2::kDirectTokenBlock, each strip under evenly sized tiles of at most kTile.
MMFREE_TARGET_AVX_VNNI inline void ternary_gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                                int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (W.format == TernaryFormat::TQ2 && W.padded_cols() > kMaxCols)
    return avx2::ternary_gemm_direct(W, Q, ldq, n, out, ldo, r0, r1);
  thread_local std::vector<int32_t> qsum;
  qsum.resize(size_t(n));
  for (int64_t t = 0; t < n; ++t) qsum[size_t(t)] = avx2::sum_q(Q + t * ldq, W.padded_cols());
  strips_by_even_tiles<kTile>(n, avx2::kDirectTokenBlock, kTile, r0, r1, [&](auto T, int64_t s, int64_t t) {
    tile<decltype(T)::value>(W, s, Q + t * ldq, ldq, qsum.data() + t, out + t * ldo, ldo, r0, r1);
  });
}

}  // namespace mmfree::kernels::avx_vnni

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__
