// mmfree: AVX2 ternary kernels on the strip layouts (for CPUs without AVX-512 VNNI).
//
// A chunk of a strip is two registers: rows 0-7 and rows 8-15, 4 digit bytes per row. vpmaddubsw
// multiplies the unsigned digits d in {0, 1, 2} by 4 activation bytes broadcast to every row and
// adds pairs into int16 (|sum| <= 2 * 2 * 128 = 512, so nothing saturates); vpmaddwd with ones then
// adds each row's two halves into int32. sum w*q = sum d*q - sum q, as on every ISA.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mmfree/kernels/simd_warnings.hpp"
#include "mmfree/kernels/strip_loop.hpp"
#include "mmfree/ternary_format.hpp"

MMFREE_SIMD_WARNINGS_PUSH

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

MMFREE_TARGET_AVX2 inline __m256i bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm256_set1_epi32(v);
}
// Per row (int32 lane): the sum of its 4 digit x activation products.
MMFREE_TARGET_AVX2 inline __m256i dot4(__m256i d, __m256i x) {
  return _mm256_madd_epi16(_mm256_maddubs_epi16(d, x), _mm256_set1_epi16(1));
}

template <int P>
MMFREE_TARGET_AVX2 inline __m256i tq2_plane(__m256i u) {
  const __m256i m3 = _mm256_set1_epi8(3);
  if constexpr (P == 0) return _mm256_and_si256(u, m3);
  else return _mm256_and_si256(_mm256_srli_epi16(u, 2 * P), m3);
}

// TQ1, one base-3 level: digit of weight w is [r >= w] + [r >= 2w] (unsigned compares built from
// max + cmpeq, which give -1 for true); r keeps the rest.
MMFREE_TARGET_AVX2 inline __m256i tq1_level(__m256i& r, int w) {
  const __m256i vw = _mm256_set1_epi8(char(w)), v2w = _mm256_set1_epi8(char(2 * w));
  const __m256i ge1 = _mm256_cmpeq_epi8(_mm256_max_epu8(r, vw), r), ge2 = _mm256_cmpeq_epi8(_mm256_max_epu8(r, v2w), r);
  r = _mm256_sub_epi8(_mm256_sub_epi8(r, _mm256_and_si256(ge1, vw)), _mm256_and_si256(ge2, vw));
  return _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), ge1), ge2);
}
MMFREE_TARGET_AVX2 inline void tq1_planes(__m256i v, __m256i d[5]) {
  d[0] = tq1_level(v, 81);
  d[1] = tq1_level(v, 27);
  d[2] = tq1_level(v, 9);
  d[3] = tq1_level(v, 3);
  d[4] = v;
}

