// Ternary kernels side by side: every kernel this CPU can run (kernels::available_kernels), both
// formats, on every BitLinear shape of the published models, against an Eigen fp32 GEMV/GEMM of
// the same shape in the same run.
//
//   ternary/<format>/<kernel>/<shape>/tokens:N/threads:T
//
// Counters: GB/s of packed weights streamed and floor_frac (that over the best read bandwidth
// of the run, probed before each decode benchmark: the decode floor); GMAC/s (ternary multiply-accumulates per second) and
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
// L3 measured so far (MMFREE_BENCH_ROTATE_GB sets the total); copies live in 2 MiB pages, as a loaded model's weights do. Prefill
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
  // Each with its interleaved copy, which the *-interleaved kernels read (the others ignore it).
  cache.push_back(with_interleaved(pack_ternary(t.data(), s.out, s.in, f, 0.01f)));
  const TernaryMatrix W0 = cache.front();  // a copy (shares the bytes): push_back moves cache's elements
  const char* gb = std::getenv("MMFREE_BENCH_ROTATE_GB");  // tests make it small
  const size_t want = rotate ? size_t((gb && *gb ? std::atof(gb) : 1.5) * 1e9) / W0.nbytes() + 1 : 1;
  for (size_t i = 1; i < want; ++i) {
    TernaryMatrix c = W0;
    auto buf = alloc_huge(W0.nbytes());
    std::memcpy(buf.get(), W0.data, W0.nbytes());
    c.data = buf.get();
    c.owner = buf;
    cache.push_back(with_interleaved(without_interleaved(c)));
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
  // The ceiling is probed between runs of about 20 ms of the kernel (decode: the read bandwidth,
  // 64 MiB; prefill: the int8 peak), so each run is compared with the machine of its own moment:
  // on a shared machine both move by tens of percent within a minute. The shares reported are
  // the medians of those paired ratios.
  const double bytes = double(copies.front().nbytes()), macs = double(s.out) * double(s.in) * double(n);
  std::vector<double> ratios, ceilings;
  double run_secs = 0, run_units = 0;
  for (auto _ : state) {
    const TernaryMatrix& M = copies[which];
    which = (which + 1) % copies.size();
    const auto t0 = std::chrono::steady_clock::now();
    pool.for_range(s.out, k.interleaved ? interleaved_group_rows(f) : kStripRows,
                   [&](int64_t r0, int64_t r1) { k.gemm(M, q.data(), ld, n, out.data(), s.out, r0, r1); });
    benchmark::DoNotOptimize(out.data());
    run_secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    run_units += n == 1 ? bytes / 1e9 : macs / 1e9;
    if (run_secs >= 0.02) {
      state.PauseTiming();
      const double ceiling = n == 1 ? bench::measure_bandwidth(threads, size_t(64) << 20, 1) : bench::int8_peak_now(threads);
      ceilings.push_back(ceiling);
      ratios.push_back(run_units / run_secs / ceiling);
      run_secs = run_units = 0;
      state.ResumeTiming();
    }
  }
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  };
  using C = benchmark::Counter;
  state.counters["GB/s"] = C(bytes, C::kIsIterationInvariantRate, C::kIs1000);
  state.counters["GMAC/s"] = C(macs / 1e9, C::kIsIterationInvariantRate);
  if (n == 1) {
    state.counters["bw_GB/s"] = median(ceilings);
    state.counters["floor_frac"] = median(ratios);
  } else {
    state.counters["peak_GMAC/s"] = median(ceilings);
    state.counters["peak_frac"] = median(ratios);
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

// Does a table-lookup GEMM (T-MAC, bitnet.cpp's TL kernels: add precomputed partial sums of
// activations instead of multiplying) beat vpdpbusd? Its most favourable inner loop: 4 ternary
// weights per byte index (81 combinations), exact 16-bit partial sums of 4 int8 activations in
// two 128-entry byte tables (vpermi2b, lo and hi), unpacked to words and added; tables never
// rebuilt, never widened to int32. Counted as 256 multiply-accumulates per lookup (64 rows x 4).
__attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi"))) double lut_best_case(long iters) {
  __m512i tlo0 = _mm512_set1_epi8(3), tlo1 = _mm512_set1_epi8(5), thi0 = _mm512_set1_epi8(1), thi1 = _mm512_setzero_si512();
  __m512i acc[8];
  #pragma GCC unroll 8
  for (auto& a : acc) a = _mm512_setzero_si512();
  __m512i idx[4] = {_mm512_set1_epi8(1), _mm512_set1_epi8(7), _mm512_set1_epi8(20), _mm512_set1_epi8(80)};
  for (long k = 0; k < iters; ++k) {
    #pragma GCC unroll 4
    for (int j = 0; j < 4; ++j) {
      const __m512i lo = _mm512_permutex2var_epi8(tlo0, idx[j], tlo1), hi = _mm512_permutex2var_epi8(thi0, idx[j], thi1);
      acc[2 * j] = _mm512_add_epi16(acc[2 * j], _mm512_unpacklo_epi8(lo, hi));
      acc[2 * j + 1] = _mm512_add_epi16(acc[2 * j + 1], _mm512_unpackhi_epi8(lo, hi));
    }
    __asm__ volatile("" : "+v"(idx[0]), "+v"(idx[1]), "+v"(idx[2]), "+v"(idx[3]));
  }
  __m512i t = acc[0];
  #pragma GCC unroll 8
  for (int i = 1; i < 8; ++i) t = _mm512_add_epi16(t, acc[i]);
  alignas(64) int32_t lanes[16];  // (not _mm512_reduce_add_epi32: GCC 12 warns inside it)
  _mm512_store_si512(lanes, t);
  volatile int sink = lanes[0] + lanes[15];
  (void)sink;
  return double(iters) * 4 * 256 / 1e9;  // G multiply-accumulate equivalents
}
void BM_PeakTableLookup(benchmark::State& state) {
  const int threads = int(state.range(0));
  double rate = 0;
  for (auto _ : state) rate = bench::detail::best_parallel_rate(threads, 3, [](int) { return lut_best_case(10'000'000); });
  state.counters["GMAC/s"] = rate;
  state.counters["vs_vpdpbusd"] = rate / bench::int8_peak_gmacs(threads);
}
void BM_PeakVpdpbusd(benchmark::State& state) {
  const int threads = int(state.range(0));
  for (auto _ : state) state.counters["GMAC/s"] = bench::int8_peak_gmacs(threads);
}

int register_all() {
  benchmark::AddCustomContext("cpu_model", bench::cpu_model());
  benchmark::RegisterBenchmark("peak/vpdpbusd_12_chains", BM_PeakVpdpbusd)->ArgName("threads")->Arg(1)->Arg(2)->Iterations(1);
  if (kernels::cpu_has(kernels::Isa::Avx512Vbmi))
    benchmark::RegisterBenchmark("peak/table_lookup_best_case", BM_PeakTableLookup)->ArgName("threads")->Arg(1)->Arg(2)->Iterations(1);
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
          for (int64_t n : decode ? std::vector<int64_t>{1} : std::vector<int64_t>{2, 4, 8, 16, 64, 512})
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
