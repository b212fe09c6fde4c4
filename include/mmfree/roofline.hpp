// mmfree: the two ceilings every speed figure is compared with, measured on this machine now.
//  - Read bandwidth (the decode floor): the best of several ways to stream a buffer in 2 MiB pages
//    (plain loads, and loads with software prefetch; 256- and 512-bit where the CPU has them).
//    Taking the best keeps the floor honest: on AMD Zen 4 the prefetching reader is the slower
//    one, on the Intel Xeon the faster.
//  - int8 dot-product peak (the ceiling of many tokens per pass, without AMX): the best of 8, 12
//    and 16 independent vpdpbusd chains per thread on 512-bit registers (on CPUs without AVX-512
//    VNNI, 12 chains of vpmaddubsw + vpmaddwd pairs on 256-bit ones), in GMAC/s.
// A pass over B tokens costs at least max(weight bytes / bandwidth, B x MACs / peak): the
// roofline that `mmfree-cli bench --batch` and bench/ report against. Both ceilings are noisy on
// shared machines (+-30% within minutes): compare figures from one run.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "mmfree/kernels/dispatch.hpp"
#include "mmfree/kernels/simd_warnings.hpp"
#include "mmfree/weight_arena.hpp"

MMFREE_SIMD_WARNINGS_PUSH

namespace mmfree::roofline {

// The CPU's model name (Linux: /proc/cpuinfo), for the benchmark context: every figure names its
// CPU. AMD's family number is added with its core (a VM often reports just "AMD EPYC", and
// family 25 is Zen 3/4 with 256-bit AVX-512 halves, family 26 Zen 5 at full width); it names the
// machine in reports, it never picks a kernel.
inline std::string cpu_model() {
  FILE* f = std::fopen("/proc/cpuinfo", "r");
  if (!f) return "unknown";
  char line[512];
  std::string name = "unknown", vendor;
  int family = -1;
  auto value = [&](const char* l) {
    const char* c = std::strchr(l, ':');
    return c ? std::string(c + 2, std::strcspn(c + 2, "\n")) : std::string();
  };
  while (std::fgets(line, sizeof line, f)) {
    if (std::strncmp(line, "model name", 10) == 0 && name == "unknown") name = value(line);
    else if (std::strncmp(line, "vendor_id", 9) == 0 && vendor.empty()) vendor = value(line);
    else if (std::strncmp(line, "cpu family", 10) == 0 && family < 0) family = std::atoi(value(line).c_str());
    if (std::strncmp(line, "processor", 9) == 0 && name != "unknown") break;  // the second core's entry
  }
  std::fclose(f);
  if (vendor == "AuthenticAMD" && family >= 0) {
    const char* core = family == 23 ? "Zen 1/2" : family == 25 ? "Zen 3/4" : family == 26 ? "Zen 5" : nullptr;
    name += " (family " + std::to_string(family) + (core ? std::string(": ") + core : "") + ")";
  }
  return name;
}

namespace detail {

// Any CPU: 8 independent 64-bit sums per 64 bytes.
inline uint64_t read_plain(const uint8_t* p, size_t b, size_t e) {
  uint64_t acc[8] = {};
  for (size_t i = b; i + 64 <= e; i += 64)
    for (int k = 0; k < 8; ++k) {
      uint64_t v;
      std::memcpy(&v, p + i + 8 * k, 8);
      acc[k] += v;
    }
  uint64_t s = 0;
  for (uint64_t a : acc) s += a;
  return s;
}

#if defined(__x86_64__)
template <int Prefetch>
__attribute__((target("avx2"))) inline uint64_t read_avx2(const uint8_t* p, size_t b, size_t e) {
  __m256i acc = _mm256_setzero_si256();
  for (size_t i = b; i < e; i += 128) {
    if constexpr (Prefetch > 0) {
      _mm_prefetch(reinterpret_cast<const char*>(p + i + Prefetch), _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p + i + Prefetch + 64), _MM_HINT_T0);
    }
    for (int k = 0; k < 4; ++k) acc = _mm256_add_epi64(acc, _mm256_loadu_si256((const __m256i*)(p + i + 32 * k)));
  }
  return uint64_t(_mm256_extract_epi64(acc, 0));
}
__attribute__((target("avx512f"))) inline uint64_t read_avx512(const uint8_t* p, size_t b, size_t e) {
  __m512i acc = _mm512_setzero_si512();
  for (size_t i = b; i < e; i += 128)
    acc = _mm512_add_epi64(acc, _mm512_add_epi64(_mm512_loadu_si512(p + i), _mm512_loadu_si512(p + i + 64)));
  alignas(64) uint64_t lanes[8];  // (combined unsigned: a signed reduce would overflow, UB)
  _mm512_store_si512(lanes, acc);
  uint64_t x = 0;
  for (uint64_t v : lanes) x += v;
  return x;
}
#endif

template <class F>
double best_parallel_rate(int threads, int reps, F&& body) {  // body(t) returns units done by thread t
  double best = 0;
  for (int rep = 0; rep < reps; ++rep) {
    std::vector<std::thread> ts;
    std::vector<double> done(static_cast<size_t>(threads));
    const auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t) ts.emplace_back([&, t] { done[size_t(t)] = body(t); });
    for (auto& t : ts) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    double total = 0;
    for (double d : done) total += d;
    best = std::max(best, total / s);
  }
  return best;
}

}  // namespace detail

