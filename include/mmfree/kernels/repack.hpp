// mmfree: repacking at load, fast: stored rows -> rows of digits -> strips (ternary_format.hpp).
//
// A 2.7B model holds 2.7 billion weights; through the scalar codecs (file_ternary.hpp and
// encode_row) that took 0.5 ns (TQ2) to 1.1 ns (TQ1) per weight, over a second of loading.
// These AVX2 twins do the same in a few instructions per 32 weights: a stored row decodes into
// digits with byte shifts and masks (TQ2) or the base-3 byte arithmetic (TQ1); 16 rows of
// digits become a strip through 8 x 8 transposes of 4-byte words, after which each chunk is
// a few whole-register shifts and ORs (TQ2) or multiply-adds (TQ1). They return exactly what
// the scalar codecs return (tested), including their errors; other CPUs use the scalar ones.
#pragma once

#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

#include "mmfree/file_ternary.hpp"
#include "mmfree/ternary_format.hpp"

#if defined(__x86_64__)
#include <immintrin.h>

#include "mmfree/kernels/simd_warnings.hpp"

MMFREE_SIMD_WARNINGS_PUSH


namespace mmfree::kernels::repack_avx2 {

// 2-bit fields holding 3 anywhere in v (then the scalar codec names the block).
MMFREE_TARGET_AVX2 inline bool any_digit3(__m256i v) {
  return !_mm256_testz_si256(_mm256_and_si256(v, _mm256_srli_epi16(v, 1)), _mm256_set1_epi8(0x55));
}

// TQ2_0 / type 1024 rows: 32 stored bytes -> 4 planes of 32 consecutive digits.
MMFREE_TARGET_AVX2 inline void tq2_planes(__m256i v, uint8_t* d, int64_t stride) {
  const __m256i m3 = _mm256_set1_epi8(3);
  _mm256_storeu_si256((__m256i*)d, _mm256_and_si256(v, m3));
  _mm256_storeu_si256((__m256i*)(d + stride), _mm256_and_si256(_mm256_srli_epi16(v, 2), m3));
  _mm256_storeu_si256((__m256i*)(d + 2 * stride), _mm256_and_si256(_mm256_srli_epi16(v, 4), m3));
  _mm256_storeu_si256((__m256i*)(d + 3 * stride), _mm256_and_si256(_mm256_srli_epi16(v, 6), m3));
}
// ceil(v * 256 / 243) bytes: digit n is ((q * 3^n mod 256) * 3) >> 8 = [m >= 86] + [m >= 171].
MMFREE_TARGET_AVX2 inline __m256i tq1q_digit(__m256i m) {
  const __m256i ge86 = _mm256_cmpeq_epi8(_mm256_max_epu8(m, _mm256_set1_epi8(86)), m);
  const __m256i ge171 = _mm256_cmpeq_epi8(_mm256_max_epu8(m, _mm256_set1_epi8(char(171))), m);
  return _mm256_sub_epi8(_mm256_sub_epi8(_mm256_setzero_si256(), ge86), ge171);
}
// 32 stored bytes -> `planes` planes of 32 consecutive digits (the first most significant).
MMFREE_TARGET_AVX2 inline void tq1q_planes(__m256i m, int planes, uint8_t* d, int64_t stride) {
  for (int n = 0; n < planes; ++n) {
    _mm256_storeu_si256((__m256i*)(d + n * stride), tq1q_digit(m));
    m = _mm256_add_epi8(_mm256_add_epi8(m, m), m);
  }
}
MMFREE_TARGET_AVX2 inline __m256i load16(const uint8_t* p) {
  return _mm256_zextsi128_si256(_mm_loadu_si128((const __m128i*)p));
}

// Decodes a stored row into digits, as decode_file_row does; false: use the scalar codec
// (another type, or an error to report).
MMFREE_TARGET_AVX2 inline bool decode_row(TernaryFileType t, const uint8_t* src, int64_t cols, uint8_t* d) {
  uint16_t scale;
  switch (t) {
    case TernaryFileType::TQ2_0:
      for (int64_t b = 0; b < cols / 256; ++b, src += 66, d += 256) {
        std::memcpy(&scale, src + 64, 2);
        const __m256i lo = _mm256_loadu_si256((const __m256i*)src), hi = _mm256_loadu_si256((const __m256i*)(src + 32));
        if (scale != 0x3C00 || any_digit3(lo) || any_digit3(hi)) return false;
        tq2_planes(lo, d, 32);
        tq2_planes(hi, d + 128, 32);
      }
      return true;
    case TernaryFileType::MMFREE_TQ2: {
      if (cols % 256) return false;  // a partial last block: the scalar codec
      for (int64_t b = 0; b < cols / 256; ++b, src += 64, d += 256) {
        const __m256i lo = _mm256_loadu_si256((const __m256i*)src), hi = _mm256_loadu_si256((const __m256i*)(src + 32));
        if (any_digit3(lo) || any_digit3(hi)) return false;
        tq2_planes(lo, d, 64);
        tq2_planes(hi, d + 32, 64);
      }
      return true;
    }
    case TernaryFileType::TQ1_0:
      for (int64_t b = 0; b < cols / 256; ++b, src += 54, d += 256) {
        std::memcpy(&scale, src + 52, 2);
        if (scale != 0x3C00) return false;
        tq1q_planes(_mm256_loadu_si256((const __m256i*)src), 5, d, 32);
        alignas(32) uint8_t tmp[5 * 32];
        tq1q_planes(load16(src + 32), 5, tmp, 32);
        for (int n = 0; n < 5; ++n) std::memcpy(d + 160 + 16 * n, tmp + 32 * n, 16);
        for (int j = 0; j < 4; ++j)
          for (int n = 0; n < 4; ++n) d[240 + j + 4 * n] = mmfree::detail::tq1q_digit(src[48 + j], n);
      }
      return true;
    case TernaryFileType::MMFREE_TQ1:
      if (cols % 160) return false;
      for (int64_t b = 0; b < cols / 160; ++b, src += 32, d += 160) tq1q_planes(_mm256_loadu_si256((const __m256i*)src), 5, d, 32);
      return true;
    case TernaryFileType::I8:
      return false;
  }
  return false;
}

// 8 x 8 transpose of 4-byte words: out[k] lane i = word k of in[i].
MMFREE_TARGET_AVX2 inline void transpose8(const __m256i in[8], __m256i out[8]) {
  __m256i a[8], b[8];
  #pragma GCC unroll 4
  for (int i = 0; i < 4; ++i) {
    a[2 * i] = _mm256_unpacklo_epi32(in[2 * i], in[2 * i + 1]);
    a[2 * i + 1] = _mm256_unpackhi_epi32(in[2 * i], in[2 * i + 1]);
  }
  #pragma GCC unroll 2
  for (int i = 0; i < 2; ++i) {
    b[4 * i + 0] = _mm256_unpacklo_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 1] = _mm256_unpackhi_epi64(a[4 * i], a[4 * i + 2]);
    b[4 * i + 2] = _mm256_unpacklo_epi64(a[4 * i + 1], a[4 * i + 3]);
    b[4 * i + 3] = _mm256_unpackhi_epi64(a[4 * i + 1], a[4 * i + 3]);
  }
  #pragma GCC unroll 4
  for (int k = 0; k < 4; ++k) {
    out[k] = _mm256_permute2x128_si256(b[k], b[4 + k], 0x20);
    out[k + 4] = _mm256_permute2x128_si256(b[k], b[4 + k], 0x31);
  }
}

