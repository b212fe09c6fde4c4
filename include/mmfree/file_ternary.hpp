// mmfree: how ternary weights are laid out in files, and their conversion to and from rows of
// digits d = w + 1 (which ternary_format.hpp packs into the strips the kernels read).
//
//   ggml TQ2_0 (GGUF type 35): blocks of 256 weights in 66 bytes: qs[64], then an f16 scale d.
//     Byte 32h + m of qs (h = 0, 1; m = 0..31) holds in bits 2n, 2n+1 the digit of weight
//     128h + 32n + m of the block.
//   ggml TQ1_0 (GGUF type 34): blocks of 256 weights in 54 bytes: qs[48], qh[4], an f16 scale d.
//     qs[m], m < 32: weights m + 32n (n = 0..4); qs[32 + m], m < 16: weights 160 + m + 16n;
//     qh[j]: weights 240 + j + 4n (n = 0..3). Each byte holds its digits as the base-3 number
//     v (first digit most significant; qh's carry a fifth digit 0), stored as ceil(v * 256 / 243),
//     from which digit n is ((q * 3^n mod 256) * 3) >> 8.
//   I8 (GGUF type 24): one int8 per weight, -1, 0 or 1.
//   mmfree's first GGUF layouts (types 1024 and 1025, still read, no longer written):
//     1024: rows of 64-byte blocks of 256 weights; byte j, bits 2k, 2k+1 = digit of 256b + 64k + j.
//     1025: rows of 32-byte blocks of 160 weights; byte j holds the digits of 160b + 32k + j,
//     k = 0..4, as ggml's TQ1_0 bytes do.
//
// mmfree writes ggml's types with every block scale d = 1.0, so that dequantising gives the exact
// ternary values and generic GGUF tools can name, size and count the tensors; the per-tensor scale
// is the separate F32 tensor "<name>.scale". Reading refuses any other block scale (a per-block
// scale cannot be expressed by a ternary matrix with one scale), a 2-bit field holding 3, and I8
// values outside -1..1: a file that is not exactly ternary is an error, never a silently changed
// weight. ggml's block types need rows that are a whole number of 256-weight blocks; other row
// lengths (small test models) are written as I8.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "mmfree/error.hpp"
#include "mmfree/half.hpp"
#include "mmfree/ternary_format.hpp"

