// mmfree: AVX-512 VNNI kernels on the interleaved layouts (interleaved_format.hpp), for passes of
// a few tokens (batched decoding of a few sequences, the verification of drafted tokens), and of
// one, where TQ1's decoding is cheaper here than in the strips.
//
// A chunk (4 columns of a group of 64 or 80 rows) is loaded once and turned into cumulative planes
// (TQ2: u & 3, u & 15, u & 63 and u itself; TQ1: u mod 3, 9, 27 by byte permutes of r = u mod 81,
// r, and u), each multiplied against the same broadcast of a token's 4 activation bytes. Per chunk
// and tile of T tokens: 4T (TQ2) or 5T (TQ1) vpdpbusd against 3 or 7 decoding ops, where the
// strips' register-decoded kernels take 4 and 10 (ternary_avx512.hpp). A tile holds 4T or 5T
// accumulators: up to 6 tokens (TQ2) or 5 (TQ1) per tile; more tokens take several tiles over
// the group, whose chunks are then read from L2.
//
// At the store, row r_j's sum T_j = (A_j - A_{j-1}) / base^j: an arithmetic shift (TQ2, exact while
// the columns are at most kInterleavedMaxCols) or a multiply by the inverse of 3^j modulo 2^32
// (TQ1, exact whatever the int32 sums wrapped to, because T_j itself fits in int32). The result is
// the integer every kernel returns (ternary_scalar.hpp), bit for bit.
#pragma once

#include "mmfree/interleaved_format.hpp"
#include "mmfree/kernels/ternary_avx512.hpp"

#if defined(__x86_64__)
#include <immintrin.h>

#include "mmfree/kernels/simd_warnings.hpp"

MMFREE_SIMD_WARNINGS_PUSH

