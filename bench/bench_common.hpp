// Shared by the benchmarks: measured memory bandwidth (the floor every decode figure is
// compared with), computed once per process.
#pragma once

#include <immintrin.h>

#include <chrono>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "mmfree/huge_pages.hpp"

namespace mmfree::bench {

// Read bandwidth in GB/s with `threads` threads streaming a 1 GiB buffer (best of 3). The
// buffer is in 2 MiB pages, as a loaded model's weights are (huge_pages.hpp), so the floor
// is what the same memory path can give.
inline double measure_bandwidth(int threads) {
  const size_t n = size_t(1) << 30;
  static std::shared_ptr<uint8_t> mem;
  if (!mem) {
    mem = alloc_huge(n);
    std::memset(mem.get(), 1, n);
  }
  struct {
    uint8_t* p;
    uint8_t* data() const { return p; }
  } buf{mem.get()};
  double best = 0;
  for (int rep = 0; rep < 3; ++rep) {
    std::vector<std::thread> ts;
    std::vector<uint64_t> sink(size_t(threads) * 8);
    auto t0 = std::chrono::steady_clock::now();
    for (int t = 0; t < threads; ++t)
      ts.emplace_back([&, t] {
        const size_t b = n / size_t(threads) * size_t(t), e = n / size_t(threads) * size_t(t + 1);
        __m256i acc = _mm256_setzero_si256();
        for (size_t i = b; i < e; i += 128) {
          // Prefetch as the kernels do (3 KiB ahead: a multiple of 4 KiB would alias in L1),
          // so the figure is what a streaming reader can get.
          _mm_prefetch((const char*)(buf.data() + i + 3072), _MM_HINT_T0);
          _mm_prefetch((const char*)(buf.data() + i + 3072 + 64), _MM_HINT_T0);
          acc = _mm256_add_epi64(acc, _mm256_loadu_si256((const __m256i*)(buf.data() + i)));
          acc = _mm256_add_epi64(acc, _mm256_loadu_si256((const __m256i*)(buf.data() + i + 32)));
          acc = _mm256_add_epi64(acc, _mm256_loadu_si256((const __m256i*)(buf.data() + i + 64)));
          acc = _mm256_add_epi64(acc, _mm256_loadu_si256((const __m256i*)(buf.data() + i + 96)));
        }
        sink[size_t(t) * 8] = uint64_t(_mm256_extract_epi64(acc, 0));
      });
    for (auto& t : ts) t.join();
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(n) / s / 1e9);
  }
  return best;
}

inline double bandwidth_gbs(int threads) {
  static double bw[8] = {};
  if (bw[threads] == 0) bw[threads] = measure_bandwidth(threads);
  return bw[threads];
}

}  // namespace mmfree::bench
