// Ternary BitLinear kernels on every BitLinear shape of the published models, against an
// Eigen fp32 GEMV/GEMM of the same shape in the same run.
//
// Counters: GB/s of packed weights streamed, fraction of the measured memory bandwidth
// (the decode floor), GMAC/s (ternary multiply-accumulates per second).
#include <benchmark/benchmark.h>

#include <Eigen/Dense>
#include <random>

#include "bench_common.hpp"
#include "mmfree/mmfree.hpp"

using namespace mmfree;

namespace {

struct Shape {
  const char* name;
  int64_t out, in;
};
// [out, in] of each distinct BitLinear: i/f/g/o (H x H), gate (2I x H), down (H x I), lm_head (V x H).
const Shape kShapes[] = {
    {"370m.attn", 1024, 1024},  {"370m.gate", 5632, 1024},  {"370m.down", 1024, 2816},  {"370m.head", 32000, 1024},
    {"1.3b.attn", 2048, 2048},  {"1.3b.gate", 11264, 2048}, {"1.3b.down", 2048, 5632},  {"1.3b.head", 32000, 2048},
    {"2.7b.attn", 2560, 2560},  {"2.7b.gate", 13824, 2560}, {"2.7b.down", 2560, 6912},  {"2.7b.head", 32000, 2560},
};

TernaryMatrix random_matrix(int64_t rows, int64_t cols, TernaryFormat f) {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> d(-1, 1);
  std::vector<int8_t> t(size_t(rows * cols));
  for (auto& v : t) v = int8_t(d(rng));
  return pack_ternary(t.data(), rows, cols, f, 0.01f);
}

void BM_Ternary(benchmark::State& state, Shape s, TernaryFormat f, kernels::Isa isa) {
  const int64_t n = state.range(0);
  const int threads = int(state.range(1));
  // Decode streams weights from DRAM in a real model (all layers together exceed any
  // cache), so single-token runs rotate through copies of the matrix totalling > 1.5 GB,
  // more than this machine's L3. Prefill reuses weights across tokens and runs warm.
  // Copies live in 2 MiB pages, as a loaded Model's weights do (huge_pages.hpp).
  const auto W0 = random_matrix(s.out, s.in, f);
  std::vector<TernaryMatrix> copies{W0};
  if (state.range(0) == 1) {
    const size_t want = size_t(1.5e9) / W0.nbytes() + 1;
    for (size_t i = 1; i < want; ++i) {
      TernaryMatrix c = W0;
      auto buf = alloc_huge(W0.nbytes());
      std::memcpy(buf.get(), W0.data, W0.nbytes());
      c.data = buf.get();
      c.owner = buf;
      copies.push_back(c);
    }
  }
  const TernaryMatrix& W = W0;
  size_t which = 0;
  const int64_t kp = padded_cols(s.in);
  std::vector<int8_t> q(size_t(n * kp));
  std::mt19937 rng(2);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < s.in; ++c) q[size_t(t * kp + c)] = int8_t(int(rng() % 255) - 127);
  std::vector<int32_t> out(size_t(n * s.out));
  ThreadPool pool(threads);
  const auto table = kernels::kernel_table(isa);
  for (auto _ : state) {
    const TernaryMatrix& M = copies[which];
    which = (which + 1) % copies.size();
    pool.for_range(s.out, 16, [&](int64_t r0, int64_t r1) { table.gemm(M, q.data(), kp, n, out.data(), s.out, r0, r1); });
    benchmark::DoNotOptimize(out.data());
  }
  const double bytes = double(W.nbytes());
  state.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["GMAC/s"] =
      benchmark::Counter(double(s.out * s.in * n) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["bw_GB/s"] = bench::bandwidth_gbs(threads);
  state.counters["floor_frac"] = benchmark::Counter(bytes / 1e9 / bench::bandwidth_gbs(threads),
                                                    benchmark::Counter::kIsIterationInvariantRate);
}

void BM_EigenF32(benchmark::State& state, Shape s) {
  const int64_t n = state.range(0);
  const int threads = int(state.range(1));
  // Eigen here has no OpenMP, so its threads come from the same pool as the ternary
  // kernels: rows of W split the same way.
  ThreadPool pool(threads);
  using RowMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  // Rotated copies for single tokens, as for the ternary kernels: both read from DRAM.
  std::vector<RowMatrix> Ws{RowMatrix::Random(s.out, s.in)};
  if (n == 1)
    while (double(Ws.size() * size_t(s.out * s.in * 4)) < 1.5e9) Ws.push_back(Ws.front());
  size_t which = 0;
  RowMatrix X = RowMatrix::Random(n, s.in);
  RowMatrix Y(n, s.out);
  for (auto _ : state) {
    const RowMatrix& W = Ws[which];
    pool.for_range(s.out, 64, [&](int64_t r0, int64_t r1) {
      Y.middleCols(r0, r1 - r0).noalias() = X * W.middleRows(r0, r1 - r0).transpose();
    });
    which = (which + 1) % Ws.size();
    benchmark::DoNotOptimize(Y.data());
  }
  const double bytes = double(s.out * s.in * 4);
  state.counters["GB/s"] = benchmark::Counter(bytes, benchmark::Counter::kIsIterationInvariantRate, benchmark::Counter::kIs1000);
  state.counters["GMAC/s"] =
      benchmark::Counter(double(s.out * s.in * n) / 1e9, benchmark::Counter::kIsIterationInvariantRate);
}

int register_all() {
  const auto isa = kernels::available_isas().front();
  for (const Shape& s : kShapes) {
    for (auto f : {TernaryFormat::TQ2, TernaryFormat::TQ1}) {
      auto* b = benchmark::RegisterBenchmark((std::string("ternary/") + format_name(f) + "/" + kernels::isa_name(isa) + "/" + s.name).c_str(),
                                             BM_Ternary, s, f, isa);
      b->ArgNames({"tokens", "threads"})->UseRealTime();
      for (int64_t n : {1, 64, 512})
        for (int64_t t : {1, 2}) b->Args({n, t});
      // With AMX, its prefill against the AVX-512 kernel it replaces (decode is the same code).
      if (isa == kernels::Isa::Amx) {
        auto* a = benchmark::RegisterBenchmark((std::string("ternary/") + format_name(f) + "/avx512/" + s.name).c_str(),
                                               BM_Ternary, s, f, kernels::Isa::Avx512);
        a->ArgNames({"tokens", "threads"})->UseRealTime();
        for (int64_t n : {64, 512})
          for (int64_t t : {1, 2}) a->Args({n, t});
      }
    }
    auto* e = benchmark::RegisterBenchmark((std::string("eigen_f32/") + s.name).c_str(), BM_EigenF32, s);
    e->ArgNames({"tokens", "threads"})->UseRealTime();
    for (int64_t n : {1, 64, 512})
      for (int64_t t : {1, 2}) e->Args({n, t});
  }
  return 0;
}
const int registered = register_all();

}  // namespace

BENCHMARK_MAIN();