// TQ1, one token: a byte v < 243's five digits, each times 27, for vpmaddubsw. Rests by minima
// of wrapped differences (x - k wraps above x where x < k): r = v mod 81, s = r mod 27,
// t = s mod 9; then 27 d0 from (v - r) / 16 (0, 5 or 10) and 27 d3, 27 d4 from t < 9 by
// byte lookups, 27 d1 = r - s and 27 d2 = 3 (s - t). 22 ops where the comparisons (tq1_planes)
// take 40. With every digit times 27 (at most 54), two planes' vpmaddubsw pairs add in int16
// without saturating (2 x 2 x 54 x 128 = 27,648), all five planes share one int32 sum, and that
// sum, 27 times the true one modulo 2^32, times the inverse of 27 modulo 2^32 is the true sum.
inline constexpr uint32_t kInverseOf27 = 0x684bda13u;  // 27 * kInverseOf27 == 1 modulo 2^32
static_assert(uint32_t(27u * kInverseOf27) == 1u);
MMFREE_TARGET_AVX2 inline __m256i min_rest(__m256i x, int k) {
  const __m256i m = _mm256_min_epu8(x, _mm256_sub_epi8(x, _mm256_set1_epi8(char(k))));
  return _mm256_min_epu8(m, _mm256_sub_epi8(x, _mm256_set1_epi8(char(2 * k))));
}
MMFREE_TARGET_AVX2 inline void tq1_planes_times27(__m256i v, __m256i d[5]) {
  const __m256i d0 = _mm256_setr_epi8(0, 0, 0, 0, 0, 27, 0, 0, 0, 0, 54, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 27, 0, 0, 0, 0,
                                      54, 0, 0, 0, 0, 0);
  const __m256i d3 = _mm256_setr_epi8(0, 0, 0, 27, 27, 27, 54, 54, 54, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 27, 27, 27, 54,
                                      54, 54, 0, 0, 0, 0, 0, 0, 0);
  const __m256i d4 = _mm256_setr_epi8(0, 27, 54, 0, 27, 54, 0, 27, 54, 0, 0, 0, 0, 0, 0, 0, 0, 27, 54, 0, 27, 54, 0,
                                      27, 54, 0, 0, 0, 0, 0, 0, 0);
  const __m256i r = min_rest(v, 81), s = min_rest(r, 27), t = min_rest(s, 9);
  const __m256i hi = _mm256_and_si256(_mm256_srli_epi16(_mm256_sub_epi8(v, r), 4), _mm256_set1_epi8(0x0f));
  const __m256i e = _mm256_sub_epi8(s, t);
  d[0] = _mm256_shuffle_epi8(d0, hi);
  d[1] = _mm256_sub_epi8(r, s);
  d[2] = _mm256_add_epi8(_mm256_add_epi8(e, e), e);
  d[3] = _mm256_shuffle_epi8(d3, t);
  d[4] = _mm256_shuffle_epi8(d4, t);
}
// 27 times one chunk half's products, per row, from its planes times 27 (x: the chunk's 20
// activation bytes, broadcast 4 at a time).
MMFREE_TARGET_AVX2 inline __m256i tq1_products_times27(const __m256i d[5], const __m256i x[5]) {
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i p01 = _mm256_add_epi16(_mm256_maddubs_epi16(d[0], x[0]), _mm256_maddubs_epi16(d[1], x[1]));
  const __m256i p23 = _mm256_add_epi16(_mm256_maddubs_epi16(d[2], x[2]), _mm256_maddubs_epi16(d[3], x[3]));
  return _mm256_add_epi32(_mm256_add_epi32(_mm256_madd_epi16(p01, ones), _mm256_madd_epi16(p23, ones)),
                          _mm256_madd_epi16(_mm256_maddubs_epi16(d[4], x[4]), ones));
}
MMFREE_TARGET_AVX2 inline __m256i tq1_dot_times27(__m256i v, const __m256i x[5]) {
  __m256i d[5];
  tq1_planes_times27(v, d);
  return tq1_products_times27(d, x);
}

// Rows of strip s inside [r0, r1) stored from the two int32 halves (rows 0-7, 8-15).
MMFREE_TARGET_AVX2 inline void store_rows(int32_t* out, __m256i lo, __m256i hi, int32_t qsum, int64_t s, int64_t r0,
                                          int64_t r1) {
  alignas(32) int32_t v[16];
  const __m256i qs = _mm256_set1_epi32(qsum);
  _mm256_store_si256((__m256i*)v, _mm256_sub_epi32(lo, qs));
  _mm256_store_si256((__m256i*)(v + 8), _mm256_sub_epi32(hi, qs));
  const int64_t base = s * kStripRows, b = std::max(r0, base), e = std::min(r1, base + kStripRows);
  for (int64_t r = b; r < e; ++r) out[r] = v[r - base];
}

// ---- one token: stream the strips -----------------------------------------------------------

