// The TQ1 front end (hw/rtl/tq1_decoder.v) with the core behind it, against the library's integer
// path bit for bit: TQ1_0 blocks in (the file's bytes verbatim), one accumulator per row out.
#include <gtest/gtest.h>

#include <deque>
#include <random>

#include "Vtq1_16.h"
#include "Vtq1_64.h"
#include "mmfree/mmfree.hpp"

using namespace mmfree;

namespace {

constexpr int kBlockBytes = 54;  // ggml TQ1_0: 256 weights

template <class V, int BYTES>
struct Tq1Driver {
  static constexpr int kLanes = 4 * BYTES, kBeats = 256 / kLanes;
  V top;
  std::mt19937 rng{7};
  double p_blk = 1.0, p_x = 1.0, p_out = 1.0;
  uint64_t cycles = 0;

  Tq1Driver() {
    top.rst = 1;
    for (int i = 0; i < 2; ++i) tick();
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

  // Rows of TQ1_0 bytes (row_bytes each) against activations q: the accumulators.
  std::vector<int32_t> run(const uint8_t* rows, int64_t n_rows, int64_t cols, const int8_t* q) {
    const int64_t blocks = cols / 256, row_bytes = blocks * kBlockBytes;
    int64_t blk_sent = 0, x_sent = 0;  // blocks and beats handed in, over all rows
    const int64_t total_blocks = n_rows * blocks, total_beats = total_blocks * kBeats;
    std::vector<int32_t> got;
    bool blk_on = false, x_on = false;
    while (int64_t(got.size()) < n_rows && cycles < 50000000) {
      if (!blk_on && blk_sent < total_blocks && chance(p_blk)) blk_on = true;
      if (!x_on && x_sent < total_beats && chance(p_x)) x_on = true;
      top.blk_valid = blk_on;
      if (blk_on) {
        const int64_t r = blk_sent / blocks, b = blk_sent % blocks;
        std::memcpy(&top.blk[0], rows + r * row_bytes + b * kBlockBytes, kBlockBytes);
        top.blk_last = b == blocks - 1;
      }
      top.x_valid = x_on;
      if (x_on) {
        // Beat t of block b carries the activations of weights b * 256 + t * LANES + g.
        const int64_t b = x_sent / kBeats % blocks, t = x_sent % kBeats;
        std::memcpy(&top.x[0], q + b * 256 + t * kLanes, kLanes);
      }
      top.out_ready = chance(p_out);
      top.clk = 0;
      top.eval();
      const bool blk_fire = top.blk_valid && top.blk_ready, x_fire = top.x_valid && top.x_ready;
      if (top.out_valid && top.out_ready) got.push_back(int32_t(top.out_acc));
      top.clk = 1;
      top.eval();
      ++cycles;
      if (blk_fire) blk_on = false, ++blk_sent;
      if (x_fire) x_on = false, ++x_sent;
    }
    return got;
  }
};

// TQ1_0 bytes of every row of W (whole blocks; block scales 1.0 as the library writes them).
std::vector<uint8_t> tq1_rows(const TernaryMatrix& W) {
  const int64_t row_bytes = file_row_bytes(TernaryFileType::TQ1_0, W.cols);
  std::vector<uint8_t> out(size_t(W.rows * row_bytes)), digits(size_t(W.padded_cols()));
  for (int64_t r = 0; r < W.rows; ++r) {
    row_digits(W, r, digits.data());
    encode_file_row(TernaryFileType::TQ1_0, digits.data(), W.cols, out.data() + r * row_bytes);
  }
  return out;
}

template <class V, int BYTES>
void random_rows(int total_rows, double p_blk, double p_x, double p_out) {
  Tq1Driver<V, BYTES> drv;
  drv.p_blk = p_blk, drv.p_x = p_x, drv.p_out = p_out;
  std::mt19937 rng(31 + BYTES);
  int done = 0;
  while (done < total_rows) {
    const int64_t rows = 1 + rng() % 30, cols = 256 * (1 + rng() % 5);
    std::vector<int8_t> t(static_cast<size_t>(rows * cols));
    for (auto& v : t) v = int8_t(int(rng() % 3) - 1);
    const auto W = pack_ternary(t.data(), rows, cols, TernaryFormat::TQ1);
    std::vector<int8_t> q(static_cast<size_t>(activation_cols(cols)), 0);
    for (int64_t c = 0; c < cols; ++c) q[size_t(c)] = int8_t(int(rng() % 256) - 128);
    std::vector<int32_t> want(static_cast<size_t>(rows));
    kernels::ternary_gemm_scalar(W, q.data(), activation_cols(cols), 1, want.data(), rows, 0, rows);
    const auto bytes = tq1_rows(W);
    ASSERT_EQ(drv.run(bytes.data(), rows, cols, q.data()), want) << rows << "x" << cols;
    done += int(rows);
  }
  std::printf("[ tq1 core %d lanes ] %d random rows bit-exact\n", 4 * BYTES, done);
}

}  // namespace

TEST(HwTq1, RandomRowsWithBackPressure16Lanes) { random_rows<Vtq1_16, 4>(2000, 0.7, 0.8, 0.5); }
TEST(HwTq1, RandomRowsWithBackPressure64Lanes) { random_rows<Vtq1_64, 16>(2000, 0.6, 0.9, 0.6); }

// The bundled model's TQ1_0 tensors, read from the GGUF file byte for byte, against the
// library's loaded matrices.
TEST(HwTq1, BundledModelTensorsVerbatim) {
  const std::string path = std::string(MMFREE_SOURCE_DIR) + "/models/kjv-demo.gguf";
  gguf::Reader file(path);
  Model m = load_model(path, [] { ModelOptions o; o.kernels = "scalar"; return o; }());
  Tq1Driver<Vtq1_16, 4> drv;
  drv.p_blk = 0.9, drv.p_x = 0.9, drv.p_out = 0.8;
  std::mt19937 rng(2);
  int tensors = 0;
  for_each_bitlinear(m.weights(), [&](const std::string& name, const BitLinear& l) {
    const gguf::TensorInfo* t = file.find(tensor_name::weight(name));
    ASSERT_NE(t, nullptr) << name;
    if (t->type != uint32_t(TernaryFileType::TQ1_0)) return;
    const TernaryMatrix& W = l.weights();
    std::vector<int8_t> q(static_cast<size_t>(activation_cols(W.cols)), 0);
    for (int64_t c = 0; c < W.cols; ++c) q[size_t(c)] = int8_t(int(rng() % 256) - 128);
    std::vector<int32_t> want(static_cast<size_t>(W.rows));
    kernels::ternary_gemm_scalar(W, q.data(), activation_cols(W.cols), 1, want.data(), W.rows, 0, W.rows);
    ASSERT_EQ(drv.run(t->data, W.rows, W.cols, q.data()), want) << name;
    ++tensors;
  });
  EXPECT_GT(tensors, 0);
  std::printf("[ tq1 core ] kjv-demo: %d TQ1_0 tensors from the file, bit-exact\n", tensors);
}

// Without back-pressure the front end keeps the 16-lane core at one beat per cycle: a block
// decodes (6 cycles) while the one before it is handed out (16 beats).
TEST(HwTq1, FullRateAt16Lanes) {
  Tq1Driver<Vtq1_16, 4> drv;
  std::mt19937 rng(5);
  const int64_t rows = 64, cols = 2560;
  std::vector<int8_t> t(static_cast<size_t>(rows * cols));
  for (auto& v : t) v = int8_t(int(rng() % 3) - 1);
  const auto W = pack_ternary(t.data(), rows, cols, TernaryFormat::TQ1);
  std::vector<int8_t> q(static_cast<size_t>(activation_cols(cols)), 3);
  const auto bytes = tq1_rows(W);
  const uint64_t c0 = drv.cycles;
  const auto got = drv.run(bytes.data(), rows, cols, q.data());
  ASSERT_EQ(got.size(), size_t(rows));
  const double beats = double(rows * cols / 16), eff = beats / double(drv.cycles - c0);
  std::printf("[ tq1 core 16 lanes ] %lld x %lld: %.0f beats in %llu cycles (%.4f beats/cycle), %.0f weight bytes "
              "(TQ2: %.0f)\n", (long long)rows, (long long)cols, beats, (unsigned long long)(drv.cycles - c0), eff,
              double(bytes.size()), double(rows * cols / 4));
  EXPECT_GT(eff, 0.98);
}
