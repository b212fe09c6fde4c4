// mmfree: choosing kernels by measuring them, on this CPU, on the model's own matrices.
//
// Ranking kernels by ISA picks the wrong one: on AMD Zen 4, AVX-512 instructions run as two
// 256-bit halves and a kernel tuned on an Intel Xeon streamed at half the speed of another that
// the library already had. So every kernel this CPU can run is timed, separately for the three
// regimes, and the fastest serves each:
//  - decode (one token) is bandwidth-bound: each candidate multiplies one token through a run of
//    the model's matrices, walking the weights in model order, so every sample streams fresh
//    weights from memory as decoding does (a model that fits in the cache is timed warm, as it
//    runs);
//  - batch (2 to KernelTable::batch_max tokens) is both: the same walk, in rounds of
//    batch_tokens[0] and batch_tokens[1] tokens by turns, so decoding the weights and streaming them
//    from memory are timed together, at both ends of the band, each end weighing the same;
//  - prefill (a chunk of tokens) is compute-bound: each candidate multiplies a chunk through a
//    256-row slice of every distinct shape (a different layer's matrix each time, so the rows
//    come from memory), weighted by that shape's share of the model's work.
// Candidates are interleaved over rounds (so a noisy neighbour slows them alike), each scored by
// its best round, and the incumbent (kernels::incumbent: the first candidate in all_kernels' order,
// or the first that reads the interleaved copies where the model holds them) keeps its place
// unless another is more than `near_tie` faster. All kernels are bit-exact, so the choice changes
// speed, never results. Tests inject timings (ChooserOptions::timer).
#pragma once

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <random>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mmfree/kernels/dispatch.hpp"
#include "mmfree/thread_pool.hpp"

