// mmfree: NEON ternary kernels on the strip layouts (AArch64; NEON is part of the base ISA).
//
// A chunk of a strip is four 16-byte registers of 4 rows x 4 digit bytes. With the dot-product
// extension (ARMv8.2 DotProd: Cortex-A76 and later, Neoverse, Apple M1 and later), sdot by lane
// adds each row's 4 products with 4 activation bytes picked out of a register: exactly the
// layout's order, one instruction per 16 weights. Without it, vmull_s8 and pairwise adds do the
// same in four. Digits d = w + 1 in {0, 1, 2} are valid signed bytes too; sum w*q = sum d*q - sum q.
#pragma once

#if defined(__aarch64__)
#include <arm_neon.h>
#if defined(__linux__)
#include <sys/auxv.h>
#endif

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <vector>

#include "mmfree/kernels/strip_loop.hpp"
#include "mmfree/ternary_format.hpp"

#define MMFREE_TARGET_DOTPROD __attribute__((target("arch=armv8.2-a+dotprod")))

namespace mmfree::kernels::neon {

// The CPU has the dot-product instructions (Linux reports them in the hardware capabilities).
inline bool has_dotprod() {
#if defined(__linux__)
  static const bool ok = (getauxval(AT_HWCAP) & (1ul << 20)) != 0;  // HWCAP_ASIMDDP
  return ok;
#elif defined(__APPLE__)
  return true;  // every Apple AArch64 CPU has it
#else
  return false;
#endif
}

inline int32_t sum_q(const int8_t* q, int64_t n) {
  int32x4_t acc = vdupq_n_s32(0);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc = vpadalq_s16(acc, vpaddlq_s8(vld1q_s8(q + i)));
  int32_t s = vaddvq_s32(acc);
  for (; i < n; ++i) s += q[i];
  return s;
}

template <int P>
inline int8x16_t tq2_plane(uint8x16_t u) {
  if constexpr (P == 3) return vreinterpretq_s8_u8(vshrq_n_u8(u, 6));
  else if constexpr (P == 0) return vreinterpretq_s8_u8(vandq_u8(u, vdupq_n_u8(3)));
  else return vreinterpretq_s8_u8(vandq_u8(vshrq_n_u8(u, 2 * P), vdupq_n_u8(3)));
}
// TQ1, one base-3 level: digit of weight w = [r >= w] + [r >= 2w] (comparisons give 0xFF = -1).
inline int8x16_t tq1_level(uint8x16_t& r, uint8_t w) {
  const uint8x16_t vw = vdupq_n_u8(w);
  const uint8x16_t ge1 = vcgeq_u8(r, vw), ge2 = vcgeq_u8(r, vdupq_n_u8(uint8_t(2 * w)));
  r = vsubq_u8(vsubq_u8(r, vandq_u8(ge1, vw)), vandq_u8(ge2, vw));
  return vnegq_s8(vaddq_s8(vreinterpretq_s8_u8(ge1), vreinterpretq_s8_u8(ge2)));
}
inline void tq1_planes(uint8x16_t v, int8x16_t d[5]) {
  d[0] = tq1_level(v, 81);
  d[1] = tq1_level(v, 27);
  d[2] = tq1_level(v, 9);
  d[3] = tq1_level(v, 3);
  d[4] = vreinterpretq_s8_u8(v);
}
// The digit planes of quad k (rows 4k .. 4k+3) of chunk c.
inline void planes(TernaryFormat f, const uint8_t* chunk, int k, int8x16_t d[5]) {
  const uint8x16_t u = vld1q_u8(chunk + 16 * k);
  if (f == TernaryFormat::TQ2) d[0] = tq2_plane<0>(u), d[1] = tq2_plane<1>(u), d[2] = tq2_plane<2>(u), d[3] = tq2_plane<3>(u);
  else tq1_planes(u, d);
}
inline int planes_per_chunk(TernaryFormat f) { return f == TernaryFormat::TQ2 ? 4 : 5; }

inline void store_rows(int32_t* out, const int32x4_t acc[4], int32_t qsum, int64_t s, int64_t r0, int64_t r1) {
  int32_t v[16];
  for (int k = 0; k < 4; ++k) vst1q_s32(v + 4 * k, vsubq_s32(acc[k], vdupq_n_s32(qsum)));
  const int64_t base = s * kStripRows, b = std::max(r0, base), e = std::min(r1, base + kStripRows);
  for (int64_t r = b; r < e; ++r) out[r] = v[r - base];
}

// Per row of a quad: the sum of its 4 products with the broadcast bytes x[0..3] (no dot product).
inline int16x8_t dot4_pairs(int8x16_t d, int8x16_t xb) {
  const int16x8_t lo = vmull_s8(vget_low_s8(d), vget_low_s8(xb)), hi = vmull_high_s8(d, xb);
  return vpaddq_s16(lo, hi);  // lanes 2i, 2i+1: the two halves of row i's sum (|.| <= 512)
}
inline int8x16_t bcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return vreinterpretq_s8_s32(vdupq_n_s32(v));
}

