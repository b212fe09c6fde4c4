// mmfree: AMX-INT8 ternary kernel for many tokens at once (prefill).
//
// An AMX tile multiply (tdpbusd) adds 16 x 16 x 64 unsigned-by-signed byte products into
// a 16 x 16 int32 tile: 16 times the work of one AVX-512 vpdpbusd. As in the AVX-512
// kernel, the weights enter as digits d = w + 1 in {0, 1, 2} and sum w*q = sum d*q - sum q.
//
// Tiles: A = digits of 16 weight rows x 64 columns (row-major, as TQ2 unpacks them);
// B = activations of 16 tokens x 64 columns in the "VNNI" layout AMX wants (row g holds
// columns 4g..4g+3 of each token in turn), laid out once per call; C = 16 rows x 16
// tokens, transposed on the way out because the output is token-major.
//
// A single token would use 1/16 of each tile: decoding stays on the AVX-512 kernel.
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

#define MMFREE_TARGET_AMX __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni,amx-tile,amx-int8")))

namespace mmfree::kernels::amx {

// Fewer tokens than this go to the AVX-512 kernel (its register tiles waste nothing).
inline constexpr int64_t kMinTokens = 16;

// The CPU has AMX-INT8 and the OS lets this process use tile data (Linux asks each process
// to request it, arch_prctl ARCH_REQ_XCOMP_PERM; the permission covers all its threads).
inline bool available() {
  static const bool ok = [] {
    unsigned a, b, c, d;
    __asm__("cpuid" : "=a"(a), "=b"(b), "=c"(c), "=d"(d) : "a"(7), "c"(0));
    const bool amx_tile = (d >> 24) & 1, amx_int8 = (d >> 25) & 1;
    if (!amx_tile || !amx_int8) return false;
    constexpr long kArchReqXcompPerm = 0x1023, kXfeatureXtiledata = 18;
    return syscall(SYS_arch_prctl, kArchReqXcompPerm, kXfeatureXtiledata) == 0;
  }();
  return ok;
}

// Palette 1: tiles 0-3 are 16 x 16 int32 accumulators, 4-5 digit tiles, 6-7 activation
// tiles; all 16 rows of 64 bytes.
struct alignas(64) TileConfig {
  uint8_t palette = 1, start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t colsb[16] = {};
  uint8_t rows[16] = {};
  TileConfig() {
    for (int i = 0; i < 8; ++i) colsb[i] = 64, rows[i] = 16;
  }
};

// 16 x 16 transpose of 32-bit elements: out[j] holds element j of in[0..15].
MMFREE_TARGET_AMX inline void transpose16(const __m512i in[16], __m512i out[16]) {
  __m512i t[16], u[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_unpacklo_epi32(in[2 * i], in[2 * i + 1]);
    t[2 * i + 1] = _mm512_unpackhi_epi32(in[2 * i], in[2 * i + 1]);
  }
  // u[4i + c], 128-bit lane L: element 4L + c of rows 4i..4i+3.
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = _mm512_unpacklo_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 1] = _mm512_unpackhi_epi64(t[4 * i], t[4 * i + 2]);
    u[4 * i + 2] = _mm512_unpacklo_epi64(t[4 * i + 1], t[4 * i + 3]);
    u[4 * i + 3] = _mm512_unpackhi_epi64(t[4 * i + 1], t[4 * i + 3]);
  }
  // Element 4L + c of all rows: lane L of u[c], u[4 + c], u[8 + c], u[12 + c].
  for (int c = 0; c < 4; ++c) {
    const __m512i v0 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0x44), v1 = _mm512_shuffle_i32x4(u[c], u[4 + c], 0xEE);
    const __m512i w0 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0x44), w1 = _mm512_shuffle_i32x4(u[8 + c], u[12 + c], 0xEE);
    out[c] = _mm512_shuffle_i32x4(v0, w0, 0x88);
    out[4 + c] = _mm512_shuffle_i32x4(v0, w0, 0xDD);
    out[8 + c] = _mm512_shuffle_i32x4(v1, w1, 0x88);
    out[12 + c] = _mm512_shuffle_i32x4(v1, w1, 0xDD);
  }
}

// 64-byte aligned scratch that keeps its capacity between calls.
struct AlignedBuffer {
  std::vector<uint8_t> bytes;
  uint8_t* get(size_t n) {
    if (bytes.size() < n + 64) bytes.resize(n + 64);
    return bytes.data() + (64 - reinterpret_cast<uintptr_t>(bytes.data()) % 64) % 64;
  }
};

