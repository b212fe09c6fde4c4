// mmfree: AVX-512 (BW + VNNI) ternary kernels on the strip layouts (ternary_format.hpp).
//
// A digit plane of one chunk is a register of 16 rows x 4 digits d = w + 1 in {0, 1, 2};
// vpdpbusd against 4 activation bytes broadcast to every lane adds the 4 products of each row
// into that row's int32 lane. 16 row sums build up in one register, and sum w*q = sum d*q - sum q.
//
// Decoding (one token) streams each strip once with 8 (TQ2) or 10 (TQ1) accumulators, so no
// vpdpbusd waits on the previous one. Several tokens run one of two ways, both measured by the
// chooser: the buffered GEMM unpacks the digit planes of two strips once per call into a buffer
// that stays in L2, and then every tile of 12 tokens passes over it (24 accumulators, 2 digit
// loads and 12 broadcasts for 24 vpdpbusd per 4 columns); the direct kernels decode each chunk's
// planes in registers and run a tile of up to 12 tokens on them, so weights stream from memory
// once per pass and decoding overlaps the multiplies (the faster of the two at every batch size
// measured on AMD Zen 5; README, "Several tokens per pass").
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>
#include <type_traits>

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mmfree/kernels/simd_warnings.hpp"
#include "mmfree/ternary_format.hpp"

MMFREE_SIMD_WARNINGS_PUSH

#define MMFREE_TARGET_AVX512 __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni")))
#define MMFREE_TARGET_AVX512_VBMI __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,avx512vbmi")))