// ---- without the dot-product extension: one token at a time -----------------------------------

inline void decode(const TernaryMatrix& W, const int8_t* q, int32_t qsum, int32_t* out, int64_t r0, int64_t r1) {
  const int np = planes_per_chunk(W.format), cc = int(chunk_cols(W.format));
  for (int64_t s = r0 / kStripRows; s * kStripRows < r1; ++s) {
    int32x4_t acc[4] = {vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0), vdupq_n_s32(0)};
    for (int64_t c0 = 0; c0 < W.chunks; c0 += 12) {  // int16 pair sums: <= 12 * 5 * 512 = 30720
      int16x8_t a16[4] = {vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0), vdupq_n_s16(0)};
      for (int64_t c = c0; c < std::min(W.chunks, c0 + 12); ++c) {
        const uint8_t* chunk = W.strip(s) + c * kChunkBytes;
        for (int k = 0; k < 4; ++k) {
          int8x16_t d[5];
          planes(W.format, chunk, k, d);
          for (int p = 0; p < np; ++p) a16[k] = vaddq_s16(a16[k], dot4_pairs(d[p], bcast4(q + cc * c + 4 * p)));
        }
      }
      for (int k = 0; k < 4; ++k) acc[k] = vpadalq_s16(acc[k], a16[k]);
    }
    store_rows(out, acc, qsum, s, r0, r1);
  }
}

// Same contract as ternary_gemm_scalar.
inline void ternary_gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out, int64_t ldo,
                         int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < n; ++t) decode(W, Q + t * ldq, sum_q(Q + t * ldq, W.padded_cols()), out + t * ldo, r0, r1);
}

// ---- with the dot-product extension ---------------------------------------------------------

MMFREE_TARGET_DOTPROD inline void decode_dotprod(const TernaryMatrix& W, const int8_t* q, int32_t qsum, int32_t* out,
                                                 int64_t r0, int64_t r1) {
  const bool tq2 = W.format == TernaryFormat::TQ2;
  for (int64_t s = r0 / kStripRows; s * kStripRows < r1; ++s) {
    int32x4_t a[8];
    for (auto& v : a) v = vdupq_n_s32(0);
    const uint8_t* w = W.strip(s);
    for (int64_t c = 0; c < W.chunks; ++c, w += kChunkBytes) {
      for (int k = 0; k < 4; ++k) {
        int8x16_t d[5];
        planes(W.format, w, k, d);
        if (tq2) {
          const int8x16_t x = vld1q_s8(q + 16 * c);  // groups 0..3 of the chunk in lanes 0..3
          a[k] = vdotq_laneq_s32(a[k], d[0], x, 0);
          a[4 + k] = vdotq_laneq_s32(a[4 + k], d[1], x, 1);
          a[k] = vdotq_laneq_s32(a[k], d[2], x, 2);
          a[4 + k] = vdotq_laneq_s32(a[4 + k], d[3], x, 3);
        } else {
          const int8x16_t x = vld1q_s8(q + 20 * c), x4 = bcast4(q + 20 * c + 16);
          a[k] = vdotq_laneq_s32(a[k], d[0], x, 0);
          a[4 + k] = vdotq_laneq_s32(a[4 + k], d[1], x, 1);
          a[k] = vdotq_laneq_s32(a[k], d[2], x, 2);
          a[4 + k] = vdotq_laneq_s32(a[4 + k], d[3], x, 3);
          a[k] = vdotq_s32(a[k], d[4], x4);
        }
      }
    }
    for (int k = 0; k < 4; ++k) a[k] = vaddq_s32(a[k], a[4 + k]);
    store_rows(out, a, qsum, s, r0, r1);
  }
}

