// mmfree: one small fork-join thread pool.
//
// Decoding issues a few hundred short parallel sections per token, so workers spin
// briefly before sleeping: a futex round trip per section would cost more than the work.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
#include <utility>
#include <vector>

#if defined(__linux__)
#include <sched.h>
#endif
#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define MMFREE_PAUSE() _mm_pause()
#else
#define MMFREE_PAUSE() ((void)0)
#endif

namespace mmfree {

// The cores this process may run on (its CPU affinity, as taskset or a container's cpuset
// set it), which can be fewer than the machine has; at least 1.
inline int available_cores() {
#if defined(__linux__)
  cpu_set_t set;
  if (sched_getaffinity(0, sizeof set, &set) == 0) return std::max(1, CPU_COUNT(&set));
#endif
  return int(std::max(1u, std::thread::hardware_concurrency()));
}

class ThreadPool {
 public:
  // `threads` counts the calling thread: ThreadPool(1) runs everything inline.
  explicit ThreadPool(int threads = 1)
      : n_(std::max(1, threads)), share_(size_t(n_), 1.0 / n_), took_(size_t(n_)), warm_(size_t(n_)) {
    for (int i = 1; i < n_; ++i) workers_.emplace_back([this, i] { worker(i); });
  }
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;
  ~ThreadPool() {
    stop_.store(true, std::memory_order_release);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();
    for (auto& w : workers_) w.join();
  }

  int size() const { return n_; }
  // Held by whoever drives the pool (one caller at a time): models sharing a pool (a draft model
  // and its target) take turns, and a caller that finds it taken computes on its own thread.
  std::mutex& driver() { return driver_; }

  // Calls fn(i) for i in [0, n_tasks) across the pool; returns when all are done.
  // Not re-entrant: callers serialise use of one pool (Model does).
  void run(int n_tasks, const std::function<void(int)>& fn) {
    if (n_ == 1 || n_tasks <= 1) {
      for (int i = 0; i < n_tasks; ++i) fn(i);
      return;
    }
    start(n_tasks, fn, false);
    drain();
    finish();
  }

  // Splits [0, n) into one contiguous range per thread (multiples of `grain`), thread i taking
  // range i, sized by how fast each thread got through its range in earlier calls. On shared
  // machines one vCPU often runs 5-20% slower than the other for long stretches; equal halves
  // then leave the faster thread waiting at the end of every section (6% of a decoding step
  // on AMD Zen 5), while ranges handed out as threads come cost a restart of the weight stream
  // each. The shares move by a sixteenth of the measured difference per call, within [1/2, 3/2]
  // of an equal share; a thread that the OS deschedules gives work away within a few calls.
  void for_range_balanced(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn,
                          bool pieces = true) {
    const int64_t chunks = std::max<int64_t>(1, (n + grain - 1) / grain);
    if (n_ == 1 || chunks < 2 * n_) return for_range(n, grain, fn, 1);
    std::vector<int64_t> bound(size_t(n_) + 1, 0);
    double cum = 0;
    for (int i = 0; i < n_; ++i) {
      cum += share_[size_t(i)];
      bound[size_t(i) + 1] = i + 1 == n_ ? n : std::min(n, int64_t(cum * double(chunks) + 0.5) * grain);
    }
    // Range i in pieces: its first three quarters, then sixteenths. The owner takes them in
    // order (one stream: each piece's start was prefetched by the piece before); a thread done
    // with its own range takes the pieces left in the others' (a thread the OS lends to another
    // process mid-section, such as the server's HTTP threads, holds nobody up). Without
    // `pieces`, one piece per range: for sections of a few tens of microseconds (one token), where
    // the extra calls measured 8% of a step and 1% at 5 tokens and in a prefill.
    auto piece = [&](int i, int k, int64_t& b, int64_t& e) {
      const int64_t lo = bound[size_t(i)], hi = std::max(lo, bound[size_t(i) + 1]);
      const int64_t len = (hi - lo) / grain, head = len * 3 / 4, step = std::max<int64_t>(1, (len + 15) / 16);
      if (!pieces) {
        b = lo, e = k == 0 ? hi : lo;
      } else if (k == 0) {
        b = lo, e = std::min(hi, lo + std::max<int64_t>(head, 1) * grain);
      } else {
        b = std::min(hi, lo + (std::max<int64_t>(head, 1) + (k - 1) * step) * grain);
        e = std::min(hi, b + step * grain);
      }
      return b < e;
    };
    for (int i = 0; i < n_; ++i) took_[size_t(i)].next.store(0, std::memory_order_relaxed);
    const std::function<void(int)> task = [&](int i) {
      const auto t0 = std::chrono::steady_clock::now();
      int64_t rows = 0, b = 0, e = 0;
      for (int j = 0; j < n_; ++j) {
        const int r = (i + j) % n_;
        while (piece(r, took_[size_t(r)].next.fetch_add(1, std::memory_order_relaxed), b, e)) fn(b, e), rows += e - b;
      }
      took_[size_t(i)].rows = rows;
      took_[size_t(i)].seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    };
    start(n_, task, true);
    task(0);
    finish();
    rebalance();
  }
  // Workers stop spinning and sleep until the next section; returns once every worker sleeps.
  // For timing something else on the same cores between sections, such as the roofline's probes
  // between a benchmark's steps: a worker still spinning after the last section took a core from
  // the probe for up to ~20 ms, and the int8 probe read 595-803 GMAC/s where it read 823 in a
  // process of its own and the model's prefill ran at 685-698 (AMD Zen 5, 2 threads).
  void rest() {
    resting_.store(true, std::memory_order_release);
    while (sleeping_.load(std::memory_order_acquire) < n_ - 1) std::this_thread::yield();
  }

