// The integer kernels and the kernel chooser: every kernel this CPU can run equals the scalar
// reference bit for bit on odd shapes, and the chooser picks by the timings it is given.
#include <gtest/gtest.h>
#include <gmock/gmock.h>

#include <atomic>
#include <cstring>
#include <map>
#include <optional>
#include <set>
#include <thread>
#include <chrono>
#include <random>

#include "mmfree/kernels/chooser.hpp"
#include "mmfree/kernels/dispatch.hpp"
#include "mmfree/bitlinear.hpp"
#include "mmfree/exec.hpp"
#include "mmfree/interleaved_format.hpp"
#include "mmfree/ops.hpp"
#include "mmfree/ternary_format.hpp"
#include "mmfree/thread_pool.hpp"
#include "test_util.hpp"

namespace tests_kernels {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;
using mmfree::test::error_of;
using mmfree::test::random_ternary;
using ::testing::HasSubstr;

namespace {

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

// W with its interleaved copy where the layout takes it, and its wide copy where W is TQ1, so that
// every kernel (those that read a copy and those that read the strips) runs on the same matrix.
TernaryMatrix with_copy(TernaryMatrix W) {
  if (interleavable(W)) W = with_interleaved(std::move(W));
  return widenable(W) ? with_wide(std::move(W)) : W;
}

// Random rows x cols weights and n tokens through each kernel, rows split over 1 and 3 threads
// at arbitrary points (mid-strip), against the scalar reference, bit for bit.
void expect_kernels_match_scalar(std::mt19937& rng, TernaryFormat f, int64_t rows, int64_t cols, int64_t n,
                                 const std::vector<kernels::Kernel>& ks) {
  const int64_t ld = activation_cols(cols);
  auto t = random_ternary(rng, size_t(rows * cols));
  auto m = with_copy(pack_ternary(t.data(), rows, cols, f));
  auto q = random_q(rng, n, cols, ld);
  std::vector<int32_t> ref(size_t(n * rows));
  kernels::ternary_gemm_scalar(m, q.data(), ld, n, ref.data(), rows, 0, rows);
  {  // the interleaved layout's scalar twin
    std::vector<int32_t> got(size_t(n * rows), 12345);
    kernels::ternary_gemm_interleaved_scalar(m, q.data(), ld, n, got.data(), rows, 0, rows);
    ASSERT_EQ(got, ref) << "interleaved scalar " << format_name(f) << " " << rows << "x" << cols << " n=" << n;
    std::fill(got.begin(), got.end(), 12345);
    kernels::ternary_gemm_wide_scalar(m, q.data(), ld, n, got.data(), rows, 0, rows);
    ASSERT_EQ(got, ref) << "wide scalar " << format_name(f) << " " << rows << "x" << cols << " n=" << n;
  }
  for (const auto& k : ks)
    for (int threads : {1, 3}) {
      ThreadPool pool(threads);
      std::vector<int32_t> got(size_t(n * rows), 12345);
      pool.for_range(rows, 1, [&](int64_t r0, int64_t r1) { k.gemm(m, q.data(), ld, n, got.data(), rows, r0, r1); });
      ASSERT_EQ(got, ref) << k.name << " " << format_name(f) << " " << rows << "x" << cols << " n=" << n
                          << " threads=" << threads;
    }
  // The dequantising twins: the bits of the integers through scale_ints, per-token scales.
  std::vector<float> scale(static_cast<size_t>(n)), want(static_cast<size_t>(n * rows));
  std::uniform_real_distribution<float> sd(1e-4f, 3.0f);
  for (auto& v : scale) v = sd(rng);
  for (int64_t t = 0; t < n; ++t) scale_ints(ref.data() + t * rows, scale[size_t(t)], rows, want.data() + t * rows);
  for (const auto& k : ks) {
    if (!k.gemm_scaled) continue;
    // The tokens' sums of q given (as BitLinear passes them) or not (the kernel sums them).
    std::vector<int32_t> qsum(static_cast<size_t>(n));
    for (int64_t t = 0; t < n; ++t) qsum[size_t(t)] = sum_int8(q.data() + t * ld, ld);
    for (int threads : {1, 3})
      for (const int32_t* sums : {static_cast<const int32_t*>(nullptr), static_cast<const int32_t*>(qsum.data())}) {
        ThreadPool pool(threads);
        std::vector<float> got(size_t(n * rows), -7.0f);
        pool.for_range(rows, 1, [&](int64_t r0, int64_t r1) {
          k.gemm_scaled(m, q.data(), ld, n, scale.data(), sums, got.data(), rows, r0, r1);
        });
        ASSERT_EQ(std::memcmp(got.data(), want.data(), got.size() * sizeof(float)), 0)
            << k.name << " (dequantising) " << format_name(f) << " " << rows << "x" << cols << " n=" << n
            << " threads=" << threads << (sums ? " sums given" : "");
      }
  }
}


}  // namespace

// The scalar reference kernel against the plain integer definition.
TEST(ScalarKernel, MatchesDefinition) {
  std::mt19937 rng(2);
  for (auto f : kFormats)
    for (int64_t cols : {1, 5, 15, 16, 17, 19, 20, 21, 159, 160, 161, 255, 256, 257, 1000, 2049}) {
      const int64_t rows = 19, n = 2, ld = activation_cols(cols);
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
      std::vector<std::atomic<int>> again(static_cast<size_t>(n));
      pool.for_range_balanced(n, 16, [&](int64_t b, int64_t e) {
        EXPECT_EQ(b % 16, 0);
        for (int64_t i = b; i < e; ++i) again[size_t(i)]++;
      });
      for (auto& h : again) ASSERT_EQ(h.load(), 1);
    }
  }
}