// 40 words (4 bytes of digits each) of 8 rows -> the chunks they make: 10 chunks of 4 words (TQ2)
// or 8 of 5 (TQ1). A chunk's word p is weighted by 4^p (TQ2: the bit pair 2p) or 3^(4 - p) (TQ1:
// a base-3 digit); every byte stays below 256, so 16-bit multiplies never carry between bytes.
template <int WPC>
MMFREE_TARGET_AVX2 inline void encode40(const uint8_t* const r[8], int64_t k0, uint8_t* strip, int64_t c0, int h) {
  constexpr int kChunks = 40 / WPC;
  __m256i acc[kChunks];
  #pragma GCC unroll 10
  for (int j = 0; j < kChunks; ++j) acc[j] = _mm256_setzero_si256();
  #pragma GCC unroll 5
  for (int g = 0; g < 5; ++g) {
    __m256i in[8], t[8];
    #pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) in[i] = _mm256_loadu_si256((const __m256i*)(r[i] + 4 * (k0 + 8 * g)));
    transpose8(in, t);
    #pragma GCC unroll 8
    for (int k = 0; k < 8; ++k) {
      const int w = 8 * g + k, p = w % WPC;
      const int weight = WPC == 4 ? 1 << (2 * p) : (p == 0 ? 81 : p == 1 ? 27 : p == 2 ? 9 : p == 3 ? 3 : 1);
      acc[w / WPC] = _mm256_add_epi16(acc[w / WPC], weight == 1 ? t[k] : _mm256_mullo_epi16(t[k], _mm256_set1_epi16(short(weight))));
    }
  }
  #pragma GCC unroll 10
  for (int j = 0; j < kChunks; ++j) _mm256_storeu_si256((__m256i*)(strip + (c0 + j) * kChunkBytes + 32 * h), acc[j]);
}

