// mmfree: the GEMM driver shared by kernels that compute one row dot product at a time
// (AVX2, NEON): their dots return sum d*q over digits d = w + 1, and the driver subtracts
// sum q once per token to get sum w*q. Same contract as ternary_gemm_scalar.
#pragma once

#include <cstdint>

#include "mmfree/ternary_format.hpp"

namespace mmfree::kernels {

template <auto SumQ, auto DotTq2, auto DotTq1>
inline void gemm_row_by_row(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out,
                            int64_t ldo, int64_t r0, int64_t r1) {
  const int64_t kp = W.padded_cols();
  for (int64_t t = 0; t < n; ++t) {
    const int8_t* q = Q + t * ldq;
    const int32_t qs = SumQ(q, kp);
    for (int64_t r = r0; r < r1; ++r)
      out[t * ldo + r] = (W.format == TernaryFormat::TQ2 ? DotTq2(W.row(r), q, W.blocks_per_row)
                                                         : DotTq1(W.row(r), q, W.blocks_per_row)) - qs;
  }
}

}  // namespace mmfree::kernels