// for_range_balanced starts thread i on range i, and moves work from a thread that is slower per
// index (here each worker sleeps 4x as long per index as the calling thread) to the others, at
// once (the faster thread takes the slower one's last pieces) and over calls (the shares); every
// index is still covered once per call, and the shares stay within [1/2, 3/2] of equal.
// rest() returns with every worker asleep, and the pool works as before after it.
TEST(ThreadPool, RestPutsWorkersToSleepAndWakesForTheNextSection) {
  ThreadPool pool(3);
  for (int round = 0; round < 20; ++round) {
    std::vector<std::atomic<int>> hits(64);
    pool.for_range(64, 1, [&](int64_t b, int64_t e) {
      for (int64_t i = b; i < e; ++i) hits[size_t(i)].fetch_add(1);
    }, 2);
    for (auto& h : hits) ASSERT_EQ(h.load(), 1) << "round " << round;
    pool.rest();  // would hang if a worker never went to sleep
  }
  ThreadPool(1).rest();  // no workers: returns at once
}

TEST(ThreadPool, BalancedRangesFollowEachThreadsSpeed) {
  ThreadPool pool(2);
  const auto caller = std::this_thread::get_id();
  EXPECT_THAT(pool.shares(), ::testing::ElementsAre(0.5, 0.5));
  for (int call = 0; call < 60; ++call) {
    std::vector<std::atomic<int>> hits(1024);
    std::atomic<int> first_on_caller{-1};
    pool.for_range_balanced(1024, 16, [&](int64_t b, int64_t e) {
      const bool on_caller = std::this_thread::get_id() == caller;
      int none = -1;
      if (on_caller) first_on_caller.compare_exchange_strong(none, int(b));
      std::this_thread::sleep_for(std::chrono::microseconds((on_caller ? 1 : 4) * (e - b)));
      for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
    });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1);
    ASSERT_EQ(first_on_caller.load(), 0) << "range 0 runs on the calling thread";
  }
  const auto s = pool.shares();
  EXPECT_GT(s[0], 0.65);
  EXPECT_LE(s[0], 0.75 + 1e-9);
  EXPECT_NEAR(s[0] + s[1], 1.0, 1e-9);
}

// warm_next gives each thread the start of its share of the next section's bytes, at most the
// budget, and nothing when told nothing.
TEST(ThreadPool, WarmsEachThreadsShareOfTheNextSection) {
  using Range = std::pair<const void*, const void*>;
  ThreadPool pool(2);
  std::vector<uint8_t> bytes(1000);
  pool.warm_next(bytes.data(), 1000, 100);
  EXPECT_EQ(pool.warm_range(0), Range(bytes.data(), bytes.data() + 100));
  EXPECT_EQ(pool.warm_range(1), Range(bytes.data() + 500, bytes.data() + 600));
  pool.warm_next(bytes.data(), 1000, 4096);  // the budget is more than a share: the share
  EXPECT_EQ(pool.warm_range(1), Range(bytes.data() + 500, bytes.data() + 1000));
  std::vector<std::atomic<int>> hits(256);
  pool.for_range_balanced(256, 16, [&](int64_t b, int64_t e) {  // threads warm while they wait
    for (int64_t i = b; i < e; ++i) hits[size_t(i)]++;
  });
  for (auto& h : hits) ASSERT_EQ(h.load(), 1);
  pool.warm_next(nullptr, 0, 100);
  EXPECT_EQ(pool.warm_range(1), Range(nullptr, nullptr));
  ThreadPool(1).warm_next(bytes.data(), 1000, 100);  // no workers, nothing to warm
}

// The products of a forward pass come in the same order every time: after one round, the threads
// waiting at the end of a product warm the one that followed it (in the copy its kernel reads,
// the rows the section splits), a pass of one token apart from a pass of several.
TEST(WarmPlan, WarmsTheProductThatCameNext) {
  std::mt19937 rng(3);
  auto matrix = [&](int64_t rows, int64_t cols) {
    auto t = random_ternary(rng, size_t(rows * cols));
    return BitLinear(pack_ternary(t.data(), rows, cols, TernaryFormat::TQ2), std::vector<float>(size_t(cols), 1.0f));
  };
  const BitLinear a = matrix(256, 64), b = matrix(128, 64), c = matrix(512, 64);
  ThreadPool pool(2);
  WarmPlan plan;
  Exec ex;
  ex.pool = &pool;
  ex.warm = &plan;
  std::vector<float> x(size_t(4 * 64), 0.5f), out(size_t(4 * 512));
  BitLinearScratch s;
  auto run = [&](const BitLinear& l, int64_t n) { l.forward(x.data(), n, out.data(), s, ex); };
  for (int round = 0; round < 2; ++round) run(a, 1), run(b, 1), run(c, 1);
  run(a, 1);  // a was followed by b: the threads warm b's strips while a ends
  EXPECT_EQ(pool.warm_range(0).first, b.weights().data);
  const auto* second = static_cast<const uint8_t*>(pool.warm_range(1).first);  // its share: [1/4, 3/4]
  EXPECT_GE(second, b.weights().data + b.weights().nbytes() / 4);
  EXPECT_LE(second, b.weights().data + b.weights().nbytes() * 3 / 4);
  run(b, 1);
  EXPECT_EQ(pool.warm_range(0).first, c.weights().data);
  run(b, 3);  // never seen with 3 tokens: nothing to warm
  EXPECT_EQ(pool.warm_range(0).first, nullptr);
  run(a, 3), run(b, 3);
  EXPECT_EQ(pool.warm_range(0).first, a.weights().data) << "b (3 tokens) was followed by a (3 tokens)";
  run(a, 1), run(a, 1);
  EXPECT_EQ(pool.warm_range(0).first, a.weights().data) << "a followed by itself";
}

