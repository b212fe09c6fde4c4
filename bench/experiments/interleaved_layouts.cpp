// Experiment, not part of the library: the weight layouts the next step of issue 23 proposes for
// batches of 2-6 tokens, against the library's AVX-512 kernels on the same weights (bit for bit).
//
// In the library's layouts a byte holds the digits of one row at 4 (TQ2) or 5 (TQ1) columns, so a
// chunk splits into 4 or 5 digit planes (4 masks, or a compare-subtract level and 4 byte permutes)
// and each plane takes its own broadcast of 4 activation bytes. Here a byte holds the digits of 4
// (TQ2) or 5 (TQ1) rows r, r + 16, ... at one column: one broadcast serves every plane, and
// cumulative planes (u & 3, u & 15, u & 63, u; or u mod 3, 9, 27, 81, u) give
// A_k = sum_{j <= k} base^j T_j, from which each row's sum T_j follows exactly at the store
// (differences, then a shift or a multiply by the inverse of 3^j mod 2^32). Decoding ops per chunk:
// TQ2 3 instead of 4, TQ1 7 instead of 10; broadcasts per token and chunk 1 instead of 4 or 5. On
// AMD Zen 5 every such op takes a slot of the pipes that run vpdpbusd (README).
//
//   interleaved_layouts ROWS COLS TOKENS [THREADS]    time both layouts (ROWS a multiple of 80 and 64)
//   interleaved_layouts --check                       bit-exactness on small shapes; exit 1 on a difference
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>

#include "mmfree/mmfree.hpp"
#include "mmfree/kernels/simd_warnings.hpp"
#include "mmfree/kernels/ternary_avx512.hpp"

using namespace mmfree;

MMFREE_SIMD_WARNINGS_PUSH