namespace mmfree::kernels::avx512 {

// acc += a (u8) . b (s8), 4 bytes per lane, in place. GCC 12 copies the accumulator into a new
// register around every _mm512_dpbusd_epi32 and back; with 24 accumulators that spilled and ran
// at half speed (measured), so the instruction is written out.
MMFREE_TARGET_AVX512 inline void dpbusd(__m512i& acc, __m512i a, __m512i b) {
  __asm__("vpdpbusd %2, %1, %0" : "+v"(acc) : "v"(a), "v"(b));
}
// acc += a . (the 4 bytes at p, in every lane): the broadcast rides in the instruction.
MMFREE_TARGET_AVX512 inline void dpbusd_bcast(__m512i& acc, __m512i a, const int8_t* p) {
  __asm__("vpdpbusd %2%{1to16%}, %1, %0" : "+v"(acc) : "v"(a), "m"(*reinterpret_cast<const int32_t*>(p)));
}

MMFREE_TARGET_AVX512 inline int32_t sum_q(const int8_t* q, int64_t n) {
  __m512i acc = _mm512_setzero_si512();
  const __m512i ones = _mm512_set1_epi8(1);  // sum of int8 = dpbusd with u8 ones
  int64_t i = 0;
  for (; i + 64 <= n; i += 64) dpbusd(acc, ones, _mm512_loadu_si512(q + i));
  int32_t s = _mm512_reduce_add_epi32(acc);
  for (; i < n; ++i) s += q[i];
  return s;
}

// Rows of strip s inside [r0, r1), as a lane mask.
inline __mmask16 row_mask(int64_t s, int64_t r0, int64_t r1) {
  const int64_t lo = std::max<int64_t>(r0 - s * kStripRows, 0), hi = std::min<int64_t>(r1 - s * kStripRows, 16);
  if (hi <= lo) return 0;
  return __mmask16(((1u << hi) - 1) & ~((1u << lo) - 1));
}
MMFREE_TARGET_AVX512 inline void store_rows(int32_t* out, __m512i sums, int32_t qsum, __mmask16 m) {
  _mm512_mask_storeu_epi32(out, m, _mm512_sub_epi32(sums, _mm512_set1_epi32(qsum)));
}
// The dequantising store: float(the integer result) * scale, the bits of scale_ints (a convert
// and a multiply, each rounded once), without writing the integers and reading them back.
MMFREE_TARGET_AVX512 inline void store_rows(float* out, __m512i sums, int32_t qsum, float scale, __mmask16 m) {
  const __m512 v = _mm512_cvtepi32_ps(_mm512_sub_epi32(sums, _mm512_set1_epi32(qsum)));
  _mm512_mask_storeu_ps(out, m, _mm512_mul_ps(v, _mm512_set1_ps(scale)));
}
// Token j's rows of a tile: integers (O = int32_t), or dequantised by scale[j] (O = float).
template <class O>
MMFREE_TARGET_AVX512 inline void store_token_rows(O* out, __m512i sums, const int32_t* qsum, const float* scale, int j,
                                                  __mmask16 m) {
  if constexpr (std::is_same_v<O, float>) store_rows(out, sums, qsum[j], scale[j], m);
  else store_rows(out, sums, qsum[j], m);
}

// ---- digit planes ---------------------------------------------------------------------------

// TQ2: plane p = digits of columns 4p .. 4p+3 of the chunk, for each of the 16 rows.
template <int P>
MMFREE_TARGET_AVX512 inline __m512i tq2_plane(__m512i u) {
  const __m512i m3 = _mm512_set1_epi8(3);
  if constexpr (P == 0) return _mm512_and_si512(u, m3);
  else return _mm512_and_si512(_mm512_srli_epi16(u, 2 * P), m3);
}

// TQ1, one base-3 level: the digit of weight w (81, 27, 9 or 3) is [r >= w] + [r >= 2w]; r keeps
// the rest.
MMFREE_TARGET_AVX512 inline __m512i tq1_level(__m512i& r, int w) {
  const __m512i vw = _mm512_set1_epi8(char(w)), one = _mm512_set1_epi8(1);
  const __mmask64 k1 = _mm512_cmpge_epu8_mask(r, vw), k2 = _mm512_cmpge_epu8_mask(r, _mm512_set1_epi8(char(2 * w)));
  r = _mm512_mask_sub_epi8(r, k1, r, vw);
  r = _mm512_mask_sub_epi8(r, k2, r, vw);
  const __m512i d = _mm512_maskz_mov_epi8(k1, one);
  return _mm512_mask_add_epi8(d, k2, d, one);
}
// TQ1 planes with comparisons only (any AVX-512BW CPU).
MMFREE_TARGET_AVX512 inline void tq1_planes(__m512i v, __m512i d[5]) {
  d[0] = tq1_level(v, 81);
  d[1] = tq1_level(v, 27);
  d[2] = tq1_level(v, 9);
  d[3] = tq1_level(v, 3);
  d[4] = v;
}
// TQ1 planes with byte permutes (VBMI): after d_0, the rest r < 81 indexes one 128-entry table
// per digit (vpermi2b), 1 instruction per plane instead of 6.
struct Tq1Tables {
  alignas(64) uint8_t t[4][128];
  Tq1Tables() {
    for (int r = 0; r < 128; ++r) {
      const int v = r < 81 ? r : 0;
      t[0][r] = uint8_t(v / 27), t[1][r] = uint8_t(v / 9 % 3), t[2][r] = uint8_t(v / 3 % 3), t[3][r] = uint8_t(v % 3);
    }
  }
};
inline const Tq1Tables& tq1_tables() {
  static const Tq1Tables t;
  return t;
}
struct Tq1Regs {
  __m512i lo[4], hi[4];
};
MMFREE_TARGET_AVX512_VBMI inline Tq1Regs tq1_regs() {
  Tq1Regs r;
  #pragma GCC unroll 4
  for (int k = 0; k < 4; ++k)
    r.lo[k] = _mm512_load_si512(tq1_tables().t[k]), r.hi[k] = _mm512_load_si512(tq1_tables().t[k] + 64);
  return r;
}
MMFREE_TARGET_AVX512_VBMI inline void tq1_planes_vbmi(__m512i v, const Tq1Regs& T, __m512i d[5]) {
  d[0] = tq1_level(v, 81);
  // (Unrolled by hand: at -O2, GCC 12 kept this loop and spilled the planes to the stack.)
  d[1] = _mm512_permutex2var_epi8(T.lo[0], v, T.hi[0]);
  d[2] = _mm512_permutex2var_epi8(T.lo[1], v, T.hi[1]);
  d[3] = _mm512_permutex2var_epi8(T.lo[2], v, T.hi[2]);
  d[4] = _mm512_permutex2var_epi8(T.lo[3], v, T.hi[3]);
}

// ---- one token: stream the strips -----------------------------------------------------------

// How far ahead the prefetching variants fetch, in bytes: 6 KiB, not a multiple of 4 KiB, which
// would alias with the demand loads in L1 (measured on an Intel Xeon with the row layout). 3 KiB
// was enough at 30-40 GB/s; on AMD Zen 5 at 85 GB/s decoding one token of the 1.3B and 2.7B
// presets ran 5-13% faster at 6 KiB, and steps of a few tokens 5%. The chooser measures both
// variants; one sequential stream often needs no software prefetch at all.
inline constexpr int64_t kPrefetchBytes = 6144;

// TQ2 plane P with its digits in place (d * 4^P, at most 192: still an unsigned byte), one AND
// and no shift: on AMD Zen 4/5 a shift takes one of the two pipes that run vpdpbusd.
template <int P>
MMFREE_TARGET_AVX512 inline __m512i tq2_plane_in_place(__m512i u) {
  return _mm512_and_si512(u, _mm512_set1_epi8(char(3 << (2 * P))));
}
template <bool InPlace, int P>
MMFREE_TARGET_AVX512 inline __m512i tq2_plane_as(__m512i u) {
  if constexpr (InPlace) return tq2_plane_in_place<P>(u);
  else return tq2_plane<P>(u);
}
// A plane's vpdpbusd adds at most 4 * 192 * 128 per lane and chunk with the digits in place, so
// rows of up to this many (padded) columns keep every sum below 2^31.
inline constexpr int64_t kScaledPlanesMaxCols = 16 * ((int64_t(1) << 31) - 1) / (4 * 192 * 128) / 16 * 16;

// One token, two chunks per step into 8 accumulators (one per plane and chunk: enough chains in
// flight). InPlace: the planes masked in place (4 ops per chunk on any pipe instead of 3 shifts
// on vpdpbusd's + 4 masks) and each plane's sum shifted back once at the store (exact: it is a
// multiple of 4^P); 9-10% more GB/s on AMD Zen 5 at 85 GB/s. Longer rows than
// kScaledPlanesMaxCols shift down first.
template <bool Prefetch, bool InPlace>
MMFREE_TARGET_AVX512 inline void tq2_decode_strips(const TernaryMatrix& W, const int8_t* q, int32_t qsum, int32_t* out,
                                                   int64_t r0, int64_t r1) {
  const int64_t chunks = W.chunks;
  for (int64_t s = r0 / kStripRows; s * kStripRows < r1; ++s) {
    const uint8_t* w = W.strip(s);
    __m512i a[8];
    #pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) a[i] = _mm512_setzero_si512();
    int64_t c = 0;
    for (; c + 2 <= chunks; c += 2) {
      if constexpr (Prefetch) {
        _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kPrefetchBytes), _MM_HINT_T0);
        _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kPrefetchBytes + 64), _MM_HINT_T0);
      }
      const __m512i u = _mm512_loadu_si512(w + c * 64), v = _mm512_loadu_si512(w + c * 64 + 64);
      const int8_t* x = q + 16 * c;
      dpbusd_bcast(a[0], tq2_plane_as<InPlace, 0>(u), x);
      dpbusd_bcast(a[1], tq2_plane_as<InPlace, 1>(u), x + 4);
      dpbusd_bcast(a[2], tq2_plane_as<InPlace, 2>(u), x + 8);
      dpbusd_bcast(a[3], tq2_plane_as<InPlace, 3>(u), x + 12);
      dpbusd_bcast(a[4], tq2_plane_as<InPlace, 0>(v), x + 16);
      dpbusd_bcast(a[5], tq2_plane_as<InPlace, 1>(v), x + 20);
      dpbusd_bcast(a[6], tq2_plane_as<InPlace, 2>(v), x + 24);
      dpbusd_bcast(a[7], tq2_plane_as<InPlace, 3>(v), x + 28);
    }
    if (c < chunks) {
      const __m512i u = _mm512_loadu_si512(w + c * 64);
      const int8_t* x = q + 16 * c;
      dpbusd_bcast(a[0], tq2_plane_as<InPlace, 0>(u), x);
      dpbusd_bcast(a[1], tq2_plane_as<InPlace, 1>(u), x + 4);
      dpbusd_bcast(a[2], tq2_plane_as<InPlace, 2>(u), x + 8);
      dpbusd_bcast(a[3], tq2_plane_as<InPlace, 3>(u), x + 12);
    }
    __m512i p[4];
    #pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) p[i] = _mm512_add_epi32(a[i], a[i + 4]);
    if constexpr (InPlace) {
      p[1] = _mm512_srai_epi32(p[1], 2), p[2] = _mm512_srai_epi32(p[2], 4), p[3] = _mm512_srai_epi32(p[3], 6);
    }
    const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(p[0], p[1]), _mm512_add_epi32(p[2], p[3]));
    store_rows(out + s * kStripRows, sum, qsum, row_mask(s, r0, r1));
  }
}
template <bool Prefetch>
MMFREE_TARGET_AVX512 inline void tq2_decode(const TernaryMatrix& W, const int8_t* q, int32_t qsum, int32_t* out,
                                            int64_t r0, int64_t r1) {
  if (W.padded_cols() <= kScaledPlanesMaxCols) tq2_decode_strips<Prefetch, true>(W, q, qsum, out, r0, r1);
  else tq2_decode_strips<Prefetch, false>(W, q, qsum, out, r0, r1);
}

