// mmfree: the ternary weight layouts the kernels read, bit by bit.
//
// A weight w in {-1, 0, +1} is stored as its digit d = w + 1 in {0, 1, 2}. A [rows, cols] matrix
// is cut into strips of 16 rows, and every strip into 64-byte chunks; chunk c of strip s covers
// rows 16s .. 16s+15 and a run of columns. Within a chunk, the 4 bytes at offset 4i belong to row
// 16s + i. Rows past `rows` and columns past `cols` are padding with w = 0 (d = 1).
//
// TQ2 (2 bits per weight): a chunk covers the 16 columns 16c .. 16c+15. Byte m (0..3) of row i
//   holds in bits 2p, 2p+1 the digit of column 16c + 4p + m, p = 0..3. Read as a little-endian
//   u32, (u >> 2p) & 0x03030303 holds in bytes 0..3 the digits of columns 16c+4p .. 16c+4p+3.
// TQ1 (1.6 bits per weight): a chunk covers the 20 columns 20c .. 20c+19. Byte m of row i holds
//   the digits d_p of columns 20c + 4p + m, p = 0..4, as the base-3 number
//   v = 81 d_0 + 27 d_1 + 9 d_2 + 3 d_3 + d_4 (0..242); 243..255 never occur.
//
// Why this layout: a 64-byte register then holds, for 16 rows, the digits of 4 consecutive columns
// in exactly the order that vpdpbusd (AVX-512 VNNI), sdot (NEON) and AMX's B tiles multiply against
// 4 activation bytes broadcast to every row. 16 row sums build up in one register with no horizontal
// additions, the activations stay in their natural order, and decoding reads each strip once, in
// address order (a single sequential stream, which every hardware prefetcher follows; the earlier
// row-major layout with 4 rows read side by side ran at half speed on AMD Zen 4). Decoding a digit
// plane costs a shift and a mask (TQ2), or a comparison pair and a byte permute (TQ1).
//
// Files carry other layouts (ggml's TQ2_0/TQ1_0, I8, mmfree's older row layouts: file_ternary.hpp);
// they are repacked into strips once, at load, through rows of digits (encode_row/decode_row).
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
inline TernaryFormat parse_format(const std::string& s, const std::string& what) {
  if (s == "tq2") return TernaryFormat::TQ2;
  if (s == "tq1") return TernaryFormat::TQ1;
  fail(what + " " + s, "unknown ternary format (expected tq2 or tq1)");
}
// The format written by convert and init-random and used for Hugging Face checkpoints: 1.6 bits
// per weight read 20% fewer bytes per token than 2, and the strip layout decodes them at the
// memory's speed where the CPU has a byte permute (README, Performance).
inline constexpr TernaryFormat kDefaultFormat = TernaryFormat::TQ1;

inline constexpr int64_t kStripRows = 16;    // rows per strip: one int32 register of row sums
inline constexpr int64_t kChunkBytes = 64;   // bytes per chunk: one AVX-512 register
// Columns per chunk: 16 (TQ2) or 20 (TQ1).
constexpr int64_t chunk_cols(TernaryFormat f) { return f == TernaryFormat::TQ2 ? 16 : 20; }

// Activation rows are zero-padded to a multiple of this, so one buffer serves every format
// and every kernel may read whole 64-byte vectors up to the padded length.
inline constexpr int64_t kActivationAlign = 1280;  // a multiple of 64 and of 20
inline int64_t activation_cols(int64_t cols) { return (cols + kActivationAlign - 1) / kActivationAlign * kActivationAlign; }

// 64-byte aligned, zero-filled bytes with shared ownership.
inline std::shared_ptr<uint8_t> aligned_bytes(size_t n) {
  const size_t sz = (std::max<size_t>(n, 1) + 63) / 64 * 64;
  void* p = std::aligned_alloc(64, sz);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, sz);
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [](uint8_t* q) { std::free(q); });
}

