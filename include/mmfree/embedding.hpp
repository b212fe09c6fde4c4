// mmfree: the token embedding table, kept in its stored dtype (F32, F16 or BF16) and
// widened one row at a time: at 32000 x 2560 it is the largest non-ternary tensor.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>

#include "mmfree/error.hpp"
#include "mmfree/half.hpp"
#include "mmfree/tensor.hpp"

namespace mmfree {

struct Embedding {
  DType dtype = DType::F32;
  int64_t rows = 0, cols = 0;
  const uint8_t* data = nullptr;
  std::shared_ptr<const void> owner;
  bool check_finite_rows = false;  // set for mapped tables that were not scanned at load

  size_t nbytes() const { return size_t(rows * cols) * dtype_size(dtype); }

  void row(int64_t id, float* out) const {
    if (id < 0 || id >= rows) fail("token id " + std::to_string(id), "out of range [0, " + std::to_string(rows) + ")");
    const uint8_t* p = data + size_t(id * cols) * dtype_size(dtype);
    if (dtype == DType::F32) {
      std::memcpy(out, p, size_t(cols) * 4);
    } else {
      for (int64_t c = 0; c < cols; ++c) {
        uint16_t h;
        std::memcpy(&h, p + 2 * c, 2);
        out[c] = dtype == DType::BF16 ? bf16_to_float(h) : f16_to_float(h);
      }
    }
    if (check_finite_rows)
      for (int64_t c = 0; c < cols; ++c)
        if (!std::isfinite(out[c])) fail("embedding row " + std::to_string(id), "contains NaN or Inf");
  }

  // Own a copy of a tensor's bytes (so the source file can be unmapped), checking that
  // every value is finite.
  static Embedding copy_of(const TensorView& t) {
    if (t.dtype != DType::F32 && t.dtype != DType::F16 && t.dtype != DType::BF16)
      fail(t.where(), std::string("dtype ") + dtype_name(t.dtype) + " is not F32, F16 or BF16");
    Embedding e;
    e.dtype = t.dtype;
    e.rows = t.shape[0];
    e.cols = t.shape[1];
    auto buf = std::shared_ptr<uint8_t[]>(new uint8_t[t.nbytes]);
    std::memcpy(buf.get(), t.data, t.nbytes);
    e.data = buf.get();
    e.owner = buf;
    std::vector<float> r(static_cast<size_t>(e.cols));
    for (int64_t i = 0; i < e.rows; ++i) {
      e.row(i, r.data());
      for (float v : r)
        if (!std::isfinite(v)) fail(t.where(), "contains NaN or Inf in row " + std::to_string(i));
    }
    return e;
  }
};

}  // namespace mmfree
