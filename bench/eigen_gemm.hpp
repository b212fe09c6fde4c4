// The float matrix product of the benchmarks' fp32 baseline: Y[t, r] = sum_k X[t, k] W[r, k] for
// rows [r0, r1) of a row-major W [rows, cols] and n row-major tokens X [n, cols], Y [n, rows].
//
// It lives in its own translation unit (eigen_gemm.cpp), compiled for this machine
// (-march=native) so that Eigen is the best float product the machine can do, and including no
// mmfree header: mmfree's header-only kernels must be measured as users compile them (with
// their own target attributes and no -march flag), never recompiled for the benchmark machine.
#pragma once

#include <cstdint>

namespace mmfree::bench {

void eigen_gemm(const float* W, int64_t rows, int64_t cols, const float* X, int64_t n, float* Y, int64_t r0, int64_t r1);

}  // namespace mmfree::bench