// Group g (columns 4g .. 4g+3) of a strip's 16 rows at buf + 64 g, as on x86.
inline void unpack(const TernaryMatrix& W, int64_t s, int8_t* buf) {
  const int np = planes_per_chunk(W.format);
  for (int64_t c = 0; c < W.chunks; ++c)
    for (int k = 0; k < 4; ++k) {
      int8x16_t d[5];
      planes(W.format, W.strip(s) + c * kChunkBytes, k, d);
      for (int p = 0; p < np; ++p) vst1q_s8(buf + (np * c + p) * 64 + 16 * k, d[p]);
    }
}

template <int T>
MMFREE_TARGET_DOTPROD inline void tile(const int8_t* buf, int64_t groups, const int8_t* Q, int64_t ldq,
                                       const int32_t* qsum, int32_t* out, int64_t ldo, int64_t s, int64_t r0, int64_t r1) {
  int32x4_t acc[T][4];
  for (int j = 0; j < T; ++j)
    for (int k = 0; k < 4; ++k) acc[j][k] = vdupq_n_s32(0);
  for (int64_t g = 0; g < groups; ++g) {
    const int8x16_t d0 = vld1q_s8(buf + 64 * g), d1 = vld1q_s8(buf + 64 * g + 16);
    const int8x16_t d2 = vld1q_s8(buf + 64 * g + 32), d3 = vld1q_s8(buf + 64 * g + 48);
    for (int j = 0; j < T; ++j) {
      const int8x16_t x = bcast4(Q + j * ldq + 4 * g);
      acc[j][0] = vdotq_s32(acc[j][0], d0, x);
      acc[j][1] = vdotq_s32(acc[j][1], d1, x);
      acc[j][2] = vdotq_s32(acc[j][2], d2, x);
      acc[j][3] = vdotq_s32(acc[j][3], d3, x);
    }
  }
  for (int j = 0; j < T; ++j) store_rows(out + j * ldo, acc[j], qsum[j], s, r0, r1);
}

MMFREE_TARGET_DOTPROD inline void ternary_gemm_dotprod(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                                       int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (r0 >= r1) return;
  if (n == 1) {
    decode_dotprod(W, Q, sum_q(Q, W.padded_cols()), out, r0, r1);
    return;
  }
  thread_local std::vector<int8_t> planes_buf;
  thread_local std::vector<int32_t> qsum;
  const int64_t groups = W.padded_cols() / 4;
  planes_buf.resize(size_t(groups * 64));
  qsum.resize(size_t(n));
  for (int64_t t = 0; t < n; ++t) qsum[size_t(t)] = sum_q(Q + t * ldq, W.padded_cols());
  int8_t* buf = planes_buf.data();
  strips_by_token_tiles<4, 1>(
      n, r0, r1, [&](int64_t s) { unpack(W, s, buf); },
      [&](auto T, int64_t s, int64_t t) {
        tile<decltype(T)::value>(buf, groups, Q + t * ldq, ldq, qsum.data() + t, out + t * ldo, ldo, s, r0, r1);
      });
}

// ---- a few tokens with the dot-product extension: planes decoded in registers ----------------
//
// The buffered GEMM above writes each strip's planes out at 4x (TQ2) or 5x (TQ1) its bytes and
// reads them back per tile of tokens; on x86 the same scheme made a step of 2 sequences cost 3x
// one token's (AVX2, ternary_avx2.hpp). Here each chunk's planes are decoded in registers once per
// tile and multiplied against every token of the tile: the weights stream once per pass. The
// chooser measures both (its batch and prefill regimes).

