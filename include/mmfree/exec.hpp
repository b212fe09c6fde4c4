// mmfree: where and how a forward pass computes: the kernel table, the thread pool, and the
// ternary accumulate every BitLinear's rows go through.
//
// The layers (bitlinear.hpp, mlgru.hpp, glu.hpp) and the model (model.hpp) are templates over
// the accumulate `Acc`: a callable that computes acc[t, r] = T[r] . q[t] for rows [r0, r1) of a
// packed ternary matrix. The default, CpuAccumulate, is this CPU's dispatched kernels
// (kernels/dispatch.hpp); hw/ plugs in the Verilog core through Verilator with the same
// signature, so the same forward pass runs on either. Everything else (norms, quantisation,
// the recurrence) stays on the CPU: the accumulate is the only part a ternary core replaces.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <utility>
#include <type_traits>

#include "mmfree/kernels/dispatch.hpp"
#include "mmfree/ops.hpp"
#include "mmfree/ternary_format.hpp"
#include "mmfree/thread_pool.hpp"

namespace mmfree {

// The CPU's ternary accumulate: the kernel table's choice for the token count.
struct CpuAccumulate {
  void operator()(const kernels::KernelTable& k, const TernaryMatrix& W, const int8_t* q, int64_t ldq, int64_t n,
                  int32_t* acc, int64_t ldacc, int64_t r0, int64_t r1) const {
    k.gemm(W, q, ldq, n, acc, ldacc, r0, r1);
  }
  // out[t, r] = float(acc[t, r]) * scale[t] in the kernel's store, where the kernel can (false:
  // nothing written).
  bool scaled(const kernels::KernelTable& k, const TernaryMatrix& W, const int8_t* q, int64_t ldq, int64_t n,
              const float* scale, const int32_t* qsum, float* out, int64_t ldo, int64_t r0, int64_t r1) const {
    return k.gemm_scaled(W, q, ldq, n, scale, qsum, out, ldo, r0, r1);
  }
};

// Which weights the pool's threads warm while they wait (ThreadPool::warm_next): those of the
// product that came after this one the last time. A forward pass runs its products in the same
// order every time, and a step's last product (the head) is followed by the next step's first,
// so the order seen once predicts the next section; a wrong guess costs only prefetches. Keyed by
// the matrix and the regime, as passes of one token and of several read different copies.
// One per model, used by whoever drives its pool. Waiting threads warming up to 256 KiB of their
// share of the next product, against none (1.3B and 2.7B TQ2 presets, in-process alternations,
// AMD Zen 5, 2 threads): one token 1-9% faster, 2 tokens 2-13%, 4-5 tokens 1-7%, the most where
// the memory was slow; TQ1 at one token unchanged. Budgets of 64 KiB to 1 MiB measured alike.
struct WarmPlan {
  static constexpr size_t kBudget = size_t(256) << 10;  // bytes per thread
  using Key = std::pair<const void*, int>;
  std::map<Key, kernels::WeightSpan> next;
  Key prev{nullptr, 0};
  // Records `now` (the bytes a section about to run reads) as what followed the previous
  // section; returns what followed this one last time (empty when never seen).
  kernels::WeightSpan advance(Key key, kernels::WeightSpan now) {
    if (prev.first) next[prev] = now;
    prev = key;
    const auto it = next.find(key);
    return it == next.end() ? kernels::WeightSpan{} : it->second;
  }
};

// The execution context of one forward call. `pool` may be null (one thread); an accumulate
// that is not thread-safe (a simulator) runs with a null pool.
template <class Acc>
struct BasicExec {
  kernels::KernelTable kernels = kernels::make_table(kernels::incumbent(kernels::Regime::Decode, TernaryFormat::TQ2),
                                                     kernels::incumbent(kernels::Regime::Batch, TernaryFormat::TQ2),
                                                     kernels::incumbent(kernels::Regime::Prefill, TernaryFormat::TQ2));
  ThreadPool* pool = nullptr;
  Acc accumulate{};
  WarmPlan* warm = nullptr;  // with a pool: the model's (null: threads do not warm weights)