namespace mmfree::kernels::avx512 {

inline constexpr int kInterleavedTileTq2 = 6;  // 24 accumulators
inline constexpr int kInterleavedTileTq1 = 5;  // 25 accumulators
// Besides the strips' prefetch into L1 (kPrefetchBytes ahead), one into L2 this far ahead: a pass
// of a few tokens spends longer per chunk than one token's, so the near prefetch alone left fewer
// lines in flight than the memory's latency needs. Walks over the 2.7B TQ2 preset's matrices,
// alternated: TQ2 at 2-4 tokens 2-4.5% faster, at 12 and TQ1 within the noise (AMD Zen 5).
// Where a group takes several tiles, the last one (which reads the group from L2) prefetches the
// next group instead, at the same place in it, so that the next group's first tile finds its chunks
// in L2 rather than waiting on memory while the multipliers stand idle: walks over the 1.3B TQ2
// preset's matrices, alternated, 3 runs each: 8 tokens 671 -> 731 GMAC/s, 12 tokens 778 -> 811
// (medians); TQ1 at 8 and 16 tokens 675 -> 734 and 737 -> 808 in a series of 3, within the noise
// in an earlier series of 2. step_batch of 8 sequences 18.2 -> 17.3 ms (AMD Zen 5).
inline constexpr int64_t kFarPrefetchBytes = 16384;
// A pass that one tile per group holds (up to 6 TQ2 tokens, 5 TQ1) prefetches only this far into
// L2, not also kPrefetchBytes ahead into L1. With both, the chunk loop of 2-4 tokens streamed
// 640 MB 15-25% slower (2 threads) than with either alone. Our reading: the L1 prefetch, 10 KB
// behind the L2 one, finds its line still on the way from memory and holds one of L1's few miss
// buffers until it comes, so the loads wait. step_batch, one model, the two ways alternated in
// one process (AMD Zen 5, 2 threads): 2.7B TQ2 at 2, 4 and 5 tokens 3-14% faster (two series),
// TQ1 within +-3%, one TQ1 token on this copy 11-12% faster; but the 1.3B TQ2 preset, whose
// smaller matrices the waiting threads warm into L2 for a larger part (thread_pool.hpp), ran 2-8%
// slower while the memory was slow (39 GB/s) and 2-7% faster while it was fast (64-70 GB/s).
// Twin kernels with the L1 prefetch, for the chooser to measure, were tried: its batch samples
// (4 and 12 tokens; the twins differ at 4 only) rated either one ahead from load to load, and it
// picked the twin for the 2.7B preset, so they were dropped. Passes of several tiles per group
// keep the L1 prefetch (7, 8 and 12 tokens: within 2% either way).

// Rows of group g's plane k (strip P g + k) to store: T = the plane's row sums with the digits'
// offset, qsum[j], taken away.
template <int T, int P, class O>
MMFREE_TARGET_AVX512 inline void store_group(const __m512i (&t)[T][P], const int32_t* qsum, const float* scale, O* out,
                                             int64_t ldo, int64_t g, int64_t r0, int64_t r1) {
  #pragma GCC unroll 5
  for (int k = 0; k < P; ++k) {
    const int64_t s = g * P + k;
    const __mmask16 m = row_mask(s, r0, r1);
    if (!m) continue;
    #pragma GCC unroll 6
    for (int j = 0; j < T; ++j) store_token_rows(out + j * ldo + s * kStripRows, t[j][k], qsum, scale, j, m);
  }
}

// A tile's H sets of T x P accumulators: zeroed, and folded into set 0 after the chunks.
template <int H, int T, int P>
MMFREE_TARGET_AVX512 inline void zero_sets(__m512i (&acc)[H][T][P]) {
  #pragma GCC unroll 2
  for (int h = 0; h < H; ++h)
    #pragma GCC unroll 6
    for (int j = 0; j < T; ++j)
      #pragma GCC unroll 5
      for (int a = 0; a < P; ++a) acc[h][j][a] = _mm512_setzero_si512();
}
template <int H, int T, int P>
MMFREE_TARGET_AVX512 inline void fold_sets(__m512i (&acc)[H][T][P]) {
  #pragma GCC unroll 2
  for (int h = 1; h < H; ++h)
    #pragma GCC unroll 6
    for (int j = 0; j < T; ++j)
      #pragma GCC unroll 5
      for (int a = 0; a < P; ++a) acc[0][j][a] = _mm512_add_epi32(acc[0][j][a], acc[h][j][a]);
}

// Chunk c of a TQ2 group into one set of a tile's accumulators. Near: prefetch into L1 too (the
// note above kFarPrefetchBytes); the same in tq1_interleaved_chunk.
template <int T, bool Near>
MMFREE_TARGET_AVX512 inline void tq2_interleaved_chunk(__m512i (&acc)[T][4], const uint8_t* w, int64_t c, const int8_t* Q,
                                                       int64_t ldq, int64_t far) {
  if constexpr (Near) _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kPrefetchBytes), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + far), _MM_HINT_T1);
  const __m512i u = _mm512_loadu_si512(w + c * 64);
  const __m512i p0 = _mm512_and_si512(u, _mm512_set1_epi8(0x03));
  const __m512i p1 = _mm512_and_si512(u, _mm512_set1_epi8(0x0f));
  const __m512i p2 = _mm512_and_si512(u, _mm512_set1_epi8(0x3f));
  #pragma GCC unroll 6
  for (int j = 0; j < T; ++j) {
    const __m512i x = _mm512_set1_epi32(load_le32(reinterpret_cast<const uint8_t*>(Q + j * ldq + 4 * c)));
    dpbusd(acc[j][0], p0, x);
    dpbusd(acc[j][1], p1, x);
    dpbusd(acc[j][2], p2, x);
    dpbusd(acc[j][3], u, x);
  }
}

// One tile of T tokens over group g of a TQ2 copy (`w`: the group's first chunk). Tiles of 1 and 2
// tokens take two chunks per step into two sets of accumulators: 8 and 16 vpdpbusd chains
// instead of 4 and 8. One core with the matrix in L2: 2 tokens 8.6% more GMAC/s (AMD Zen 5).
template <int T, bool Near, class O>
MMFREE_TARGET_AVX512 inline void tq2_interleaved_tile(const uint8_t* w, int64_t chunks, const int8_t* Q, int64_t ldq,
                                                      const int32_t* qsum, const float* scale, O* out, int64_t ldo,
                                                      int64_t g, int64_t r0, int64_t r1, int64_t far) {
  constexpr int H = T <= 2 ? 2 : 1;
  __m512i acc[H][T][4];
  zero_sets(acc);
  int64_t c = 0;
  for (; c + H <= chunks; c += H)
    #pragma GCC unroll 2
    for (int h = 0; h < H; ++h) tq2_interleaved_chunk<T, Near>(acc[h], w, c + h, Q, ldq, far);
  if (c < chunks) tq2_interleaved_chunk<T, Near>(acc[0], w, c, Q, ldq, far);
  fold_sets(acc);
  __m512i t[T][4];
  #pragma GCC unroll 6
  for (int j = 0; j < T; ++j) {
    t[j][0] = acc[0][j][0];
    t[j][1] = _mm512_srai_epi32(_mm512_sub_epi32(acc[0][j][1], acc[0][j][0]), 2);
    t[j][2] = _mm512_srai_epi32(_mm512_sub_epi32(acc[0][j][2], acc[0][j][1]), 4);
    t[j][3] = _mm512_srai_epi32(_mm512_sub_epi32(acc[0][j][3], acc[0][j][2]), 6);
  }
  store_group<T, 4>(t, qsum, scale, out, ldo, g, r0, r1);
}