// Activations of tokens [0, n) as B tiles: tile (tt, kc) at B + (tt * kcs + kc) * 1024
// holds tokens 16tt.. and columns 64kc..; missing tokens and columns past kp are zero.
MMFREE_TARGET_AMX inline void layout_activations(const int8_t* Q, int64_t ldq, int64_t n, int64_t kp, int64_t kcs,
                                                 uint8_t* B) {
  for (int64_t tt = 0; tt * 16 < n; ++tt)
    for (int64_t kc = 0; kc < kcs; ++kc) {
      // TQ1 rows end mid-chunk (kp is a multiple of 160); Q is only readable to kp.
      const int64_t left = kp - kc * 64;
      const __mmask64 cols = left >= 64 ? ~__mmask64(0) : (__mmask64(1) << left) - 1;
      __m512i rows[16], t[16];
      for (int64_t i = 0; i < 16; ++i)
        rows[i] = tt * 16 + i < n ? _mm512_maskz_loadu_epi8(cols, Q + (tt * 16 + i) * ldq + kc * 64)
                                  : _mm512_setzero_si512();
      transpose16(rows, t);
      uint8_t* tile = B + (tt * kcs + kc) * 1024;
      for (int g = 0; g < 16; ++g) _mm512_store_si512(tile + g * 64, t[g]);
    }
}

// Digits of one weight row into its row of the A tiles: column c goes to
// dst + (c / 64) * 1024 + c % 64.
MMFREE_TARGET_AMX inline void unpack_row_tq2(const uint8_t* w, int64_t blocks, uint8_t* dst) {
  for (int64_t b = 0; b < blocks; ++b) {  // 64 bytes -> columns 256b + 64k + j, digit k of byte j
    const __m512i raw = _mm512_loadu_si512(w + b * 64);
    _mm512_store_si512(dst + (4 * b + 0) * 1024, avx512::tq2_digits<0>(raw));
    _mm512_store_si512(dst + (4 * b + 1) * 1024, avx512::tq2_digits<1>(raw));
    _mm512_store_si512(dst + (4 * b + 2) * 1024, avx512::tq2_digits<2>(raw));
    _mm512_store_si512(dst + (4 * b + 3) * 1024, avx512::tq2_digits<3>(raw));
  }
}
// 32 digits for columns [col, col + 32), col a multiple of 32: one half of a tile row.
MMFREE_TARGET_AMX inline void put32(uint8_t* dst, int64_t col, __m256i d) {
  _mm256_store_si256(reinterpret_cast<__m256i*>(dst + col / 64 * 1024 + col % 64), d);
}
MMFREE_TARGET_AMX inline void unpack_row_tq1(const uint8_t* w, int64_t blocks, uint8_t* dst) {
  // 32 bytes -> columns 160b + 32k + j; two blocks per register, as in the AVX-512 kernel.
  int64_t b = 0;
  for (; b + 2 <= blocks; b += 2) {
    __m512i m = _mm512_loadu_si512(w + b * 32);
    for (int k = 0; k < 5; ++k) {
      const __m512i d = avx512::tq1_digit_of(m);
      put32(dst, b * 160 + 32 * k, _mm512_castsi512_si256(d));
      put32(dst, (b + 1) * 160 + 32 * k, _mm512_extracti64x4_epi64(d, 1));
      m = avx512::times3(m);
    }
  }
  if (b < blocks) {
    __m512i m = _mm512_zextsi256_si512(_mm256_loadu_si256((const __m256i*)(w + b * 32)));
    for (int k = 0; k < 5; ++k) {
      put32(dst, b * 160 + 32 * k, _mm512_castsi512_si256(avx512::tq1_digit_of(m)));
      m = avx512::times3(m);
    }
    put32(dst, b * 160 + 160, _mm256_setzero_si256());  // the rest of the last chunk (160b + 160 = kp)
  }
}

// Digits of rows [r, r + 16 * RT) (rows from r1 on are zero) as A tiles: tile (i, kc) at
// D + (i * kcs + kc) * 1024.
template <int RT>
MMFREE_TARGET_AMX inline void unpack_digits(const TernaryMatrix& W, int64_t r, int64_t r1, int64_t kcs, uint8_t* D) {
  for (int64_t rr = 0; rr < 16 * RT; ++rr) {
    uint8_t* dst = D + (rr / 16) * kcs * 1024 + (rr % 16) * 64;
    if (r + rr >= r1)
      for (int64_t kc = 0; kc < kcs; ++kc) _mm512_store_si512(dst + kc * 1024, _mm512_setzero_si512());
    else if (W.format == TernaryFormat::TQ2)
      unpack_row_tq2(W.row(r + rr), W.blocks_per_row, dst);
    else
      unpack_row_tq1(W.row(r + rr), W.blocks_per_row, dst);
  }
}