// Per-token sections of a few tokens run on the calling thread (the others warm weights); longer
// ones are split, every token once.
TEST(Exec, ForTokensKeepsAFewTokensOnTheCallingThread) {
  ThreadPool pool(2);
  Exec ex;
  ex.pool = &pool;
  const auto caller = std::this_thread::get_id();
  for (int64_t n : {0, 1, 2, 3, 64}) {
    std::vector<std::atomic<int>> hits(static_cast<size_t>(n));
    std::atomic<int> elsewhere{0};
    ex.for_tokens(n, [&](int64_t t0, int64_t t1) {
      if (std::this_thread::get_id() != caller) elsewhere += int(t1 - t0);
      if (n > Exec::kTokensOnOneThread) std::this_thread::sleep_for(std::chrono::milliseconds(20));  // the worker takes a part
      for (int64_t t = t0; t < t1; ++t) hits[size_t(t)]++;
    });
    for (auto& h : hits) ASSERT_EQ(h.load(), 1) << "n=" << n;
    if (n <= Exec::kTokensOnOneThread) EXPECT_EQ(elsewhere.load(), 0) << "n=" << n;
    else EXPECT_GT(elsewhere.load(), 0) << "n=" << n;
  }
}

// Every kernel equals the scalar reference bit for bit (and a dequantising twin the scalar
// reference through scale_ints): K not a multiple of a chunk, 1 row, 1 column, K = 1, rows around
// a strip, token counts around every register tile (1, 2, 4, 8 and 12 tokens, AMX's 16 and 32)
// and past a block of 128 tokens, 1 and 3 threads.
TEST(Kernels, BitExactWithScalarOnOddShapes) {
  std::mt19937 rng(7);
  const auto ks = kernels::available_kernels();
  std::printf("kernels on this CPU:");
  for (auto& k : ks) std::printf(" %s", k.name);
  std::printf("\n");
#if defined(__aarch64__)
  ASSERT_TRUE(kernels::cpu_has(kernels::Isa::Neon));  // the NEON path must be the one under test
#endif
  const std::pair<int64_t, int64_t> shapes[] = {{1, 1}, {1, 257}, {7, 1}, {5, 159}, {17, 161}, {9, 320},
                                                {13, 511}, {33, 1000}, {4, 2560}, {31, 4097}};
  for (auto f : kFormats)
    for (auto [rows, cols] : shapes)
      for (int64_t n : {1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 17, 25, 33, 130}) {
        expect_kernels_match_scalar(rng, f, rows, cols, n, ks);
        if (HasFatalFailure()) return;
      }
}

// KernelTable::gemm: one token runs the decode kernel, up to batch_max the batch kernel, more the
// prefill kernel. Every pair of (batch, prefill) kernels, token counts around both switches, rows
// around a strip, rows split mid-strip across threads: bit for bit.
TEST(Kernels, TableRoutesEveryTokenCountBitExact) {
  std::mt19937 rng(11);
  const auto ks = kernels::available_kernels();
  for (auto f : kFormats)
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 3}, {63, 161}, {65, 320}, {130, 257}, {200, 1000}})
      for (int64_t n : {int64_t(1), int64_t(2), int64_t(3), kernels::kBatchMaxTokens, kernels::kBatchMaxTokens + 1}) {
        const int64_t ld = activation_cols(cols);
        auto t = random_ternary(rng, size_t(rows * cols));
        auto m = with_copy(pack_ternary(t.data(), rows, cols, f));
        auto q = random_q(rng, n, cols, ld);
        std::vector<int32_t> ref(size_t(n * rows));
        kernels::ternary_gemm_scalar(m, q.data(), ld, n, ref.data(), rows, 0, rows);
        for (const auto& d : ks)
          for (const auto& p : ks) {
            if (!d.for_format(f) || !p.for_format(f)) continue;
            const kernels::KernelTable table = kernels::make_table(ks.back(), d, p);  // scalar decodes one token
            for (int threads : {1, 3}) {
              ThreadPool pool(threads);
              std::vector<int32_t> got(size_t(n * rows), 12345);
              pool.for_range(rows, 1, [&](int64_t r0, int64_t r1) { table.gemm(m, q.data(), ld, n, got.data(), rows, r0, r1); });
              ASSERT_EQ(got, ref) << d.name << "/" << p.name << " " << format_name(f) << " " << rows << "x" << cols
                                  << " n=" << n << " threads=" << threads;
            }
          }
      }
}

// The largest sums any kernel can meet: all -128 / 127 against all -1 / +1 weights on long rows,
// one token and many (one token's TQ2 decoder and the small tiles of 5 tokens keep each plane's
// sum scaled by up to 64 until the store: rows of 349,520 columns are the longest they take, and
// longer ones shift first, so both sides of that bound are here).
TEST(Kernels, ExtremeValuesLongRows) {
  for (const int64_t cols : {int64_t(20000), kInterleavedMaxCols, int64_t(349520), int64_t(349521)})
  for (auto f : kFormats)
    for (int w : {-1, 1})
      for (int qv : {-128, 127})
        for (int64_t n : {1, 5, 8, 17}) {
          if (cols > 20000 && n != 1 && n != 5 && !(cols == kInterleavedMaxCols && n == 8)) continue;
          const int64_t ld = activation_cols(cols), rows = 17;
          std::vector<int8_t> t(size_t(rows * cols), int8_t(w));
          auto m = with_copy(pack_ternary(t.data(), rows, cols, f));
          std::vector<int8_t> q(size_t(n * ld), 0);
          for (int64_t i = 0; i < n; ++i) std::fill(q.begin() + i * ld, q.begin() + i * ld + cols, int8_t(qv));
          for (const auto& k : kernels::available_kernels()) {
            std::vector<int32_t> got(size_t(n * rows));
            k.gemm(m, q.data(), ld, n, got.data(), rows, 0, rows);
            for (int32_t v : got) ASSERT_EQ(v, int32_t(w * qv * cols)) << k.name << " " << format_name(f) << " n=" << n;
          }
        }
}