namespace mmfree {

enum class TernaryFileType : uint32_t { I8 = 24, TQ1_0 = 34, TQ2_0 = 35, MMFREE_TQ2 = 1024, MMFREE_TQ1 = 1025 };

inline bool is_ternary_file_type(uint32_t t) { return t == 24 || t == 34 || t == 35 || t == 1024 || t == 1025; }

// Bytes of one stored row of `cols` weights, or -1 when the type cannot store such rows.
inline int64_t file_row_bytes(TernaryFileType t, int64_t cols) {
  switch (t) {
    case TernaryFileType::I8: return cols;
    case TernaryFileType::TQ2_0: return cols % 256 ? -1 : cols / 256 * 66;
    case TernaryFileType::TQ1_0: return cols % 256 ? -1 : cols / 256 * 54;
    case TernaryFileType::MMFREE_TQ2: return (cols + 255) / 256 * 64;
    case TernaryFileType::MMFREE_TQ1: return (cols + 159) / 160 * 32;
  }
  return -1;
}

// The type mmfree writes for a matrix of `cols` columns in format f.
inline TernaryFileType file_type_for(TernaryFormat f, int64_t cols) {
  if (cols % 256) return TernaryFileType::I8;
  return f == TernaryFormat::TQ2 ? TernaryFileType::TQ2_0 : TernaryFileType::TQ1_0;
}

namespace detail {

// The ceil(v * 256 / 243) bytes of ggml's TQ1_0 (and mmfree's type 1025): digit n of q.
inline uint8_t tq1q_digit(uint8_t q, int n) {
  static constexpr unsigned pow3[5] = {1, 3, 9, 27, 81};
  return uint8_t((((unsigned(q) * pow3[n]) & 255u) * 3u) >> 8);
}
inline uint8_t tq1q_encode(const uint8_t d[5]) {
  const unsigned v = (((d[0] * 3u + d[1]) * 3u + d[2]) * 3u + d[3]) * 3u + d[4];
  return uint8_t((v * 256u + 242u) / 243u);
}
constexpr uint16_t kF16One = 0x3C00;  // 1.0 as an IEEE half

// 2-bit fields of 4 bytes holding 3 are not digits.
inline bool has_digit3(uint32_t fields) { return ((fields & (fields >> 1)) & 0x55555555u) != 0; }

}  // namespace detail

// Decodes stored row `row` (file_row_bytes(t, cols) bytes at `src`) into digits d[0 .. cols).
// `tensor` names the tensor in errors.
inline void decode_file_row(TernaryFileType t, const uint8_t* src, int64_t cols, uint8_t* d, const std::string& tensor,
                            int64_t row) {
  auto where = [&] { return tensor + ", row " + std::to_string(row); };
  switch (t) {
    case TernaryFileType::I8:
      for (int64_t c = 0; c < cols; ++c) {
        const int8_t v = int8_t(src[c]);
        if (v < -1 || v > 1) fail(where(), "I8 value " + std::to_string(v) + " at column " + std::to_string(c) + " is not -1, 0 or 1");
        d[c] = uint8_t(v + 1);
      }
      return;
    case TernaryFileType::TQ2_0:
      for (int64_t b = 0; b < cols / 256; ++b, src += 66, d += 256) {
        uint16_t scale;
        std::memcpy(&scale, src + 64, 2);
        if (scale != detail::kF16One)
          fail(where(), "TQ2_0 block " + std::to_string(b) + " has scale " + std::to_string(f16_to_float(scale)) +
                          " (mmfree reads ternary blocks with scale 1.0; the tensor's scale is '<name>.scale')");
        for (int h = 0; h < 2; ++h)
          for (int m = 0; m < 32; m += 4) {
            const uint32_t u = load_le32(src + 32 * h + m);
            if (detail::has_digit3(u)) fail(where(), "TQ2_0 block " + std::to_string(b) + " holds the invalid 2-bit value 3");
            for (int n = 0; n < 4; ++n) store_le32(d + 128 * h + 32 * n + m, (u >> (2 * n)) & 0x03030303u);
          }
      }
      return;
    case TernaryFileType::TQ1_0:
      for (int64_t b = 0; b < cols / 256; ++b, src += 54, d += 256) {
        uint16_t scale;
        std::memcpy(&scale, src + 52, 2);
        if (scale != detail::kF16One)
          fail(where(), "TQ1_0 block " + std::to_string(b) + " has scale " + std::to_string(f16_to_float(scale)) +
                          " (mmfree reads ternary blocks with scale 1.0; the tensor's scale is '<name>.scale')");
        for (int m = 0; m < 32; ++m)
          for (int n = 0; n < 5; ++n) d[m + 32 * n] = detail::tq1q_digit(src[m], n);
        for (int m = 0; m < 16; ++m)
          for (int n = 0; n < 5; ++n) d[160 + m + 16 * n] = detail::tq1q_digit(src[32 + m], n);
        for (int j = 0; j < 4; ++j)
          for (int n = 0; n < 4; ++n) d[240 + j + 4 * n] = detail::tq1q_digit(src[48 + j], n);
      }
      return;
    case TernaryFileType::MMFREE_TQ2: {
      std::vector<uint8_t> row(size_t((cols + 255) / 256 * 256));
      for (int64_t b = 0; b < (cols + 255) / 256; ++b)
        for (int j = 0; j < 64; j += 4) {
          const uint32_t u = load_le32(src + 64 * b + j);
          if (detail::has_digit3(u)) fail(where(), "block " + std::to_string(b) + " holds the invalid 2-bit value 3");
          for (int k = 0; k < 4; ++k) store_le32(row.data() + 256 * b + 64 * k + j, (u >> (2 * k)) & 0x03030303u);
        }
      std::memcpy(d, row.data(), size_t(cols));
      return;
    }
    case TernaryFileType::MMFREE_TQ1: {
      std::vector<uint8_t> row(size_t((cols + 159) / 160 * 160));
      for (int64_t b = 0; b < (cols + 159) / 160; ++b)
        for (int j = 0; j < 32; ++j)
          for (int k = 0; k < 5; ++k) row[size_t(160 * b + 32 * k + j)] = detail::tq1q_digit(src[32 * b + j], k);
      std::memcpy(d, row.data(), size_t(cols));
      return;
    }
  }
  fail(where(), "unknown ternary file type " + std::to_string(uint32_t(t)));
}

// Encodes digits d[0 .. cols) as one stored row of type t (file_row_bytes(t, cols) bytes).
// mmfree writes only ggml's types and I8; the first-release layouts are encoded for tests of
// old files and for hw/, whose Verilog core reads rows of type 1024.
inline void encode_file_row(TernaryFileType t, const uint8_t* d, int64_t cols, uint8_t* dst) {
  switch (t) {
    case TernaryFileType::I8:
      for (int64_t c = 0; c < cols; ++c) dst[c] = uint8_t(int8_t(d[c]) - 1);
      return;
    case TernaryFileType::TQ2_0:
      for (int64_t b = 0; b < cols / 256; ++b, d += 256, dst += 66) {
        for (int h = 0; h < 2; ++h)
          for (int m = 0; m < 32; ++m) {
            uint8_t q = 0;
            for (int n = 0; n < 4; ++n) q |= uint8_t(d[128 * h + 32 * n + m] << (2 * n));
            dst[32 * h + m] = q;
          }
        std::memcpy(dst + 64, &detail::kF16One, 2);
      }
      return;
    case TernaryFileType::TQ1_0:
      for (int64_t b = 0; b < cols / 256; ++b, d += 256, dst += 54) {
        uint8_t x[5];
        for (int m = 0; m < 32; ++m) {
          for (int n = 0; n < 5; ++n) x[n] = d[m + 32 * n];
          dst[m] = detail::tq1q_encode(x);
        }
        for (int m = 0; m < 16; ++m) {
          for (int n = 0; n < 5; ++n) x[n] = d[160 + m + 16 * n];
          dst[32 + m] = detail::tq1q_encode(x);
        }
        for (int j = 0; j < 4; ++j) {
          for (int n = 0; n < 4; ++n) x[n] = d[240 + j + 4 * n];
          x[4] = 0;
          dst[48 + j] = detail::tq1q_encode(x);
        }
        std::memcpy(dst + 52, &detail::kF16One, 2);
      }
      return;
    case TernaryFileType::MMFREE_TQ2:  // (tests of old files, and hw/, whose core reads these rows)
      for (int64_t b = 0; b < (cols + 255) / 256; ++b)
        for (int j = 0; j < 64; ++j) {
          uint8_t q = 0;
          for (int k = 0; k < 4; ++k) {
            const int64_t c = 256 * b + 64 * k + j;
            q |= uint8_t((c < cols ? d[c] : 1) << (2 * k));
          }
          dst[64 * b + j] = q;
        }
      return;
    case TernaryFileType::MMFREE_TQ1:
      for (int64_t b = 0; b < (cols + 159) / 160; ++b)
        for (int j = 0; j < 32; ++j) {
          uint8_t x[5];
          for (int k = 0; k < 5; ++k) {
            const int64_t c = 160 * b + 32 * k + j;
            x[k] = c < cols ? d[c] : 1;
          }
          dst[32 * b + j] = detail::tq1q_encode(x);
        }
      return;
  }
}

}  // namespace mmfree