MMFREE_TARGET_AVX2 inline void decode(const TernaryMatrix& W, const int8_t* q, int32_t qsum, int32_t* out, int64_t r0,
                                      int64_t r1) {
  const bool tq2 = W.format == TernaryFormat::TQ2;
  for (int64_t s = r0 / kStripRows; s * kStripRows < r1; ++s) {
    const uint8_t* w = W.strip(s);
    __m256i lo = _mm256_setzero_si256(), hi = _mm256_setzero_si256();
    if (tq2) {
      // Per half, two int16 accumulators of at most 2 x 512 per chunk: widened every 30 chunks.
      for (int64_t c0 = 0; c0 < W.chunks; c0 += 30) {
        __m256i a0 = _mm256_setzero_si256(), a1 = a0, b0 = a0, b1 = a0;
        for (int64_t c = c0; c < std::min(W.chunks, c0 + 30); ++c) {
          const __m256i u = _mm256_loadu_si256((const __m256i*)(w + c * 64));
          const __m256i v = _mm256_loadu_si256((const __m256i*)(w + c * 64 + 32));
          const int8_t* x = q + 16 * c;
          const __m256i x0 = bcast4(x), x1 = bcast4(x + 4), x2 = bcast4(x + 8), x3 = bcast4(x + 12);
          a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(tq2_plane<0>(u), x0));
          a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(tq2_plane<1>(u), x1));
          a0 = _mm256_add_epi16(a0, _mm256_maddubs_epi16(tq2_plane<2>(u), x2));
          a1 = _mm256_add_epi16(a1, _mm256_maddubs_epi16(tq2_plane<3>(u), x3));
          b0 = _mm256_add_epi16(b0, _mm256_maddubs_epi16(tq2_plane<0>(v), x0));
          b1 = _mm256_add_epi16(b1, _mm256_maddubs_epi16(tq2_plane<1>(v), x1));
          b0 = _mm256_add_epi16(b0, _mm256_maddubs_epi16(tq2_plane<2>(v), x2));
          b1 = _mm256_add_epi16(b1, _mm256_maddubs_epi16(tq2_plane<3>(v), x3));
        }
        const __m256i ones = _mm256_set1_epi16(1);
        lo = _mm256_add_epi32(lo, _mm256_add_epi32(_mm256_madd_epi16(a0, ones), _mm256_madd_epi16(a1, ones)));
        hi = _mm256_add_epi32(hi, _mm256_add_epi32(_mm256_madd_epi16(b0, ones), _mm256_madd_epi16(b1, ones)));
      }
    } else {
      for (int64_t c = 0; c < W.chunks; ++c) {
        __m256i x[5];
        for (int p = 0; p < 5; ++p) x[p] = bcast4(q + 20 * c + 4 * p);
        lo = _mm256_add_epi32(lo, tq1_dot_times27(_mm256_loadu_si256((const __m256i*)(w + c * 64)), x));
        hi = _mm256_add_epi32(hi, tq1_dot_times27(_mm256_loadu_si256((const __m256i*)(w + c * 64 + 32)), x));
      }
      const __m256i inv = _mm256_set1_epi32(int32_t(kInverseOf27));
      lo = _mm256_mullo_epi32(lo, inv), hi = _mm256_mullo_epi32(hi, inv);
    }
    store_rows(out, lo, hi, qsum, s, r0, r1);
  }
}

// ---- many tokens: planes unpacked once per strip, tiles of 6 tokens over them ----------------

// Group g (columns 4g .. 4g+3) of the strip at buf + 64 g: the same layout as the AVX-512 kernel's.
MMFREE_TARGET_AVX2 inline void unpack(const TernaryMatrix& W, int64_t s, uint8_t* buf) {
  const uint8_t* w = W.strip(s);
  for (int64_t c = 0; c < W.chunks; ++c)
    for (int h = 0; h < 2; ++h) {
      const __m256i u = _mm256_loadu_si256((const __m256i*)(w + c * 64 + 32 * h));
      if (W.format == TernaryFormat::TQ2) {
        uint8_t* g = buf + 4 * c * 64 + 32 * h;
        _mm256_store_si256((__m256i*)g, tq2_plane<0>(u));
        _mm256_store_si256((__m256i*)(g + 64), tq2_plane<1>(u));
        _mm256_store_si256((__m256i*)(g + 128), tq2_plane<2>(u));
        _mm256_store_si256((__m256i*)(g + 192), tq2_plane<3>(u));
      } else {
        __m256i d[5];
        tq1_planes(u, d);
        for (int p = 0; p < 5; ++p) _mm256_store_si256((__m256i*)(buf + (5 * c + p) * 64 + 32 * h), d[p]);
      }
    }
}

template <int T>
MMFREE_TARGET_AVX2 inline void tile(const uint8_t* buf, int64_t groups, const int8_t* Q, int64_t ldq,
                                    const int32_t* qsum, int32_t* out, int64_t ldo, int64_t s, int64_t r0, int64_t r1) {
  __m256i lo[T], hi[T];
  for (int j = 0; j < T; ++j) lo[j] = hi[j] = _mm256_setzero_si256();
  for (int64_t g = 0; g < groups; ++g) {
    const __m256i d0 = _mm256_load_si256((const __m256i*)(buf + 64 * g));
    const __m256i d1 = _mm256_load_si256((const __m256i*)(buf + 64 * g + 32));
    for (int j = 0; j < T; ++j) {
      const __m256i x = bcast4(Q + j * ldq + 4 * g);
      lo[j] = _mm256_add_epi32(lo[j], dot4(d0, x));
      hi[j] = _mm256_add_epi32(hi[j], dot4(d1, x));
    }
  }
  for (int j = 0; j < T; ++j) store_rows(out + j * ldo, lo[j], hi[j], qsum[j], s, r0, r1);
}

