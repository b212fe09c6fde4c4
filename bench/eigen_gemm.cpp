// See eigen_gemm.hpp: Eigen's fp32 product, compiled for this machine.
#include "eigen_gemm.hpp"

#include <Eigen/Dense>

namespace mmfree::bench {

void eigen_gemm(const float* W, int64_t rows, int64_t cols, const float* X, int64_t n, float* Y, int64_t r0, int64_t r1) {
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  Eigen::Map<const RowMatrix> Wm(W, rows, cols), Xm(X, n, cols);
  Eigen::Map<RowMatrix> Ym(Y, n, rows);
  if (n == 1)
    Ym.row(0).segment(r0, r1 - r0).noalias() = (Wm.middleRows(r0, r1 - r0) * Xm.row(0).transpose()).transpose();
  else
    Ym.middleCols(r0, r1 - r0).noalias() = Xm * Wm.middleRows(r0, r1 - r0).transpose();
}

}  // namespace mmfree::bench