// TQ1, one token. The first digit enters the products in place, as 81 * d0 = v - (v mod 81)
// (v - 81 and v - 162 wrap above 81 where negative, so two minima give v mod 81): 5 ops where
// comparing took 6, and plane 0's sum, 81 times the true one modulo 2^32, is multiplied by the
// inverse of 81 modulo 2^32 at the store, which gives the true sum exactly (it fits an int32)
// whatever the row length. The rest's four digits come by comparisons or one byte permute
// each (VBMI): a macro, because the VBMI twin needs its own target attribute on the whole loop
// for the permutes to inline. One accumulator per digit plane: decoding a chunk takes longer
// than a vpdpbusd's latency, so 5 chains keep the adder busy (10, with two chunks per step,
// measured no faster and spill more). 7-9% more GB/s than comparing for d0, on AMD Zen 5.
inline constexpr uint32_t kInverseOf81 = 0x781948b1u;  // 81 * kInverseOf81 == 1 modulo 2^32
static_assert(uint32_t(81u * kInverseOf81) == 1u);
MMFREE_TARGET_AVX512 inline __m512i tq1_rest81(__m512i v) {
  const __m512i r = _mm512_min_epu8(v, _mm512_sub_epi8(v, _mm512_set1_epi8(81)));
  return _mm512_min_epu8(r, _mm512_sub_epi8(v, _mm512_set1_epi8(char(162))));
}
// MMFREE_REST_PLANES(d): d[4] holds the rest r < 81; its digits into d[1..4].
#define MMFREE_TQ1_DECODE_BODY                                                                        \
  const int64_t chunks = W.chunks;                                                                    \
  for (int64_t s = r0 / kStripRows; s * kStripRows < r1; ++s) {                                       \
    const uint8_t* w = W.strip(s);                                                                    \
    __m512i a[5];                                                                                     \
    _Pragma("GCC unroll 5") for (int i = 0; i < 5; ++i) a[i] = _mm512_setzero_si512();               \
    for (int64_t c = 0; c < chunks; ++c) {                                                            \
      if constexpr (Prefetch) _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kPrefetchBytes), _MM_HINT_T0); \
      const __m512i v = _mm512_loadu_si512(w + c * 64);                                               \
      __m512i d[5];                                                                                   \
      d[4] = tq1_rest81(v);                                                                           \
      d[0] = _mm512_sub_epi8(v, d[4]);                                                                \
      MMFREE_REST_PLANES(d);                                                                          \
      const int8_t* x = q + 20 * c;                                                                   \
      _Pragma("GCC unroll 5") for (int p = 0; p < 5; ++p) dpbusd_bcast(a[p], d[p], x + 4 * p);        \
    }                                                                                                 \
    const __m512i p0 = _mm512_mullo_epi32(a[0], _mm512_set1_epi32(int32_t(kInverseOf81)));           \
    const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(_mm512_add_epi32(p0, a[1]), _mm512_add_epi32(a[2], a[3])), a[4]); \
    store_rows(out + s * kStripRows, sum, qsum, row_mask(s, r0, r1));                                 \
  }