// Same contract as ternary_gemm_scalar.
MMFREE_TARGET_AVX2 inline void ternary_gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                            int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (n == 1) {
    decode(W, Q, sum_q(Q, W.padded_cols()), out, r0, r1);
    return;
  }
  thread_local std::vector<uint8_t> planes;
  thread_local std::vector<int32_t> qsum;
  const int64_t groups = W.padded_cols() / 4;
  planes.resize(size_t(groups * 64 + 32));
  uint8_t* buf = planes.data() + (32 - reinterpret_cast<uintptr_t>(planes.data()) % 32) % 32;
  qsum.resize(size_t(n));
  for (int64_t t = 0; t < n; ++t) qsum[size_t(t)] = sum_q(Q + t * ldq, W.padded_cols());
  strips_by_token_tiles<6, 2>(
      n, r0, r1, [&](int64_t s) { unpack(W, s, buf); },
      [&](auto T, int64_t s, int64_t t) {
        tile<decltype(T)::value>(buf, groups, Q + t * ldq, ldq, qsum.data() + t, out + t * ldo, ldo, s, r0, r1);
      });
}


// ---- a few tokens: digit planes decoded in registers, a tile of tokens on each chunk ----------
//
// The buffered GEMM above writes each strip's planes out at 4x its bytes and reads them back per
// tile: with AVX2 kernels only, a step of 2 sequences of the 1.3B TQ2 preset took 3x one token's
// time (AMD Zen 5), so batching made every token slower. Here each chunk is decoded in registers
// once per tile and multiplied against every token of the tile: the weights stream once per pass,
// as for one token (the strip, 2-28 KB, stays in L1 for the next tile). The loops over a tile's
// tokens are unrolled by hand: at -O2, GCC 12 kept them and the sums lived on the stack.

// Tokens per tile: TQ2 3 (6 int16 sums and 4 planes fill the 16 registers; 4 tokens spilled and
// ran 7% slower), TQ1 4 (its decoding, 22 ops per chunk half, is shared by more tokens). One
// core, a 2560 x 2560 matrix, AMD Zen 5: TQ2 132 / 136 / 127 GMAC/s at 2 / 3 / 4 tokens per
// tile, TQ1 64 / 73 / 80.
inline constexpr int kDirectTileTq2 = 3, kDirectTileTq1 = 4;
// Tokens per pass over the strips: their activations (128 x K bytes) stay in L2 while the strips
// stream under them (as the AVX-512 direct kernels).
inline constexpr int64_t kDirectTokenBlock = 128;

// TQ2: one chunk half's 4 planes against token x's 16 activation bytes, pairs summed in int16
// (at most 4 x 512 per chunk: widened every 15 chunks).
MMFREE_TARGET_AVX2 inline __m256i tq2_products16(const __m256i (&d)[4], const int8_t* x) {
  const __m256i p01 = _mm256_add_epi16(_mm256_maddubs_epi16(d[0], bcast4(x)), _mm256_maddubs_epi16(d[1], bcast4(x + 4)));
  const __m256i p23 = _mm256_add_epi16(_mm256_maddubs_epi16(d[2], bcast4(x + 8)), _mm256_maddubs_epi16(d[3], bcast4(x + 12)));
  return _mm256_add_epi16(p01, p23);
}
MMFREE_TARGET_AVX2 inline void tq2_planes(__m256i u, __m256i (&d)[4]) {
  d[0] = tq2_plane<0>(u), d[1] = tq2_plane<1>(u), d[2] = tq2_plane<2>(u), d[3] = tq2_plane<3>(u);
}
inline constexpr int64_t kInt16Chunks = 15;  // 15 x 4 x 2 x 2 x 128 = 30,720 < 2^15