// u mod 3, 9 and 27 of r = u mod 81 < 128, as vpermi2b tables.
struct InterleavedTq1Tables {
  alignas(64) uint8_t t[3][128];
  InterleavedTq1Tables() {
    for (int r = 0; r < 128; ++r) t[0][r] = uint8_t(r % 3), t[1][r] = uint8_t(r % 9), t[2][r] = uint8_t(r % 27);
  }
};
inline const InterleavedTq1Tables& interleaved_tq1_tables() {
  static const InterleavedTq1Tables t;
  return t;
}

// The vpermi2b tables and constants of a TQ1 tile, loaded once per tile.
struct Tq1TileRegs {
  __m512i lo[3], hi[3], v81;
};
MMFREE_TARGET_AVX512_VBMI inline Tq1TileRegs tq1_tile_regs() {
  const auto& tab = interleaved_tq1_tables();
  Tq1TileRegs r;
  #pragma GCC unroll 3
  for (int k = 0; k < 3; ++k) r.lo[k] = _mm512_load_si512(tab.t[k]), r.hi[k] = _mm512_load_si512(tab.t[k] + 64);
  r.v81 = _mm512_set1_epi8(81);
  return r;
}
// Chunk c of a TQ1 group into one set of a tile's accumulators.
template <int T, bool Near>
MMFREE_TARGET_AVX512_VBMI inline void tq1_interleaved_chunk(__m512i (&acc)[T][5], const Tq1TileRegs& R, const uint8_t* w,
                                                            int64_t c, const int8_t* Q, int64_t ldq, int64_t far) {
  if constexpr (Near) _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + kPrefetchBytes), _MM_HINT_T0);
  _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + far), _MM_HINT_T1);
  const __m512i u = _mm512_loadu_si512(w + c * 64);
  // u < 243: u - 81 wraps above u where u < 81, so min takes one 81 away where it can.
  __m512i r = _mm512_min_epu8(u, _mm512_sub_epi8(u, R.v81));
  r = _mm512_min_epu8(r, _mm512_sub_epi8(r, R.v81));
  const __m512i m0 = _mm512_permutex2var_epi8(R.lo[0], r, R.hi[0]), m1 = _mm512_permutex2var_epi8(R.lo[1], r, R.hi[1]),
                m2 = _mm512_permutex2var_epi8(R.lo[2], r, R.hi[2]);
  #pragma GCC unroll 5
  for (int j = 0; j < T; ++j) {
    const __m512i x = _mm512_set1_epi32(load_le32(reinterpret_cast<const uint8_t*>(Q + j * ldq + 4 * c)));
    dpbusd(acc[j][0], m0, x);
    dpbusd(acc[j][1], m1, x);
    dpbusd(acc[j][2], m2, x);
    dpbusd(acc[j][3], r, x);
    dpbusd(acc[j][4], u, x);
  }
}

// A 1-token tile takes two chunks per step into two sets of accumulators (10 chains, not 5): one
// core with the matrix in L2 streamed 52.5 GB/s, against 38.1 for the strips' VBMI decoder, whose
// 9 decoding ops per chunk and 5 chains made one token compute-bound on a core (AMD Zen 5).
template <int T, bool Near, class O>
MMFREE_TARGET_AVX512_VBMI inline void tq1_interleaved_tile(const uint8_t* w, int64_t chunks, const int8_t* Q,
                                                           int64_t ldq, const int32_t* qsum, const float* scale, O* out,
                                                           int64_t ldo, int64_t g, int64_t r0, int64_t r1, int64_t far) {
  constexpr int H = T == 1 ? 2 : 1;
  const Tq1TileRegs R = tq1_tile_regs();
  __m512i acc[H][T][5];
  zero_sets(acc);
  int64_t c = 0;
  for (; c + H <= chunks; c += H)
    #pragma GCC unroll 2
    for (int h = 0; h < H; ++h) tq1_interleaved_chunk<T, Near>(acc[h], R, w, c + h, Q, ldq, far);
  if (c < chunks) tq1_interleaved_chunk<T, Near>(acc[0], R, w, c, Q, ldq, far);
  fold_sets(acc);
  // Exact division of the differences (multiples of 3^k) by 3^k: times its inverse mod 2^32.
  const __m512i inv[4] = {_mm512_set1_epi32(int32_t(0xAAAAAAABu)), _mm512_set1_epi32(int32_t(0x38E38E39u)),
                          _mm512_set1_epi32(int32_t(0x684BDA13u)), _mm512_set1_epi32(int32_t(0x781948B1u))};
  __m512i t[T][5];
  #pragma GCC unroll 5
  for (int j = 0; j < T; ++j) {
    t[j][0] = acc[0][j][0];
    #pragma GCC unroll 4
    for (int k = 1; k < 5; ++k) t[j][k] = _mm512_mullo_epi32(_mm512_sub_epi32(acc[0][j][k], acc[0][j][k - 1]), inv[k - 1]);
  }
  store_group<T, 5>(t, qsum, scale, out, ldo, g, r0, r1);
}