template <bool Prefetch>
MMFREE_TARGET_AVX512 inline void tq1_decode(const TernaryMatrix& W, const int8_t* q, int32_t qsum, int32_t* out,
                                            int64_t r0, int64_t r1) {
#define MMFREE_REST_PLANES(d) d[1] = tq1_level(d[4], 27), d[2] = tq1_level(d[4], 9), d[3] = tq1_level(d[4], 3)
  MMFREE_TQ1_DECODE_BODY
#undef MMFREE_REST_PLANES
}
template <bool Prefetch>
MMFREE_TARGET_AVX512_VBMI inline void tq1_decode_vbmi(const TernaryMatrix& W, const int8_t* q, int32_t qsum,
                                                      int32_t* out, int64_t r0, int64_t r1) {
  const Tq1Regs T = tq1_regs();
#define MMFREE_REST_PLANES(d)                                                        \
  d[1] = _mm512_permutex2var_epi8(T.lo[0], d[4], T.hi[0]),                           \
  d[2] = _mm512_permutex2var_epi8(T.lo[1], d[4], T.hi[1]),                           \
  d[3] = _mm512_permutex2var_epi8(T.lo[2], d[4], T.hi[2]),                           \
  d[4] = _mm512_permutex2var_epi8(T.lo[3], d[4], T.hi[3])
  MMFREE_TQ1_DECODE_BODY
#undef MMFREE_REST_PLANES
}
#undef MMFREE_TQ1_DECODE_BODY

// ---- many tokens: planes unpacked once, register tiles over them ----------------------------

// The digit planes of strips s .. s+RG-1 (strips past the end give digits 1: w = 0), laid out
// so that group g (columns 4g .. 4g+3) of strip s + i sits at buf + (g * RG + i) * 64.
using UnpackFn = void (*)(const TernaryMatrix& W, int64_t s, int i, int RG, uint8_t* buf);

MMFREE_TARGET_AVX512 inline void unpack_tq2(const TernaryMatrix& W, int64_t s, int i, int RG, uint8_t* buf) {
  const uint8_t* w = W.strip(s);
  for (int64_t c = 0; c < W.chunks; ++c) {
    const __m512i u = _mm512_loadu_si512(w + c * 64);
    uint8_t* g = buf + (4 * c * RG + i) * 64;
    _mm512_store_si512(g, tq2_plane<0>(u));
    _mm512_store_si512(g + RG * 64, tq2_plane<1>(u));
    _mm512_store_si512(g + 2 * RG * 64, tq2_plane<2>(u));
    _mm512_store_si512(g + 3 * RG * 64, tq2_plane<3>(u));
  }
}
MMFREE_TARGET_AVX512 inline void unpack_tq1(const TernaryMatrix& W, int64_t s, int i, int RG, uint8_t* buf) {
  const uint8_t* w = W.strip(s);
  for (int64_t c = 0; c < W.chunks; ++c) {
    __m512i d[5];
    tq1_planes(_mm512_loadu_si512(w + c * 64), d);
    #pragma GCC unroll 5
    for (int p = 0; p < 5; ++p) _mm512_store_si512(buf + ((5 * c + p) * RG + i) * 64, d[p]);
  }
}
MMFREE_TARGET_AVX512_VBMI inline void unpack_tq1_vbmi(const TernaryMatrix& W, int64_t s, int i, int RG, uint8_t* buf) {
  const Tq1Regs T = tq1_regs();
  const uint8_t* w = W.strip(s);
  for (int64_t c = 0; c < W.chunks; ++c) {
    __m512i d[5];
    tq1_planes_vbmi(_mm512_loadu_si512(w + c * 64), T, d);
    #pragma GCC unroll 5
    for (int p = 0; p < 5; ++p) _mm512_store_si512(buf + ((5 * c + p) * RG + i) * 64, d[p]);
  }
}

// RG strips x T tokens of accumulators over `groups` column groups.
template <int RG, int T>
MMFREE_TARGET_AVX512 inline void tile(const uint8_t* buf, int64_t groups, const int8_t* Q, int64_t ldq,
                                      const int32_t* qsum, int32_t* out, int64_t ldo, int64_t s, int64_t r0,
                                      int64_t r1) {
  __m512i acc[RG][T];
  #pragma GCC unroll 16
  for (int i = 0; i < RG; ++i)
    #pragma GCC unroll 16
    for (int j = 0; j < T; ++j) acc[i][j] = _mm512_setzero_si512();
  for (int64_t g = 0; g < groups; ++g) {
    __m512i d[RG];
    #pragma GCC unroll 16
    for (int i = 0; i < RG; ++i) d[i] = _mm512_load_si512(buf + (g * RG + i) * 64);
    #pragma GCC unroll 16
    for (int j = 0; j < T; ++j)
      #pragma GCC unroll 16
      for (int i = 0; i < RG; ++i) dpbusd_bcast(acc[i][j], d[i], Q + j * ldq + 4 * g);
  }
  #pragma GCC unroll 16
  for (int i = 0; i < RG; ++i) {
    const __mmask16 m = row_mask(s + i, r0, r1);
    #pragma GCC unroll 16
    for (int j = 0; j < T; ++j) store_rows(out + j * ldo + (s + i) * kStripRows, acc[i][j], qsum[j], m);
  }
}

