// mmfree: AMX-INT8 ternary kernel for many tokens at once (prefill, batched decoding).
//
// One tile product (tdpbsud) adds 16 x 16 x 64 signed-by-unsigned byte products into a 16 x 16
// int32 tile: 16 times the work of an AVX-512 vpdpbusd. The strip layout makes the three tiles
// simple: A = 16 tokens x 64 columns of activations, loaded straight from the activation rows;
// B = 64 columns x 16 rows of digits, which is exactly 16 groups of a strip's unpacked digit planes
// (the AVX-512 kernel's buffer); C = 16 tokens x 16 rows, each C row one token's 16 consecutive
// outputs. sum w*q = sum d*q - sum q is applied when C is stored. Two strips x two token tiles
// use all 8 tiles: 4 accumulators, 2 A and 2 B.
//
// A single token would use 1/16 of each tile: fewer than kMinTokens go to the AVX-512 kernel.
//
// Built with MMFREE_AMX_EMULATE (a test build), the tile instructions run on a C++ model of
// their documented semantics, so the kernel's addressing is tested on CPUs without AMX.
#pragma once

#if defined(__x86_64__)
#include <immintrin.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cstdint>
#include <cstring>
#include <vector>

#include "mmfree/kernels/simd_warnings.hpp"
#include "mmfree/kernels/ternary_avx512.hpp"
#include "mmfree/ternary_format.hpp"

MMFREE_SIMD_WARNINGS_PUSH

#define MMFREE_TARGET_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512dq,avx512vnni,amx-tile,amx-int8")))

namespace mmfree::kernels::amx {

inline constexpr int64_t kMinTokens = 16;

#if defined(MMFREE_AMX_EMULATE)
// Tiles as arrays; each function does what the instruction of the same name documents.
namespace emu {
struct Tiles {
  alignas(64) uint8_t t[8][16][64];
};
inline Tiles& tiles() {
  thread_local Tiles t;
  return t;
}
inline void load(int i, const void* p, int64_t stride) {
  for (int r = 0; r < 16; ++r) std::memcpy(tiles().t[i][r], static_cast<const uint8_t*>(p) + r * stride, 64);
}
inline void store(int i, void* p, int64_t stride) {
  for (int r = 0; r < 16; ++r) std::memcpy(static_cast<uint8_t*>(p) + r * stride, tiles().t[i][r], 64);
}
inline void zero(int i) { std::memset(tiles().t[i], 0, sizeof tiles().t[i]); }
// C[m][n] += sum_k A[m][4k + j] (signed) * B[k][4n + j] (unsigned), j = 0..3.
inline void dpbsud(int c, int a, int b) {
  for (int m = 0; m < 16; ++m)
    for (int n = 0; n < 16; ++n) {
      int32_t acc;
      std::memcpy(&acc, &tiles().t[c][m][4 * n], 4);
      for (int k = 0; k < 16; ++k)
        for (int j = 0; j < 4; ++j) acc += int32_t(int8_t(tiles().t[a][m][4 * k + j])) * int32_t(tiles().t[b][k][4 * n + j]);
      std::memcpy(&tiles().t[c][m][4 * n], &acc, 4);
    }
}
}  // namespace emu
#define MMFREE_TILE_LOAD(i, p, s) emu::load(i, p, s)
#define MMFREE_TILE_STORE(i, p, s) emu::store(i, p, s)
#define MMFREE_TILE_ZERO(i) emu::zero(i)
#define MMFREE_TILE_DPBSUD(c, a, b) emu::dpbsud(c, a, b)
#define MMFREE_TILE_CONFIG(cfg) ((void)(cfg))
#define MMFREE_TILE_RELEASE() ((void)0)
#else
// The tile number is part of the instruction, so these take literals.
#define MMFREE_TILE_LOAD(i, p, s) _tile_loadd(i, p, s)
#define MMFREE_TILE_STORE(i, p, s) _tile_stored(i, p, s)
#define MMFREE_TILE_ZERO(i) _tile_zero(i)
#define MMFREE_TILE_DPBSUD(c, a, b) _tile_dpbsud(c, a, b)
#define MMFREE_TILE_CONFIG(cfg) _tile_loadconfig(cfg)
#define MMFREE_TILE_RELEASE() _tile_release()
#endif

// The CPU has AMX-INT8 and the OS lets this process use tile data (Linux asks each process
// to request it, arch_prctl ARCH_REQ_XCOMP_PERM; the permission covers all its threads).
inline bool available() {
#if defined(MMFREE_AMX_EMULATE)
  return true;
#else
  static const bool ok = [] {
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    const bool amx_tile = (d >> 24) & 1, amx_int8 = (d >> 25) & 1;
    if (!amx_tile || !amx_int8) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
#endif
}

// Palette 1, all 8 tiles 16 rows of 64 bytes: 0-3 accumulators, 4-5 activations, 6-7 digits.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int i = 0; i < 8; ++i) colsb[i] = 64, rows[i] = 16;
  }
};