// One tile of T tokens over one group (tq2_interleaved_tile<T> or tq1_interleaved_tile<T>).
template <class O>
using InterleavedTileFn = void (*)(const uint8_t* w, int64_t chunks, const int8_t* Q, int64_t ldq, const int32_t* qsum,
                                   const float* scale, O* out, int64_t ldo, int64_t g, int64_t r0, int64_t r1,
                                   int64_t far);
template <class O, bool Near>
inline constexpr InterleavedTileFn<O> kTq2Tiles[kInterleavedTileTq2] = {
    tq2_interleaved_tile<1, Near, O>, tq2_interleaved_tile<2, Near, O>, tq2_interleaved_tile<3, Near, O>,
    tq2_interleaved_tile<4, Near, O>, tq2_interleaved_tile<5, Near, O>, tq2_interleaved_tile<6, Near, O>};
template <class O, bool Near>
inline constexpr InterleavedTileFn<O> kTq1Tiles[kInterleavedTileTq1] = {
    tq1_interleaved_tile<1, Near, O>, tq1_interleaved_tile<2, Near, O>, tq1_interleaved_tile<3, Near, O>,
    tq1_interleaved_tile<4, Near, O>, tq1_interleaved_tile<5, Near, O>};

// Every token of the pass over the groups that rows [r0, r1) touch, tile after tile per group (a
// group's chunks are in L2 for the tiles after the first). tiles[k - 1] takes k tokens. The
// tokens are shared evenly among the fewest tiles that hold them (7 tokens: 4 + 3, not 6 + 1):
// with one chunk per step, a tile of 1 or 2 tokens had 4 or 8 vpdpbusd chains, too few to cover
// the instruction's latency (12 keep both of AMD Zen 5's pipes busy), and ran at half or 88% of
// the peak per MAC, measured; and a tile of 1 still decodes a chunk for a quarter of the work.
// `copy`: W's copy in the digits of format f (its interleaved copy, or its wide one).
// `near_tiles` also prefetch into L1, `far_tiles` only into L2, for a pass that one tile per
// group holds (the note above kFarPrefetchBytes).
template <class O>
inline void interleaved_groups(const InterleavedTileFn<O>* near_tiles, const InterleavedTileFn<O>* far_tiles,
                               int64_t max_tile, const TernaryMatrix& W, TernaryFormat f, const uint8_t* copy,
                               const int8_t* Q, int64_t ldq, int64_t n, const int32_t* qsum, const float* scale, O* out,
                               int64_t ldo, int64_t r0, int64_t r1) {
  const int64_t G = interleaved_group_rows(f), chunks = interleaved_chunks(W);
  const InterleavedTileFn<O>* tiles = n > max_tile ? near_tiles : far_tiles;
  for (int64_t g = r0 / G; g * G < r1; ++g)
    for (int64_t t = 0, left = (n + max_tile - 1) / max_tile; t < n; --left) {
      const int64_t k = (n - t + left - 1) / left;
      const bool last_of_several = left == 1 && t > 0;  // prefetches the next group (kFarPrefetchBytes)
      tiles[k - 1](copy + g * chunks * kChunkBytes, chunks, Q + t * ldq, ldq, qsum + t, scale ? scale + t : nullptr,
                   out + t * ldo, ldo, g, r0, r1, last_of_several ? chunks * kChunkBytes : kFarPrefetchBytes);
      t += k;
    }
}

