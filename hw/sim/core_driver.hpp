// Drives a Verilated ternary_acc (hw/rtl/ternary_acc.v) from C++: rows of the library's
// packed matrices in, one accumulator per row out, counting clock cycles.
#pragma once

#include <cstdint>
#include <cstring>
#include <deque>
#include <random>
#include <vector>

#include "mmfree/file_ternary.hpp"
#include "mmfree/ternary_format.hpp"

namespace mmfree::hw {

// Row r of W as the core reads it: TQ2 row bytes (file_ternary.hpp, 64-byte blocks of 256
// weights, byte j holding weights j, j+64, j+128, j+192), ceil(cols / 256) * 64 bytes.
inline std::vector<uint8_t> tq2_rows(const TernaryMatrix& W) {
  const int64_t row_bytes = (W.cols + 255) / 256 * 64;
  std::vector<uint8_t> out(size_t(W.rows * row_bytes)), digits(size_t(W.padded_cols()));
  for (int64_t r = 0; r < W.rows; ++r) {
    row_digits(W, r, digits.data());
    encode_file_row(TernaryFileType::MMFREE_TQ2, digits.data(), W.cols, out.data() + r * row_bytes);
  }
  return out;
}

template <class V, int BYTES>
struct Driver {
  static constexpr int kLanes = 4 * BYTES;
  V top;
  std::mt19937 rng{99};
  double p_in = 1.0, p_out = 1.0;  // probabilities of offering a beat / accepting a result
  uint64_t cycles = 0;

  Driver() { reset(); }
  void reset() {
    top.clk = 0;
    top.rst = 1;
    top.in_valid = 0;
    tick();
    tick();
    top.rst = 0;
  }
  void tick() {
    top.clk = 0;
    top.eval();
    top.clk = 1;
    top.eval();
    ++cycles;
  }
  bool chance(double p) { return p >= 1.0 || std::uniform_real_distribution<double>(0, 1)(rng) < p; }

  struct Beat {
    uint8_t w[BYTES];
    int8_t x[kLanes];
    bool last;
  };

  // Beats of rows [r0, r1) of W against activations q (padded to whole blocks).
  static std::deque<Beat> beats(const TernaryMatrix& W, const int8_t* q, int64_t r0, int64_t r1) {
    std::deque<Beat> out;
    const int64_t blocks = (W.cols + 255) / 256;
    const std::vector<uint8_t> rows = tq2_rows(W);
    for (int64_t r = r0; r < r1; ++r) {
      const uint8_t* row = rows.data() + r * blocks * 64;
      for (int64_t b = 0; b < blocks; ++b)
        for (int j = 0; j < 64; j += BYTES) {
          Beat bt;
          for (int i = 0; i < BYTES; ++i) bt.w[i] = row[b * 64 + j + i];
          for (int k = 0; k < 4; ++k)
            for (int i = 0; i < BYTES; ++i) bt.x[k * BYTES + i] = q[b * 256 + k * 64 + j + i];
          bt.last = b == blocks - 1 && j + BYTES == 64;
          out.push_back(bt);
        }
    }
    return out;
  }

  // Offers the beats (each cycle with probability p_in), accepts results (p_out), until `rows`
  // results came out.
  std::vector<int32_t> run(std::deque<Beat> in, size_t rows) {
    std::vector<int32_t> got;
    bool offering = false;
    Beat cur{};
    while (got.size() < rows) {
      if (!offering && !in.empty() && chance(p_in)) {
        cur = in.front();
        in.pop_front();
        offering = true;
      }
      top.in_valid = offering;
      set_beat(cur.w, cur.x);
      top.in_last = cur.last;
      top.out_ready = chance(p_out);
      top.clk = 0;
      top.eval();  // in_ready / out_valid for this cycle
      const bool in_fire = top.in_valid && top.in_ready;
      const bool out_fire = top.out_valid && top.out_ready;
      const int32_t acc = int32_t(top.out_acc);
      top.clk = 1;
      top.eval();
      ++cycles;
      if (in_fire) offering = false;
      if (out_fire) got.push_back(acc);
      if (cycles > 100000000) break;
    }
    return got;
  }

  // Rows [r0, r1) of TQ2 row bytes (`row_bytes` each) against activations q, at full rate (a
  // beat offered every cycle, results always taken): acc[r - r0] for each row.
  void stream(const uint8_t* rows, int64_t row_bytes, const int8_t* q, int64_t r0, int64_t r1, int32_t* acc) {
    const int64_t beats_per_row = row_bytes / BYTES, total = (r1 - r0) * beats_per_row;
    // The activations of beat j of any row, in lane order, gathered once.
    std::vector<int8_t> xg(size_t(beats_per_row * kLanes));
    for (int64_t bi = 0; bi < beats_per_row; ++bi) {
      const int64_t b = bi * BYTES / 64, j = bi * BYTES % 64;
      for (int k = 0; k < 4; ++k)
        for (int i = 0; i < BYTES; ++i) xg[size_t(bi * kLanes + k * BYTES + i)] = q[b * 256 + k * 64 + j + i];
    }
    int64_t sent = 0, got = 0;
    top.out_ready = 1;
    while (got < r1 - r0) {
      top.in_valid = sent < total;
      if (sent < total) {
        const int64_t r = r0 + sent / beats_per_row, bi = sent % beats_per_row;
        set_beat(rows + r * row_bytes + bi * BYTES, xg.data() + bi * kLanes);
        top.in_last = bi == beats_per_row - 1;
      }
      top.clk = 0;
      top.eval();
      const bool in_fire = top.in_valid && top.in_ready;
      if (top.out_valid) acc[got++] = int32_t(top.out_acc);
      top.clk = 1;
      top.eval();
      ++cycles;
      if (in_fire) ++sent;
    }
  }

  void set_beat(const uint8_t* w, const int8_t* x) {
    // Verilator packs wide ports into 32-bit words, least significant first.
    if constexpr (BYTES < 4) {
      uint32_t v = 0;
      std::memcpy(&v, w, BYTES);
      top.in_w = v;
    } else if constexpr (BYTES == 4) {
      uint32_t v;
      std::memcpy(&v, w, 4);
      top.in_w = v;
    } else {
      for (int i = 0; i < BYTES / 4; ++i) std::memcpy(&top.in_w[i], w + 4 * i, 4);
    }
    for (int i = 0; i < kLanes / 4; ++i) std::memcpy(&top.in_x[i], x + 4 * i, 4);
  }
};

}  // namespace mmfree::hw
