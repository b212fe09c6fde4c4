// The Verilog core against the library's integer path, bit for bit, through Verilator.
#include <gtest/gtest.h>

#include <deque>
#include <random>

#include "Vcore16.h"
#include "Vcore64.h"
#include "Vcore256.h"
#include "mmfree/mmfree.hpp"
#include "verilated.h"

using namespace mmfree;

namespace {

// Drives one core instance: feeds rows as TQ2 beats, collects one accumulator per row.
template <class V, int BYTES>
struct Driver {
  static constexpr int kLanes = 4 * BYTES;
  V top;
  std::mt19937 rng{99};
  double p_in = 1.0, p_out = 1.0;  // probabilities of offering a beat / accepting a result
  uint64_t cycles = 0;

  Driver() {
    top.clk = 0;
    top.rst = 1;
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

  // Beats of rows [r0, r1) of W against activations q (padded to whole blocks). The core reads
  // each row as TQ2 row bytes (file_ternary.hpp, type 1024): 64-byte blocks of 256 weights.
  static std::deque<Beat> beats(const TernaryMatrix& W, const int8_t* q, int64_t r0, int64_t r1) {
    std::deque<Beat> out;
    const int64_t blocks = (W.cols + 255) / 256;
    std::vector<uint8_t> digits(size_t(W.padded_cols())), row(size_t(blocks * 64));
    for (int64_t r = r0; r < r1; ++r) {
      row_digits(W, r, digits.data());
      encode_file_row(TernaryFileType::MMFREE_TQ2, digits.data(), W.cols, row.data());
      for (int64_t b = 0; b < blocks; ++b)
        for (int j = 0; j < 64; j += BYTES) {
          Beat bt;
          for (int i = 0; i < BYTES; ++i) bt.w[i] = row[size_t(b * 64 + j + i)];
          for (int k = 0; k < 4; ++k)
            for (int i = 0; i < BYTES; ++i) bt.x[k * BYTES + i] = q[b * 256 + k * 64 + j + i];
          bt.last = b == blocks - 1 && j + BYTES == 64;
          out.push_back(bt);
        }
    }
    return out;
  }

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
      set_words(cur);
      top.in_last = cur.last;
      top.out_ready = chance(p_out);
      top.clk = 0;
      top.eval();  // combinational in_ready / out_valid for this cycle
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

  void set_words(const Beat& b) {
    // Verilator packs wide ports into 32-bit words, least significant first.
    uint8_t wbytes[((BYTES + 3) / 4) * 4] = {};
    std::memcpy(wbytes, b.w, BYTES);
    uint8_t xbytes[kLanes] = {};
    std::memcpy(xbytes, b.x, kLanes);
    if constexpr (BYTES <= 4) {
      uint32_t v = 0;
      std::memcpy(&v, wbytes, 4);
      top.in_w = v;
    } else {
      for (int i = 0; i < BYTES / 4; ++i) std::memcpy(&top.in_w[i], wbytes + 4 * i, 4);
    }
    for (int i = 0; i < kLanes / 4; ++i) std::memcpy(&top.in_x[i], xbytes + 4 * i, 4);
  }
};

std::vector<int8_t> random_q(std::mt19937& rng, int64_t cols, int64_t padded) {
  std::vector<int8_t> q(static_cast<size_t>(padded), 0);
  for (int64_t c = 0; c < cols; ++c) q[size_t(c)] = int8_t(int(rng() % 256) - 128);
  return q;
}

template <class V, int BYTES>
void random_rows(int total_rows, double p_in, double p_out) {
  Driver<V, BYTES> drv;
  drv.p_in = p_in, drv.p_out = p_out;
  std::mt19937 rng(5 + BYTES);
  int done = 0;
  while (done < total_rows) {
    const int64_t rows = 1 + rng() % 40, cols = 1 + rng() % 700;
    std::vector<int8_t> t(static_cast<size_t>(rows * cols));
    for (auto& v : t) v = int8_t(int(rng() % 3) - 1);
    const auto W = pack_ternary(t.data(), rows, cols, TernaryFormat::TQ2);
    const auto q = random_q(rng, cols, activation_cols(cols));
    std::vector<int32_t> want(static_cast<size_t>(rows));
    kernels::ternary_gemm_scalar(W, q.data(), activation_cols(cols), 1, want.data(), rows, 0, rows);
    const auto got = drv.run(Driver<V, BYTES>::beats(W, q.data(), 0, rows), size_t(rows));
    ASSERT_EQ(got, want) << rows << "x" << cols;
    done += int(rows);
  }
  std::printf("[ core %d lanes ] %d random rows bit-exact (p_in %.2f, p_out %.2f)\n", 4 * BYTES, done, p_in, p_out);
}

}  // namespace

TEST(HwCore, RandomRowsWithBackPressure16Lanes) { random_rows<Vcore16, 4>(10000, 0.7, 0.6); }
TEST(HwCore, RandomRowsWithBackPressure64Lanes) { random_rows<Vcore64, 16>(10000, 0.8, 0.5); }
TEST(HwCore, RandomRowsWithBackPressure256Lanes) { random_rows<Vcore256, 64>(2000, 0.8, 0.5); }

// Extreme values: all-(-128) activations against all-(-1) and all-(+1) rows, long rows.
TEST(HwCore, ExtremesAndLongRows) {
  Driver<Vcore64, 16> drv;
  for (int w : {-1, 1}) {
    const int64_t cols = 50000;
    std::vector<int8_t> t(static_cast<size_t>(cols), int8_t(w));
    const auto W = pack_ternary(t.data(), 1, cols, TernaryFormat::TQ2);
    std::vector<int8_t> q(static_cast<size_t>(activation_cols(cols)), 0);
    std::fill(q.begin(), q.begin() + cols, int8_t(-128));
    const auto got = drv.run(Driver<Vcore64, 16>::beats(W, q.data(), 0, 1), 1);
    EXPECT_EQ(got.at(0), int32_t(-128 * w * cols));
  }
}

// Every BitLinear of the bundled kjv-tiny model: accumulators bit for bit, and the rescaled
// outputs equal the library's BitLinear outputs.
TEST(HwCore, EveryLayerOfKjvTiny) {
  Model m = load_model(std::string(MMFREE_TEST_DATA) + "/kjv-tiny", {.threads = 1, .kernels = "scalar"});
  std::vector<std::pair<std::string, const BitLinear*>> layers;
  for_each_bitlinear(m.weights(), [&](const std::string& name, const BitLinear& l) { layers.push_back({name, &l}); });
  Driver<Vcore16, 4> drv;
  drv.p_in = 0.9, drv.p_out = 0.7;
  std::mt19937 rng(3);
  int64_t rows = 0;
  for (auto& [name, bl] : layers) {
    const int64_t K = bl->in_features(), N = bl->out_features();
    std::vector<float> x(static_cast<size_t>(K));
    for (auto& v : x) v = std::normal_distribution<float>(0, 1)(rng);
    BitLinearScratch s;
    Exec ex;
    ex.kernels = kernels::forced_table("scalar", TernaryFormat::TQ2);
    std::vector<float> want(static_cast<size_t>(N));
    bl->forward(x.data(), 1, want.data(), s, ex);  // fills s.q, s.s_x, s.acc too
    const auto got = drv.run(Driver<Vcore16, 4>::beats(bl->weights(), s.q.data(), 0, N), size_t(N));
    ASSERT_EQ(got, std::vector<int32_t>(s.acc.begin(), s.acc.begin() + N)) << name;
    const float deq = bl->weights().scale / s.s_x[0];
    for (int64_t r = 0; r < N; ++r) ASSERT_EQ(float(got[size_t(r)]) * deq, want[size_t(r)]) << name << " row " << r;
    rows += N;
  }
  std::printf("[ core ] kjv-tiny: %zu BitLinears, %lld rows bit-exact\n", layers.size(), (long long)rows);
}

// Steady-state throughput without back-pressure: cycles per beat, for the README.
TEST(HwCore, ThroughputIsOneBeatPerCycle) {
  Driver<Vcore64, 16> drv;
  std::mt19937 rng(8);
  const int64_t rows = 64, cols = 2560;
  std::vector<int8_t> t(static_cast<size_t>(rows * cols));
  for (auto& v : t) v = int8_t(int(rng() % 3) - 1);
  const auto W = pack_ternary(t.data(), rows, cols, TernaryFormat::TQ2);
  const auto q = random_q(rng, cols, activation_cols(cols));
  auto in = Driver<Vcore64, 16>::beats(W, q.data(), 0, rows);
  const size_t n_beats = in.size();
  const uint64_t c0 = drv.cycles;
  const auto got = drv.run(std::move(in), size_t(rows));
  const uint64_t cycles = drv.cycles - c0;
  const double eff = double(n_beats) / double(cycles);
  std::printf("[ core 64 lanes ] %lld x %lld matrix: %zu beats in %llu cycles (%.4f beats/cycle, %.1f weights/cycle)\n",
              (long long)rows, (long long)cols, n_beats, (unsigned long long)cycles, eff, eff * 64);
  EXPECT_GE(eff, 0.9);  // within 10% of lanes x clock
  EXPECT_EQ(got.size(), size_t(rows));
}
