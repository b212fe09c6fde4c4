// mmfree: NEON ternary kernels (AArch64; every AArch64 CPU has NEON, so no run-time check).
//
// As on x86 the digits d = w + 1 in {0, 1, 2} select, and sum w*q = sum d*q - sum q.
// vmlal_s8 adds d*q (|d*q| <= 256) into int16 lanes: a block puts at most 32 terms in a
// lane (|sum| <= 8192), far from overflow, and each block is then widened
// into int32 with vpadalq_s16. Tested bit for bit against the scalar reference under
// qemu-aarch64 (tests/cross).
#pragma once

#if defined(__aarch64__)
#include <arm_neon.h>

#include <cstdint>

#include "mmfree/kernels/row_driver.hpp"
#include "mmfree/ternary_format.hpp"

namespace mmfree::kernels::neon {

inline int32_t sum_q(const int8_t* q, int64_t n) {
  int32x4_t acc = vdupq_n_s32(0);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) acc = vpadalq_s16(acc, vpaddlq_s8(vld1q_s8(q + i)));
  int32_t s = vaddvq_s32(acc);
  for (; i < n; ++i) s += q[i];
  return s;
}

// 16 digits times 16 activations, added into the int16 accumulator.
inline int16x8_t mla16(int16x8_t acc, uint8x16_t d, int8x16_t x) {
  const int8x16_t ds = vreinterpretq_s8_u8(d);
  acc = vmlal_s8(acc, vget_low_s8(ds), vget_low_s8(x));
  return vmlal_high_s8(acc, ds, x);
}

inline int32_t dot_tq2(const uint8_t* w, const int8_t* q, int64_t nblocks) {
  const uint8x16_t m3 = vdupq_n_u8(3);
  int32x4_t acc = vdupq_n_s32(0);
  for (int64_t b = 0; b < nblocks; ++b, w += 64, q += 256) {
    int16x8_t a16 = vdupq_n_s16(0);
    for (int c = 0; c < 4; ++c) {  // bytes 16c..16c+15 of the block
      const uint8x16_t raw = vld1q_u8(w + 16 * c);
      a16 = mla16(a16, vandq_u8(raw, m3), vld1q_s8(q + 16 * c));
      a16 = mla16(a16, vandq_u8(vshrq_n_u8(raw, 2), m3), vld1q_s8(q + 64 + 16 * c));
      a16 = mla16(a16, vandq_u8(vshrq_n_u8(raw, 4), m3), vld1q_s8(q + 128 + 16 * c));
      a16 = mla16(a16, vshrq_n_u8(raw, 6), vld1q_s8(q + 192 + 16 * c));
    }
    acc = vpadalq_s16(acc, a16);  // 32 terms per lane at most: |sum| <= 8192
  }
  return vaddvq_s32(acc);
}

// Digit of m = q * 3^k mod 256: [m >= 86] + [m >= 171] (ternary_format.hpp).
inline uint8x16_t tq1_digit_of(uint8x16_t m) {
  const uint8x16_t ge86 = vcgeq_u8(m, vdupq_n_u8(86)), ge171 = vcgeq_u8(m, vdupq_n_u8(171));
  // Each comparison is 0xFF (= -1) or 0: the digit is minus their sum.
  return vreinterpretq_u8_s8(vnegq_s8(vaddq_s8(vreinterpretq_s8_u8(ge86), vreinterpretq_s8_u8(ge171))));
}

inline int32_t dot_tq1(const uint8_t* w, const int8_t* q, int64_t nblocks) {
  int32x4_t acc = vdupq_n_s32(0);
  for (int64_t b = 0; b < nblocks; ++b, w += 32, q += 160) {
    uint8x16_t m0 = vld1q_u8(w), m1 = vld1q_u8(w + 16);
    int16x8_t a16 = vdupq_n_s16(0);
    for (int k = 0; k < 5; ++k) {
      a16 = mla16(a16, tq1_digit_of(m0), vld1q_s8(q + 32 * k));
      a16 = mla16(a16, tq1_digit_of(m1), vld1q_s8(q + 32 * k + 16));
      m0 = vaddq_u8(vaddq_u8(m0, m0), m0);  // times 3, mod 256
      m1 = vaddq_u8(vaddq_u8(m1, m1), m1);
    }
    acc = vpadalq_s16(acc, a16);  // 20 terms per lane at most: |sum| <= 5120
  }
  return vaddvq_s32(acc);
}

// Same contract as ternary_gemm_scalar.
inline void ternary_gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out, int64_t ldo,
                         int64_t r0, int64_t r1) {
  gemm_row_by_row<sum_q, dot_tq2, dot_tq1>(W, Q, ldq, n, out, ldo, r0, r1);
}

}  // namespace mmfree::kernels::neon

#endif  // __aarch64__
