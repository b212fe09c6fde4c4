// mmfree: runtime choice of kernels by what the CPU supports.
//
// The library is compiled for the baseline ISA; SIMD kernels carry their own
// target attributes, so users never need -march=native.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/kernels/ternary_amx.hpp"
#include "mmfree/kernels/ternary_avx2.hpp"
#include "mmfree/kernels/ternary_avx512.hpp"
#include "mmfree/kernels/ternary_neon.hpp"
#include "mmfree/kernels/quantize_simd.hpp"
#include "mmfree/kernels/ternary_scalar.hpp"
#include "mmfree/ops.hpp"
#include "mmfree/ternary_format.hpp"

namespace mmfree::kernels {

using TernaryGemmFn = void (*)(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out,
                               int64_t ldo, int64_t r0, int64_t r1);
using RmsQuantizeFn = float (*)(const float* x, const float* w, int64_t n, float* tmp, int8_t* q, int64_t n_padded);
using SumSquaresFn = double (*)(const float* x, int64_t n);

// Amx: the AVX-512 kernels, and AMX-INT8 tiles for prefill (ternary_amx.hpp).
enum class Isa { Scalar, Avx2, Avx512, Amx, Neon };

inline const char* isa_name(Isa i) {
  switch (i) {
    case Isa::Scalar: return "scalar";
    case Isa::Avx2: return "avx2";
    case Isa::Avx512: return "avx512";
    case Isa::Amx: return "amx";
    case Isa::Neon: return "neon";
  }
  return "?";
}

struct KernelTable {
  Isa isa = Isa::Scalar;
  TernaryGemmFn gemm = ternary_gemm_scalar;
  RmsQuantizeFn rmsnorm_quantize = mmfree::rmsnorm_quantize;  // same bits on every ISA
  SumSquaresFn sum_squares = mmfree::sum_squares;
};

inline bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__)  // the x86 kernels are built for x86-64 only
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni");
    case Isa::Amx: return cpu_has(Isa::Avx512) && amx::available();
#endif
#if defined(__aarch64__)
    case Isa::Neon: return true;  // part of the AArch64 base ISA
#endif
    default: return false;
  }
}

inline KernelTable kernel_table(Isa isa) {
  if (!cpu_has(isa)) fail(std::string("kernels ") + isa_name(isa), "not supported by this CPU or build");
  KernelTable t;
  t.isa = isa;
#if defined(__x86_64__)
  if (isa == Isa::Avx2) {
    t.gemm = avx2::ternary_gemm;
    t.rmsnorm_quantize = avx2::rmsnorm_quantize;
    t.sum_squares = avx2::sum_squares;
  }
  if (isa == Isa::Avx512 || isa == Isa::Amx) {
    t.gemm = isa == Isa::Amx ? amx::ternary_gemm : avx512::ternary_gemm;
    t.rmsnorm_quantize = avx512::rmsnorm_quantize;
    t.sum_squares = avx512::sum_squares;
  }
#endif
#if defined(__aarch64__)
  if (isa == Isa::Neon) t.gemm = neon::ternary_gemm;
#endif
  return t;
}

// The ISAs this CPU and build support, best first.
inline std::vector<Isa> available_isas() {
  std::vector<Isa> v;
  for (Isa i : {Isa::Amx, Isa::Avx512, Isa::Avx2, Isa::Neon, Isa::Scalar})
    if (cpu_has(i)) v.push_back(i);
  return v;
}

// The best table this CPU supports.
inline KernelTable best_kernels() {
  static const Isa best = available_isas().front();
  return kernel_table(best);
}

inline Isa parse_isa(const std::string& s) {
  for (Isa i : {Isa::Scalar, Isa::Avx2, Isa::Avx512, Isa::Amx, Isa::Neon})
    if (s == isa_name(i)) return i;
  fail("--kernels " + s, "unknown ISA (expected scalar, avx2, avx512, amx or neon)");
}

}  // namespace mmfree::kernels