template <int RG>
MMFREE_TARGET_AVX512 inline void tiles_over_tokens(const uint8_t* buf, int64_t groups, const int8_t* Q, int64_t ldq,
                                                   int64_t n, const int32_t* qsum, int32_t* out, int64_t ldo,
                                                   int64_t s, int64_t r0, int64_t r1) {
  int64_t t = 0;
  for (; t + 12 <= n; t += 12) tile<RG, 12>(buf, groups, Q + t * ldq, ldq, qsum + t, out + t * ldo, ldo, s, r0, r1);
  for (; t + 8 <= n; t += 8) tile<RG, 8>(buf, groups, Q + t * ldq, ldq, qsum + t, out + t * ldo, ldo, s, r0, r1);
  for (; t + 4 <= n; t += 4) tile<RG, 4>(buf, groups, Q + t * ldq, ldq, qsum + t, out + t * ldo, ldo, s, r0, r1);
  for (; t + 2 <= n; t += 2) tile<RG, 2>(buf, groups, Q + t * ldq, ldq, qsum + t, out + t * ldo, ldo, s, r0, r1);
  for (; t < n; ++t) tile<RG, 1>(buf, groups, Q + t * ldq, ldq, qsum + t, out + t * ldo, ldo, s, r0, r1);
}

// 64-byte aligned per-thread scratch that keeps its capacity between calls.
struct Scratch {
  std::vector<uint8_t> bytes;
  uint8_t* get(size_t n) {
    if (bytes.size() < n + 64) bytes.resize(n + 64);
    return bytes.data() + (64 - reinterpret_cast<uintptr_t>(bytes.data()) % 64) % 64;
  }
};

// Tokens per block of the outer loop: their activations (64 x K bytes) stay in L2 while every
// strip pair passes under them, and only 64 output rows are written at a time (an lm_head's
// 32000-wide output rows otherwise touch a new page per token per strip: measured 57% of peak on
// the 1.3B lm_head with all 512 tokens at once). The digits are unpacked again for each block.
inline constexpr int64_t kTokenBlock = 64;

MMFREE_TARGET_AVX512 inline void gemm_strips(UnpackFn unpack, const TernaryMatrix& W, const int8_t* Q, int64_t ldq,
                                             int64_t n, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  thread_local Scratch planes, sums;
  const int64_t groups = W.padded_cols() / 4;
  uint8_t* buf = planes.get(size_t(2 * groups * 64));
  int32_t* qsum = reinterpret_cast<int32_t*>(sums.get(size_t(n) * 4));
  for (int64_t t = 0; t < n; ++t) qsum[t] = sum_q(Q + t * ldq, W.padded_cols());
  const int64_t s1 = (r1 + kStripRows - 1) / kStripRows;
  for (int64_t t0 = 0; t0 < n; t0 += kTokenBlock) {
    const int64_t tn = std::min(kTokenBlock, n - t0);
    const int8_t* Qb = Q + t0 * ldq;
    int32_t* ob = out + t0 * ldo;
    int64_t s = r0 / kStripRows;
    for (; s + 2 <= s1; s += 2) {
      unpack(W, s, 0, 2, buf);
      unpack(W, s + 1, 1, 2, buf);
      tiles_over_tokens<2>(buf, groups, Qb, ldq, tn, qsum + t0, ob, ldo, s, r0, r1);
    }
    if (s < s1) {
      unpack(W, s, 0, 1, buf);
      tiles_over_tokens<1>(buf, groups, Qb, ldq, tn, qsum + t0, ob, ldo, s, r0, r1);
    }
  }
}

// ---- a few tokens at a time: digit planes decoded in registers, a tile of tokens on each --------
//
// For each strip, each tile of up to 12 tokens passes over the packed chunks, decoding every
// chunk's planes in registers and multiplying each plane against every token of the tile: the
// weights stream from memory once per pass whatever the batch (the strip, 2-22 KB, stays in L1
// for the next tile), and decoding overlaps the multiplies instead of running as a separate
// memory-bound phase (unpacking into a buffer measured half of a step's time at 8 tokens on AMD
// Zen 5). Several chains per (token, strip) keep at least 8 vpdpbusd in flight for small tiles.
// TQ2 decodes without the shifts where it can (direct_tq2_scaled, direct_tq2 below): on AMD Zen
// 4/5 a shift takes one of the two pipes that run vpdpbusd, and a 5-token step of the 2.7B preset
// ran 7% faster without them (6 tokens 12%, 8 tokens 3%).

inline constexpr int kDirectTile = 12;  // tokens per tile: 24 accumulators (TQ2) and room to decode
// Tokens per pass over the weights: their activations (128 x K bytes) stay in L2 while the strips
// stream under them (all 512 tokens of a prompt at once measured 18% slower on the 1.3B gate).
inline constexpr int64_t kDirectTokenBlock = 128;