namespace mmfree::kernels {

struct ChooserOptions {
  int64_t prefill_tokens = 64;           // tokens per prefill sample (the model's chunk, at most)
  // Tokens per batch sample, by turns: the memory-bound end of 2..16 and the compute-bound one. One
  // size (6) sat where both bounds meet, and the kernels' scores swapped from load to load.
  int64_t batch_tokens[2] = {4, 12};
  double near_tie = 0.03;                // a challenger must be this much faster to replace the incumbent
  int rounds = 5;                        // samples per candidate and regime, at most...
  // ...and, prefill, samples of the candidates within `close` of the best, at most.
  double close = 0.08;
  int close_rounds = 20;
  double budget_seconds = 0.06;          // ...within this time for the three regimes (at least 2 rounds)
  // The budget where the matrices hold interleaved copies: the kernels that read them beat the
  // strips' by 7-21% in whole passes over the 1.3B preset's matrices (AMD Zen 5), which 20 ms per
  // regime scored either way from load to load, and 100 ms scored right in 8 runs of 8.
  double budget_seconds_interleaved = 0.3;
  size_t decode_sample_bytes = 16 << 20; // decode: bytes each candidate streams per round
  int run_length = 3;                    // decode and batch: consecutive matrices per candidate
  // Rows of each shape per prefill sample and thread: whole strips (16) and whole groups of the
  // interleaved copies (64, 80), as many per thread. 256 rows made the TQ1 copies' kernel compute
  // 320 and score 14% low; 320 rows on 2 threads split 3 TQ2 groups against 2, and it scored below
  // the strips' kernel, which it beats by 19-23% in a 2.7B prefill.
  int64_t prefill_rows = 320;
  // Tests: seconds a kernel takes per unit of work in a regime; no measurement when set.
  std::function<double(const Kernel&, Regime)> timer;
};

namespace detail {

// Picks the fastest of `cands` given their costs (lower is better), keeping cands[0] on near-ties.
inline size_t pick(const std::vector<double>& cost, double near_tie) {
  size_t best = 0;
  for (size_t i = 1; i < cost.size(); ++i)
    if (cost[i] < cost[best]) best = i;
  return cost[best] * (1.0 + near_tie) < cost[0] ? best : 0;
}

// `interleaved`, `wide`: the matrices hold interleaved copies, or wide ones, which some kernels read.
inline std::vector<Kernel> candidates(Regime r, TernaryFormat f, bool interleaved, bool wide = false) {
  std::vector<Kernel> v;
  for (const Kernel& k : available_kernels())
    if (k.for_regime(r) && k.for_format(f) && (k.isa != Isa::Scalar || v.empty()) && (interleaved || !k.interleaved) &&
        (wide || !k.wide))
      v.push_back(k);
  // The incumbent, which keeps its place on near-ties, is the kernel the model built its copies
  // for where it holds them (kernels::incumbent): the copies' memory is spent either way.
  const Kernel first = incumbent(r, f, interleaved, wide);
  const auto it = std::find_if(v.begin(), v.end(), [&](const Kernel& k) { return std::string_view(k.name) == first.name; });
  if (it != v.end()) std::rotate(v.begin(), it, it + 1);
  return v;  // scalar only when nothing else runs here
}

// What a model's pass hands the kernels besides Q: the tokens' scales and sums of Q, and a float
// output. Passes of several tokens time a kernel's dequantising twin where it has one, since the
// model calls that: timed through the integer entry point instead, the interleaved kernel lost
// TQ2's batch band to the strips' in 7 loads of 10 of the 1.3B preset, although it ran 3-5%
// faster at 4 tokens and 15-21% at 12 in the model; through its twin it won 22 of 22 (AMD Zen 5).
struct ScaledArgs {
  const float* scale = nullptr;
  const int32_t* qsum = nullptr;
  float* out = nullptr;
};

inline void run_rows(const Kernel& k, const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out,
                     int64_t rows, ThreadPool* pool, const ScaledArgs& sc = {}) {
  auto part = [&](int64_t r0, int64_t r1) {
    if (k.gemm_scaled && sc.out && n > 1) k.gemm_scaled(W, Q, ldq, n, sc.scale, sc.qsum, sc.out, rows, r0, r1);
    else k.gemm(W, Q, ldq, n, out, rows, r0, r1);
  };
  if (pool && pool->size() > 1)
    pool->for_range(rows, kernel_row_grain(k, W), part);
  else
    part(0, rows);
}

}  // namespace detail

// Chooses the decode, batch and prefill kernels for `matrices` (all one format, in the order decoding
// reads them). `pool` may be null (one thread).
inline KernelChoice choose_kernels(const std::vector<const TernaryMatrix*>& matrices, ThreadPool* pool,
                                   const ChooserOptions& opt = {}) {
  const auto start = std::chrono::steady_clock::now();
  KernelChoice out;
  const TernaryFormat f = matrices.empty() ? TernaryFormat::TQ2 : matrices.front()->format;
  int64_t max_rows = 1, max_cols = 1;
  bool interleaved = !matrices.empty(), wide = !matrices.empty();
  for (auto* m : matrices) {
    max_rows = std::max(max_rows, m->rows), max_cols = std::max(max_cols, m->cols);
    interleaved = interleaved && m->interleaved;
    wide = wide && m->wide;
  }
  const int64_t threads = pool ? pool->size() : 1;
  const double budget = interleaved ? std::max(opt.budget_seconds, opt.budget_seconds_interleaved) : opt.budget_seconds;
  const int64_t ldq = activation_cols(max_cols), T = std::max({opt.prefill_tokens, opt.batch_tokens[0], opt.batch_tokens[1]});

  // Random activations and a shared output buffer.
  std::vector<int8_t> Q(size_t(T * ldq), 0);
  std::mt19937 rng(7);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < max_cols; ++c) Q[size_t(t * ldq + c)] = int8_t(int(rng() % 255) - 127);
  std::vector<int32_t> acc(size_t(std::max(max_rows * std::max(opt.batch_tokens[0], opt.batch_tokens[1]), T * std::min(max_rows, opt.prefill_rows * threads))));
  std::vector<float> acc_f(acc.size()), scales(size_t(T), 1.0f / 127);
  std::vector<int32_t> qsums(static_cast<size_t>(T), 0);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < ldq; ++c) qsums[size_t(t)] += Q[size_t(t * ldq + c)];
  const detail::ScaledArgs scaled{scales.data(), qsums.data(), acc_f.data()};

  // One warm-up sample per candidate (first-call allocations; it also times a round), then as
  // many interleaved rounds as fit in a third of the budget, between 2 and opt.rounds; each candidate
  // keeps its best sample. sample(k) returns {cost, seconds taken}.
  // Then the candidates within `close` of the best take further rounds among themselves, up to
  // `close_rounds` in all, in what is left of that third: on the 1.3B TQ1 preset the wide and the
  // TQ1 copies' kernels run prompts within 2-4% of each other, and 5 samples of each, among 9
  // candidates, rated either up to 5% ahead from load to load (AMD Zen 5).
  auto run_rounds = [&](const std::vector<Kernel>& cands, std::vector<double>& cost, const auto& sample) {
    const auto t_start = std::chrono::steady_clock::now();
    double round_seconds = 0;
    std::vector<double> secs(cands.size(), 0);
    for (size_t i = 0; i < cands.size(); ++i) {
      const auto [c, s] = sample(cands[i]);
      cost[i] = std::min(cost[i], c);
      secs[i] = s;
      round_seconds += s;
    }
    const int rounds = std::clamp(int(budget / 3 / std::max(round_seconds, 1e-9)) - 1, 1, opt.rounds - 1);
    for (int round = 0; round < rounds; ++round)
      for (size_t j = 0; j < cands.size(); ++j) {
        const size_t i = (j + size_t(round)) % cands.size();
        cost[i] = std::min(cost[i], sample(cands[i]).first);
      }
    const double best = *std::min_element(cost.begin(), cost.end());
    std::vector<size_t> close;
    double close_seconds = 0;
    for (size_t i = 0; i < cands.size(); ++i)
      if (cost[i] <= best * (1.0 + opt.close)) close.push_back(i), close_seconds += secs[i];
    if (close.size() < 2) return;
    const double left = budget / 3 - std::chrono::duration<double>(std::chrono::steady_clock::now() - t_start).count();
    const int more = std::clamp(int(left / std::max(close_seconds, 1e-9)), 0, opt.close_rounds - rounds - 1);
    for (int round = 0; round < more; ++round)
      for (size_t j = 0; j < close.size(); ++j) {
        const size_t i = close[(j + size_t(round)) % close.size()];
        cost[i] = std::min(cost[i], sample(cands[i]).first);
      }
  };

  for (Regime r : kRegimes) {
    RegimeChoice& rc = out.of(r);
    const std::vector<Kernel> cands = detail::candidates(r, f, interleaved, wide);
    std::vector<double> cost(cands.size(), 1e300);  // seconds per byte (decode) or per MAC (prefill)
    if (opt.timer) {
      for (size_t i = 0; i < cands.size(); ++i) cost[i] = opt.timer(cands[i], r);
    } else if (cands.size() > 1 && !matrices.empty()) {
      if (r != Regime::Prefill) {
        // Walk the matrices in order, in runs of R consecutive matrices per candidate: run u goes
        // to candidate (u + u / K) % K (the offset moves each candidate across the 6-7 shapes of a
        // layer; (j + j / 7) % K, as it was, never reached the eighth of 8 candidates). A run's
        // first matrix is not scored: it starts the candidate's own stream. One matrix per
        // candidate, the strips' kernels each read on where the previous sample (also strips)
        // had left the prefetchers, while a kernel reading the interleaved copies started a cold
        // stream every time: its 4-token samples read up to 10% slow, and it lost the batch band in
        // half the loads of the 1.3B TQ2 preset although it runs 0-10% faster at 4 tokens and
        // 16-29% at 12 in the model (runs of 3: 8 loads of 8, AMD Zen 5).
        // Interleaving this finely, a noisy neighbour slows every candidate alike; each is scored
        // by its total bytes over its total time, over a third of the budget, leaving out its
        // slowest quarter of samples: one sample that took a preemption or a page-cache stall once
        // scored a kernel at a tenth of its speed and lost it the batch regime (B = 4 to 16 of the
        // 1.3B preset then ran 20% slower).
        // Decode scores bytes per second; batch, MACs per second, round u / K of batch_tokens[u / K % 2]
        // tokens (every candidate's sample of a round has the same size), the two sizes scored
        // apart and their costs per MAC added.
        const bool batch = r == Regime::Batch;
        const size_t K = cands.size(), sizes = batch ? 2 : 1, R = size_t(std::max(opt.run_length, 1));
        auto tokens = [&](size_t j) { return batch ? opt.batch_tokens[j / R / K % 2] : int64_t(1); };
        std::vector<std::vector<std::pair<double, double>>> samples(K * sizes);  // {seconds, bytes}
        for (size_t i = 0; i < K; ++i)  // warm-up: first-call allocations
          detail::run_rows(cands[i], *matrices[i % matrices.size()], Q.data(), ldq, tokens(0), acc.data(),
                           matrices[i % matrices.size()]->rows, pool, scaled);
        const auto t_start = std::chrono::steady_clock::now();
        size_t total = 0;
        for (size_t j = 0;; ++j) {
          const size_t run = j / R, i = (run + run / K) % K;
          const int64_t n = tokens(j);
          const TernaryMatrix& W = *matrices[j % matrices.size()];
          const auto t0 = std::chrono::steady_clock::now();
          detail::run_rows(cands[i], W, Q.data(), ldq, n, acc.data(), W.rows, pool, scaled);
          const auto t1 = std::chrono::steady_clock::now();
          if (j % R != 0 || R == 1)  // a run's first matrix starts the candidate's stream: not scored
            samples[i * sizes + (run / K) % sizes].emplace_back(
                std::chrono::duration<double>(t1 - t0).count(),
                n == 1 ? double(W.nbytes()) : double(W.rows) * double(W.cols) * double(n));
          total += W.nbytes();
          // Stop once every candidate has 2 runs of each size and a third of the budget is spent, or
          // `rounds` samples' worth of bytes each are streamed, or (small models) `rounds` passes each.
          const double elapsed = std::chrono::duration<double>(t1 - t_start).count();
          if (j + 1 >= 2 * sizes * K * R && (elapsed >= budget / 3 ||
                                 total >= size_t(opt.rounds) * K * opt.decode_sample_bytes ||
                                 j + 1 >= size_t(opt.rounds) * K * matrices.size()))
            break;
        }
        for (size_t i = 0; i < K; ++i) {
          cost[i] = 0;
          for (size_t z = 0; z < sizes; ++z) {
            auto& v = samples[i * sizes + z];
            std::sort(v.begin(), v.end(), [](const auto& a, const auto& b) { return a.first * b.second < b.first * a.second; });
            const size_t keep = std::max<size_t>(std::min<size_t>(v.size(), 2), v.size() - v.size() / 4);
            double secs = 0, bytes = 0;
            for (size_t k = 0; k < keep; ++k) secs += v[k].first, bytes += v[k].second;
            cost[i] += bytes > 0 ? secs / bytes / double(sizes) : 1e300;
          }
        }
      } else {
        // Distinct shapes, each weighted by the work it does in the model. Each sample takes the
        // next matrix of every shape (the next layer's), so its rows come from memory as a pass
        // over the model reads them, not from the cache of the previous sample: warm, a kernel
        // without prefetching tied with its prefetching twin, and then ran passes of 24-32 tokens
        // of the 2.7B preset 20-25% slower (AMD Zen 5).
        struct Shape {
          std::vector<const TernaryMatrix*> ms;
          double macs = 0;
          size_t next = 0;
        };
        std::map<std::pair<int64_t, int64_t>, Shape> shapes;
        for (auto* m : matrices) {
          Shape& e = shapes[{m->rows, m->cols}];
          e.ms.push_back(m);
          e.macs += double(m->rows) * double(m->cols);
        }
        auto sample = [&](const Kernel& k) {
          double total = 0;
          for (auto& [shape, e] : shapes) {
            const TernaryMatrix& W = *e.ms[e.next++ % e.ms.size()];
            const int64_t rows = std::min(W.rows, opt.prefill_rows * threads);
            const auto t0 = std::chrono::steady_clock::now();
            detail::run_rows(k, W, Q.data(), ldq, T, acc.data(), rows, pool, scaled);
            const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
            // Seconds for the model's MACs, and for the padding rows of the last group that a kernel
            // reading a copy computes in every matrix, which a sample of whole groups (a slice of a
            // larger matrix) does not time: 2048 rows are 25.6 groups of TQ1's 80, 32 of the wide
            // copy's 64.
            const int64_t G = kernel_row_grain(k, W), padded = (W.rows + G - 1) / G * G;
            const double pad = rows < W.rows ? double(padded) / double(W.rows) : 1.0;
            total += s / (double(rows) * double(W.cols) * double(T)) * e.macs * pad;
          }
          return total;
        };
        run_rounds(cands, cost, [&](const Kernel& k) {
          const auto t0 = std::chrono::steady_clock::now();
          const double c = sample(k);
          return std::pair{c, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
        });
        double macs = 0;
        for (auto& [shape, e] : shapes) macs += e.macs;
        for (auto& c : cost) c /= macs;  // seconds per MAC
      }
    }
    const size_t best = cands.empty() ? 0 : detail::pick(cost, opt.near_tie);
    rc.chosen = cands.empty() ? incumbent(r, f) : cands[best];
    for (size_t i = 0; i < cands.size(); ++i)
      rc.candidates.push_back({cands[i].name, cost[i] < 1e299 ? 1e-9 / cost[i] : 0.0});
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return out;
}

// The chooser as a model receives it (ModelOptions::choose_kernels; load_model passes this one).
inline std::function<KernelChoice(const std::vector<const TernaryMatrix*>&, ThreadPool*)> measuring(ChooserOptions opt = {}) {
  return [opt](const std::vector<const TernaryMatrix*>& ms, ThreadPool* pool) { return choose_kernels(ms, pool, opt); };
}

// "avx512 (avx512 31.2, avx2 27.5 GB/s)" for stats lines.
inline std::string describe(const RegimeChoice& rc, Regime r) {
  std::string s = rc.chosen.name;
  const char* unit = r == Regime::Decode ? "GB/s" : "GMAC/s";
  std::string rest;
  for (auto& c : rc.candidates) {
    if (c.rate <= 0) continue;
    char buf[96];
    std::snprintf(buf, sizeof buf, "%s%s %.1f", rest.empty() ? "" : ", ", c.name.c_str(), c.rate);
    rest += buf;
  }
  return rest.empty() ? s : s + " (" + rest + " " + unit + ")";
}

}  // namespace mmfree::kernels