// The interleaved layout (interleaved_format.hpp) holds the strips' weights, digit for digit,
// rows past the end and columns past the end as padding digits (1), on shapes around a group
// and a chunk; its scalar decoder and the builder agree with ternary_at.
TEST(InterleavedLayout, HoldsTheStripsDigits) {
  std::mt19937 rng(3);
  for (auto f : kFormats)
    for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {16, 4}, {17, 5}, {63, 21}, {64, 37}, {65, 160},
                              {79, 3}, {80, 19}, {81, 41}, {161, 257}}) {
      auto t = random_ternary(rng, size_t(rows * cols));
      const TernaryMatrix m = with_interleaved(pack_ternary(t.data(), rows, cols, f));
      ASSERT_NE(m.interleaved, nullptr);
      const int64_t chunks = interleaved_chunks(m), G = interleaved_group_rows(f);
      EXPECT_EQ(chunks, (cols + 3) / 4);
      EXPECT_EQ(int64_t(interleaved_bytes(m)), (rows + G - 1) / G * chunks * 64);
      for (int64_t r = 0; r < interleaved_groups(m) * G; ++r)
        for (int64_t c = 0; c < 4 * chunks; ++c) {
          const int want = r < rows && c < cols ? t[size_t(r * cols + c)] + 1 : 1;
          ASSERT_EQ(interleaved_digit(f, m.interleaved, chunks, r, c), want)
              << format_name(f) << " " << rows << "x" << cols << " row " << r << " column " << c;
        }
    }
  // Rows longer than the layout's bound keep to the strips, with a message naming the reason.
  auto wide = TernaryMatrix::shape(TernaryFormat::TQ2, 1, kInterleavedMaxCols + 1);
  EXPECT_FALSE(interleavable(wide));
  EXPECT_THAT(error_of([&] { with_interleaved(wide); }), HasSubstr("interleaved copy"));
}

// A TQ1 matrix's wide copy holds its digits in the TQ2 layout's groups of 64 rows (the TQ1 copy's
// are 80), padding digits 1; TQ2 matrices and overlong rows take none, with a message.
TEST(InterleavedLayout, WideCopyHoldsTheTq1StripsDigitsAsTq2) {
  std::mt19937 rng(5);
  for (auto [rows, cols] : {std::pair<int64_t, int64_t>{1, 1}, {16, 4}, {17, 5}, {63, 21}, {64, 37}, {65, 160},
                            {79, 3}, {80, 19}, {81, 41}, {161, 257}}) {
    auto t = random_ternary(rng, size_t(rows * cols));
    const TernaryMatrix m = with_wide(pack_ternary(t.data(), rows, cols, TernaryFormat::TQ1));
    ASSERT_NE(m.wide, nullptr);
    EXPECT_EQ(m.interleaved, nullptr);
    const int64_t chunks = interleaved_chunks(m);
    EXPECT_EQ(int64_t(interleaved_bytes(m, TernaryFormat::TQ2)), (rows + 63) / 64 * chunks * 64);
    for (int64_t r = 0; r < interleaved_groups(m, TernaryFormat::TQ2) * 64; ++r)
      for (int64_t c = 0; c < 4 * chunks; ++c) {
        const int want = r < rows && c < cols ? t[size_t(r * cols + c)] + 1 : 1;
        ASSERT_EQ(interleaved_digit(TernaryFormat::TQ2, m.wide, chunks, r, c), want)
            << rows << "x" << cols << " row " << r << " column " << c;
      }
    EXPECT_EQ(without_wide(m).wide, nullptr);
  }
  EXPECT_FALSE(widenable(TernaryMatrix::shape(TernaryFormat::TQ2, 64, 64)));
  EXPECT_THAT(error_of([&] { with_wide(TernaryMatrix::shape(TernaryFormat::TQ2, 64, 64)); }),
              HasSubstr("wide copy: a TQ2 matrix"));
  EXPECT_THAT(error_of([&] { with_wide(TernaryMatrix::shape(TernaryFormat::TQ1, 1, kInterleavedMaxCols + 1)); }),
              HasSubstr("wide copy"));
}

// A kernel that reads the copy, given a matrix without one, or rows split inside a group (each
// range computes the group and stores only its own rows): the same bits as the scalar reference.
TEST(InterleavedLayout, KernelsWithoutCopyOrMidGroupRanges) {
  std::mt19937 rng(13);
  for (const auto& k : kernels::available_kernels()) {
    if (!k.interleaved && !k.wide) continue;
    for (auto f : kFormats) {
      if (!k.for_format(f)) continue;
      // 84 and 83 chunks of 4 columns: the 1- and 2-token tiles take two chunks per step, and one
      // alone at the end.
      for (const int64_t cols : {333, 329}) {
      const int64_t rows = 300, ld = activation_cols(cols);
      auto t = random_ternary(rng, size_t(rows * cols));
      const TernaryMatrix plain = pack_ternary(t.data(), rows, cols, f);
      const TernaryMatrix copy = k.wide ? with_wide(plain) : with_interleaved(plain);
      // 5 and 6 tokens: one tile per group (TQ1 and TQ2 at most), whose prefetching differs.
      for (int64_t n : {1, 2, 5, 6, 7, 13}) {
        auto q = random_q(rng, n, cols, ld);
        std::vector<int32_t> ref(size_t(n * rows));
        kernels::ternary_gemm_scalar(plain, q.data(), ld, n, ref.data(), rows, 0, rows);
        for (const TernaryMatrix* m : {&plain, &copy})
          for (int64_t step : {int64_t(1), int64_t(7), int64_t(16), int64_t(100)}) {
            std::vector<int32_t> got(size_t(n * rows), 12345);
            for (int64_t r0 = 0; r0 < rows; r0 += step)
              k.gemm(*m, q.data(), ld, n, got.data(), rows, r0, std::min(rows, r0 + step));
            ASSERT_EQ(got, ref) << k.name << " " << format_name(f) << " " << cols << " columns n=" << n
                                << " ranges of " << step << (m == &plain ? " without the copy" : "");
            // The dequantising twin, which without the copy goes to the strips' kernels too.
            if (!k.gemm_scaled) continue;
            std::vector<float> scale(static_cast<size_t>(n)), want(size_t(n * rows)), gotf(size_t(n * rows), -7.0f);
            for (int64_t j = 0; j < n; ++j) scale[size_t(j)] = 0.001f * float(j + 1);
            for (int64_t j = 0; j < n; ++j) scale_ints(ref.data() + j * rows, scale[size_t(j)], rows, want.data() + j * rows);
            for (int64_t r0 = 0; r0 < rows; r0 += step)
              k.gemm_scaled(*m, q.data(), ld, n, scale.data(), nullptr, gotf.data(), rows, r0, std::min(rows, r0 + step));
            ASSERT_EQ(std::memcmp(gotf.data(), want.data(), gotf.size() * sizeof(float)), 0)
                << k.name << " (dequantising) " << format_name(f) << " " << cols << " columns n=" << n << " ranges of "
                << step << (m == &plain ? " without the copy" : "");
          }
      }
      }
    }
  }
}