// A packed ternary matrix [rows, cols] in strips, with its per-tensor scale:
// out = (T q) * scale / s_x, where scale = 1 / s_w = max(mean|W|, 1e-5).
struct TernaryMatrix {
  TernaryFormat format = TernaryFormat::TQ2;
  int64_t rows = 0;
  int64_t cols = 0;
  int64_t chunks = 0;  // per strip
  int64_t strips = 0;
  float scale = 1.0f;
  const uint8_t* data = nullptr;      // strips * strip_bytes() bytes
  std::shared_ptr<const void> owner;  // keeps `data` alive
  // The same weights in the interleaved layout (interleaved_format.hpp), or null: a second copy
  // that passes of a few tokens read where it was built (Model, ModelOptions::interleaved).
  const uint8_t* interleaved = nullptr;
  std::shared_ptr<const void> interleaved_owner;
  // A TQ1 matrix's weights in the interleaved layout's TQ2 digits, or null: a third copy that
  // compute-bound passes may read (interleaved_format.hpp, ModelOptions::wide).
  const uint8_t* wide = nullptr;
  std::shared_ptr<const void> wide_owner;

  int64_t padded_cols() const { return chunks * chunk_cols(format); }  // columns including padding
  int64_t strip_bytes() const { return chunks * kChunkBytes; }
  size_t nbytes() const { return size_t(strips * strip_bytes()); }
  const uint8_t* strip(int64_t s) const { return data + s * strip_bytes(); }

  static TernaryMatrix shape(TernaryFormat f, int64_t rows, int64_t cols) {
    TernaryMatrix m;
    m.format = f;
    m.rows = rows;
    m.cols = cols;
    m.chunks = (cols + chunk_cols(f) - 1) / chunk_cols(f);
    m.strips = (rows + kStripRows - 1) / kStripRows;
    return m;
  }
};

// ---- one row <-> its digits ----------------------------------------------------------------
//
// A row of digits is `padded_cols()` bytes, each 0..2 (1 for padding). Every packer, repacker
// and tool goes through these two functions, so the bit layout above is written down once.

// Little-endian u32 from 4 bytes (the layout is defined on bytes, whatever the host order).
inline uint32_t load_le32(const uint8_t* p) {
  return uint32_t(p[0]) | uint32_t(p[1]) << 8 | uint32_t(p[2]) << 16 | uint32_t(p[3]) << 24;
}
inline void store_le32(uint8_t* p, uint32_t v) {
  p[0] = uint8_t(v), p[1] = uint8_t(v >> 8), p[2] = uint8_t(v >> 16), p[3] = uint8_t(v >> 24);
}

// Writes the digits d[0 .. padded_cols) of row i (0..15) into the strip that starts at `strip`.
inline void encode_row(TernaryFormat f, const uint8_t* d, int64_t chunks, uint8_t* strip, int i) {
  for (int64_t c = 0; c < chunks; ++c, strip += kChunkBytes) {
    if (f == TernaryFormat::TQ2) {
      // Digits are <= 2, so every byte of the shifted words stays within its byte.
      const uint8_t* x = d + 16 * c;
      store_le32(strip + 4 * i, load_le32(x) | load_le32(x + 4) << 2 | load_le32(x + 8) << 4 | load_le32(x + 12) << 6);
    } else {
      // 81 d0 + ... + d4 <= 242 in every byte: the 32-bit arithmetic never carries between bytes.
      const uint8_t* x = d + 20 * c;
      store_le32(strip + 4 * i, 81 * load_le32(x) + 27 * load_le32(x + 4) + 9 * load_le32(x + 8) +
                                    3 * load_le32(x + 12) + load_le32(x + 16));
    }
  }
}

// Digit p (0..4, most significant first) of a TQ1 byte v.
inline int tq1_digit(uint8_t v, int p) {
  static constexpr int pow3[5] = {81, 27, 9, 3, 1};
  return v / pow3[p] % 3;
}

// The inverse of encode_row: digits of row i of the strip, padded_cols bytes.
inline void decode_row(TernaryFormat f, const uint8_t* strip, int64_t chunks, int i, uint8_t* d) {
  for (int64_t c = 0; c < chunks; ++c, strip += kChunkBytes) {
    if (f == TernaryFormat::TQ2) {
      const uint32_t u = load_le32(strip + 4 * i);
      for (int p = 0; p < 4; ++p) store_le32(d + 16 * c + 4 * p, (u >> (2 * p)) & 0x03030303u);
    } else {
      for (int m = 0; m < 4; ++m)
        for (int p = 0; p < 5; ++p) d[20 * c + 4 * p + m] = uint8_t(tq1_digit(strip[4 * i + m], p));
    }
  }
}