namespace {

// TQ2: groups of 64 rows; each chunk (64 bytes) 4 columns of them: byte (lane r, position b) of
// chunk c holds digit (w + 1) of row 64g + 16j + r, column 4c + b, in bits 2j, 2j + 1.
template <int T>
MMFREE_TARGET_AVX512 void tq2_rows(const uint8_t* W, int64_t chunks, const int8_t* Q, int64_t ldq, const int32_t* qsum, const float* scale,
                   float* out, int64_t ldo, int64_t g0, int64_t g1) {
  for (int64_t g = g0; g < g1; ++g) {
    __m512i acc[T][4];
    #pragma GCC unroll 12
    for (int j = 0; j < T; ++j)
      #pragma GCC unroll 4
      for (int a = 0; a < 4; ++a) acc[j][a] = _mm512_setzero_si512();
    const uint8_t* w = W + g * chunks * 64;
    for (int64_t c = 0; c < chunks; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + 6144), _MM_HINT_T0);
      const __m512i u = _mm512_loadu_si512(w + c * 64);
      const __m512i p0 = _mm512_and_si512(u, _mm512_set1_epi8(0x03));
      const __m512i p1 = _mm512_and_si512(u, _mm512_set1_epi8(0x0f));
      const __m512i p2 = _mm512_and_si512(u, _mm512_set1_epi8(0x3f));
      #pragma GCC unroll 12
      for (int j = 0; j < T; ++j) {
        int32_t xv; std::memcpy(&xv, Q + j * ldq + 4 * c, 4);
        const __m512i x = _mm512_set1_epi32(xv);
        kernels::avx512::dpbusd(acc[j][0], p0, x);
        kernels::avx512::dpbusd(acc[j][1], p1, x);
        kernels::avx512::dpbusd(acc[j][2], p2, x);
        kernels::avx512::dpbusd(acc[j][3], u, x);
      }
    }
    #pragma GCC unroll 12
    for (int j = 0; j < T; ++j) {
      const __m512i qs = _mm512_set1_epi32(qsum[j]);
      const __m512 sc = _mm512_set1_ps(scale[j]);
      const __m512i t0 = acc[j][0], t1 = _mm512_srai_epi32(_mm512_sub_epi32(acc[j][1], acc[j][0]), 2),
                    t2 = _mm512_srai_epi32(_mm512_sub_epi32(acc[j][2], acc[j][1]), 4), t3 = _mm512_srai_epi32(_mm512_sub_epi32(acc[j][3], acc[j][2]), 6);
      float* o = out + j * ldo + g * 64;
      _mm512_storeu_ps(o, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(t0, qs)), sc));
      _mm512_storeu_ps(o + 16, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(t1, qs)), sc));
      _mm512_storeu_ps(o + 32, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(t2, qs)), sc));
      _mm512_storeu_ps(o + 48, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(t3, qs)), sc));
    }
  }
}
void tq2_interleaved(int n, const uint8_t* W, int64_t chunks, const int8_t* Q, int64_t ldq, const int32_t* qsum, const float* sc, float* out, int64_t ldo, int64_t g0, int64_t g1) {
  switch (n) {
    case 1: return tq2_rows<1>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
    case 2: return tq2_rows<2>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
    case 3: return tq2_rows<3>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
    case 4: return tq2_rows<4>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
    case 5: return tq2_rows<5>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
    default: return tq2_rows<6>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
  }
}
// TQ1: groups of 80 rows; byte (lane r, position b) of chunk c holds sum_j 3^j (w + 1) over rows
// 80g + 16j + r, column 4c + b.
struct Tabs { alignas(64) uint8_t t[3][128]; Tabs() { for (int r = 0; r < 128; ++r) { t[0][r] = r % 3; t[1][r] = r % 9; t[2][r] = r % 27; } } };
static const Tabs kT;
template <int T>
MMFREE_TARGET_AVX512_VBMI void tq1_rows(const uint8_t* W, int64_t chunks, const int8_t* Q, int64_t ldq, const int32_t* qsum,
                                          const float* scale, float* out, int64_t ldo, int64_t g0, int64_t g1) {
  const __m512i lo0 = _mm512_load_si512(kT.t[0]), hi0 = _mm512_load_si512(kT.t[0] + 64);
  const __m512i lo1 = _mm512_load_si512(kT.t[1]), hi1 = _mm512_load_si512(kT.t[1] + 64);
  const __m512i lo2 = _mm512_load_si512(kT.t[2]), hi2 = _mm512_load_si512(kT.t[2] + 64);
  const __m512i v81 = _mm512_set1_epi8(81);
  for (int64_t g = g0; g < g1; ++g) {
    __m512i acc[T][5];
    #pragma GCC unroll 12
    for (int j = 0; j < T; ++j)
      #pragma GCC unroll 5
      for (int a = 0; a < 5; ++a) acc[j][a] = _mm512_setzero_si512();
    const uint8_t* w = W + g * chunks * 64;
    for (int64_t c = 0; c < chunks; ++c) {
      _mm_prefetch(reinterpret_cast<const char*>(w + c * 64 + 6144), _MM_HINT_T0);
      const __m512i u = _mm512_loadu_si512(w + c * 64);
      __m512i r = _mm512_min_epu8(u, _mm512_sub_epi8(u, v81));
      r = _mm512_min_epu8(r, _mm512_sub_epi8(r, v81));
      const __m512i m0 = _mm512_permutex2var_epi8(lo0, r, hi0), m1 = _mm512_permutex2var_epi8(lo1, r, hi1),
                    m2 = _mm512_permutex2var_epi8(lo2, r, hi2);
      #pragma GCC unroll 12
      for (int j = 0; j < T; ++j) {
        int32_t xv; std::memcpy(&xv, Q + j * ldq + 4 * c, 4);
        const __m512i x = _mm512_set1_epi32(xv);
        kernels::avx512::dpbusd(acc[j][0], m0, x);
        kernels::avx512::dpbusd(acc[j][1], m1, x);
        kernels::avx512::dpbusd(acc[j][2], m2, x);
        kernels::avx512::dpbusd(acc[j][3], r, x);
        kernels::avx512::dpbusd(acc[j][4], u, x);
      }
    }
    // exact division by 3^k of exact multiples: times the inverse of 3^k mod 2^32
    const __m512i inv3 = _mm512_set1_epi32(int32_t(0xAAAAAAABu)), inv9 = _mm512_set1_epi32(int32_t(0x38E38E39u)),
                  inv27 = _mm512_set1_epi32(int32_t(0x684BDA13u)), inv81 = _mm512_set1_epi32(int32_t(0x781948B1u));
    #pragma GCC unroll 12
    for (int j = 0; j < T; ++j) {
      const __m512i qs = _mm512_set1_epi32(qsum[j]);
      const __m512 sc = _mm512_set1_ps(scale[j]);
      const __m512i t[5] = {acc[j][0], _mm512_mullo_epi32(_mm512_sub_epi32(acc[j][1], acc[j][0]), inv3),
                            _mm512_mullo_epi32(_mm512_sub_epi32(acc[j][2], acc[j][1]), inv9),
                            _mm512_mullo_epi32(_mm512_sub_epi32(acc[j][3], acc[j][2]), inv27),
                            _mm512_mullo_epi32(_mm512_sub_epi32(acc[j][4], acc[j][3]), inv81)};
      float* o = out + j * ldo + g * 80;
      for (int k = 0; k < 5; ++k) _mm512_storeu_ps(o + 16 * k, _mm512_mul_ps(_mm512_cvtepi32_ps(_mm512_sub_epi32(t[k], qs)), sc));
    }
  }
}
void tq1_interleaved(int n, const uint8_t* W, int64_t chunks, const int8_t* Q, int64_t ldq, const int32_t* qsum, const float* sc, float* out, int64_t ldo, int64_t g0, int64_t g1) {
  switch (n) {
    case 1: return tq1_rows<1>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
    case 2: return tq1_rows<2>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
    case 3: return tq1_rows<3>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
    case 4: return tq1_rows<4>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
    default: return tq1_rows<5>(W, chunks, Q, ldq, qsum, sc, out, ldo, g0, g1);
  }
}

