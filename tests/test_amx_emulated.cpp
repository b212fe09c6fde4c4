// The AMX kernel's addressing, on any CPU with AVX-512: this file is built with
// MMFREE_AMX_EMULATE, so the tile instructions run on a C++ model of their documented semantics
// (kernels/ternary_amx.hpp) while everything around them (digit unpacking, A tiles read from the
// activation rows, the zero-padded last token tile, C stores) is the kernel's own code. Where the
// CPU has AMX, test_kernels runs the real instructions on the same shapes.
#include <gtest/gtest.h>

#include <random>

#include "mmfree/kernels/dispatch.hpp"
#include "mmfree/thread_pool.hpp"

#if !defined(MMFREE_AMX_EMULATE)
#error "build this test with MMFREE_AMX_EMULATE"
#endif

using namespace mmfree;

TEST(AmxEmulated, BitExactWithScalar) {
#if defined(__x86_64__)
  if (!kernels::cpu_has(kernels::Isa::Avx512)) GTEST_SKIP() << "the AMX kernel's non-tile parts need AVX-512";
  std::mt19937 rng(13);
  // Rows around a strip and a strip pair, K around a 64-column tile (TQ1 rows end mid tile),
  // tokens around a tile and a tile pair; row ranges split at odd points over 3 threads.
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {16, 160}, {17, 257}, {31, 320}, {33, 481}, {48, 1000}, {70, 2048}};
  for (auto f : {TernaryFormat::TQ2, TernaryFormat::TQ1})
    for (auto [rows, cols] : shapes)
      for (int64_t n : {16, 17, 31, 32, 33, 47, 64}) {
        const int64_t ld = activation_cols(cols);
        std::vector<int8_t> t(size_t(rows * cols)), q(size_t(n * ld), 0);
        for (auto& v : t) v = int8_t(int(rng() % 3) - 1);
        for (int64_t i = 0; i < n; ++i)
          for (int64_t c = 0; c < cols; ++c) q[size_t(i * ld + c)] = int8_t(int(rng() % 256) - 128);
        const auto W = pack_ternary(t.data(), rows, cols, f);
        std::vector<int32_t> ref(size_t(n * rows)), got(size_t(n * rows), 777);
        kernels::ternary_gemm_scalar(W, q.data(), ld, n, ref.data(), rows, 0, rows);
        ThreadPool pool(3);
        pool.for_range(rows, 1, [&](int64_t r0, int64_t r1) { kernels::amx::ternary_gemm(W, q.data(), ld, n, got.data(), rows, r0, r1); });
        ASSERT_EQ(got, ref) << format_name(f) << " " << rows << "x" << cols << " n=" << n;
      }
#else
  GTEST_SKIP() << "x86-64 only";
#endif
}
