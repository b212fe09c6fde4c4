// mmfree: the scalar reference kernel for the strip layouts of ternary_format.hpp.
//
// It defines the integer result every SIMD kernel must reproduce bit for bit,
// acc = sum_k T[r][k] * q[k], with additions and subtractions only, and it is the scalar twin
// of the layouts: it decodes each chunk exactly as ternary_format.hpp describes it.
#pragma once

#include <cstdint>

#include "mmfree/interleaved_format.hpp"
#include "mmfree/ternary_format.hpp"

namespace mmfree::kernels {

// Add or subtract x according to the digit d = w + 1: the ternary "multiply".
inline int32_t ternary_term(int d, int32_t x) { return d == 2 ? x : d == 0 ? -x : 0; }

// The dot product of row i (0..15) of a strip with activations q (padded to padded_cols).
inline int32_t strip_row_dot_scalar(TernaryFormat f, const uint8_t* strip, int64_t chunks, int i, const int8_t* q) {
  int32_t acc = 0;
  for (int64_t c = 0; c < chunks; ++c, strip += kChunkBytes) {
    const uint8_t* b = strip + 4 * i;  // this row's 4 bytes of the chunk
    for (int m = 0; m < 4; ++m) {
      if (f == TernaryFormat::TQ2)
        for (int p = 0; p < 4; ++p) acc += ternary_term((b[m] >> (2 * p)) & 3, q[16 * c + 4 * p + m]);
      else
        for (int p = 0; p < 5; ++p) acc += ternary_term(tq1_digit(b[m], p), q[20 * c + 4 * p + m]);
    }
  }
  return acc;
}

// out[t * ldo + r] = row r of W . Q[t * ldq ...] for t in [0, n), r in [r0, r1).
// Q rows are zero-padded to at least W.padded_cols(). Every kernel has this signature.
inline void ternary_gemm_scalar(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out,
                                int64_t ldo, int64_t r0, int64_t r1) {
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = r0; r < r1; ++r)
      out[t * ldo + r] =
          strip_row_dot_scalar(W.format, W.strip(r / kStripRows), W.chunks, int(r % kStripRows), Q + t * ldq);
}

namespace detail {
// Rows [r0, r1) of every token, each digit decoded from `copy`, a copy of W in the interleaved
// layout with the digits of format `as`.
inline void interleaved_copy_scalar(const TernaryMatrix& W, TernaryFormat as, const uint8_t* copy, const int8_t* Q,
                                    int64_t ldq, int64_t n, int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  const int64_t chunks = interleaved_chunks(W);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t r = r0; r < r1; ++r) {
      int32_t acc = 0;
      for (int64_t c = 0; c < 4 * chunks; ++c) acc += ternary_term(interleaved_digit(as, copy, chunks, r, c), Q[t * ldq + c]);
      out[t * ldo + r] = acc;
    }
}
}  // namespace detail

// The scalar twins of the interleaved layouts (interleaved_format.hpp): the same products, each
// digit decoded from W's interleaved copy, or from its wide copy (from the strips where W has none).
inline void ternary_gemm_interleaved_scalar(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                            int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (!W.interleaved) return ternary_gemm_scalar(W, Q, ldq, n, out, ldo, r0, r1);
  detail::interleaved_copy_scalar(W, W.format, W.interleaved, Q, ldq, n, out, ldo, r0, r1);
}
inline void ternary_gemm_wide_scalar(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out,
                                     int64_t ldo, int64_t r0, int64_t r1) {
  if (!W.wide) return ternary_gemm_scalar(W, Q, ldq, n, out, ldo, r0, r1);
  detail::interleaved_copy_scalar(W, TernaryFormat::TQ2, W.wide, Q, ldq, n, out, ldo, r0, r1);
}

}  // namespace mmfree::kernels