// C tile (16 tokens x 16 rows of strip s) -> out, minus each token's sum of activations, for the
// rows inside [r0, r1) and the tokens below n.
MMFREE_TARGET_AMX inline void store_c(const int32_t* C, int64_t t, int64_t n, int64_t s, int64_t r0, int64_t r1,
                                      const int32_t* qsum, int32_t* out, int64_t ldo) {
  const __mmask16 m = avx512::row_mask(s, r0, r1);
  for (int64_t j = 0; j < 16 && t + j < n; ++j)
    avx512::store_rows(out + (t + j) * ldo + s * kStripRows, _mm512_load_si512(C + 16 * j), qsum[t + j], m);
}

// Two strips (digit planes at D, groups interleaved) x two token tiles of A rows.
template <int RS, int TT>
MMFREE_TARGET_AMX inline void tile_product(const uint8_t* D, const int8_t* A0, const int8_t* A1, int64_t lda,
                                           int64_t kcs) {
  MMFREE_TILE_ZERO(0);
  if constexpr (TT == 2) MMFREE_TILE_ZERO(1);
  if constexpr (RS == 2) MMFREE_TILE_ZERO(2);
  if constexpr (RS == 2 && TT == 2) MMFREE_TILE_ZERO(3);
  for (int64_t kc = 0; kc < kcs; ++kc) {
    MMFREE_TILE_LOAD(4, A0 + 64 * kc, lda);
    MMFREE_TILE_LOAD(6, D + kc * 16 * RS * 64, RS * 64);
    MMFREE_TILE_DPBSUD(0, 4, 6);
    if constexpr (TT == 2) {
      MMFREE_TILE_LOAD(5, A1 + 64 * kc, lda);
      MMFREE_TILE_DPBSUD(1, 5, 6);
    }
    if constexpr (RS == 2) {
      MMFREE_TILE_LOAD(7, D + kc * 16 * RS * 64 + 64, RS * 64);
      MMFREE_TILE_DPBSUD(2, 4, 7);
      if constexpr (TT == 2) MMFREE_TILE_DPBSUD(3, 5, 7);
    }
  }
}

