// Ternary kernels side by side: every kernel this CPU can run (kernels::available_kernels), both
// formats, on every BitLinear shape of the published models, against an Eigen fp32 GEMV/GEMM of
// the same shape in the same run.
//
//   ternary/<format>/<kernel>/<shape>/tokens:N/threads:T
//
// Counters: GB/s of packed weights streamed and floor_frac (that over the read bandwidth
// measured just before: the decode floor); GMAC/s (ternary multiply-accumulates per second) and
// peak_frac (that over the int8 dot-product peak measured in this run: the prefill ceiling
// without AMX). The scalar kernel runs only with MMFREE_BENCH_SCALAR=1 (it takes minutes).
#include <benchmark/benchmark.h>

#include <cstdlib>
#include <map>
#include <random>

#include "bench_common.hpp"
#include "eigen_gemm.hpp"
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

// Decode streams weights from memory in a real model (all layers together exceed any cache), so
// one-token runs rotate through copies of the matrix totalling more than 1.5 GB, beyond every
// L3 measured so far; copies live in 2 MiB pages, as a loaded model's weights do. Prefill
// reuses weights across tokens and runs warm. The copies of the last (shape, format) are kept
// for the next kernel.
const std::vector<TernaryMatrix>& matrices(const Shape& s, TernaryFormat f, bool rotate) {
  static std::string key;
  static std::vector<TernaryMatrix> cache;
  const std::string k = std::string(s.name) + format_name(f) + (rotate ? "r" : "");
  if (k == key) return cache;
  cache.clear();
  key = k;
  std::mt19937 rng(1);
  std::vector<int8_t> t(size_t(s.out * s.in));
  for (auto& v : t) v = int8_t(int(rng() % 3) - 1);
  cache.push_back(pack_ternary(t.data(), s.out, s.in, f, 0.01f));
  const TernaryMatrix& W0 = cache.front();
  const size_t want = rotate ? size_t(1.5e9) / W0.nbytes() + 1 : 1;
  for (size_t i = 1; i < want; ++i) {
    TernaryMatrix c = W0;
    auto buf = alloc_huge(W0.nbytes());
    std::memcpy(buf.get(), W0.data, W0.nbytes());
    c.data = buf.get();
    c.owner = buf;
    cache.push_back(c);
  }
  return cache;
}

void BM_Ternary(benchmark::State& state, Shape s, TernaryFormat f, kernels::Kernel k) {
  const int64_t n = state.range(0);
  const int threads = int(state.range(1));
  const auto& copies = matrices(s, f, n == 1);
  size_t which = 0;
  const int64_t ld = activation_cols(s.in);
  std::vector<int8_t> q(size_t(n * ld));
  std::mt19937 rng(2);
  for (int64_t t = 0; t < n; ++t)
    for (int64_t c = 0; c < s.in; ++c) q[size_t(t * ld + c)] = int8_t(int(rng() % 255) - 127);
  std::vector<int32_t> out(size_t(n * s.out));
  ThreadPool pool(threads);
  const double bw = n == 1 ? bench::bandwidth_now_gbs(threads) : 0;  // the floor, just before
  const double peak = n > 1 ? bench::int8_peak_gmacs(threads) : 0;   // the ceiling, best of the run
  for (auto _ : state) {
    const TernaryMatrix& M = copies[which];
    which = (which + 1) % copies.size();
    pool.for_range(s.out, kStripRows, [&](int64_t r0, int64_t r1) { k.gemm(M, q.data(), ld, n, out.data(), s.out, r0, r1); });
    benchmark::DoNotOptimize(out.data());
  }
  const double bytes = double(copies.front().nbytes()), macs = double(s.out) * double(s.in) * double(n);
  using C = benchmark::Counter;
  state.counters["GB/s"] = C(bytes, C::kIsIterationInvariantRate, C::kIs1000);
  state.counters["GMAC/s"] = C(macs / 1e9, C::kIsIterationInvariantRate);
  if (n == 1) {
    state.counters["bw_GB/s"] = bw;
    state.counters["floor_frac"] = C(bytes / 1e9 / bw, C::kIsIterationInvariantRate);
  } else {
    state.counters["peak_GMAC/s"] = peak;
    state.counters["peak_frac"] = C(macs / 1e9 / peak, C::kIsIterationInvariantRate);
  }
}

void BM_EigenF32(benchmark::State& state, Shape s) {
  const int64_t n = state.range(0);
  const int threads = int(state.range(1));
  // Eigen here has no OpenMP, so its threads come from the same pool as the ternary kernels:
  // rows of W split the same way.
  ThreadPool pool(threads);
  std::mt19937 rng(3);
  std::uniform_real_distribution<float> u(-1, 1);
  std::vector<float> W0(size_t(s.out * s.in));
  for (auto& v : W0) v = u(rng);
  // Rotated copies for single tokens, as for the ternary kernels: both read from DRAM.
  std::vector<std::vector<float>> Ws{W0};
  if (n == 1)
    while (double(Ws.size() * W0.size() * 4) < 1.5e9) Ws.push_back(W0);
  size_t which = 0;
  std::vector<float> X(size_t(n * s.in)), Y(size_t(n * s.out));
  for (auto& v : X) v = u(rng);
  for (auto _ : state) {
    const std::vector<float>& W = Ws[which];
    pool.for_range(s.out, 64, [&](int64_t r0, int64_t r1) { bench::eigen_gemm(W.data(), s.out, s.in, X.data(), n, Y.data(), r0, r1); });
    which = (which + 1) % Ws.size();
    benchmark::DoNotOptimize(Y.data());
  }
  using C = benchmark::Counter;
  state.counters["GB/s"] = C(double(s.out * s.in * 4), C::kIsIterationInvariantRate, C::kIs1000);
  state.counters["GMAC/s"] = C(double(s.out * s.in * n) / 1e9, C::kIsIterationInvariantRate);
}

int register_all() {
  const bool scalar = std::getenv("MMFREE_BENCH_SCALAR") && *std::getenv("MMFREE_BENCH_SCALAR") == '1';
  std::string names;
  for (const auto& k : kernels::available_kernels()) names += std::string(names.empty() ? "" : ",") + k.name;
  benchmark::AddCustomContext("mmfree_kernels", names);
  for (const Shape& s : kShapes) {
    // Decode runs of every kernel first, then prefill: each set of copies is made once.
    for (auto f : {TernaryFormat::TQ2, TernaryFormat::TQ1})
      for (bool decode : {true, false})
        for (const auto& k : kernels::available_kernels()) {
          if (!k.for_format(f) || (k.isa == kernels::Isa::Scalar && !scalar)) continue;
          if (decode ? !k.decode : !k.prefill) continue;
          const std::string name = std::string("ternary/") + format_name(f) + "/" + k.name + "/" + s.name;
          auto* b = benchmark::RegisterBenchmark(name.c_str(), BM_Ternary, s, f, k);
          b->ArgNames({"tokens", "threads"})->UseRealTime();
          for (int64_t n : decode ? std::vector<int64_t>{1} : std::vector<int64_t>{64, 512})
            for (int64_t t : {1, 2}) b->Args({n, t});
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
