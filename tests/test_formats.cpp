// Ternary packing formats and the integer kernels: exact, on odd shapes.
#include <gtest/gtest.h>

#include <random>

#include "mmfree/kernels/dispatch.hpp"
#include "mmfree/ternary_format.hpp"
#include "mmfree/thread_pool.hpp"

using namespace mmfree;

namespace {

std::vector<int8_t> random_ternary(std::mt19937& rng, size_t n) {
  std::vector<int8_t> t(n);
  std::uniform_int_distribution<int> d(-1, 1);
  for (auto& v : t) v = int8_t(d(rng));
  return t;
}
std::vector<int8_t> random_q(std::mt19937& rng, int64_t rows, int64_t cols, int64_t ld) {
  std::vector<int8_t> q(static_cast<size_t>(rows * ld), 0);
  std::uniform_int_distribution<int> d(-128, 127);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) q[size_t(r * ld + c)] = int8_t(d(rng));
  return q;
}
// The definition: sum of t * q in plain integer arithmetic.
int32_t naive_dot(const int8_t* t, const int8_t* q, int64_t n) {
  int32_t s = 0;
  for (int64_t i = 0; i < n; ++i) s += int32_t(t[i]) * int32_t(q[i]);
  return s;
}

const TernaryFormat kFormats[] = {TernaryFormat::TQ2, TernaryFormat::TQ1};

// Random rows x cols weights and n tokens through each ISA's gemm, rows split over 1 and 3
// threads (odd row ranges), against the scalar reference, bit for bit.
void expect_gemm_matches_scalar(std::mt19937& rng, TernaryFormat f, int64_t rows, int64_t cols, int64_t n,
                                const std::vector<kernels::Isa>& isas) {
  const int64_t ld = padded_cols(cols);
  auto t = random_ternary(rng, size_t(rows * cols));
  auto m = pack_ternary(t.data(), rows, cols, f);
  auto q = random_q(rng, n, cols, ld);
  std::vector<int32_t> ref(size_t(n * rows));
  kernels::ternary_gemm_scalar(m, q.data(), ld, n, ref.data(), rows, 0, rows);
  for (auto isa : isas)
    for (int threads : {1, 3}) {
      ThreadPool pool(threads);
      const auto table = kernels::kernel_table(isa);
      std::vector<int32_t> got(size_t(n * rows), 12345);
      pool.for_range(rows, 1, [&](int64_t r0, int64_t r1) { table.gemm(m, q.data(), ld, n, got.data(), rows, r0, r1); });
      ASSERT_EQ(got, ref) << kernels::isa_name(isa) << " " << format_name(f) << " " << rows << "x" << cols
                          << " n=" << n << " threads=" << threads;
    }
}

}  // namespace

TEST(Tq1, EveryByteValueDecodesExactly) {
  for (int v = 0; v < 243; ++v) {
    int8_t d[5] = {int8_t(v / 81), int8_t(v / 27 % 3), int8_t(v / 9 % 3), int8_t(v / 3 % 3), int8_t(v % 3)};
    const uint8_t q = tq1_encode(d);
    for (int k = 0; k < 5; ++k) ASSERT_EQ(tq1_digit(q, k), d[k]) << "v=" << v << " k=" << k;
  }
}

TEST(Formats, BlockGeometry) {
  EXPECT_EQ(format_info(TernaryFormat::TQ2).block_weights, 256);
  EXPECT_EQ(format_info(TernaryFormat::TQ2).block_bytes, 64);
  EXPECT_EQ(format_info(TernaryFormat::TQ1).block_weights, 160);
  EXPECT_EQ(format_info(TernaryFormat::TQ1).block_bytes, 32);
  auto m = TernaryMatrix::shape_for(TernaryFormat::TQ1, 3, 2560);
  EXPECT_EQ(m.row_bytes, 512);  // exactly 1.6 bits per weight
  EXPECT_EQ(padded_cols(1), 1280);
  EXPECT_EQ(padded_cols(1280), 1280);
  EXPECT_EQ(padded_cols(1281), 2560);
}

// A known bit pattern, so the layout documented in ternary_format.hpp is pinned down.
TEST(Formats, Tq2LayoutIsAsDocumented) {
  std::vector<int8_t> t(256, 0);
  t[0] = 1;     // k=0, j=0 -> byte 0 bits 0-1 = 2
  t[64] = -1;   // k=1, j=0 -> byte 0 bits 2-3 = 0
  t[255] = 1;   // k=3, j=63 -> byte 63 bits 6-7 = 2
  auto m = pack_ternary(t.data(), 1, 256, TernaryFormat::TQ2);
  EXPECT_EQ(m.data[0], 0b01010010);
  EXPECT_EQ(m.data[63], 0b10010101);
  EXPECT_EQ(m.data[1], 0b01010101);
}

TEST(Formats, Tq1LayoutIsAsDocumented) {
  std::vector<int8_t> t(160, 0);
  t[0] = 1;    // digits of byte 0: (2,1,1,1,1) -> v = 162+27+9+3+1 = 202
  t[159] = -1; // byte 31: (1,1,1,1,0) -> v = 81+27+9+3 = 120
  auto m = pack_ternary(t.data(), 1, 160, TernaryFormat::TQ1);
  EXPECT_EQ(m.data[0], (202 * 256 + 242) / 243);
  EXPECT_EQ(m.data[31], (120 * 256 + 242) / 243);
}