template <int RS>
MMFREE_TARGET_AMX inline void strips_over_tokens(const uint8_t* D, const int8_t* Q, int64_t ldq, int64_t n,
                                                 const int8_t* tail, int64_t kcs, int64_t s, int64_t r0, int64_t r1,
                                                 const int32_t* qsum, int32_t* out, int64_t ldo, int32_t* C) {
  const int64_t tiles = (n + 15) / 16, full = n / 16;
  // Token tile tt: full tiles read the activation rows in place; the last partial one a
  // zero-padded copy (rows past n must not be read).
  auto rows_of = [&](int64_t tt) { return tt < full ? Q + tt * 16 * ldq : tail; };
  for (int64_t tt = 0; tt < tiles; tt += 2) {
    const bool pair = tt + 1 < tiles;
    if (pair) tile_product<RS, 2>(D, rows_of(tt), rows_of(tt + 1), ldq, kcs);
    else tile_product<RS, 1>(D, rows_of(tt), nullptr, ldq, kcs);
    // Tile 2i + j: strip s + i, tokens 16 (tt + j).
    MMFREE_TILE_STORE(0, C, 64);
    store_c(C, 16 * tt, n, s, r0, r1, qsum, out, ldo);
    if (pair) {
      MMFREE_TILE_STORE(1, C, 64);
      store_c(C, 16 * (tt + 1), n, s, r0, r1, qsum, out, ldo);
    }
    if constexpr (RS == 2) {
      MMFREE_TILE_STORE(2, C, 64);
      store_c(C, 16 * tt, n, s + 1, r0, r1, qsum, out, ldo);
      if (pair) {
        MMFREE_TILE_STORE(3, C, 64);
        store_c(C, 16 * (tt + 1), n, s + 1, r0, r1, qsum, out, ldo);
      }
    }
  }
}

// Same contract as ternary_gemm_scalar; fewer than kMinTokens go to the AVX-512 kernel.
MMFREE_TARGET_AMX inline void ternary_gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                           int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (n < kMinTokens || r0 >= r1) {
    avx512::ternary_gemm<false>(W, Q, ldq, n, out, ldo, r0, r1);
    return;
  }
  // K in tiles of 64 columns: kp rounded up; the digits past kp stay zero, the activations
  // there are zero padding (ldq is a multiple of kActivationAlign, itself of 64).
  const int64_t groups = W.padded_cols() / 4, kcs = (groups + 15) / 16, lda = ldq;
  thread_local avx512::Scratch dbuf, tbuf, cbuf, sbuf;
  uint8_t* D = dbuf.get(size_t(kcs * 16 * 2 * 64));
  std::memset(D + groups * 2 * 64, 0, size_t((kcs * 16 - groups) * 2 * 64));
  int8_t* tail = reinterpret_cast<int8_t*>(tbuf.get(size_t(16 * ldq)));
  int32_t* C = reinterpret_cast<int32_t*>(cbuf.get(1024));
  int32_t* qsum = reinterpret_cast<int32_t*>(sbuf.get(size_t(n) * 4));
  for (int64_t t = 0; t < n; ++t) qsum[t] = avx512::sum_q(Q + t * ldq, W.padded_cols());
  const int64_t full = n / 16;
  std::memset(tail, 0, size_t(16 * ldq));
  if (n % 16) std::memcpy(tail, Q + full * 16 * ldq, size_t((n % 16) * ldq));

  const avx512::UnpackFn unpack = W.format == TernaryFormat::TQ2 ? avx512::unpack_tq2
                                  : __builtin_cpu_supports("avx512vbmi") ? avx512::unpack_tq1_vbmi
                                                                         : avx512::unpack_tq1;
  static const TileConfig config;
  MMFREE_TILE_CONFIG(&config);
  const int64_t s1 = (r1 + kStripRows - 1) / kStripRows;
  int64_t s = r0 / kStripRows;
  for (; s + 2 <= s1; s += 2) {
    unpack(W, s, 0, 2, D);
    unpack(W, s + 1, 1, 2, D);
    strips_over_tokens<2>(D, Q, lda, n, tail, kcs, s, r0, r1, qsum, out, ldo, C);
  }
  if (s < s1) {
    // One strip: its planes with stride 64 (the buffer's RG = 1 layout).
    unpack(W, s, 0, 1, D);
    std::memset(D + groups * 64, 0, size_t((kcs * 16 - groups) * 64));
    strips_over_tokens<1>(D, Q, lda, n, tail, kcs, s, r0, r1, qsum, out, ldo, C);
  }
  // Back to the initial state: a process holding tile data pays for it at every context switch.
  MMFREE_TILE_RELEASE();
}

}  // namespace mmfree::kernels::amx

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__