// rmsnorm + int8 quantisation: every ISA returns the scalar reference's bits (scale, codes,
// normalised values, zero padding), on odd lengths, huge rows and exact .5 ties.
// Sums of squares of several rows side by side (every twin, rows 1-9: whole tiles of 4 and the
// rest; odd lengths and strides) return each row's sum_squares bits; rmsnorm_rows, out of place
// and in place, each row's rmsnorm bits.
TEST(Kernels, SumSquaresRowsBitExactWithScalar) {
  std::vector<std::pair<const char*, kernels::SumSquaresRowsFn>> twins = {{"scalar", sum_squares_rows}};
#if defined(__x86_64__)
  if (kernels::cpu_has(kernels::Isa::Avx2)) twins.push_back({"avx2", kernels::avx2::sum_squares_rows});
  if (kernels::cpu_has(kernels::Isa::Avx512)) twins.push_back({"avx512", kernels::avx512::sum_squares_rows});
#endif
  std::mt19937 rng(21);
  std::normal_distribution<float> g(0.0f, 1.0f);
  const Exec ex;
  for (int64_t n : {1, 7, 8, 9, 17, 2048, 5633})
    for (int64_t rows = 1; rows <= 9; ++rows) {
      const int64_t ld = n + 3;
      std::vector<float> x(static_cast<size_t>(rows * ld)), w(static_cast<size_t>(n));
      for (auto& v : x) v = g(rng) * 30.0f;
      for (auto& v : w) v = 1.0f + 0.1f * g(rng);
      for (const auto& [name, f] : twins) {
        std::vector<double> got(static_cast<size_t>(rows), -1.0);
        f(x.data(), ld, rows, n, got.data());
        for (int64_t r = 0; r < rows; ++r) {
          const double want = sum_squares(x.data() + r * ld, n);
          ASSERT_EQ(std::memcmp(&got[size_t(r)], &want, sizeof want), 0) << name << " n=" << n << " rows=" << rows << " r=" << r;
        }
      }
      std::vector<float> want(x.size(), 0.0f), got(x.size(), 0.0f), inplace = x;
      for (int64_t r = 0; r < rows; ++r) {  // the definition, written out
        const float f = float(1.0 / std::sqrt(sum_squares(x.data() + r * ld, n) / double(n) + 1e-6));
        for (int64_t i = 0; i < n; ++i) want[size_t(r * ld + i)] = x[size_t(r * ld + i)] * f * w[size_t(i)];
      }
      ex.rmsnorm_rows(x.data(), w.data(), rows, n, ld, 1e-6, got.data());
      ex.rmsnorm_rows(inplace.data(), w.data(), rows, n, ld, 1e-6, inplace.data());
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t i = 0; i < n; ++i) {
          ASSERT_EQ(got[size_t(r * ld + i)], want[size_t(r * ld + i)]) << "n=" << n << " rows=" << rows;
          ASSERT_EQ(inplace[size_t(r * ld + i)], want[size_t(r * ld + i)]) << "in place, n=" << n << " rows=" << rows;
        }
    }
}