TEST(Formats, PackRoundTripOddShapes) {
  std::mt19937 rng(1);
  for (auto f : kFormats)
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {3, 7}, {5, 255}, {2, 257}, {4, 161}, {1, 1000}}) {
      auto t = random_ternary(rng, size_t(rows * cols));
      auto m = pack_ternary(t.data(), rows, cols, f);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(ternary_at(m, r, c), t[size_t(r * cols + c)]);
      std::vector<int8_t> row(static_cast<size_t>(cols));
      for (int64_t r = 0; r < rows; ++r) {
        unpack_row(m, r, row.data());
        ASSERT_TRUE(std::equal(row.begin(), row.end(), t.begin() + r * cols)) << format_name(f) << " row " << r;
      }
    }
}

TEST(Formats, TernarizeAbsmean) {
  // mean|W| = 0.5, so s_w = 2: 0.2 -> round(0.4) = 0, 0.3 -> round(0.6) = 1, -2 -> -1.
  std::vector<float> w = {0.2f, 0.3f, -2.0f, 0.0f, -0.3f, 0.2f};
  auto m = quantize_ternary(w.data(), 2, 3, TernaryFormat::TQ2);
  EXPECT_FLOAT_EQ(m.scale, 0.5f);
  const int expect[6] = {0, 1, -1, 0, -1, 0};
  for (int i = 0; i < 6; ++i) EXPECT_EQ(ternary_at(m, i / 3, i % 3), expect[i]) << i;
  // All-zero weights: the scale clamps to 1e-5 rather than dividing by zero.
  std::vector<float> z(10, 0.0f);
  EXPECT_FLOAT_EQ(quantize_ternary(z.data(), 1, 10, TernaryFormat::TQ1).scale, 1e-5f);
}

// The scalar reference kernel against the plain integer definition.
TEST(ScalarKernel, MatchesDefinition) {
  std::mt19937 rng(2);
  for (auto f : kFormats)
    for (int64_t cols : {1, 5, 159, 160, 161, 255, 256, 257, 1000, 2049}) {
      const int64_t rows = 3, n = 2, ld = padded_cols(cols);
      auto t = random_ternary(rng, size_t(rows * cols));
      auto m = pack_ternary(t.data(), rows, cols, f);
      auto q = random_q(rng, n, cols, ld);
      std::vector<int32_t> out(static_cast<size_t>(n * rows));
      kernels::ternary_gemm_scalar(m, q.data(), ld, n, out.data(), rows, 0, rows);
      for (int64_t i = 0; i < n; ++i)
        for (int64_t r = 0; r < rows; ++r)
          ASSERT_EQ(out[size_t(i * rows + r)], naive_dot(t.data() + r * cols, q.data() + i * ld, cols))
              << format_name(f) << " cols=" << cols;
    }
}

TEST(ThreadPool, ForRangeCoversEveryIndexOnce) {
  for (int threads : {1, 2, 3}) {
    ThreadPool pool(threads);
    for (int64_t n : {0, 1, 15, 16, 17, 1000}) {
      std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
      pool.for_range(n, 16, [&](int64_t b, int64_t e) {
        EXPECT_EQ(b % 16, 0);
        for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
      });
      for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    }
  }
}

// Every SIMD path equals the scalar reference bit for bit: odd K, 1 row, 1 column, K=1,
// token counts around the register tile, 1 and several threads.
TEST(SimdKernels, BitExactWithScalarOnOddShapes) {
  std::mt19937 rng(7);
  const auto isas = kernels::available_isas();
  std::printf("ISAs on this CPU:");
  for (auto i : isas) std::printf(" %s", kernels::isa_name(i));
  std::printf("\n");
#if defined(__aarch64__)
  ASSERT_TRUE(kernels::cpu_has(kernels::Isa::Neon));  // the NEON path must be the one under test
#endif
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {1, 257}, {7, 1}, {5, 159}, {5, 161}, {9, 320},
                                                {13, 511}, {17, 1000}, {4, 2560}, {33, 4097}};
  for (auto f : kFormats)
    for (auto [rows, cols] : shapes)
      for (int64_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 13}) {
        expect_gemm_matches_scalar(rng, f, rows, cols, n, isas);
        if (HasFatalFailure()) return;
      }
}

