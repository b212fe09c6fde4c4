// mmfree: the interleaved layouts, a second copy of a matrix for passes of a few tokens.
//
// In the strip layouts (ternary_format.hpp) a byte holds the digits of one row at 4 (TQ2) or 5
// (TQ1) columns, so a kernel splits each chunk into 4 or 5 digit planes, each multiplied against
// its own 4 activation bytes. With 2 to 6 tokens per pass, that decoding is what bounds the
// kernels on CPUs where logic ops and byte permutes take the slots of the int8 dot product (AMD
// Zen 5: 3 masks per 12 vpdpbusd cost 15-20% of their rate; README, Performance). Here a byte
// holds the digits of 4 (TQ2) or 5 (TQ1) *rows* at one column:
//
// A matrix is cut into groups of P strips (P = 4 for TQ2, 5 for TQ1: 64 or 80 rows), and every
// group into 64-byte chunks of 4 columns; chunk c of group g covers columns 4c .. 4c+3. Byte
// 4i + b of the chunk (lane i = 0..15, position b = 0..3) holds, for the P rows
// r_j = 16 (P g + j) + i (j = 0 .. P-1), the digits d_j = w + 1 of column 4c + b:
//   TQ2: sum_j 4^j d_j (bits 2j, 2j+1 hold d_j);  TQ1: sum_j 3^j d_j (0..242).
// Rows past `rows` and columns past `cols` are padding with w = 0 (d = 1).
//
// Why: one broadcast of a token's 4 activation bytes then serves every plane, and the planes need
// not be separated. Cumulative planes u & 3, u & 15, u & 63, u (TQ2) or u mod 3, 9, 27, 81, u (TQ1)
// give A_k = sum_{j <= k} base^j T_j, where T_j is row r_j's dot product with the digits; each
// T_j follows exactly from the differences at the store (a shift by 2j, or a multiply by the
// inverse of 3^j modulo 2^32). Decoding costs 3 masks per chunk instead of 4 (TQ2), and 7 ops
// instead of 10 (TQ1: u mod 81 by two subtract-min pairs, then 3 byte permutes).
// The bytes per weight are those of the strips, so a pass reads as many bytes as before.
//
// The copy is built from the strips (any file layout lands there first), once, at load.
//
// A TQ1 matrix may also hold a *wide* copy: its weights in this layout's TQ2 digits (4 rows per
// byte, 2 bits each). It reads 1.25x the bytes of the TQ1 copy, so it does not pay where a pass is
// bound by memory; where it is bound by the multiply-adds (prompts) its 3 masks per chunk cost
// less than the TQ1 copy's 7 decoding ops: 512-token prefills of the 1.3B and 2.7B TQ1 presets ran
// 3.5% and 4.1% faster on it (AMD Zen 5). The chooser measures both.
#pragma once

#include <algorithm>
#include <cstdint>
#include <memory>

#include "mmfree/ternary_format.hpp"