TEST(Kernels, RmsnormQuantizeBitExactWithScalar) {
  using RmsQuantizeFn = float (*)(const float*, const float*, int64_t, int8_t*, int64_t, int32_t*);
  struct Twin {
    const char* name;
    RmsQuantizeFn rq;
    kernels::SumSquaresFn ss;
  };
  std::vector<Twin> twins;
#if defined(__x86_64__)
  if (kernels::cpu_has(kernels::Isa::Avx2)) twins.push_back({"avx2", kernels::avx2::rmsnorm_quantize, kernels::avx2::sum_squares});
  if (kernels::cpu_has(kernels::Isa::Avx512))
    twins.push_back({"avx512", kernels::avx512::rmsnorm_quantize, kernels::avx512::sum_squares});
#endif
  std::mt19937 rng(11);
  std::normal_distribution<float> g(0.0f, 1.0f);
  for (int64_t n : {1, 3, 7, 8, 9, 15, 16, 17, 31, 33, 1000, 2048, 5632, 100003}) {
    for (int kind = 0; kind < 3; ++kind) {
      std::vector<float> x(static_cast<size_t>(n)), w(static_cast<size_t>(n));
      for (auto& v : x) v = kind == 2 ? float(int(g(rng) * 4)) * 0.5f : g(rng) * (kind ? 1e3f : 1.0f);
      for (auto& v : w) v = kind == 2 ? 1.0f : 1.0f + 0.1f * g(rng);
      const int64_t np = activation_cols(n);
      std::vector<int8_t> q_ref(static_cast<size_t>(np), 99);
      int32_t qsum_ref = -1;
      const float s_ref = rmsnorm_quantize(x.data(), w.data(), n, q_ref.data(), np, &qsum_ref);
      ASSERT_EQ(qsum_ref, sum_int8(q_ref.data(), np)) << "n=" << n;
      {  // the reference is rmsnorm then quantize_int8, with no buffer between them
        std::vector<float> y(static_cast<size_t>(n));
        rmsnorm(x.data(), w.data(), n, kBitLinearEps, y.data());
        std::vector<int8_t> q2(static_cast<size_t>(np), 99);
        const float s2 = quantize_int8(y.data(), n, q2.data(), np);
        ASSERT_EQ(std::memcmp(&s2, &s_ref, sizeof s2), 0) << "n=" << n;
        ASSERT_EQ(q2, q_ref) << "n=" << n << " kind=" << kind;
      }
      for (const Twin& t : twins) {
        std::vector<int8_t> q(static_cast<size_t>(np), 99);
        int32_t qsum = -1;
        const float s = t.rq(x.data(), w.data(), n, q.data(), np, &qsum);
        ASSERT_EQ(std::memcmp(&s, &s_ref, sizeof s), 0) << t.name << " n=" << n;
        ASSERT_EQ(q, q_ref) << t.name << " n=" << n << " kind=" << kind;
        ASSERT_EQ(qsum, qsum_ref) << t.name << " n=" << n << " kind=" << kind;
        const double a = t.ss(x.data(), n), b = sum_squares(x.data(), n);
        ASSERT_EQ(std::memcmp(&a, &b, sizeof a), 0) << t.name << " n=" << n;
      }
    }
  }
  // Ties: values whose products with s are exactly k + 0.5 round away from zero.
  std::vector<float> y = {127.0f, 0.5f, -0.5f, 1.5f, -2.5f, 63.5f, -126.5f, 0.0f, -127.0f};
  std::vector<int8_t> q(16);
  EXPECT_EQ(quantize_int8(y.data(), int64_t(y.size()), q.data(), 16), 1.0f);
  EXPECT_EQ(std::vector<int8_t>(q.begin(), q.begin() + 9), (std::vector<int8_t>{127, 1, -1, 2, -3, 64, -127, 0, -127}));
}

// The SIMD quantisers round as trunc(v + copysign(0.49999997, v)), which must equal std::round
// (half away from zero) on every float: here on the 96 floats either side of every integer and
// every half in [-127, 127] (a row whose largest value is 127, so that v = y exactly).
TEST(Kernels, QuantizeRoundsLikeStdRoundNearEveryHalf) {
  std::vector<kernels::ScaleQuantizeFn> twins;
#if defined(__x86_64__)
  if (kernels::cpu_has(kernels::Isa::Avx2)) twins.push_back(kernels::avx2::scale_quantize);
  if (kernels::cpu_has(kernels::Isa::Avx512)) twins.push_back(kernels::avx512::scale_quantize);
#endif
  std::vector<float> y = {127.0f, -127.0f};
  for (int k = -254; k <= 254; ++k) {
    float up = float(k) * 0.5f, down = up;
    for (int u = 0; u < 96; ++u) {
      up = std::nextafter(up, 1000.0f), down = std::nextafter(down, -1000.0f);
      if (std::fabs(up) <= 127.0f) y.push_back(up);
      if (std::fabs(down) <= 127.0f) y.push_back(down);
    }
    y.push_back(float(k) * 0.5f);
  }
  y.push_back(-0.0f);
  const int64_t n = int64_t(y.size()), np = activation_cols(n);
  const std::vector<float> ones(y.size(), 1.0f);
  std::vector<int8_t> q_ref(static_cast<size_t>(np));
  int32_t sum_ref = 0;
  ASSERT_EQ(scale_quantize(y.data(), 1.0f, ones.data(), n, q_ref.data(), np, &sum_ref), 1.0f);
  for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(q_ref[i], int8_t(std::round(y[i]))) << y[i];
  for (auto f : twins) {
    std::vector<int8_t> q(size_t(np), 99);
    int32_t sum = 0;
    ASSERT_EQ(f(y.data(), 1.0f, ones.data(), n, q.data(), np, &sum), 1.0f);
    for (size_t i = 0; i < y.size(); ++i) ASSERT_EQ(q[i], q_ref[i]) << "y = " << y[i];
    EXPECT_EQ(sum, sum_ref);
  }
}

// ---- the chooser -----------------------------------------------------------------------------

namespace {

// Timings injected per kernel name and regime.
// The batch regime gets the prefill timings unless given its own.
kernels::ChooserOptions fake(std::map<std::string, double> decode, std::map<std::string, double> prefill,
                             std::optional<std::map<std::string, double>> batch = {}) {
  kernels::ChooserOptions o;
  o.timer = [=](const kernels::Kernel& k, kernels::Regime r) {
    const auto& m = r == kernels::Regime::Decode ? decode : r == kernels::Regime::Batch && batch ? *batch : prefill;
    auto it = m.find(k.name);
    return it == m.end() ? 1.0 : it->second;
  };
  return o;
}

}  // namespace

