// mmfree: IEEE half (F16) and bfloat16 to float, exact and branch-light.
//
// Checkpoints store latent weights as F16/BF16; we only ever widen them, once, at load.
#pragma once

#include <bit>
#include <cstdint>
#include <cstring>

namespace mmfree {

inline float bf16_to_float(uint16_t h) { return std::bit_cast<float>(uint32_t(h) << 16); }

// Round to nearest even, NaN kept quiet; used to write BF16 files (tests, converters).
inline uint16_t float_to_bf16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return uint16_t((u >> 16) | 0x40);
  u += 0x7fffu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}

inline float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16;
  const uint32_t exp = (h >> 10) & 0x1fu;
  const uint32_t man = h & 0x3ffu;
  uint32_t bits;
  if (exp == 0) {
    if (man == 0) {
      bits = sign;
    } else {  // subnormal: value = man * 2^-24, exactly representable in float
      float v = float(man) * 0x1p-24f;
      bits = sign | std::bit_cast<uint32_t>(v);
    }
  } else if (exp == 31) {
    bits = sign | 0x7f800000u | (man << 13);
  } else {
    bits = sign | ((exp + 112u) << 23) | (man << 13);
  }
  return std::bit_cast<float>(bits);
}

// Round to nearest even; overflow to inf. Used to write F16 embeddings and test files.
inline uint16_t float_to_f16(float f) {
  uint32_t u = std::bit_cast<uint32_t>(f);
  const uint16_t sign = uint16_t((u >> 16) & 0x8000u);
  u &= 0x7fffffffu;
  if (u > 0x7f800000u) return sign | 0x7e00u;            // NaN
  if (u >= 0x477ff000u) return sign | 0x7c00u;           // >= 65520 rounds to inf
  if (u < 0x38800000u) {                                 // subnormal or zero in half
    float a = std::bit_cast<float>(u);
    // a * 2^24 then round-to-nearest-even into an integer mantissa.
    float m = a * 0x1p24f;
    uint32_t mi = uint32_t(m);
    float frac = m - float(mi);
    if (frac > 0.5f || (frac == 0.5f && (mi & 1u))) ++mi;
    return sign | uint16_t(mi);
  }
  uint32_t exp = (u >> 23) - 112u;
  uint32_t man = u & 0x7fffffu;
  uint32_t h = (exp << 10) | (man >> 13);
  uint32_t rest = man & 0x1fffu;
  if (rest > 0x1000u || (rest == 0x1000u && (h & 1u))) ++h;
  return sign | uint16_t(h);
}

}  // namespace mmfree