  // What a thread prefetches while it waits, from the section this call precedes on: the first
  // `budget` bytes of its share of [p, p + bytes) (the weights the next section reads, split as
  // for_range_balanced splits rows; null: nothing). A thread that finishes its range first waits
  // at the join, and a single token's per-token work runs on the calling thread alone; meanwhile
  // the memory would stand idle. The prefetches go into L2, and a thread stops issuing them the
  // moment the next section starts.
  void warm_next(const void* p, size_t bytes, size_t budget) {
    if (n_ == 1) return;
    double cum = 0;
    for (int i = 0; i < n_; ++i) {
      const char* from = p ? static_cast<const char*>(p) + size_t(cum * double(bytes)) : nullptr;
      cum += share_[size_t(i)];
      const size_t len = p ? std::min(budget, size_t(share_[size_t(i)] * double(bytes))) : 0;
      warm_[size_t(i)].from.store(from, std::memory_order_relaxed);
      warm_[size_t(i)].to.store(from ? from + len : nullptr, std::memory_order_relaxed);
      warm_[size_t(i)].seq.fetch_add(1, std::memory_order_release);
    }
  }
  // Thread i's bytes to warm, as warm_next set them ([null, null): none).
  std::pair<const void*, const void*> warm_range(int i) const {
    return {warm_[size_t(i)].from.load(std::memory_order_relaxed), warm_[size_t(i)].to.load(std::memory_order_relaxed)};
  }
  // The current shares of for_range_balanced, one per thread (they sum to 1).
  std::vector<double> shares() const { return share_; }

  // Splits [0, n) into `per_thread` contiguous ranges per thread, multiples of `grain`, handed
  // out as threads come for them: with several per thread, a thread slowed by a neighbour (a
  // shared machine's other tenants) takes fewer, and the others do not wait for it.
  void for_range(int64_t n, int64_t grain, const std::function<void(int64_t, int64_t)>& fn, int per_thread = 1) {
    const int64_t chunks = std::max<int64_t>(1, (n + grain - 1) / grain);
    const int parts = int(std::min<int64_t>(int64_t(n_) * std::max(per_thread, 1), chunks));
    run(parts, [&](int p) {
      const int64_t b = chunks * p / parts * grain, e = std::min(n, chunks * (p + 1) / parts * grain);
      if (b < e) fn(b, e);
    });
  }