TEST(Chooser, PicksTheFastestPerRegime) {
  const auto ks = kernels::available_kernels();
  if (ks.size() < 3) GTEST_SKIP() << "fewer than two SIMD kernels here";
  // Make the last decode, the first batch and the last prefill candidate the fastest.
  std::string last_decode, first_batch, last_prefill;
  for (auto& k : ks) {
    if (k.isa == kernels::Isa::Scalar) continue;
    if (k.decode && k.tq2) last_decode = k.name;
    if (k.batch && k.tq2 && first_batch.empty()) first_batch = k.name;
    if (k.prefill && k.tq2) last_prefill = k.name;
  }
  auto m = TernaryMatrix::shape(TernaryFormat::TQ2, 16, 16);
  const auto c = kernels::choose_kernels({&m}, nullptr,
                                         fake({{last_decode, 0.5}}, {{last_prefill, 0.5}}, std::map<std::string, double>{{first_batch, 0.5}}));
  EXPECT_EQ(std::string(c.decode.chosen.name), last_decode);
  EXPECT_EQ(std::string(c.batch.chosen.name), first_batch);
  EXPECT_EQ(std::string(c.prefill.chosen.name), last_prefill);
  EXPECT_EQ(c.table().decode.gemm, c.decode.chosen.gemm);
  EXPECT_EQ(c.table().batch.gemm, c.batch.chosen.gemm);
  EXPECT_EQ(c.table().prefill.gemm, c.prefill.chosen.gemm);
  // The table routes token counts to them.
  EXPECT_EQ(c.table().for_tokens(1).gemm, c.decode.chosen.gemm);
  EXPECT_EQ(c.table().for_tokens(2).gemm, c.batch.chosen.gemm);
  EXPECT_EQ(c.table().for_tokens(kernels::kBatchMaxTokens).gemm, c.batch.chosen.gemm);
  EXPECT_EQ(c.table().for_tokens(kernels::kBatchMaxTokens + 1).gemm, c.prefill.chosen.gemm);
  // Every candidate is reported with its rate, the chosen one fastest.
  for (auto& cand : c.decode.candidates)
    if (cand.name != last_decode) { EXPECT_LT(cand.rate, 1e-9 / 0.5 + 1e-12) << cand.name; }
}

TEST(Chooser, KeepsTheIncumbentOnNearTies) {
  const auto ks = kernels::available_kernels();
  if (ks.size() < 3) GTEST_SKIP() << "fewer than two SIMD kernels here";
  const auto incumbent = kernels::incumbent(kernels::Regime::Decode, TernaryFormat::TQ2);
  std::map<std::string, double> t;
  for (auto& k : ks) t[k.name] = k.name == std::string(incumbent.name) ? 1.0 : 0.98;  // others 2% faster
  auto m = TernaryMatrix::shape(TernaryFormat::TQ2, 16, 16);
  EXPECT_STREQ(kernels::choose_kernels({&m}, nullptr, fake(t, t)).decode.chosen.name, incumbent.name);
  for (auto& [name, v] : t) v = name == std::string(incumbent.name) ? 1.0 : 0.9;  // 10% faster: replaced
  EXPECT_STRNE(kernels::choose_kernels({&m}, nullptr, fake(t, t)).decode.chosen.name, incumbent.name);
}

// Candidates depend on the regime and the format: AMX and the register-decoded tiles never decode
// one token, the prefetching decoders only decode one, the VBMI kernels only compete for TQ1,
// scalar only where nothing else runs; every other kernel competes.
TEST(Chooser, CandidatesFollowRegimeAndFormat) {
  using kernels::Regime;
  for (auto f : kFormats) {
    std::map<Regime, std::set<std::string>> seen;
    auto o = fake({}, {});
    o.timer = [&](const kernels::Kernel& k, Regime r) {
      seen[r].insert(k.name);
      return 1.0;
    };
    auto m = TernaryMatrix::shape(f, 16, 16);
    kernels::choose_kernels({&m}, nullptr, o);
    const bool simd = kernels::available_kernels().size() > 1;
    for (const auto& k : kernels::available_kernels())
      for (Regime r : kernels::kRegimes) {
        const bool expected = k.for_regime(r) && k.for_format(f) && (!simd || k.isa != kernels::Isa::Scalar) &&
                              !k.interleaved && !k.wide;  // m has no interleaved or wide copy
        EXPECT_EQ(seen[r].count(k.name) > 0, expected) << k.name << " " << regime_name(r) << " " << format_name(f);
      }
    EXPECT_EQ(seen[Regime::Decode].count("amx"), 0u);
    EXPECT_EQ(seen[Regime::Decode].count("avx512-direct"), 0u);
    EXPECT_EQ(seen[Regime::Batch].count("avx512-prefetch"), 0u);
    if (kernels::cpu_has(kernels::Isa::Avx512)) {
      EXPECT_EQ(seen[Regime::Batch].count("avx512-direct"), 1u);
      EXPECT_EQ(seen[Regime::Prefill].count("avx512-direct"), 1u);
    }
    EXPECT_EQ(seen[Regime::Decode].count("avx2-direct"), 0u);
    if (kernels::cpu_has(kernels::Isa::Avx2)) {
      EXPECT_EQ(seen[Regime::Batch].count("avx2-direct"), 1u);
      EXPECT_EQ(seen[Regime::Prefill].count("avx2-direct"), 1u);
    }
    if (kernels::cpu_has(kernels::Isa::AvxVnni)) {  // AVX-VNNI competes in every regime
      for (Regime r : kernels::kRegimes) { EXPECT_EQ(seen[r].count("avx-vnni"), 1u) << regime_name(r); }
    }
    if (f == TernaryFormat::TQ2) { EXPECT_EQ(seen[Regime::Decode].count("avx512-vbmi"), 0u); }
    // With the copy, the kernels that read it compete for every regime.
    seen.clear();
    auto t = std::vector<int8_t>(16 * 16, 1);
    const TernaryMatrix c = with_interleaved(pack_ternary(t.data(), 16, 16, f));
    kernels::choose_kernels({&c}, nullptr, o);
    for (const auto& k : kernels::available_kernels()) {
      if (!k.interleaved || !k.for_format(f)) continue;
      EXPECT_EQ(seen[Regime::Batch].count(k.name), 1u) << k.name;
      EXPECT_EQ(seen[Regime::Prefill].count(k.name), 1u) << k.name;
      EXPECT_EQ(seen[Regime::Decode].count(k.name), 1u) << k.name;
    }
    // With a wide copy (TQ1), the kernel that reads it competes for prompts only, first in line.
    if (f == TernaryFormat::TQ1 && kernels::wide_runs(f)) {
      seen.clear();
      const TernaryMatrix w = with_wide(pack_ternary(t.data(), 16, 16, f));
      kernels::choose_kernels({&w}, nullptr, o);
      EXPECT_EQ(seen[Regime::Prefill].count("avx512-wide"), 1u);
      EXPECT_EQ(seen[Regime::Batch].count("avx512-wide"), 0u);
      EXPECT_EQ(seen[Regime::Decode].count("avx512-wide"), 0u);
      EXPECT_EQ(kernels::detail::candidates(Regime::Prefill, f, false, true).front().name, std::string("avx512-wide"));
      EXPECT_EQ(kernels::detail::candidates(Regime::Batch, f, false, true).front().name,
                std::string(kernels::incumbent(Regime::Batch, f).name));
    }
  }
}