// C tile (16 rows x 16 tokens, at C) -> out[t * ldo + r] = C - qsum[t], for the rows below
// r1 and the tokens below n.
MMFREE_TARGET_AMX inline void store_transposed(const int32_t* C, int64_t r, int64_t r1, int64_t t, int64_t n,
                                               const int32_t* qsum, int32_t* out, int64_t ldo) {
  __m512i rows[16], cols[16];
  for (int i = 0; i < 16; ++i) rows[i] = _mm512_load_si512(C + i * 16);
  transpose16(rows, cols);
  const __mmask16 valid = r1 - r >= 16 ? __mmask16(0xFFFF) : __mmask16((1u << (r1 - r)) - 1);
  for (int64_t j = 0; j < 16 && t + j < n; ++j)
    _mm512_mask_storeu_epi32(out + (t + j) * ldo + r, valid, _mm512_sub_epi32(cols[j], _mm512_set1_epi32(qsum[t + j])));
}

// RT digit tiles x TT activation tiles of accumulators over all kcs column chunks.
template <int RT, int TT>
MMFREE_TARGET_AMX inline void tile_product(const uint8_t* D, const uint8_t* B, int64_t kcs) {
  _tile_zero(0);
  if constexpr (TT == 2) _tile_zero(1);
  if constexpr (RT == 2) _tile_zero(2);
  if constexpr (RT == 2 && TT == 2) _tile_zero(3);
  for (int64_t kc = 0; kc < kcs; ++kc) {
    _tile_loadd(4, D + kc * 1024, 64);
    _tile_loadd(6, B + kc * 1024, 64);
    _tile_dpbusd(0, 4, 6);
    if constexpr (TT == 2) {
      _tile_loadd(7, B + (kcs + kc) * 1024, 64);
      _tile_dpbusd(1, 4, 7);
    }
    if constexpr (RT == 2) {
      _tile_loadd(5, D + (kcs + kc) * 1024, 64);
      _tile_dpbusd(2, 5, 6);
      if constexpr (TT == 2) _tile_dpbusd(3, 5, 7);
    }
  }
}

// Rows [r, r + 16 RT) against every token: digits unpacked once, then every token tile
// pair passes over them.
template <int RT>
MMFREE_TARGET_AMX inline void row_strip(const TernaryMatrix& W, int64_t r, int64_t r1, const uint8_t* B, int64_t n,
                                        int64_t kcs, const int32_t* qsum, int32_t* out, int64_t ldo, uint8_t* D,
                                        int32_t* C) {
  unpack_digits<RT>(W, r, r1, kcs, D);
  const int64_t tiles = (n + 15) / 16;
  for (int64_t tt = 0; tt < tiles; tt += 2) {
    const uint8_t* b = B + tt * kcs * 1024;
    const bool pair = tt + 1 < tiles;
    if (pair) tile_product<RT, 2>(D, b, kcs);
    else tile_product<RT, 1>(D, b, kcs);
    // Tile (i, j) holds rows r + 16i, tokens 16(tt + j). (The tile intrinsics paste their
    // tile number into the instruction, so it must be a literal: hence the chain of ifs.)
    for (int i = 0; i < RT; ++i)
      for (int j = 0; j < (pair ? 2 : 1); ++j) {
        const int tile = 2 * i + j;
        if (tile == 0) _tile_stored(0, C, 64);
        if (tile == 1) _tile_stored(1, C, 64);
        if (tile == 2) _tile_stored(2, C, 64);
        if (tile == 3) _tile_stored(3, C, 64);
        store_transposed(C, r + 16 * i, r1, 16 * (tt + j), n, qsum, out, ldo);
      }
  }
}

// n >= kMinTokens: out[t * ldo + r] for rows [r0, r1). Fewer tokens go to the AVX-512 kernel.
MMFREE_TARGET_AMX inline void ternary_gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                           int32_t* out, int64_t ldo, int64_t r0, int64_t r1) {
  if (n < kMinTokens || r0 >= r1) {
    avx512::ternary_gemm(W, Q, ldq, n, out, ldo, r0, r1);
    return;
  }
  const int64_t kp = W.padded_cols(), kcs = (kp + 63) / 64;
  thread_local AlignedBuffer b_buf, d_buf, c_buf;
  thread_local std::vector<int32_t> qsum;
  uint8_t* B = b_buf.get(size_t((n + 15) / 16 * kcs * 1024));
  uint8_t* D = d_buf.get(size_t(2 * kcs * 1024));
  int32_t* C = reinterpret_cast<int32_t*>(c_buf.get(1024));
  qsum.resize(size_t(n));
  for (int64_t t = 0; t < n; ++t) qsum[size_t(t)] = avx512::sum_q(Q + t * ldq, kp);
  layout_activations(Q, ldq, n, kp, kcs, B);

  static const TileConfig config;
  _tile_loadconfig(&config);
  int64_t r = r0;
  for (; r + 16 < r1; r += 32) row_strip<2>(W, r, r1, B, n, kcs, qsum.data(), out, ldo, D, C);
  if (r < r1) row_strip<1>(W, r, r1, B, n, kcs, qsum.data(), out, ldo, D, C);
  // Back to the initial state: a process holding tile data pays for it at every context switch.
  _tile_release();
}

}  // namespace mmfree::kernels::amx

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__
