// mmfree: ternary weight formats. This is the bit layout that the kernels, the GGUF
// files and the Verilog core in hw/ all consume, so it is specified here exactly.
//
// Both formats store, per weight w in {-1, 0, +1}, the digit d = w + 1 in {0, 1, 2}.
// Rows are independent and padded with w = 0 up to a whole number of blocks; the
// activation vector is padded with zeros to the same length, so padding adds nothing.
//
// TQ2 (2 bits/weight). A block is 256 weights in 64 bytes. Byte j (0..63) of block b holds
//   bits [2k, 2k+1] = d(b*256 + k*64 + j),   k = 0..3.
// One shift and one mask turn 64 bytes into 64 consecutive digits, which is what an
// AVX-512 register (or two AVX2 / four NEON registers) wants.
//
// TQ1 (1.6 bits/weight). A block is 160 weights in 32 bytes. Byte j (0..31) of block b holds
// the 5 digits d_k = d(b*160 + k*32 + j), k = 0..4, as the base-3 number
//   v = d_0*81 + d_1*27 + d_2*9 + d_3*3 + d_4            (0..242)
// stored as the byte q = ceil(v * 256 / 243). Then q/256 is v/243 rounded up, i.e. the
// fraction 0.d_0 d_1 d_2 d_3 d_4 in base 3, and digit k is recovered with byte arithmetic
// only: m = (q * 3^k) mod 256, d_k = (3 * m) >> 8. (Exact for all 243 values; tested.)
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "mmfree/error.hpp"

namespace mmfree {

enum class TernaryFormat : uint8_t { TQ2 = 0, TQ1 = 1 };

inline const char* format_name(TernaryFormat f) { return f == TernaryFormat::TQ2 ? "tq2" : "tq1"; }

struct FormatInfo {
  int64_t block_weights;  // weights per block
  int64_t block_bytes;    // bytes per block
};

constexpr FormatInfo format_info(TernaryFormat f) {
  return f == TernaryFormat::TQ2 ? FormatInfo{256, 64} : FormatInfo{160, 32};
}

// Activations for a matrix with `cols` inputs are padded to this length. Using the
// least common multiple of both block sizes lets one buffer serve both formats.
constexpr int64_t kActivationAlign = 1280;  // lcm(256, 160)
inline int64_t padded_cols(int64_t cols) { return (cols + kActivationAlign - 1) / kActivationAlign * kActivationAlign; }

// 64-byte aligned, owning byte buffer (SIMD loads and cache lines).
struct AlignedBytes {
  struct Free {
    void operator()(uint8_t* p) const { std::free(p); }
  };
  static std::shared_ptr<uint8_t> alloc(size_t n) {
    size_t sz = (std::max<size_t>(n, 1) + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, sz);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, sz);
    return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), Free{});
  }
};

// A packed ternary matrix [rows, cols] with its per-tensor scale.
// out = (T q) * scale / s_x, where scale = 1 / s_w = max(mean|W|, 1e-5).
struct TernaryMatrix {
  TernaryFormat format = TernaryFormat::TQ2;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t blocks_per_row = 0;
  int64_t row_bytes = 0;
  float scale = 1.0f;
  const uint8_t* data = nullptr;       // rows * row_bytes bytes
  std::shared_ptr<const void> owner;   // keeps `data` alive (heap buffer or mapped file)
  bool mapped = false;                 // `data` lies in a read-only file mapping

  const uint8_t* row(int64_t r) const { return data + r * row_bytes; }
  int64_t padded_cols() const { return blocks_per_row * format_info(format).block_weights; }
  size_t nbytes() const { return size_t(rows * row_bytes); }

  static TernaryMatrix shape_for(TernaryFormat f, int64_t rows, int64_t cols) {
    TernaryMatrix m;
    m.format = f;
    m.rows = rows;
    m.cols = cols;
    const FormatInfo fi = format_info(f);
    m.blocks_per_row = (cols + fi.block_weights - 1) / fi.block_weights;
    m.row_bytes = m.blocks_per_row * fi.block_bytes;
    return m;
  }
};

// ---- digit packing of one block ------------------------------------------------------

inline uint8_t tq1_encode(const int8_t d[5]) {  // digits 0..2, most significant first
  const int v = d[0] * 81 + d[1] * 27 + d[2] * 9 + d[3] * 3 + d[4];
  return uint8_t((v * 256 + 242) / 243);  // ceil(v * 256 / 243)
}
inline int tq1_digit(uint8_t q, int k) {  // k = 0..4
  static constexpr int pow3[5] = {1, 3, 9, 27, 81};
  const unsigned m = (unsigned(q) * pow3[k]) & 255u;
  return int((m * 3u) >> 8);
}