// The kernels (same contract as ternary_gemm_scalar and ternary_gemm_direct_scaled). A matrix
// without its interleaved copy, or a TQ1 one on a CPU without VBMI (Vbmi = false), goes to the
// strips' register-decoded kernels: the same bits, as always. Rows may start anywhere; a range
// that starts or ends inside a group computes that group and stores only its own rows, so callers
// split rows at multiples of interleaved_group_rows (KernelTable::row_grain) to do no work twice.
template <bool Vbmi, class O>
MMFREE_TARGET_AVX512 inline void interleaved_blocks(const TernaryMatrix& W, TernaryFormat f, const uint8_t* copy,
                                                    const int8_t* Q, int64_t ldq, int64_t n, const float* scale,
                                                    const int32_t* given_qsum, O* out, int64_t ldo, int64_t r0, int64_t r1) {
  thread_local Scratch sums;
  const int32_t* qsum = given_qsum;
  if (!qsum) {
    int32_t* q = reinterpret_cast<int32_t*>(sums.get(size_t(n) * 4));
    for (int64_t t = 0; t < n; ++t) q[t] = sum_q(Q + t * ldq, 4 * interleaved_chunks(W));
    qsum = q;
  }
  // Tokens in blocks whose activations stay in L2 while a group's tiles go over them (as the
  // strips' kernels do: kDirectTokenBlock).
  for (int64_t t = 0; t < n; t += kDirectTokenBlock) {
    const int64_t tn = std::min(kDirectTokenBlock, n - t);
    const float* sc = scale ? scale + t : nullptr;
    if (f == TernaryFormat::TQ2)
      interleaved_groups<O>(kTq2Tiles<O, true>, kTq2Tiles<O, false>, kInterleavedTileTq2, W, f, copy, Q + t * ldq, ldq,
                            tn, qsum + t, sc, out + t * ldo, ldo, r0, r1);
    else if constexpr (Vbmi)
      interleaved_groups<O>(kTq1Tiles<O, true>, kTq1Tiles<O, false>, kInterleavedTileTq1, W, f, copy, Q + t * ldq, ldq,
                            tn, qsum + t, sc, out + t * ldo, ldo, r0, r1);
  }
}
template <bool Vbmi = false>
MMFREE_TARGET_AVX512 inline void ternary_gemm_interleaved(const TernaryMatrix& W, const int8_t* Q, int64_t ldq,
                                                          int64_t n, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (!W.interleaved || (W.format == TernaryFormat::TQ1 && !Vbmi))
    return ternary_gemm_direct<true, Vbmi>(W, Q, ldq, n, out, ldo, r0, r1);
  interleaved_blocks<Vbmi, int32_t>(W, W.format, W.interleaved, Q, ldq, n, nullptr, nullptr, out, ldo, r0, r1);
}
template <bool Vbmi = false>
MMFREE_TARGET_AVX512 inline void ternary_gemm_interleaved_scaled(const TernaryMatrix& W, const int8_t* Q, int64_t ldq,
                                                                 int64_t n, const float* scale, const int32_t* qsum,
                                                                 float* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (!W.interleaved || (W.format == TernaryFormat::TQ1 && !Vbmi))
    return ternary_gemm_direct_scaled<true, Vbmi>(W, Q, ldq, n, scale, qsum, out, ldo, r0, r1);
  interleaved_blocks<Vbmi, float>(W, W.format, W.interleaved, Q, ldq, n, scale, qsum, out, ldo, r0, r1);
}
// The same on a TQ1 matrix's wide copy (TQ2 digits: interleaved_format.hpp), through the TQ2 tiles.
// A matrix without one goes to the strips' kernels.
MMFREE_TARGET_AVX512 inline void ternary_gemm_wide(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                                   int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (!W.wide) return ternary_gemm_direct<true, false>(W, Q, ldq, n, out, ldo, r0, r1);
  interleaved_blocks<false, int32_t>(W, TernaryFormat::TQ2, W.wide, Q, ldq, n, nullptr, nullptr, out, ldo, r0, r1);
}
MMFREE_TARGET_AVX512 inline void ternary_gemm_wide_scaled(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                                          const float* scale, const int32_t* qsum, float* out, int64_t ldo,
                                                          int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (!W.wide) return ternary_gemm_direct_scaled<true, false>(W, Q, ldq, n, scale, qsum, out, ldo, r0, r1);
  interleaved_blocks<false, float>(W, TernaryFormat::TQ2, W.wide, Q, ldq, n, scale, qsum, out, ldo, r0, r1);
}

}  // namespace mmfree::kernels::avx512

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__