template <int T>
constexpr int direct_chains() { return T >= 8 ? 1 : T >= 4 ? 2 : T == 3 ? 3 : 4; }

template <int T, int A, class O>
MMFREE_TARGET_AVX512 inline void store_tile(__m512i (&acc)[T][A], const int32_t* qsum, const float* scale, O* out,
                                            int64_t ldo, int64_t s, int64_t r0, int64_t r1) {
  const __mmask16 m = row_mask(s, r0, r1);
  #pragma GCC unroll 12
  for (int j = 0; j < T; ++j) {
    __m512i sum = acc[j][0];
    #pragma GCC unroll 4
    for (int a = 1; a < A; ++a) sum = _mm512_add_epi32(sum, acc[j][a]);
    store_token_rows(out + j * ldo + s * kStripRows, sum, qsum, scale, j, m);
  }
}

// Plane P of every token of the tile: acc[j][P % A] += d . (4 bytes of token j at column 4P of the chunk).
template <int T, int A, int P>
MMFREE_TARGET_AVX512 inline void plane_into_tile(__m512i (&acc)[T][A], __m512i d, const int8_t* x, int64_t ldq) {
  #pragma GCC unroll 12
  for (int j = 0; j < T; ++j) dpbusd_bcast(acc[j][P % A], d, x + j * ldq + 4 * P);
}

// TQ2 with the digit planes masked in place instead of shifted down. Every decoding op competes
// with vpdpbusd on AMD Zen 4/5 (on a Zen 5 VM, 3 vpandd or 3 vpsrlw per 12 vpdpbusd took 15-20% of
// their rate), so the fewer per chunk the better: 4 masks, where shifting then masking took 3 + 4
// (a tile of T tokens is then bound to 4T / (4T + 4) of the int8 peak). Plane P's digits enter
// the products as d * 4^(P % S), into accumulator P % S of its token, shifted back once at the
// store (exact: every such sum is a multiple of 4^(P % S)).
//  - S = 4 (tiles of up to 6 tokens): no shift at all, 4 accumulators per token. A plane's vpdpbusd
//    adds at most 4 * 192 * 128 per lane and chunk, so rows of up to kScaledPlanesMaxCols (padded)
//    columns stay below 2^31; longer rows take S = 2.
//  - S = 2 (any tile): one shift by 4 per chunk instead of three; planes 0 and 2 share one
//    accumulator per token, 1 and 3 (digits * 4) another.
template <int T, int S, bool Prefetch, class O>
MMFREE_TARGET_AVX512 inline void direct_tq2_masked(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                                   const int32_t* qsum, const float* scale, O* out, int64_t ldo,
                                                   int64_t r0, int64_t r1) {
  static_assert(S == 2 || S == 4);
  __m512i acc[T][S];
  #pragma GCC unroll 12
  for (int j = 0; j < T; ++j)
    #pragma GCC unroll 4
    for (int a = 0; a < S; ++a) acc[j][a] = _mm512_setzero_si512();
  const uint8_t* w = W.strip(s);
  for (int64_t c = 0; c < W.chunks; ++c) {
    if constexpr (Prefetch) _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kPrefetchBytes), _MM_HINT_T0);
    const __m512i u = _mm512_loadu_si512(w + c * 64);
    const __m512i v = S == 2 ? _mm512_srli_epi16(u, 4) : u;  // planes 2 and 3
    const int8_t* x = Q + 16 * c;
    plane_into_tile<T, S, 0>(acc, _mm512_and_si512(u, _mm512_set1_epi8(0x03)), x, ldq);
    plane_into_tile<T, S, 1>(acc, _mm512_and_si512(u, _mm512_set1_epi8(0x0c)), x, ldq);
    plane_into_tile<T, S, 2>(acc, _mm512_and_si512(v, _mm512_set1_epi8(S == 4 ? 0x30 : 0x03)), x, ldq);
    plane_into_tile<T, S, 3>(acc, _mm512_and_si512(v, _mm512_set1_epi8(char(S == 4 ? 0xc0 : 0x0c))), x, ldq);
  }
  const __mmask16 m = row_mask(s, r0, r1);
  #pragma GCC unroll 12
  for (int j = 0; j < T; ++j) {
    __m512i sum = _mm512_add_epi32(acc[j][0], _mm512_srai_epi32(acc[j][1], 2));
    if constexpr (S == 4) sum = _mm512_add_epi32(sum, _mm512_add_epi32(_mm512_srai_epi32(acc[j][2], 4), _mm512_srai_epi32(acc[j][3], 6)));
    store_token_rows(out + j * ldo + s * kStripRows, sum, qsum, scale, j, m);
  }
}
// The two forms under the names the tile switches call.
template <int T, bool Prefetch, class O>
MMFREE_TARGET_AVX512 inline void direct_tq2_scaled(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                                   const int32_t* qsum, const float* scale, O* out, int64_t ldo,
                                                   int64_t r0, int64_t r1) {
  direct_tq2_masked<T, 4, Prefetch>(W, s, Q, ldq, qsum, scale, out, ldo, r0, r1);
}
template <int T, bool Prefetch, class O>
MMFREE_TARGET_AVX512 inline void direct_tq2(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                            const int32_t* qsum, const float* scale, O* out, int64_t ldo, int64_t r0,
                                            int64_t r1) {
  direct_tq2_masked<T, 2, Prefetch>(W, s, Q, ldq, qsum, scale, out, ldo, r0, r1);
}