inline constexpr int kDirectTile = 4;  // 16 sums, 5 planes and 8 activation registers of 32
inline constexpr int64_t kDirectTokenBlock = 128;

// Strip s against T tokens.
template <int T, bool Tq2>
MMFREE_TARGET_DOTPROD inline void direct_tile(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                              const int32_t* qsum, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  constexpr int64_t cc = Tq2 ? 16 : 20;  // columns per chunk
  int32x4_t acc[T][4];
  #pragma GCC unroll 4
  for (int j = 0; j < T; ++j)
    #pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) acc[j][k] = vdupq_n_s32(0);
  const uint8_t* w = W.strip(s);
  for (int64_t c = 0; c < W.chunks; ++c, w += kChunkBytes) {
    int8x16_t x[T], x4[T];  // each token's activations of the chunk's groups 0-3 (TQ1: and 4)
    #pragma GCC unroll 4
    for (int j = 0; j < T; ++j) {
      x[j] = vld1q_s8(Q + j * ldq + cc * c);
      if constexpr (!Tq2) x4[j] = bcast4(Q + j * ldq + cc * c + 16);
    }
    #pragma GCC unroll 4
    for (int k = 0; k < 4; ++k) {
      const uint8x16_t u = vld1q_u8(w + 16 * k);
      int8x16_t d[5];
      if constexpr (Tq2) d[0] = tq2_plane<0>(u), d[1] = tq2_plane<1>(u), d[2] = tq2_plane<2>(u), d[3] = tq2_plane<3>(u);
      else tq1_planes(u, d);
      #pragma GCC unroll 4
      for (int j = 0; j < T; ++j) {
        acc[j][k] = vdotq_laneq_s32(acc[j][k], d[0], x[j], 0);
        acc[j][k] = vdotq_laneq_s32(acc[j][k], d[1], x[j], 1);
        acc[j][k] = vdotq_laneq_s32(acc[j][k], d[2], x[j], 2);
        acc[j][k] = vdotq_laneq_s32(acc[j][k], d[3], x[j], 3);
        if constexpr (!Tq2) acc[j][k] = vdotq_s32(acc[j][k], d[4], x4[j]);
      }
    }
  }
  #pragma GCC unroll 4
  for (int j = 0; j < T; ++j) store_rows(out + j * ldo, acc[j], qsum[j], s, r0, r1);
}
template <int T>
MMFREE_TARGET_DOTPROD inline void direct_tile(const TernaryMatrix& W, int64_t s, const int8_t* Q, int64_t ldq,
                                              const int32_t* qsum, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (W.format == TernaryFormat::TQ2) direct_tile<T, true>(W, s, Q, ldq, qsum, out, ldo, r0, r1);
  else direct_tile<T, false>(W, s, Q, ldq, qsum, out, ldo, r0, r1);
}

// Same contract as ternary_gemm_scalar; one token is decode_dotprod's.
MMFREE_TARGET_DOTPROD inline void ternary_gemm_dotprod_direct(const TernaryMatrix& W, const int8_t* Q, int64_t ldq,
                                                              int64_t n, int32_t* out, int64_t ldo, int64_t r0,
                                                              int64_t r1) {
  if (r0 >= r1) return;
  if (n == 1) {
    decode_dotprod(W, Q, sum_q(Q, W.padded_cols()), out, r0, r1);
    return;
  }
  thread_local std::vector<int32_t> qsum;
  qsum.resize(size_t(n));
  for (int64_t t = 0; t < n; ++t) qsum[size_t(t)] = sum_q(Q + t * ldq, W.padded_cols());
  strips_by_even_tiles<kDirectTile>(n, kDirectTokenBlock, kDirectTile, r0, r1, [&](auto T, int64_t s, int64_t t) {
    direct_tile<decltype(T)::value>(W, s, Q + t * ldq, ldq, qsum.data() + t, out + t * ldo, ldo, r0, r1);
  });
}

}  // namespace mmfree::kernels::neon

#endif  // __aarch64__