// The AMX kernel takes 16 or more tokens (fewer go to AVX-512, covered above). Token counts
// around its 16-token tiles and 32-token tile pairs, rows around its 16/32-row strips, TQ1
// rows that end mid 64-column chunk, and row ranges split at odd points.
TEST(SimdKernels, AmxBitExactWithScalar) {
  if (!kernels::cpu_has(kernels::Isa::Amx)) {
    std::printf("AMX-INT8 not available on this CPU (or not enabled by the OS): AMX kernel not tested here\n");
    GTEST_SKIP() << "no AMX";
  }
  std::mt19937 rng(13);
  const auto table = kernels::kernel_table(kernels::Isa::Amx);
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1},    {16, 160}, {17, 257}, {31, 320},
                                                {32, 481}, {33, 1000}, {48, 2048}, {70, 5632}};
  for (auto f : kFormats)
    for (auto [rows, cols] : shapes)
      for (int64_t n : {16, 17, 31, 32, 33, 47, 64, 100}) {
        expect_gemm_matches_scalar(rng, f, rows, cols, n, {kernels::Isa::Amx});
        if (HasFatalFailure()) return;
      }
  // The largest sums: all -128 / 127 against all -1 / +1 weights on long rows.
  const int64_t cols = 20000, ld = padded_cols(cols), n = 17;
  for (auto f : kFormats)
    for (int w : {-1, 1})
      for (int qv : {-128, 127}) {
        std::vector<int8_t> t(size_t(3 * cols), int8_t(w));
        auto m = pack_ternary(t.data(), 3, cols, f);
        std::vector<int8_t> q(size_t(n * ld), 0);
        for (int64_t i = 0; i < n; ++i) std::fill(q.begin() + i * ld, q.begin() + i * ld + cols, int8_t(qv));
        std::vector<int32_t> got(size_t(n * 3));
        table.gemm(m, q.data(), ld, n, got.data(), 3, 0, 3);
        for (int32_t v : got) ASSERT_EQ(v, int32_t(w * qv * cols)) << format_name(f);
      }
}

// Extreme activations (all -128 / all 127) against all -1 / all +1 weights: the largest
// sums any kernel can meet, on a long row.
TEST(SimdKernels, ExtremeValuesLongRows) {
  const int64_t cols = 20000, ld = padded_cols(cols);
  for (auto f : kFormats)
    for (int w : {-1, 1})
      for (int qv : {-128, 127}) {
        std::vector<int8_t> t(size_t(2 * cols), int8_t(w));
        auto m = pack_ternary(t.data(), 2, cols, f);
        std::vector<int8_t> q(size_t(ld), 0);
        std::fill(q.begin(), q.begin() + cols, int8_t(qv));
        for (auto isa : kernels::available_isas()) {
          std::vector<int32_t> got(2);
          kernels::kernel_table(isa).gemm(m, q.data(), ld, 1, got.data(), 2, 0, 2);
          EXPECT_EQ(got[0], int32_t(w * qv * cols)) << kernels::isa_name(isa) << " " << format_name(f);
          EXPECT_EQ(got[1], got[0]);
        }
      }
}

// rmsnorm + int8 quantisation: every ISA returns the scalar reference's bits (scale, codes,
// normalised values, zero padding), on odd lengths, huge rows and exact .5 ties.
TEST(SimdKernels, RmsnormQuantizeBitExactWithScalar) {
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int64_t n : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 2048, 5632, 100003}) {
    for (int kind = 0; kind < 3; ++kind) {
      std::vector<float> x(static_cast<size_t>(n)), w(static_cast<size_t>(n));
      for (auto& v : x) v = kind == 2 ? float(int(g(rng) * 4)) * 0.5f : g(rng) * (kind ? 1e3f : 1.0f);
      for (auto& v : w) v = kind == 2 ? 1.0f : 1.0f + 0.1f * g(rng);
      const int64_t np = padded_cols(n);
      std::vector<float> tmp_ref(static_cast<size_t>(n));
      std::vector<int8_t> q_ref(static_cast<size_t>(np), 99);
      const float s_ref = rmsnorm_quantize(x.data(), w.data(), n, tmp_ref.data(), q_ref.data(), np);
      for (auto isa : kernels::available_isas()) {
        const auto table = kernels::kernel_table(isa);
        std::vector<float> tmp(static_cast<size_t>(n));
        std::vector<int8_t> q(static_cast<size_t>(np), 99);
        const float s = table.rmsnorm_quantize(x.data(), w.data(), n, tmp.data(), q.data(), np);
        ASSERT_EQ(std::memcmp(&s, &s_ref, sizeof s), 0) << kernels::isa_name(isa) << " n=" << n;
        ASSERT_EQ(tmp, tmp_ref) << kernels::isa_name(isa) << " n=" << n;
        ASSERT_EQ(q, q_ref) << kernels::isa_name(isa) << " n=" << n << " kind=" << kind;
        const double a = table.sum_squares(x.data(), n), b = sum_squares(x.data(), n);
        ASSERT_EQ(std::memcmp(&a, &b, sizeof a), 0) << kernels::isa_name(isa) << " n=" << n;
      }
    }
  }
  // Ties: values whose products with s are exactly k + 0.5 round away from zero.
  std::vector<float> y = {127.0f, 0.5f, -0.5f, 1.5f, -2.5f, 63.5f, -126.5f, 0.0f, -127.0f};
  std::vector<int8_t> q(16);
  EXPECT_EQ(quantize_int8(y.data(), int64_t(y.size()), q.data(), 16), 1.0f);
  EXPECT_EQ(std::vector<int8_t>(q.begin(), q.begin() + 9), (std::vector<int8_t>{127, 1, -1, 2, -3, 64, -127, 0, -127}));
}
