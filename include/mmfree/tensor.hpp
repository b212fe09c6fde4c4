// mmfree: a typed tensor in memory (a view into a mapped checkpoint): its dtype, shape and bytes,
// widened to float or int32 on request. The file formats (safetensors.hpp, gguf.hpp) produce them;
// the model's tables (embedding.hpp) read them without depending on any file format.
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <string>
#include <utility>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/half.hpp"

namespace mmfree {

enum class DType { F64, F32, F16, BF16, I64, I32, I16, I8, U8, BOOL };

inline const char* dtype_name(DType t) {
  switch (t) {
    case DType::F64: return "F64";
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::I64: return "I64";
    case DType::I32: return "I32";
    case DType::I16: return "I16";
    case DType::I8: return "I8";
    case DType::U8: return "U8";
    case DType::BOOL: return "BOOL";
  }
  return "?";
}

inline size_t dtype_size(DType t) {
  switch (t) {
    case DType::F64: case DType::I64: return 8;
    case DType::F32: case DType::I32: return 4;
    case DType::F16: case DType::BF16: case DType::I16: return 2;
    case DType::I8: case DType::U8: case DType::BOOL: return 1;
  }
  return 0;
}

inline bool parse_dtype(const std::string& s, DType* out) {
  static const std::pair<const char*, DType> table[] = {
      {"F64", DType::F64}, {"F32", DType::F32}, {"F16", DType::F16}, {"BF16", DType::BF16},
      {"I64", DType::I64}, {"I32", DType::I32}, {"I16", DType::I16}, {"I8", DType::I8},
      {"U8", DType::U8},   {"BOOL", DType::BOOL}};
  for (auto& [name, t] : table)
    if (s == name) { *out = t; return true; }
  return false;
}

// Product of dims, or false on overflow past `limit`.
inline bool checked_numel(const std::vector<int64_t>& shape, uint64_t limit, uint64_t* out) {
  uint64_t n = 1;
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, uint64_t(d), &n) || n > limit) return false;
  }
  *out = n;
  return true;
}

// A tensor inside a mapped file. `data` stays valid while its SafetensorsFile lives.
struct TensorView {
  std::string name;
  std::string file;
  DType dtype = DType::F32;
  std::vector<int64_t> shape;
  const uint8_t* data = nullptr;
  size_t nbytes = 0;

  size_t numel() const { return dtype_size(dtype) ? nbytes / dtype_size(dtype) : 0; }
  std::string where() const { return file + ": tensor '" + name + "'"; }

  // Widen a float tensor (F32/F16/BF16/F64) to float. Refuses NaN/Inf: a latent weight
  // that is not finite would silently poison every scale computed from it.
  std::vector<float> to_floats(bool allow_nonfinite = false) const {
    const size_t n = numel();
    std::vector<float> out(n);
    switch (dtype) {
      case DType::F32:
        std::memcpy(out.data(), data, n * 4);
        break;
      case DType::F64:
        for (size_t i = 0; i < n; ++i) {
          double v;
          std::memcpy(&v, data + 8 * i, 8);
          out[i] = float(v);
        }
        break;
      case DType::F16:
      case DType::BF16: {
        const bool bf = dtype == DType::BF16;
        for (size_t i = 0; i < n; ++i) {
          uint16_t h;
          std::memcpy(&h, data + 2 * i, 2);
          out[i] = bf ? bf16_to_float(h) : f16_to_float(h);
        }
        break;
      }
      default:
        fail(where(), std::string("dtype ") + dtype_name(dtype) +
                          " is not a float type (expected F32, F16 or BF16)");
    }
    if (!allow_nonfinite)
      for (size_t i = 0; i < n; ++i)
        if (!std::isfinite(out[i]))
          fail(where(), "contains NaN or Inf at element " + std::to_string(i));
    return out;
  }

  std::vector<int32_t> to_int32() const {
    if (dtype != DType::I32 && dtype != DType::I64)
      fail(where(), std::string("dtype ") + dtype_name(dtype) + " is not an integer type (I32/I64)");
    const size_t n = numel();
    std::vector<int32_t> out(n);
    for (size_t i = 0; i < n; ++i) {
      if (dtype == DType::I32) {
        std::memcpy(&out[i], data + 4 * i, 4);
      } else {
        int64_t v;
        std::memcpy(&v, data + 8 * i, 8);
        if (v < INT32_MIN || v > INT32_MAX) fail(where(), "value out of int32 range");
        out[i] = int32_t(v);
      }
    }
    return out;
  }
};

}  // namespace mmfree