 private:
  void start(int n_tasks, const std::function<void(int)>& fn, bool pinned) {
    resting_.store(false, std::memory_order_relaxed);
    fn_ = &fn;
    n_tasks_ = n_tasks;
    pinned_ = pinned;
    next_.store(pinned ? n_tasks : 0, std::memory_order_relaxed);
    pending_.store(n_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();
  }
  // Where thread i is in its bytes to warm (warm_next); each thread keeps its own.
  struct WarmCursor {
    uint32_t seq = 0;
    const char* at = nullptr;
    const char* to = nullptr;
  };
  // Prefetches thread i's next 4 lines to warm; false when there are none (nothing to warm, or
  // the budget spent). A torn read of a target being replaced only prefetches stray lines.
  bool warm_some(int i, WarmCursor& c) {
    Warm& w = warm_[size_t(i)];
    const uint32_t q = w.seq.load(std::memory_order_acquire);
    if (q != c.seq) c.seq = q, c.at = w.from.load(std::memory_order_relaxed), c.to = w.to.load(std::memory_order_relaxed);
    if (!c.at || c.at >= c.to) return false;
    for (int k = 0; k < 4; ++k) __builtin_prefetch(c.at + 64 * k, 0, 2);  // (into L2: _MM_HINT_T1)
    c.at += 256;
    return true;
  }
  void finish() {
    // Spin briefly (the common case: workers finish within microseconds), then yield so a
    // descheduled worker can run when the machine is oversubscribed.
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
      if (warm_some(0, cursor0_)) continue;
      if (spin < 4000) MMFREE_PAUSE();
      else std::this_thread::yield();
    }
    fn_ = nullptr;
  }
  // Moves each share a sixteenth of the way to what would have made every thread finish
  // together (its rows per second over the sum of all threads'). Calls too short to time
  // (under 20 microseconds for some thread) leave the shares as they are.
  void rebalance() {
    std::vector<double> rate(static_cast<size_t>(n_));
    double sum = 0;
    for (int i = 0; i < n_; ++i) {
      const double rows = double(took_[size_t(i)].rows), sec = took_[size_t(i)].seconds;
      if (rows <= 0 || sec < 20e-6) return;
      rate[size_t(i)] = rows / sec;
      sum += rate[size_t(i)];
    }
    double total = 0;
    for (int i = 0; i < n_; ++i) {
      double& s = share_[size_t(i)];
      s = std::clamp(s + (rate[size_t(i)] / sum - s) / 16, 0.5 / n_, 1.5 / n_);
      total += s;
    }
    for (double& s : share_) s /= total;
  }
  void drain() {
    for (;;) {
      int i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_tasks_) break;
      (*fn_)(i);
    }
  }
  void worker(int i) {
    uint64_t seen = 0;
    WarmCursor cursor;
    for (;;) {
      uint64_t g = generation_.load(std::memory_order_acquire);
      for (int spin = 0; g == seen && spin < 20000 && !resting_.load(std::memory_order_acquire); ++spin) {
        if (warm_some(i, cursor)) { g = generation_.load(std::memory_order_acquire); continue; }
        if (spin < 4000) MMFREE_PAUSE();
        else std::this_thread::yield();
        g = generation_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        sleeping_.fetch_add(1, std::memory_order_acq_rel);
        generation_.wait(seen, std::memory_order_acquire);
        sleeping_.fetch_sub(1, std::memory_order_acq_rel);
        continue;
      }
      seen = g;
      if (stop_.load(std::memory_order_acquire)) return;
      if (pinned_) (*fn_)(i);
      else drain();
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> next_{0};
  std::atomic<int> pending_{0};
  std::atomic<bool> resting_{false};  // rest(): workers sleep at once instead of spinning
  std::atomic<int> sleeping_{0};      // workers waiting on generation_
  int n_tasks_ = 0;
  bool pinned_ = false;  // task i runs on thread i (for_range_balanced)
  const std::function<void(int)>* fn_ = nullptr;
  std::mutex driver_;
  std::vector<double> share_;  // for_range_balanced: each thread's share of the range
  struct alignas(64) Took {     // range i's next piece; rows thread i did, in how long
    std::atomic<int> next{0};
    int64_t rows = 0;
    double seconds = 0;
  };
  std::vector<Took> took_;
  struct alignas(64) Warm {  // thread i's bytes to warm (warm_next), seq counting the changes
    std::atomic<const char*> from{nullptr}, to{nullptr};
    std::atomic<uint32_t> seq{0};
  };
  std::vector<Warm> warm_;
  WarmCursor cursor0_;  // the calling thread's
};

}  // namespace mmfree