// TQ1: the first digit by comparison, the other four either by comparisons (any AVX-512BW) or
// by one byte permute each (VBMI); a macro for the two target attributes, as for decoding.
#define MMFREE_DIRECT_TQ1_BODY(...)                                                                  \
  constexpr int A = direct_chains<T>();                                                              \
  __m512i acc[T][A];                                                                                 \
  _Pragma("GCC unroll 12") for (int j = 0; j < T; ++j)                                               \
    _Pragma("GCC unroll 4") for (int a = 0; a < A; ++a) acc[j][a] = _mm512_setzero_si512();          \
  const uint8_t* w = W.strip(s);                                                                     \
  for (int64_t c = 0; c < W.chunks; ++c) {                                                           \
    if constexpr (Prefetch) _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kPrefetchBytes), _MM_HINT_T0); \
    __m512i r = _mm512_loadu_si512(w + c * 64);                                                      \
    const int8_t* x = Q + 20 * c;                                                                    \
    plane_into_tile<T, A, 0>(acc, tq1_level(r, 81), x, ldq);                                         \
    __VA_ARGS__                                                                                      \
  }                                                                                                  \
  store_tile<T, A>(acc, qsum, scale, out, ldo, s, r0, r1);

template <int T, bool Prefetch, class O>
MMFREE_TARGET_AVX512 inline void direct_tq1(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                            const int32_t* qsum, const float* scale, O* out, int64_t ldo, int64_t r0,
                                            int64_t r1) {
  MMFREE_DIRECT_TQ1_BODY(plane_into_tile<T, A, 1>(acc, tq1_level(r, 27), x, ldq);
                         plane_into_tile<T, A, 2>(acc, tq1_level(r, 9), x, ldq);
                         plane_into_tile<T, A, 3>(acc, tq1_level(r, 3), x, ldq);
                         plane_into_tile<T, A, 4>(acc, r, x, ldq);)
}
template <int T, bool Prefetch, class O>
MMFREE_TARGET_AVX512_VBMI inline void direct_tq1_vbmi(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                                      const int32_t* qsum, const float* scale, O* out, int64_t ldo,
                                                      int64_t r0, int64_t r1) {
  const Tq1Regs Tb = tq1_regs();
  MMFREE_DIRECT_TQ1_BODY(plane_into_tile<T, A, 1>(acc, _mm512_permutex2var_epi8(Tb.lo[0], r, Tb.hi[0]), x, ldq);
                         plane_into_tile<T, A, 2>(acc, _mm512_permutex2var_epi8(Tb.lo[1], r, Tb.hi[1]), x, ldq);
                         plane_into_tile<T, A, 3>(acc, _mm512_permutex2var_epi8(Tb.lo[2], r, Tb.hi[2]), x, ldq);
                         plane_into_tile<T, A, 4>(acc, _mm512_permutex2var_epi8(Tb.lo[3], r, Tb.hi[3]), x, ldq);)
}
#undef MMFREE_DIRECT_TQ1_BODY

// One strip against tokens [0, n) in tiles of at most kDirectTile, evenly sized (13 tokens run
// as 7 + 6, not 12 + 1: a 1-token tile would be latency-bound).
#define MMFREE_DIRECT_TILES(FN)                                                                     \
  const int64_t tiles = (n + kDirectTile - 1) / kDirectTile;                                        \
  for (int64_t k = 0, t = 0; k < tiles; ++k) {                                                      \
    const int64_t tn = n / tiles + (k < n % tiles ? 1 : 0);                                         \
    const int8_t* q = Q + t * ldq;                                                                  \
    O* o = out + t * ldo;                                                                           \
    const float* sc = scale ? scale + t : nullptr;                                                  \
    switch (tn) {                                                                                   \
      case 1: FN<1, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                   \
      case 2: FN<2, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                   \
      case 3: FN<3, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                   \
      case 4: FN<4, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                   \
      case 5: FN<5, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                   \
      case 6: FN<6, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                   \
      case 7: FN<7, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                   \
      case 8: FN<8, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                   \
      case 9: FN<9, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                   \
      case 10: FN<10, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                 \
      case 11: FN<11, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                 \
      default: FN<12, Prefetch>(W, s, q, ldq, qsum + t, sc, o, ldo, r0, r1); break;                 \
    }                                                                                               \
    t += tn;                                                                                        \
  }

// One strip against all n <= 6 tokens in one tile.
#define MMFREE_DIRECT_SMALL_TILE(FN)                                                                \
  switch (n) {                                                                                      \
    case 1: FN<1, Prefetch>(W, s, Q, ldq, qsum, scale, out, ldo, r0, r1); break;                    \
    case 2: FN<2, Prefetch>(W, s, Q, ldq, qsum, scale, out, ldo, r0, r1); break;                    \
    case 3: FN<3, Prefetch>(W, s, Q, ldq, qsum, scale, out, ldo, r0, r1); break;                    \
    case 4: FN<4, Prefetch>(W, s, Q, ldq, qsum, scale, out, ldo, r0, r1); break;                    \
    case 5: FN<5, Prefetch>(W, s, Q, ldq, qsum, scale, out, ldo, r0, r1); break;                    \
    default: FN<6, Prefetch>(W, s, Q, ldq, qsum, scale, out, ldo, r0, r1); break;                   \
  }