// Pack ternary values t[cols] (each -1, 0 or 1) into one row of `m`'s format.
inline void pack_row(TernaryFormat f, const int8_t* t, int64_t cols, uint8_t* out) {
  const FormatInfo fi = format_info(f);
  const int64_t nb = (cols + fi.block_weights - 1) / fi.block_weights;
  auto digit = [&](int64_t i) -> int8_t { return int8_t(i < cols ? t[i] + 1 : 1); };
  for (int64_t b = 0; b < nb; ++b) {
    uint8_t* o = out + b * fi.block_bytes;
    const int64_t base = b * fi.block_weights;
    if (f == TernaryFormat::TQ2) {
      for (int j = 0; j < 64; ++j) {
        uint8_t v = 0;
        for (int k = 0; k < 4; ++k) v |= uint8_t(digit(base + k * 64 + j) << (2 * k));
        o[j] = v;
      }
    } else {
      for (int j = 0; j < 32; ++j) {
        int8_t d[5];
        for (int k = 0; k < 5; ++k) d[k] = digit(base + k * 32 + j);
        o[j] = tq1_encode(d);
      }
    }
  }
}

// The ternary value of weight (r, c): the inverse of pack_row, for tests and tools.
inline int ternary_at(const TernaryMatrix& m, int64_t r, int64_t c) {
  const FormatInfo fi = format_info(m.format);
  const uint8_t* blk = m.row(r) + (c / fi.block_weights) * fi.block_bytes;
  const int64_t i = c % fi.block_weights;
  if (m.format == TernaryFormat::TQ2) return ((blk[i % 64] >> (2 * (i / 64))) & 3) - 1;
  return tq1_digit(blk[i % 32], int(i / 32)) - 1;
}

// Row r as ternary values t[cols] (each -1, 0 or 1), e.g. for a float copy of the model.
inline void unpack_row(const TernaryMatrix& m, int64_t r, int8_t* t) {
  for (int64_t c = 0; c < m.cols; ++c) t[c] = int8_t(ternary_at(m, r, c));
}

// ---- ternarisation --------------------------------------------------------------------

// 1 / s_w of SPEC: max(mean|W|, 1e-5). Accumulated in double so the result does not
// depend on the summation order (the GPU's own order is unknown anyway).
inline float absmean_scale(const float* w, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += std::fabs(double(w[i]));
  const float mean = n ? float(s / double(n)) : 0.0f;
  return std::max(mean, 1e-5f);
}

// T = clamp(round(W * s_w), -1, 1) with s_w = 1 / scale, in float as the reference does.
inline int8_t ternarize(float w, float s_w) {
  const float v = std::round(w * s_w);
  return int8_t(v > 1.0f ? 1 : v < -1.0f ? -1 : int(v));
}

// Ternarise a latent [rows, cols] float matrix and pack it.
inline TernaryMatrix quantize_ternary(const float* w, int64_t rows, int64_t cols, TernaryFormat f) {
  TernaryMatrix m = TernaryMatrix::shape_for(f, rows, cols);
  m.scale = absmean_scale(w, size_t(rows * cols));
  const float s_w = 1.0f / m.scale;
  auto buf = AlignedBytes::alloc(m.nbytes());
  std::vector<int8_t> t(static_cast<size_t>(cols));
  for (int64_t r = 0; r < rows; ++r) {
    for (int64_t c = 0; c < cols; ++c) t[size_t(c)] = ternarize(w[r * cols + c], s_w);
    pack_row(f, t.data(), cols, buf.get() + r * m.row_bytes);
  }
  m.data = buf.get();
  m.owner = buf;
  return m;
}

// Pack already-ternary values (tests, random models, hardware vectors).
inline TernaryMatrix pack_ternary(const int8_t* t, int64_t rows, int64_t cols, TernaryFormat f, float scale = 1.0f) {
  TernaryMatrix m = TernaryMatrix::shape_for(f, rows, cols);
  m.scale = scale;
  auto buf = AlignedBytes::alloc(m.nbytes());
  for (int64_t r = 0; r < rows; ++r) pack_row(f, t + r * cols, cols, buf.get() + r * m.row_bytes);
  m.data = buf.get();
  m.owner = buf;
  return m;
}

}  // namespace mmfree