// Row r of W as digits (padded_cols bytes).
inline void row_digits(const TernaryMatrix& W, int64_t r, uint8_t* d) {
  decode_row(W.format, W.strip(r / kStripRows), W.chunks, int(r % kStripRows), d);
}
// Row r of W as ternary values t[cols] (each -1, 0 or 1), e.g. for a float copy of the model.
inline void unpack_row(const TernaryMatrix& W, int64_t r, int8_t* t) {
  std::vector<uint8_t> d(size_t(W.padded_cols()));
  row_digits(W, r, d.data());
  for (int64_t c = 0; c < W.cols; ++c) t[c] = int8_t(d[size_t(c)] - 1);
}
// The ternary value of weight (r, c): for tests and tools (slow).
inline int ternary_at(const TernaryMatrix& W, int64_t r, int64_t c) {
  const int64_t cc = chunk_cols(W.format), chunk = c / cc, k = c % cc;
  const uint8_t* b = W.strip(r / kStripRows) + chunk * kChunkBytes + 4 * (r % kStripRows);
  if (W.format == TernaryFormat::TQ2) return ((b[k % 4] >> (2 * (k / 4))) & 3) - 1;
  return tq1_digit(b[k % 4], int(k / 4)) - 1;
}

// ---- building matrices ----------------------------------------------------------------------

// Allocates W's strips (zeroed: callers encode every row, padding rows included) with `alloc`
// (e.g. huge pages), then fills each strip's rows from `row(r, digits)`, which writes the digits
// of row r < rows into a padded_cols buffer pre-filled with 1 (w = 0). `for_strips(n, fn)` may
// run fn(s0, s1) over the strips in parallel.
template <class Alloc, class RowFn, class ForStrips>
TernaryMatrix build_matrix(TernaryMatrix W, Alloc&& alloc, RowFn&& row, ForStrips&& for_strips) {
  std::shared_ptr<uint8_t> mem = alloc(W.nbytes());
  uint8_t* base = mem.get();
  for_strips(W.strips, [&](int64_t s0, int64_t s1) {
    std::vector<uint8_t> d(size_t(W.padded_cols()));
    for (int64_t s = s0; s < s1; ++s)
      for (int i = 0; i < kStripRows; ++i) {
        std::fill(d.begin(), d.end(), uint8_t(1));
        const int64_t r = s * kStripRows + i;
        if (r < W.rows) row(r, d.data());
        encode_row(W.format, d.data(), W.chunks, base + s * W.strip_bytes(), i);
      }
  });
  W.data = base;
  W.owner = mem;
  return W;
}
inline void serially(int64_t n, const auto& fn) {
  if (n > 0) fn(0, n);
}

// Pack ternary values t[rows * cols] (each -1, 0 or 1): tests, tools, hardware vectors.
inline TernaryMatrix pack_ternary(const int8_t* t, int64_t rows, int64_t cols, TernaryFormat f, float scale = 1.0f) {
  TernaryMatrix W = TernaryMatrix::shape(f, rows, cols);
  W.scale = scale;
  return build_matrix(
      W, aligned_bytes,
      [&](int64_t r, uint8_t* d) {
        for (int64_t c = 0; c < cols; ++c) d[c] = uint8_t(t[r * cols + c] + 1);
      },
      [](int64_t n, const auto& fn) { serially(n, fn); });
}

// The same matrix in another format (lossless: both hold exact ternary values).
inline TernaryMatrix convert_format(const TernaryMatrix& W, TernaryFormat f) {
  if (W.format == f) return W;
  TernaryMatrix out = TernaryMatrix::shape(f, W.rows, W.cols);
  out.scale = W.scale;
  std::vector<uint8_t> src(size_t(W.padded_cols()));
  return build_matrix(
      out, aligned_bytes,
      [&](int64_t r, uint8_t* d) {
        row_digits(W, r, src.data());
        std::memcpy(d, src.data(), size_t(std::min(W.cols, out.padded_cols())));
      },
      [](int64_t n, const auto& fn) { serially(n, fn); });
}

// ---- ternarisation --------------------------------------------------------------------------

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
  TernaryMatrix W = TernaryMatrix::shape(f, rows, cols);
  W.scale = absmean_scale(w, size_t(rows * cols));
  const float s_w = 1.0f / W.scale;
  return build_matrix(
      W, aligned_bytes,
      [&](int64_t r, uint8_t* d) {
        for (int64_t c = 0; c < cols; ++c) d[c] = uint8_t(ternarize(w[r * cols + c], s_w) + 1);
      },
      [](int64_t n, const auto& fn) { serially(n, fn); });
}

}  // namespace mmfree