// Strip s of a TQ2 matrix against T tokens.
template <int T>
MMFREE_TARGET_AVX2 inline void direct_tq2(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                          const int32_t* qsum, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  const uint8_t* w = W.strip(s);
  const __m256i ones = _mm256_set1_epi16(1);
  __m256i lo[T], hi[T];
  #pragma GCC unroll 4
  for (int j = 0; j < T; ++j) lo[j] = hi[j] = _mm256_setzero_si256();
  for (int64_t c0 = 0; c0 < W.chunks; c0 += kInt16Chunks) {
    __m256i a[T], b[T];
    #pragma GCC unroll 4
    for (int j = 0; j < T; ++j) a[j] = b[j] = _mm256_setzero_si256();
    const int64_t c1 = std::min(W.chunks, c0 + kInt16Chunks);
    for (int64_t c = c0; c < c1; ++c) {
      __m256i d[4];
      tq2_planes(_mm256_loadu_si256((const __m256i*)(w + c * 64)), d);
      #pragma GCC unroll 4
      for (int j = 0; j < T; ++j) a[j] = _mm256_add_epi16(a[j], tq2_products16(d, Q + j * ldq + 16 * c));
      tq2_planes(_mm256_loadu_si256((const __m256i*)(w + c * 64 + 32)), d);
      #pragma GCC unroll 4
      for (int j = 0; j < T; ++j) b[j] = _mm256_add_epi16(b[j], tq2_products16(d, Q + j * ldq + 16 * c));
    }
    #pragma GCC unroll 4
    for (int j = 0; j < T; ++j) {
      lo[j] = _mm256_add_epi32(lo[j], _mm256_madd_epi16(a[j], ones));
      hi[j] = _mm256_add_epi32(hi[j], _mm256_madd_epi16(b[j], ones));
    }
  }
  #pragma GCC unroll 4
  for (int j = 0; j < T; ++j) store_rows(out + j * ldo, lo[j], hi[j], qsum[j], s, r0, r1);
}

// Strip s of a TQ1 matrix against T tokens: every digit times 27 (tq1_planes_times27), one int32
// sum per chunk half and token, multiplied by the inverse of 27 at the store.
template <int T>
MMFREE_TARGET_AVX2 inline void direct_tq1(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                          const int32_t* qsum, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  const uint8_t* w = W.strip(s);
  __m256i lo[T], hi[T];
  #pragma GCC unroll 4
  for (int j = 0; j < T; ++j) lo[j] = hi[j] = _mm256_setzero_si256();
  for (int64_t c = 0; c < W.chunks; ++c) {
    __m256i d[5], x[5];
    tq1_planes_times27(_mm256_loadu_si256((const __m256i*)(w + c * 64)), d);
    #pragma GCC unroll 4
    for (int j = 0; j < T; ++j) {
      #pragma GCC unroll 5
      for (int p = 0; p < 5; ++p) x[p] = bcast4(Q + j * ldq + 20 * c + 4 * p);
      lo[j] = _mm256_add_epi32(lo[j], tq1_products_times27(d, x));
    }
    tq1_planes_times27(_mm256_loadu_si256((const __m256i*)(w + c * 64 + 32)), d);
    #pragma GCC unroll 4
    for (int j = 0; j < T; ++j) {
      #pragma GCC unroll 5
      for (int p = 0; p < 5; ++p) x[p] = bcast4(Q + j * ldq + 20 * c + 4 * p);
      hi[j] = _mm256_add_epi32(hi[j], tq1_products_times27(d, x));
    }
  }
  const __m256i inv = _mm256_set1_epi32(int32_t(kInverseOf27));
  #pragma GCC unroll 4
  for (int j = 0; j < T; ++j)
    store_rows(out + j * ldo, _mm256_mullo_epi32(lo[j], inv), _mm256_mullo_epi32(hi[j], inv), qsum[j], s, r0, r1);
}

template <int T>
MMFREE_TARGET_AVX2 inline void direct_tile(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                           const int32_t* qsum, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (W.format == TernaryFormat::TQ2) direct_tq2<T>(W, s, Q, ldq, qsum, out, ldo, r0, r1);
  else direct_tq1<T>(W, s, Q, ldq, qsum, out, ldo, r0, r1);
}

// Same contract as ternary_gemm_scalar; one token is the streaming decoder's.
MMFREE_TARGET_AVX2 inline void ternary_gemm_direct(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                                   int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (n == 1) {
    decode(W, Q, sum_q(Q, W.padded_cols()), out, r0, r1);
    return;
  }
  thread_local std::vector<int32_t> qsum;
  qsum.resize(size_t(n));
  for (int64_t t = 0; t < n; ++t) qsum[size_t(t)] = sum_q(Q + t * ldq, W.padded_cols());
  const int64_t most = W.format == TernaryFormat::TQ2 ? kDirectTileTq2 : kDirectTileTq1;
  strips_by_even_tiles<kDirectTileTq1>(n, kDirectTokenBlock, most, r0, r1, [&](auto T, int64_t s, int64_t t) {
    direct_tile<decltype(T)::value>(W, s, Q + t * ldq, ldq, qsum.data() + t, out + t * ldo, ldo, r0, r1);
  });
}

}  // namespace mmfree::kernels::avx2

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__