  // Per-token work (residual adds, norms, quantisation) for tokens [0, n): fn(t0, t1) over
  // contiguous ranges of tokens, one per thread; up to kTokensOnOneThread tokens on the calling
  // thread alone, which leaves the other threads free to warm the next product's weights
  // (WarmPlan) instead of sharing a few microseconds of work whose rows both threads' products
  // just wrote. In-process alternations (1.3B presets, 2 threads, AMD Zen 5), against both
  // threads: 2 tokens 5% faster (median of 6 series, -13% to +1%), 3 tokens 1.5% (4 series),
  // 4 tokens 1-3% slower (6 series, -4% to +10%).
  static constexpr int64_t kTokensOnOneThread = 2;
  void for_tokens(int64_t n, const std::function<void(int64_t, int64_t)>& fn) const {
    if (pool && pool->size() > 1 && n > kTokensOnOneThread)
      pool->for_range(n, 1, fn);
    else if (n > 0)
      fn(0, n);
  }
  // Rows of a BitLinear over the pool for a pass of `tokens` tokens: one contiguous range per
  // thread, sized by each thread's measured speed, whose last pieces a thread that finishes early
  // takes over (ThreadPool::for_range_balanced; one piece per range for a single token). Four
  // ranges per thread handed out as threads came measured 2-8% slower than one at 2-64 tokens and
  // in a 512-token prefill (AMD Zen 5, runs interleaved): each range costs a restart of the
  // weight stream and a sum of the activations.
  // `grain` (row_grain): the multiple of rows the ranges start at. `W` (optional): the matrix
  // whose rows [0, rows) the section reads first, so that threads waiting after the section
  // warm the next one's (WarmPlan).
  void for_rows(int64_t rows, int64_t tokens, const std::function<void(int64_t, int64_t)>& fn,
                int64_t grain = kStripRows, const TernaryMatrix* W = nullptr) const {
    if (pool && pool->size() > 1 && rows > grain) {
      if (W && warm) plan_warming(*W, rows, tokens);
      pool->for_range_balanced(rows, grain, fn, tokens > 1);
    }
    else if (rows > 0)
      fn(0, rows);
  }
  void plan_warming(const TernaryMatrix& W, int64_t rows, int64_t n) const {
    const kernels::Kernel& k = kernels.for_tokens(n);
    kernels::WeightSpan now = kernels::kernel_reads(k, W);
    now.bytes = size_t(double(now.bytes) * double(rows) / double(W.rows));
    const int regime = n == 1 ? 0 : n <= kernels.batch_max ? 1 : 2;
    const kernels::WeightSpan next = warm->advance({W.data, regime}, now);
    pool->warm_next(next.p, next.bytes, WarmPlan::kBudget);
  }
  // The rows of W to split a pass of n tokens at: whole groups where the kernel reads W's
  // interleaved copy (an accumulate other than the CPU's: strips).
  int64_t row_grain(const TernaryMatrix& W, int64_t n) const {
    if constexpr (std::is_same_v<Acc, CpuAccumulate>) return kernels.row_grain(W, n);
    else return kStripRows;
  }
  // acc[t, r] = W[r] . q[t] for n tokens (q rows ldq apart, acc rows ldacc apart), rows [r0, r1).
  void ternary_accumulate(const TernaryMatrix& W, const int8_t* q, int64_t ldq, int64_t n, int32_t* acc,
                          int64_t ldacc, int64_t r0, int64_t r1) const {
    accumulate(kernels, W, q, ldq, n, acc, ldacc, r0, r1);
  }
  // out[t, r] = float(W[r] . q[t]) * scale[t] in one pass, when the accumulate offers it (an
  // accumulate without `scaled`, such as hw/'s simulated core, never does) and the kernel for n
  // tokens has a dequantising store; false (nothing written) otherwise. `qsum`: each token's sum
  // of q, or null.
  bool ternary_accumulate_scaled(const TernaryMatrix& W, const int8_t* q, int64_t ldq, int64_t n, const float* scale,
                                 const int32_t* qsum, float* out, int64_t ldo, int64_t r0, int64_t r1) const {
    if constexpr (requires { accumulate.scaled(kernels, W, q, ldq, n, scale, qsum, out, ldo, r0, r1); })
      return accumulate.scaled(kernels, W, q, ldq, n, scale, qsum, out, ldo, r0, r1);
    else
      return false;
  }
  // rmsnorm of one row with this CPU's sum of squares (the same bits as ops.hpp's).
  void rmsnorm(const float* x, const float* w, int64_t n, double eps, float* y) const {
    mmfree::rmsnorm(x, w, n, eps, y, kernels.sum_squares);
  }
  // The rms factors of `rows` rows of n floats, ld apart: out[r] = rms_factor(sum_squares(row r)),
  // the sums taken 4 rows at a time (each row's sum is a chain bound by the latency of its adds).
  void rms_factors(const float* x, int64_t ld, int64_t rows, int64_t n, double eps, float* out) const {
    double s[4];
    for (int64_t r = 0; r < rows; r += 4) {
      const int64_t k = std::min<int64_t>(4, rows - r);
      kernels.sum_squares_rows(x + r * ld, ld, k, n, s);
      for (int64_t j = 0; j < k; ++j) out[r + j] = rms_factor(s[j], n, eps);
    }
  }
  // rmsnorm of `rows` rows (x and y rows ld apart; y may be x), 4 at a time: the same bits as
  // rmsnorm row by row.
  void rmsnorm_rows(const float* x, const float* w, int64_t rows, int64_t n, int64_t ld, double eps, float* y) const {
    float r[4];
    for (int64_t t = 0; t < rows; t += 4) {
      const int64_t k = std::min<int64_t>(4, rows - t);
      rms_factors(x + t * ld, ld, k, n, eps, r);
      for (int64_t j = 0; j < k; ++j) rms_scale(x + (t + j) * ld, r[j], w, n, y + (t + j) * ld);
    }
  }
};

using Exec = BasicExec<CpuAccumulate>;

}  // namespace mmfree
