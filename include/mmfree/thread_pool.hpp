// mmfree: one small fork-join thread pool.
//
// Decoding issues a few hundred short parallel sections per token, so workers spin
// briefly before sleeping: a futex round trip per section would cost more than the work.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstdint>
#include <functional>
#include <mutex>
#include <thread>
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
  explicit ThreadPool(int threads = 1) : n_(std::max(1, threads)) {
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
    fn_ = &fn;
    n_tasks_ = n_tasks;
    next_.store(0, std::memory_order_relaxed);
    pending_.store(n_ - 1, std::memory_order_relaxed);
    generation_.fetch_add(1, std::memory_order_acq_rel);
    generation_.notify_all();
    drain();
    // Spin briefly (the common case: workers finish within microseconds), then yield so a
    // descheduled worker can run when the machine is oversubscribed.
    for (int spin = 0; pending_.load(std::memory_order_acquire) != 0; ++spin) {
      if (spin < 4000) MMFREE_PAUSE();
      else std::this_thread::yield();
    }
    fn_ = nullptr;
  }

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
  void drain() {
    for (;;) {
      int i = next_.fetch_add(1, std::memory_order_relaxed);
      if (i >= n_tasks_) break;
      (*fn_)(i);
    }
  }
  void worker(int) {
    uint64_t seen = 0;
    for (;;) {
      uint64_t g = generation_.load(std::memory_order_acquire);
      for (int spin = 0; g == seen && spin < 20000; ++spin) {
        if (spin < 4000) MMFREE_PAUSE();
        else std::this_thread::yield();
        g = generation_.load(std::memory_order_acquire);
      }
      if (g == seen) {
        generation_.wait(seen, std::memory_order_acquire);
        continue;
      }
      seen = g;
      if (stop_.load(std::memory_order_acquire)) return;
      drain();
      pending_.fetch_sub(1, std::memory_order_acq_rel);
    }
  }

  int n_;
  std::vector<std::thread> workers_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool> stop_{false};
  std::atomic<int> next_{0};
  std::atomic<int> pending_{0};
  int n_tasks_ = 0;
  const std::function<void(int)>* fn_ = nullptr;
  std::mutex driver_;
};

}  // namespace mmfree
