// The Verilog core against the library's integer path, bit for bit, through Verilator.
#include <gtest/gtest.h>

#include <deque>
#include <random>

#include "core_driver.hpp"

#include "Vcore16.h"
#include "Vcore64.h"
#include "Vcore256.h"
#include "mmfree/mmfree.hpp"
#include "verilated.h"

using namespace mmfree;

namespace {

using hw::Driver;

std::vector<int8_t> random_q(std::mt19937& rng, int64_t cols, int64_t padded) {
  std::vector<int8_t> q(static_cast<size_t>(padded), 0);
  for (int64_t c = 0; c < cols; ++c) q[size_t(c)] = int8_t(int(rng() % 256) - 128);
  return q;
}

// A random ternary matrix, random activations, and the library's scalar sums of them.
struct Case {
  TernaryMatrix W;
  std::vector<int8_t> q;
  std::vector<int32_t> want;
};
Case random_case(std::mt19937& rng, int64_t rows, int64_t cols) {
  std::vector<int8_t> t(static_cast<size_t>(rows * cols));
  for (auto& v : t) v = int8_t(int(rng() % 3) - 1);
  Case c{pack_ternary(t.data(), rows, cols, TernaryFormat::TQ2), random_q(rng, cols, activation_cols(cols)),
         std::vector<int32_t>(static_cast<size_t>(rows))};
  kernels::ternary_gemm_scalar(c.W, c.q.data(), activation_cols(cols), 1, c.want.data(), rows, 0, rows);
  return c;
}

template <class V, int BYTES>
void random_rows(int total_rows, double p_in, double p_out) {
  Driver<V, BYTES> drv;
  drv.p_in = p_in, drv.p_out = p_out;
  std::mt19937 rng(5 + BYTES);
  int done = 0;
  while (done < total_rows) {
    const int64_t rows = 1 + rng() % 40, cols = 1 + rng() % 700;
    const auto [W, q, want] = random_case(rng, rows, cols);
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
  Model m = load_model(std::string(MMFREE_TEST_DATA) + "/kjv-tiny", [] { ModelOptions o; o.kernels = "scalar"; return o; }());
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
  const auto [W, q, want] = random_case(rng, rows, cols);
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

// A result waiting for out_ready stays put: out_valid and out_acc hold while the output is
// stalled, the input stops once every FIFO slot is spoken for, and nothing is lost.
TEST(HwCore, OutputHoldsWhileStalled) {
  Driver<Vcore16, 4> drv;
  std::mt19937 rng(21);
  const int64_t rows = 40, cols = 256;  // one block: 16 beats a row
  const auto [W, q, want] = random_case(rng, rows, cols);
  auto in = Driver<Vcore16, 4>::beats(W, q.data(), 0, rows);
  std::vector<int32_t> got;
  int stalled_ready_cycles = 0;
  bool held = false;
  int32_t held_acc = 0;
  for (int cyc = 0; cyc < 100000 && got.size() < size_t(rows); ++cyc) {
    const bool stall = cyc < 2000 || (cyc / 37) % 3 == 0;  // long stall first, then in bursts
    drv.top.in_valid = !in.empty();
    if (!in.empty()) drv.set_beat(in.front().w, in.front().x), drv.top.in_last = in.front().last;
    drv.top.out_ready = !stall;
    drv.top.clk = 0;
    drv.top.eval();
    if (held) {  // the result offered last cycle was not taken: the same one is offered now
      ASSERT_TRUE(drv.top.out_valid) << "cycle " << cyc;
      ASSERT_EQ(int32_t(drv.top.out_acc), held_acc) << "cycle " << cyc;
    }
    if (cyc > 1000 && cyc < 2000) stalled_ready_cycles += drv.top.in_ready;  // the FIFO is full by now
    const bool in_fire = drv.top.in_valid && drv.top.in_ready;
    held = drv.top.out_valid && !drv.top.out_ready;
    held_acc = int32_t(drv.top.out_acc);
    if (drv.top.out_valid && drv.top.out_ready) got.push_back(int32_t(drv.top.out_acc));
    drv.top.clk = 1;
    drv.top.eval();
    if (in_fire) in.pop_front();
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(stalled_ready_cycles, 0) << "in_ready stayed high through a long output stall";
}

// in_ready is a function of registers only: changing out_ready (or in_valid) within a cycle
// never changes it.
TEST(HwCore, NoCombinationalPathToInReady) {
  Driver<Vcore64, 16> drv;
  std::mt19937 rng(4);
  const int64_t rows = 64, cols = 300;
  const auto [W, q, want] = random_case(rng, rows, cols);
  auto in = Driver<Vcore64, 16>::beats(W, q.data(), 0, rows);
  int saw_low = 0;
  for (int cyc = 0; cyc < 5000 && !in.empty(); ++cyc) {
    drv.set_beat(in.front().w, in.front().x);
    drv.top.in_last = in.front().last;
    drv.top.clk = 0;
    int ready[4];
    for (int k = 0; k < 4; ++k) {
      drv.top.in_valid = k & 1;
      drv.top.out_ready = k >> 1;
      drv.top.eval();
      ready[k] = drv.top.in_ready;
    }
    ASSERT_TRUE(ready[0] == ready[1] && ready[1] == ready[2] && ready[2] == ready[3]) << "cycle " << cyc;
    saw_low += !ready[0];
    drv.top.in_valid = 1;
    drv.top.out_ready = rng() % 32 == 0;  // mostly stalled: the FIFO fills
    drv.top.eval();
    const bool in_fire = drv.top.in_ready;
    drv.top.clk = 1;
    drv.top.eval();
    if (in_fire) in.pop_front();
  }
  EXPECT_GT(saw_low, 0) << "the test never filled the FIFO";
}

// A reset in the middle of a row drops that row and the results queued behind it; the rows
// after it come out exact.
TEST(HwCore, ResetMidRow) {
  Driver<Vcore16, 4> drv;
  std::mt19937 rng(17);
  const int64_t rows = 6, cols = 600;
  const auto [W, q, want] = random_case(rng, rows, cols);
  // Two whole rows and half of a third go in, none taken out; then reset.
  auto in = Driver<Vcore16, 4>::beats(W, q.data(), 0, 3);
  const size_t half = in.size() - 20;
  for (size_t b = 0; b < half; ++b) {
    drv.top.in_valid = 1;
    drv.set_beat(in[b].w, in[b].x);
    drv.top.in_last = in[b].last;
    drv.top.out_ready = 0;
    drv.tick();
  }
  drv.top.rst = 1;
  drv.top.in_valid = 0;
  drv.tick();
  drv.top.rst = 0;
  drv.top.clk = 0;
  drv.top.eval();
  EXPECT_FALSE(drv.top.out_valid);
  EXPECT_TRUE(drv.top.in_ready);
  const auto got = drv.run(Driver<Vcore16, 4>::beats(W, q.data(), 0, rows), size_t(rows));
  EXPECT_EQ(got, want);
}

// Rows of a single block: at 256 lanes one beat a row, so each row's result must leave while
// the next rows are in the pipeline. Exact, and still one beat per cycle.
TEST(HwCore, SingleBlockRowsAtFullRate) {
  std::mt19937 rng(12);
  const int64_t rows = 2000;
  for (int64_t cols : {1, 100, 256}) {
    const auto [W, q, want] = random_case(rng, rows, cols);
    Driver<Vcore256, 64> drv;
    const auto rows_tq2 = hw::tq2_rows(W);
    std::vector<int32_t> got(static_cast<size_t>(rows));
    const uint64_t c0 = drv.cycles;
    drv.stream(rows_tq2.data(), 64, q.data(), 0, rows, got.data());
    EXPECT_EQ(got, want) << cols << " columns";
    const double beats_per_cycle = double(rows) / double(drv.cycles - c0);
    EXPECT_GT(beats_per_cycle, 0.99) << cols << " columns";
    // And at 16 lanes (16 beats a row), with back-pressure.
    Driver<Vcore16, 4> d16;
    d16.p_in = 0.8, d16.p_out = 0.3;
    EXPECT_EQ(d16.run(Driver<Vcore16, 4>::beats(W, q.data(), 0, rows), size_t(rows)), want) << cols << " columns";
  }
}