// Read bandwidth in GB/s with `threads` threads streaming `n` bytes (best of the readers and of
// `reps` repetitions each).
inline double measure_bandwidth(int threads, size_t n = size_t(1) << 30, int reps = 3) {
  static std::shared_ptr<uint8_t> mem;
  static size_t have = 0;
  if (have < n) {
    mem = alloc_huge(n);
    std::memset(mem.get(), 1, n);
    have = n;
  }
  const uint8_t* p = mem.get();
  std::vector<uint64_t> sink(size_t(threads) * 8);
  auto reader = [&](auto read) {
    return detail::best_parallel_rate(threads, reps, [&](int t) {
      const size_t b = n / size_t(threads) * size_t(t), e = n / size_t(threads) * size_t(t + 1);
      sink[size_t(t) * 8] += read(p, b, e);
      return double(e - b) / 1e9;
    });
  };
#if defined(__x86_64__)
  double best = std::max(reader(detail::read_avx2<0>), reader(detail::read_avx2<3072>));
  if (__builtin_cpu_supports("avx512f")) best = std::max(best, reader(detail::read_avx512));
  return best;
#else
  return reader(detail::read_plain);
#endif
}

// Bandwidth now (256 MiB, best of 2: about 30 ms): the floor for the measurement that follows.
// On shared machines the bandwidth moves by +-30% within minutes.
inline double bandwidth_now_gbs(int threads) { return measure_bandwidth(threads, size_t(256) << 20, 2); }
namespace detail {

#if defined(__x86_64__)
// (The kernels' own target attribute: with a narrower one GCC cannot inline their helpers and
// silently calls them, which measured a third of the peak.)
template <int C>
MMFREE_TARGET_AVX512 inline double vnni_chains(long iters) {
  __m512i a[C];
  #pragma GCC unroll 16
  for (int i = 0; i < C; ++i) a[i] = _mm512_set1_epi32(i);
  __m512i x = _mm512_set1_epi8(1), y = _mm512_set1_epi8(2);
  for (long k = 0; k < iters; ++k) {
    #pragma GCC unroll 16
    for (int i = 0; i < C; ++i) a[i] = _mm512_dpbusd_epi32(a[i], x, y);
    __asm__ volatile("" : "+v"(x), "+v"(y));
  }
  __m512i t = a[0];
  #pragma GCC unroll 16
  for (int i = 1; i < C; ++i) t = _mm512_add_epi32(t, a[i]);
  alignas(64) uint32_t lanes[16];  // (not _mm512_reduce_add_epi32: the sums overflow int, UB)
  _mm512_store_si512(lanes, t);
  volatile uint32_t sink = lanes[0] ^ lanes[15];
  (void)sink;
  return double(iters) * C * 64 / 1e9;  // GMAC
}
// AVX-VNNI without AVX-512: 12 chains of the VEX vpdpbusd (written out, as the kernels'), 32 MACs each.
MMFREE_TARGET_AVX_VNNI inline double avx_vnni_chains(long iters) {
  __m256i a[12];  // (every loop unrolled: a rolled one kept the sums in memory, at half the rate)
  #pragma GCC unroll 12
  for (int i = 0; i < 12; ++i) a[i] = _mm256_set1_epi32(i);
  __m256i x = _mm256_set1_epi8(1), y = _mm256_set1_epi8(2);
  for (long k = 0; k < iters; ++k) {
    #pragma GCC unroll 12
    for (int i = 0; i < 12; ++i) __asm__("%{vex%} vpdpbusd %2, %1, %0" : "+x"(a[i]) : "x"(x), "x"(y));
    __asm__ volatile("" : "+x"(x), "+x"(y));
  }
  __m256i t = a[0];
  #pragma GCC unroll 12
  for (int i = 1; i < 12; ++i) t = _mm256_add_epi32(t, a[i]);
  volatile int sink = _mm256_extract_epi32(t, 0);
  (void)sink;
  return double(iters) * 12 * 32 / 1e9;
}
// AVX2 without VNNI: what the kernels issue per 32 products, vpmaddubsw and an int16 add, in 6
// chains on 6 operands of their own. (Until 2026-12-05 all chains multiplied the same operands:
// clang computed the product once per round and read 292-303 GMAC/s on one Zen 5 core, GCC kept
// the sums in memory and read 110; the kernels ran at 130-140.)
__attribute__((target("avx2"))) inline double avx2_chains(long iters) {
  __m256i a[6], x[6];
  #pragma GCC unroll 6
  for (int i = 0; i < 6; ++i) a[i] = _mm256_set1_epi16(short(i)), x[i] = _mm256_set1_epi8(char(i + 1));
  const __m256i y = _mm256_set1_epi8(2);
  for (long k = 0; k < iters; ++k) {
    #pragma GCC unroll 6
    for (int i = 0; i < 6; ++i) a[i] = _mm256_add_epi16(a[i], _mm256_maddubs_epi16(x[i], y));
    __asm__ volatile("" : "+x"(x[0]), "+x"(x[1]), "+x"(x[2]), "+x"(x[3]), "+x"(x[4]), "+x"(x[5]));
  }
  __m256i t = a[0];
  #pragma GCC unroll 6
  for (int i = 1; i < 6; ++i) t = _mm256_add_epi16(t, a[i]);
  volatile int sink = _mm256_extract_epi32(t, 0);
  (void)sink;
  return double(iters) * 6 * 32 / 1e9;
}
#endif

// GMAC done by about `iters` x 12 dot products of the widest int8 kind this CPU has, in `variant`
// (0-2) independent chains: 8, 12 or 16 with AVX-512 VNNI (on Zen 5, 2 threads, 12 chains read
// 5-8% below 8 or 16, and below the kernels themselves; the peak is the best of the three), 12
// with AVX-VNNI, 6 with AVX2 (twice the rounds). 0 where none is measured: the roofline then has
// no compute ceiling.
inline constexpr int kInt8Variants = 3;
inline double int8_chains(long iters, int variant = 1) {
#if defined(__x86_64__)
  if (kernels::cpu_has(kernels::Isa::Avx512)) {
    if (variant == 0) return vnni_chains<8>(iters * 12 / 8);
    if (variant == 2) return vnni_chains<16>(iters * 12 / 16);
    return vnni_chains<12>(iters);
  }
  if (kernels::cpu_has(kernels::Isa::AvxVnni)) return avx_vnni_chains(iters);
  if (kernels::cpu_has(kernels::Isa::Avx2)) return avx2_chains(iters * 2);
#endif
  (void)iters, (void)variant;
  return 0;
}
// The best rate over the chain counts, each the best of `reps` runs on `threads` threads.
inline double int8_rate(int threads, int reps, long iters) {
  double best = 0;
  for (int v = 0; v < kInt8Variants; ++v)
    best = std::max(best, best_parallel_rate(threads, reps, [&](int) { return int8_chains(iters, v); }));
  return best;
}

}  // namespace detail

// The int8 multiply-accumulate peak now (one short probe, about 10 ms).
inline double int8_peak_now(int threads) {
  return detail::int8_rate(std::max(threads, 1), 1, 700'000);
}

// The int8 multiply-accumulate peak in GMAC/s with `threads` threads: the best reading of this
// run so far. Noise (a neighbour taking a core) only ever lowers a reading, so each call probes
// again briefly and the maximum is kept; the first call probes 5 times.
inline double int8_peak_gmacs(int threads) {
  static std::vector<double> peak;
  threads = std::max(threads, 1);
  if (peak.size() <= size_t(threads)) peak.resize(size_t(threads) + 1, 0.0);
  const double now = detail::int8_rate(threads, peak[size_t(threads)] == 0 ? 5 : 1, 1'700'000);
  peak[size_t(threads)] = std::max(peak[size_t(threads)], now);
  return peak[size_t(threads)];
}

}  // namespace mmfree::roofline

MMFREE_SIMD_WARNINGS_POP
