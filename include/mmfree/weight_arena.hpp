// mmfree: the memory the packed weights live in: one arena, in 2 MiB pages.
//
// Decoding reads every packed weight once per token. Through 4 KiB pages that walk costs a
// TLB miss every 4 KiB and stops the hardware prefetchers at each page edge; measured on an
// Intel Xeon, the same kernel streams 10-11 GB/s from 4 KiB pages and 14-16 GB/s from 2 MiB
// pages on one core. Loaders therefore repack every matrix, once, straight into one anonymous
// region the kernel is asked to back with huge pages (transparent huge pages; without them it
// is ordinary memory). Each matrix's bytes start on a 64-byte boundary.
#pragma once

#include <algorithm>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <memory>
#include <new>

#include "mmfree/error.hpp"
#include "mmfree/kernels/repack.hpp"
#include "mmfree/ternary_format.hpp"
#include "mmfree/thread_pool.hpp"

#if defined(__linux__)
#include <sys/mman.h>
#endif

namespace mmfree {

inline constexpr size_t kHugePage = size_t(2) << 20;

// A zero-filled, 2 MiB-aligned buffer of at least `n` bytes; on Linux an anonymous mapping
// advised as MADV_HUGEPAGE.
inline std::shared_ptr<uint8_t> alloc_huge(size_t n) {
  const size_t size = (std::max<size_t>(n, 1) + kHugePage - 1) / kHugePage * kHugePage;
#if defined(__linux__)
  void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (p == MAP_FAILED) throw std::bad_alloc();
  ::madvise(p, size, MADV_HUGEPAGE);
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [size](uint8_t* q) { ::munmap(q, size); });
#else
  void* p = std::aligned_alloc(kHugePage, size);
  if (!p) throw std::bad_alloc();
  std::memset(p, 0, size);
  return std::shared_ptr<uint8_t>(static_cast<uint8_t*>(p), [](uint8_t* q) { std::free(q); });
#endif
}

// Bytes of memory the system could give this process without swapping (Linux: MemAvailable),
// or 0 where unknown.
inline size_t available_memory() {
#if defined(__linux__)
  if (FILE* f = std::fopen("/proc/meminfo", "r")) {
    char line[256];
    unsigned long long kb = 0;
    while (std::fgets(line, sizeof line, f))
      if (std::sscanf(line, "MemAvailable: %llu kB", &kb) == 1) break;
    std::fclose(f);
    return size_t(kb) * 1024;
  }
#endif
  return 0;
}

// Tell the kernel that [p, p+n) of a file mapping will not be read again, so its pages
// leave this process's resident set (they stay in the page cache). Whole pages only.
inline void release_mapped(const void* p, size_t n) {
#if defined(__linux__)
  const uintptr_t page = 4096, b = (uintptr_t(p) + page - 1) / page * page, e = (uintptr_t(p) + n) / page * page;
  if (e > b) ::madvise(reinterpret_cast<void*>(b), e - b, MADV_DONTNEED);
#else
  (void)p, (void)n;
#endif
}

// One allocation handed out in 64-byte aligned slices. Size it first (reserve every slice),
// then allocate, then take the slices in any order; each slice keeps the whole arena alive.
class WeightArena {
 public:
  static size_t slice_bytes(size_t n) { return (n + 63) / 64 * 64; }

  WeightArena(size_t bytes, bool huge_pages) : size_(bytes) {
    mem_ = huge_pages ? alloc_huge(bytes) : std::shared_ptr<uint8_t>(static_cast<uint8_t*>(std::aligned_alloc(64, slice_bytes(std::max<size_t>(bytes, 1)))), [](uint8_t* p) { std::free(p); });
    if (!mem_) throw std::bad_alloc();
    if (!huge_pages) std::memset(mem_.get(), 0, slice_bytes(std::max<size_t>(bytes, 1)));
  }
  // A slice of n bytes (thread-safe).
  std::shared_ptr<uint8_t> take(size_t n) {
    const size_t off = used_.fetch_add(slice_bytes(n));
    if (off + n > size_) fail("weight arena", "asked for more bytes than it was sized for");
    return std::shared_ptr<uint8_t>(mem_, mem_.get() + off);
  }
  size_t size() const { return size_; }

 private:
  size_t size_;
  std::shared_ptr<uint8_t> mem_;
  std::atomic<size_t> used_{0};
};

// Packs a matrix of `shape` into a slice of `arena` from rows of digits: row(r, c0, c1, d)
// writes the digits of columns [c0, c1) of row r into d (pre-filled with 1), called from every
// pool thread for different rows. Each thread gathers a strip's 16 rows a tile of
// kRepackCols columns at a time (in L1), then encodes the tile's chunks at once.
inline constexpr int64_t kRepackCols = 1280;  // whole blocks of every layout: 256, 160, 20, 16
template <class RowFn>
TernaryMatrix pack_into(WeightArena& arena, TernaryMatrix W, ThreadPool& pool, RowFn&& row) {
  auto mem = arena.take(W.nbytes());
  uint8_t* base = mem.get();
  const int64_t kp = W.padded_cols(), cc = chunk_cols(W.format);
  pool.for_range(W.strips, 1, [&](int64_t s0, int64_t s1) {
    std::vector<uint8_t> d(size_t(kStripRows * kRepackCols));
    for (int64_t s = s0; s < s1; ++s)
      for (int64_t c0 = 0; c0 < kp; c0 += kRepackCols) {
        const int64_t c1 = std::min(c0 + kRepackCols, kp);
        std::fill(d.begin(), d.end(), uint8_t(1));
        for (int i = 0; i < kStripRows && s * kStripRows + i < W.rows; ++i)
          if (c0 < W.cols) row(s * kStripRows + i, c0, std::min(c1, W.cols), d.data() + i * kRepackCols);
        kernels::encode_strip(W.format, d.data(), kRepackCols, (c1 - c0) / cc, base + s * W.strip_bytes() + c0 / cc * kChunkBytes);
      }
  });
  W.data = base;
  W.owner = std::move(mem);
  return W;
}

}  // namespace mmfree
