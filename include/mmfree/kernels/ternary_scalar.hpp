// mmfree: scalar reference kernels for the ternary formats of ternary_format.hpp.
//
// These define the integer result every SIMD kernel must reproduce bit for bit:
// acc = sum_k T[r][k] * q[k], computed with additions and subtractions only.
#pragma once

#include <cstdint>

#include "mmfree/ternary_format.hpp"

namespace mmfree::kernels {

// Add or subtract x according to the digit d = w + 1: the ternary "multiply".
inline int32_t ternary_term(int d, int32_t x) { return d == 2 ? x : d == 0 ? -x : 0; }

inline int32_t dot_tq2_scalar(const uint8_t* w, const int8_t* q, int64_t nblocks) {
  int32_t acc = 0;
  for (int64_t b = 0; b < nblocks; ++b, w += 64, q += 256)
    for (int k = 0; k < 4; ++k)
      for (int j = 0; j < 64; ++j) acc += ternary_term((w[j] >> (2 * k)) & 3, q[k * 64 + j]);
  return acc;
}

inline int32_t dot_tq1_scalar(const uint8_t* w, const int8_t* q, int64_t nblocks) {
  int32_t acc = 0;
  for (int64_t b = 0; b < nblocks; ++b, w += 32, q += 160)
    for (int k = 0; k < 5; ++k)
      for (int j = 0; j < 32; ++j) acc += ternary_term(tq1_digit(w[j], k), q[k * 32 + j]);
  return acc;
}

// out[t * ldo + r] = row r of W . Q[t * ldq ...] for t in [0, n), r in [r0, r1).
// Q rows are zero-padded to at least W.padded_cols().
inline void ternary_gemm_scalar(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out,
                                int64_t ldo, int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = r0; r < r1; ++r)
      out[t * ldo + r] = W.format == TernaryFormat::TQ2 ? dot_tq2_scalar(W.row(r), Q + t * ldq, W.blocks_per_row)
                                                        : dot_tq1_scalar(W.row(r), Q + t * ldq, W.blocks_per_row);
}

}  // namespace mmfree::kernels