TEST(Chooser, ForcedKernels) {
  auto t = kernels::forced_table("scalar", TernaryFormat::TQ2);
  EXPECT_STREQ(t.decode.name, "scalar");
  EXPECT_STREQ(t.batch.name, "scalar");
  EXPECT_STREQ(t.prefill.name, "scalar");
  if (kernels::cpu_has(kernels::Isa::Avx2)) {
    t = kernels::forced_table("scalar,avx2", TernaryFormat::TQ1);  // the batch regime follows prefill
    EXPECT_STREQ(t.decode.name, "scalar");
    EXPECT_STREQ(t.batch.name, "avx2");
    EXPECT_STREQ(t.prefill.name, "avx2");
    t = kernels::forced_table("avx2,scalar,avx2", TernaryFormat::TQ1);
    EXPECT_STREQ(t.decode.name, "avx2");
    EXPECT_STREQ(t.batch.name, "scalar");
    EXPECT_STREQ(t.prefill.name, "avx2");
    t = kernels::forced_table("avx2-direct", TernaryFormat::TQ2);  // no decoder of its own: AVX2's
    EXPECT_STREQ(t.decode.name, "avx2");
    EXPECT_STREQ(t.batch.name, "avx2-direct");
    EXPECT_STREQ(t.prefill.name, "avx2-direct");
  }
  if (kernels::cpu_has(kernels::Isa::Avx512)) {  // a decode-only kernel leaves the others to its family
    t = kernels::forced_table("avx512-prefetch", TernaryFormat::TQ2);
    EXPECT_STREQ(t.decode.name, "avx512-prefetch");
    EXPECT_STREQ(t.batch.name, "avx512");
    EXPECT_STREQ(t.prefill.name, "avx512");
    t = kernels::forced_table("avx512-direct", TernaryFormat::TQ2);  // and a many-token kernel, decoding
    EXPECT_STREQ(t.decode.name, "avx512");
    EXPECT_STREQ(t.batch.name, "avx512-direct");
    EXPECT_FALSE(t.reads_interleaved());
    t = kernels::forced_table("avx512-interleaved", TernaryFormat::TQ2);  // one token too
    EXPECT_STREQ(t.decode.name, "avx512-interleaved");
    EXPECT_STREQ(t.batch.name, "avx512-interleaved");
    EXPECT_TRUE(t.reads_interleaved());
    // Rows split at whole groups only where the kernel for the pass reads the matrix's copy.
    std::vector<int8_t> w(128 * 8, 0);
    const TernaryMatrix plain = pack_ternary(w.data(), 128, 8, TernaryFormat::TQ2), copy = with_interleaved(plain);
    EXPECT_EQ(t.row_grain(copy, 4), 64);
    EXPECT_EQ(t.row_grain(plain, 4), kStripRows);
    EXPECT_EQ(t.row_grain(copy, 1), 64);
    t = kernels::forced_table("avx512,avx512-interleaved,avx512-interleaved", TernaryFormat::TQ2);
    EXPECT_STREQ(t.decode.name, "avx512");
    EXPECT_EQ(t.row_grain(copy, 1), kStripRows);
    EXPECT_EQ(t.row_grain(copy, 2), 64);
    EXPECT_EQ(kernels::preferred_table(TernaryFormat::TQ2, true).batch.interleaved, true);
    EXPECT_EQ(kernels::preferred_table(TernaryFormat::TQ2, true).decode.interleaved, false);  // unless measured faster
    EXPECT_EQ(kernels::preferred_table(TernaryFormat::TQ2).batch.interleaved, false);
  }
  EXPECT_THAT(error_of([] { kernels::forced_table("scalar,scalar,scalar,scalar", TernaryFormat::TQ2); }),
              HasSubstr("expected NAME, DECODE,PREFILL or DECODE,BATCH,PREFILL"));
  EXPECT_THAT(error_of([] { kernels::forced_table("sse9", TernaryFormat::TQ2); }),
              HasSubstr("kernels sse9: unknown kernel (this build has:"));
}

// A real measurement (no injected timings) on a small matrix set: it finishes, reports a rate
// for every candidate, and chooses one of them.
TEST(Chooser, MeasuresEveryCandidate) {
  std::mt19937 rng(5);
  auto t = random_ternary(rng, size_t(300 * 1000));
  auto a = with_interleaved(pack_ternary(t.data(), 300, 1000, TernaryFormat::TQ1));
  auto b = with_interleaved(pack_ternary(t.data(), 1000, 300, TernaryFormat::TQ1));
  ThreadPool pool(2);
  kernels::ChooserOptions o;
  o.rounds = 2;
  o.decode_sample_bytes = 1 << 16;
  const auto c = kernels::choose_kernels({&a, &b}, &pool, o);
  for (auto* rc : {&c.decode, &c.batch, &c.prefill}) {
    bool found = false;
    for (auto& cand : rc->candidates) {
      if (rc->candidates.size() > 1) { EXPECT_GT(cand.rate, 0) << cand.name; }
      found |= cand.name == rc->chosen.name;
    }
    EXPECT_TRUE(found);
  }
}

}  // namespace tests_kernels