// Encodes rows of digits r[0..7] (rows 8h .. 8h+7 of a strip) into bytes 32h .. 32h+31 of every
// chunk, as encode_row does.
MMFREE_TARGET_AVX2 inline void encode_half(TernaryFormat f, const uint8_t* const r[8], int64_t chunks, uint8_t* strip,
                                             int h) {
  const int wpc = f == TernaryFormat::TQ2 ? 4 : 5, step = 40 / wpc;
  int64_t c = 0;
  for (; c + step <= chunks; c += step) {
    if (f == TernaryFormat::TQ2) encode40<4>(r, c * 4, strip, c, h);
    else encode40<5>(r, c * 5, strip, c, h);
  }
  for (; c < chunks; ++c)  // the last few chunks, as encode_row does them
    for (int i = 0; i < 8; ++i) {
      uint8_t one[64];
      encode_row(f, r[i] + chunk_cols(f) * c, 1, one, 0);
      std::memcpy(strip + c * kChunkBytes + 4 * (8 * h + i), one, 4);
    }
}

}  // namespace mmfree::kernels::repack_avx2

MMFREE_SIMD_WARNINGS_POP

#endif  // __x86_64__

namespace mmfree::kernels {

inline bool repack_simd_available() {
#if defined(__x86_64__)
  static const bool ok = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  return ok;
#else
  return false;
#endif
}

// Columns [c0, c1) of stored row `row` of type t (`src`, `cols` weights) -> digits d[0 .. c1 - c0):
// decode_file_row, fast. c0 must be a multiple of 1280 (whole blocks of every layout).
inline void decode_file_row_fast(TernaryFileType t, const uint8_t* src, int64_t cols, int64_t c0, int64_t c1,
                                 uint8_t* d, const std::string& tensor, int64_t row) {
  const uint8_t* at = src + file_row_bytes(t, c0);
#if defined(__x86_64__)
  if (repack_simd_available() && repack_avx2::decode_row(t, at, c1 - c0, d)) return;
#endif
  if (c1 - c0 == cols) {
    decode_file_row(t, at, cols, d, tensor, row);
    return;
  }
  // A range of the row: the scalar codec on the whole row, which also names a bad block right.
  std::vector<uint8_t> all(static_cast<size_t>(cols));
  decode_file_row(t, src, cols, all.data(), tensor, row);
  std::memcpy(d, all.data() + c0, size_t(c1 - c0));
}

// Rows of digits d + i * ld (i = 0..15, padded_cols bytes each) -> one strip: encode_row for
// 16 rows, fast.
inline void encode_strip(TernaryFormat f, const uint8_t* d, int64_t ld, int64_t chunks, uint8_t* strip) {
#if defined(__x86_64__)
  if (repack_simd_available()) {
    for (int h = 0; h < 2; ++h) {
      const uint8_t* r[8];
      for (int i = 0; i < 8; ++i) r[i] = d + (8 * h + i) * ld;
      repack_avx2::encode_half(f, r, chunks, strip, h);
    }
    return;
  }
#endif
  for (int i = 0; i < kStripRows; ++i) encode_row(f, d + i * ld, chunks, strip, i);
}

}  // namespace mmfree::kernels