template <bool Prefetch, class O>
MMFREE_TARGET_AVX512 inline void direct_strips(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                               const int32_t* qsum, const float* scale, O* out, int64_t ldo, int64_t r0,
                                               int64_t r1) {
  const bool scaled = n <= 6 && W.padded_cols() <= kScaledPlanesMaxCols;
  for (int64_t s = r0 / kStripRows; s * kStripRows < r1; ++s) {
    if (W.format == TernaryFormat::TQ2) {
      if (scaled) {
        MMFREE_DIRECT_SMALL_TILE(direct_tq2_scaled)
      } else {
        MMFREE_DIRECT_TILES(direct_tq2)
      }
    } else {
      MMFREE_DIRECT_TILES(direct_tq1)
    }
  }
}
template <bool Prefetch, class O>
MMFREE_TARGET_AVX512_VBMI inline void direct_strips_vbmi(const TernaryMatrix& W, const int8_t* Q, int64_t ldq,
                                                         int64_t n, const int32_t* qsum, const float* scale, O* out,
                                                         int64_t ldo, int64_t r0, int64_t r1) {
  const bool scaled = n <= 6 && W.padded_cols() <= kScaledPlanesMaxCols;
  for (int64_t s = r0 / kStripRows; s * kStripRows < r1; ++s) {
    if (W.format == TernaryFormat::TQ2) {
      if (scaled) {
        MMFREE_DIRECT_SMALL_TILE(direct_tq2_scaled)
      } else {
        MMFREE_DIRECT_TILES(direct_tq2)
      }
    } else {
      MMFREE_DIRECT_TILES(direct_tq1_vbmi)
    }
  }
}
#undef MMFREE_DIRECT_TILES
#undef MMFREE_DIRECT_SMALL_TILE

// ---- the kernels (same contract as ternary_gemm_scalar) --------------------------------------

// One token streams the strips; several tokens unpack planes once and tile over them. Vbmi: TQ1
// digits by byte permutes (the helpers then carry the VBMI target, and are called, not inlined).
template <bool Prefetch, bool Vbmi = false>
MMFREE_TARGET_AVX512 inline void ternary_gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                              int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (n == 1) {
    const int32_t qsum = sum_q(Q, W.padded_cols());
    if (W.format == TernaryFormat::TQ2) tq2_decode<Prefetch>(W, Q, qsum, out, r0, r1);
    else if constexpr (Vbmi) tq1_decode_vbmi<Prefetch>(W, Q, qsum, out, r0, r1);
    else tq1_decode<Prefetch>(W, Q, qsum, out, r0, r1);
    return;
  }
  gemm_strips(W.format == TernaryFormat::TQ2 ? unpack_tq2 : Vbmi ? unpack_tq1_vbmi : unpack_tq1, W, Q, ldq, n, out, ldo, r0, r1);
}

// The register-decoded tiles over every token, in blocks of kDirectTokenBlock; O = float with
// `scale`: dequantised in the store.
template <bool Prefetch, bool Vbmi, class O>
MMFREE_TARGET_AVX512 inline void direct_blocks(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                               const float* scale, const int32_t* given_qsum, O* out, int64_t ldo,
                                               int64_t r0, int64_t r1) {
  thread_local Scratch sums;
  const int32_t* qsum = given_qsum;
  if (!qsum) {
    int32_t* q = reinterpret_cast<int32_t*>(sums.get(size_t(n) * 4));
    for (int64_t t = 0; t < n; ++t) q[t] = sum_q(Q + t * ldq, W.padded_cols());
    qsum = q;
  }
  for (int64_t t = 0; t < n; t += kDirectTokenBlock) {
    const int64_t tn = std::min(kDirectTokenBlock, n - t);
    const float* sc = scale ? scale + t : nullptr;
    if constexpr (Vbmi) direct_strips_vbmi<Prefetch>(W, Q + t * ldq, ldq, tn, qsum + t, sc, out + t * ldo, ldo, r0, r1);
    else direct_strips<Prefetch>(W, Q + t * ldq, ldq, tn, qsum + t, sc, out + t * ldo, ldo, r0, r1);
  }
}

// Every token count through the register-decoded tiles (one token: the streaming decoder).
template <bool Prefetch, bool Vbmi = false>
MMFREE_TARGET_AVX512 inline void ternary_gemm_direct(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                                     int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (n == 1) return ternary_gemm<Prefetch, Vbmi>(W, Q, ldq, n, out, ldo, r0, r1);
  direct_blocks<Prefetch, Vbmi, int32_t>(W, Q, ldq, n, nullptr, nullptr, out, ldo, r0, r1);
}
// The same, dequantised in the store: out[t, r] = float(W[r] . Q[t]) * scale[t], the bits of
// ternary_gemm_direct followed by scale_ints. A step of 5 tokens of the 2.7B preset spent 3% of
// its time, and a 512-token prefill 5%, reading the integers back to dequantise them. `qsum`
// (or null): the tokens' sums of Q, computed once by the quantisation; summing them again in every
// call was 2.4% of a 512-token prefill.
template <bool Prefetch, bool Vbmi = false>
MMFREE_TARGET_AVX512 inline void ternary_gemm_direct_scaled(const TernaryMatrix& W, const int8_t* Q, int64_t ldq,
                                                            int64_t n, const float* scale, const int32_t* qsum,
                                                            float* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  direct_blocks<Prefetch, Vbmi, float>(W, Q, ldq, n, scale, qsum, out, ldo, r0, r1);
}

}  // namespace mmfree::kernels::avx512

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__