namespace mmfree {

// Strips per group: the rows sharing a byte.
constexpr int64_t interleaved_planes(TernaryFormat f) { return f == TernaryFormat::TQ2 ? 4 : 5; }
constexpr int64_t interleaved_group_rows(TernaryFormat f) { return kStripRows * interleaved_planes(f); }
constexpr int interleaved_base(TernaryFormat f) { return f == TernaryFormat::TQ2 ? 4 : 3; }
// Rows longer than this keep to the strips: a TQ2 kernel recovers 4^3 T_3 from a difference of
// int32 sums, exact while |64 T_3| <= 64 * 2 * 128 * cols stays below 2^31.
inline constexpr int64_t kInterleavedMaxCols = 65536;

inline int64_t interleaved_chunks(const TernaryMatrix& W) { return (W.cols + 3) / 4; }
// Groups and bytes of W's copy in the digits of format `as` (W's own for the interleaved copy,
// TQ2 for a wide one).
inline int64_t interleaved_groups(const TernaryMatrix& W, TernaryFormat as) {
  const int64_t G = interleaved_group_rows(as);
  return (W.rows + G - 1) / G;
}
inline int64_t interleaved_groups(const TernaryMatrix& W) { return interleaved_groups(W, W.format); }
inline size_t interleaved_bytes(const TernaryMatrix& W, TernaryFormat as) {
  return size_t(interleaved_groups(W, as) * interleaved_chunks(W) * kChunkBytes);
}
inline size_t interleaved_bytes(const TernaryMatrix& W) { return interleaved_bytes(W, W.format); }
inline bool interleavable(const TernaryMatrix& W) { return W.cols > 0 && W.cols <= kInterleavedMaxCols && W.rows > 0; }
// Whether W takes a wide copy: a TQ1 matrix the layout holds.
inline bool widenable(const TernaryMatrix& W) { return W.format == TernaryFormat::TQ1 && interleavable(W); }

// The digit (w + 1) of weight (r, c) in an interleaved copy `data` of a matrix of format f with
// `chunks` interleaved chunks per group: the scalar decoder of the layout above.
inline int interleaved_digit(TernaryFormat f, const uint8_t* data, int64_t chunks, int64_t r, int64_t c) {
  const int64_t G = interleaved_group_rows(f), g = r / G, j = (r % G) / kStripRows, i = r % kStripRows;
  const uint8_t v = data[(g * chunks + c / 4) * kChunkBytes + 4 * i + c % 4];
  if (f == TernaryFormat::TQ2) return (v >> (2 * j)) & 3;
  static constexpr int pow3[5] = {1, 3, 9, 27, 81};
  return v / pow3[j] % 3;
}

namespace detail {
// Digit p (0..4, most significant first) of every TQ1 strip byte value: a table for the repack.
struct Tq1DigitTable {
  uint8_t d[5][256];
  Tq1DigitTable() {
    for (int p = 0; p < 5; ++p)
      for (int v = 0; v < 256; ++v) d[p][v] = uint8_t(v < 243 ? tq1_digit(uint8_t(v), p) : 1);
  }
};
inline const Tq1DigitTable& tq1_digit_table() {
  static const Tq1DigitTable t;
  return t;
}
}  // namespace detail

// Writes groups [g0, g1) of W's copy in the digits of format `as` into dst
// (interleaved_bytes(W, as) bytes in all), from W's strips. A strip chunk holds 4 columns for
// each of its 4 (TQ2) or 5 (TQ1) digit planes: plane p of strip chunk c is interleaved chunk
// (cc / 4) c + p.
inline void interleave_groups(const TernaryMatrix& W, TernaryFormat as, uint8_t* dst, int64_t g0, int64_t g1) {
  const int64_t P = interleaved_planes(as), chunks = interleaved_chunks(W), per = chunk_cols(W.format) / 4;
  const auto& tab = detail::tq1_digit_table();
  uint8_t ones[kChunkBytes];  // a padding strip's chunk: every digit 1
  std::fill(ones, ones + kChunkBytes, uint8_t(W.format == TernaryFormat::TQ2 ? 0x55 : 121));
  for (int64_t g = g0; g < g1; ++g) {
    uint8_t* out = dst + g * chunks * kChunkBytes;
    for (int64_t c = 0; c < W.chunks; ++c) {
      const uint8_t* src[5];
      for (int64_t j = 0; j < P; ++j) {
        const int64_t s = g * P + j;
        src[j] = s < W.strips ? W.strip(s) + c * kChunkBytes : ones;
      }
      for (int64_t p = 0; p < per && per * c + p < chunks; ++p) {
        uint8_t* o = out + (per * c + p) * kChunkBytes;
        for (int k = 0; k < kChunkBytes; ++k) {
          int v = 0;
          for (int64_t j = P - 1; j >= 0; --j) {
            const int d = W.format == TernaryFormat::TQ2 ? (src[j][k] >> (2 * p)) & 3 : tab.d[p][src[j][k]];
            v = as == TernaryFormat::TQ2 ? v << 2 | d : 3 * v + d;
          }
          o[k] = uint8_t(v);
        }
      }
    }
  }
}

// W with its interleaved copy built into `mem` (interleaved_bytes(W) bytes, 64-byte aligned);
// `for_groups(n, fn)` may run fn(g0, g1) over the groups in parallel.
template <class ForGroups>
TernaryMatrix with_interleaved(TernaryMatrix W, std::shared_ptr<uint8_t> mem, ForGroups&& for_groups) {
  if (!interleavable(W)) fail("interleaved copy", "a matrix of " + std::to_string(W.cols) + " columns (at most " +
                                                      std::to_string(kInterleavedMaxCols) + ")");
  uint8_t* base = mem.get();
  for_groups(interleaved_groups(W), [&](int64_t g0, int64_t g1) { interleave_groups(W, W.format, base, g0, g1); });
  W.interleaved = base;
  W.interleaved_owner = std::move(mem);
  return W;
}
inline TernaryMatrix with_interleaved(TernaryMatrix W) {
  auto mem = aligned_bytes(interleaved_bytes(W));
  return with_interleaved(std::move(W), std::move(mem), [](int64_t n, const auto& fn) { serially(n, fn); });
}
// W (TQ1) with its wide copy built into `mem` (interleaved_bytes(W, TQ2) bytes), the same way.
template <class ForGroups>
TernaryMatrix with_wide(TernaryMatrix W, std::shared_ptr<uint8_t> mem, ForGroups&& for_groups) {
  if (!widenable(W)) fail("wide copy", "a " + std::string(W.format == TernaryFormat::TQ2 ? "TQ2" : "TQ1") + " matrix of " +
                                          std::to_string(W.cols) + " columns (TQ1 only, at most " +
                                          std::to_string(kInterleavedMaxCols) + ")");
  uint8_t* base = mem.get();
  for_groups(interleaved_groups(W, TernaryFormat::TQ2),
             [&](int64_t g0, int64_t g1) { interleave_groups(W, TernaryFormat::TQ2, base, g0, g1); });
  W.wide = base;
  W.wide_owner = std::move(mem);
  return W;
}
inline TernaryMatrix with_wide(TernaryMatrix W) {
  auto mem = aligned_bytes(interleaved_bytes(W, TernaryFormat::TQ2));
  return with_wide(std::move(W), std::move(mem), [](int64_t n, const auto& fn) { serially(n, fn); });
}
// W without its interleaved copy; without its wide copy.
inline TernaryMatrix without_interleaved(TernaryMatrix W) {
  W.interleaved = nullptr;
  W.interleaved_owner.reset();
  return W;
}
inline TernaryMatrix without_wide(TernaryMatrix W) {
  W.wide = nullptr;
  W.wide_owner.reset();
  return W;
}

}  // namespace mmfree