MMFREE_SIMD_WARNINGS_POP

struct Shape {
  int64_t rows, cols;
  int n;
};

// Both layouts of one random matrix; false when either differs from the library's kernel.
bool run(const Shape& s, int threads, bool timing) {
  std::mt19937 g(uint32_t(s.rows * 31 + s.cols * 7 + s.n));
  std::vector<int8_t> t(size_t(s.rows * s.cols));
  for (auto& v : t) v = int8_t(int(g() % 3) - 1);
  const int64_t ld = activation_cols(s.cols);
  std::vector<int8_t> q(size_t(s.n * ld), 0);
  for (int j = 0; j < s.n; ++j)
    for (int64_t k = 0; k < s.cols; ++k) q[size_t(j * ld + k)] = int8_t(int(g() % 255) - 127);
  std::vector<int32_t> qs(size_t(s.n));
  for (int j = 0; j < s.n; ++j) qs[size_t(j)] = sum_int8(q.data() + j * ld, ld);
  std::vector<float> sc(size_t(s.n), 0.37f);
  ThreadPool pool(threads);
  bool ok = true;
  for (TernaryFormat f : {TernaryFormat::TQ2, TernaryFormat::TQ1}) {
    const int group = f == TernaryFormat::TQ2 ? 64 : 80, planes = f == TernaryFormat::TQ2 ? 4 : 5;
    if (s.rows % group || s.cols % 4 || (f == TernaryFormat::TQ2 ? s.n > 6 : s.n > 5)) continue;
    const TernaryMatrix m = pack_ternary(t.data(), s.rows, s.cols, f);
    const int64_t chunks = s.cols / 4, groups = s.rows / group;
    std::vector<uint8_t> w(size_t(groups * chunks * 64));
    for (int64_t gr = 0; gr < groups; ++gr)
      for (int64_t c = 0; c < chunks; ++c)
        for (int r = 0; r < 16; ++r)
          for (int b = 0; b < 4; ++b) {
            int v = 0;
            for (int j = 0, p = 1; j < planes; ++j, p *= (planes == 4 ? 4 : 3))
              v += (t[size_t((gr * group + 16 * j + r) * s.cols + 4 * c + b)] + 1) * p;
            w[size_t(((gr * chunks + c) * 16 + r) * 4 + b)] = uint8_t(v);
          }
    std::vector<float> want(size_t(s.n * s.rows)), got(size_t(s.n * s.rows));
    auto library = [&] {
      pool.for_range(s.rows, group, [&](int64_t r0, int64_t r1) {
        if (f == TernaryFormat::TQ2)
          kernels::avx512::ternary_gemm_direct_scaled<true>(m, q.data(), ld, s.n, sc.data(), qs.data(), want.data(), s.rows, r0, r1);
        else
          kernels::avx512::ternary_gemm_direct_scaled<true, true>(m, q.data(), ld, s.n, sc.data(), qs.data(), want.data(), s.rows, r0, r1);
      });
    };
    auto interleaved = [&] {
      pool.for_range(groups, 1, [&](int64_t g0, int64_t g1) {
        if (f == TernaryFormat::TQ2) tq2_interleaved(s.n, w.data(), chunks, q.data(), ld, qs.data(), sc.data(), got.data(), s.rows, g0, g1);
        else tq1_interleaved(s.n, w.data(), chunks, q.data(), ld, qs.data(), sc.data(), got.data(), s.rows, g0, g1);
      });
    };
    library();
    interleaved();
    if (want != got) {
      std::printf("%s %ldx%ld n=%d: the interleaved layout differs from the library's kernel\n", format_name(f), long(s.rows), long(s.cols), s.n);
      ok = false;
      continue;
    }
    if (!timing) continue;
    for (int r = 0; r < 3; ++r) {
      double rate[2];
      for (int k = 0; k < 2; ++k) {
        const auto t0 = std::chrono::steady_clock::now();
        int reps = 0;
        while (std::chrono::steady_clock::now() - t0 < std::chrono::milliseconds(300)) k ? interleaved() : library(), ++reps;
        rate[k] = double(reps) * double(s.rows * s.cols * s.n) / std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / 1e9;
      }
      std::printf("%s %ldx%ld, %d tokens, %d threads: library %.0f GMAC/s, interleaved %.0f GMAC/s (%.2fx)\n", format_name(f),
                  long(s.rows), long(s.cols), s.n, threads, rate[0], rate[1], rate[1] / rate[0]);
    }
  }
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  if (!kernels::cpu_has(kernels::Isa::Avx512Vbmi)) {
    std::printf("needs AVX-512 with VNNI and VBMI; skipped\n");
    return 0;
  }
  if (argc == 2 && std::strcmp(argv[1], "--check") == 0) {
    bool ok = true;
    for (int n = 1; n <= 6; ++n)
      for (Shape s : {Shape{320, 8, n}, Shape{320, 1000, n}, Shape{640, 2052, n}, Shape{320, 5632, n}})
        for (int threads : {1, 3}) ok = run(s, threads, false) && ok;
    std::printf(ok ? "interleaved layouts: bit for bit with the library's kernels\n" : "interleaved layouts: DIFFER\n");
    return ok ? 0 : 1;
  }
  if (argc < 4) {
    std::fprintf(stderr, "usage: interleaved_layouts ROWS COLS TOKENS [THREADS] | --check\n");
    return 2;
  }
  return run({std::atoll(argv[1]), std::atoll(argv[2]), std::atoi(argv[3])}, argc > 4 ? std::atoi(argv[4]) : 2, true) ? 0 : 1;
}
