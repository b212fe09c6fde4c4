// mmfree: the ternary kernels this build has, which of them this CPU can run, and the table a
// model computes with (one kernel for one token, one for many: kernels/chooser.hpp picks them by
// measuring).
//
// The library is compiled for the baseline ISA; SIMD kernels carry their own target attributes,
// so users never need -march=native.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/kernels/quantize_simd.hpp"
#include "mmfree/kernels/ternary_amx.hpp"
#include "mmfree/kernels/ternary_avx2.hpp"
#include "mmfree/kernels/ternary_avx512.hpp"
#include "mmfree/kernels/ternary_neon.hpp"
#include "mmfree/kernels/ternary_scalar.hpp"
#include "mmfree/ops.hpp"
#include "mmfree/ternary_format.hpp"

namespace mmfree::kernels {

// Every kernel: out[t * ldo + r] = row r of W . Q[t * ldq ...] for t < n, r in [r0, r1).
using TernaryGemmFn = void (*)(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out,
                               int64_t ldo, int64_t r0, int64_t r1);
using ScaleQuantizeFn = float (*)(const float* x, float r, const float* w, int64_t n, float* tmp, int8_t* q,
                                  int64_t n_padded);
using SumSquaresFn = double (*)(const float* x, int64_t n);

// What a kernel needs from the CPU.
enum class Isa { Scalar, Avx2, Avx512, Avx512Vbmi, Amx, Neon, NeonDotprod };

// The two regimes a model runs in: one token (decoding: bandwidth-bound) and a chunk of tokens
// (prefill, batched steps: compute-bound).
enum class Regime { Decode, Prefill };
inline const char* regime_name(Regime r) { return r == Regime::Decode ? "decode" : "prefill"; }

struct Kernel {
  const char* name = "scalar";
  Isa isa = Isa::Scalar;
  TernaryGemmFn gemm = ternary_gemm_scalar;
  bool decode = true, prefill = true;  // a candidate for the regime
  bool tq2 = true, tq1 = true;         // a candidate for the format (all kernels compute both)
  bool for_format(TernaryFormat f) const { return f == TernaryFormat::TQ2 ? tq2 : tq1; }
  bool for_regime(Regime r) const { return r == Regime::Decode ? decode : prefill; }
};

// Every kernel of this build, in order of preference when measurements tie: the incumbent
// of a regime is the first candidate that this CPU can run.
inline const std::vector<Kernel>& all_kernels() {
  static const std::vector<Kernel> k = {
#if defined(__x86_64__)
      {"amx", Isa::Amx, amx::ternary_gemm, false, true, true, true},
      {"avx512", Isa::Avx512, avx512::ternary_gemm<false>, true, true, true, true},
      {"avx512-vbmi", Isa::Avx512Vbmi, avx512::ternary_gemm_vbmi<false>, true, true, false, true},
      {"avx512-prefetch", Isa::Avx512, avx512::ternary_gemm<true>, true, false, true, true},
      {"avx512-vbmi-prefetch", Isa::Avx512Vbmi, avx512::ternary_gemm_vbmi<true>, true, false, false, true},
      {"avx2", Isa::Avx2, avx2::ternary_gemm, true, true, true, true},
#endif
#if defined(__aarch64__)
      {"neon-dotprod", Isa::NeonDotprod, neon::ternary_gemm_dotprod, true, true, true, true},
      {"neon", Isa::Neon, neon::ternary_gemm, true, true, true, true},
#endif
      {"scalar", Isa::Scalar, ternary_gemm_scalar, true, true, true, true},
  };
  return k;
}

inline bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__)  // the x86 kernels are built for x86-64 only
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::Avx512:
      return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
             __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
             __builtin_cpu_supports("avx512vnni");
    case Isa::Avx512Vbmi: return cpu_has(Isa::Avx512) && __builtin_cpu_supports("avx512vbmi");
    case Isa::Amx: return cpu_has(Isa::Avx512) && amx::available();
#endif
#if defined(__aarch64__)
    case Isa::Neon: return true;  // part of the AArch64 base ISA
    case Isa::NeonDotprod: return neon::has_dotprod();
#endif
    default: return false;
  }
}

// The kernels this CPU can run, in preference order.
inline std::vector<Kernel> available_kernels() {
  std::vector<Kernel> v;
  for (const Kernel& k : all_kernels())
    if (cpu_has(k.isa)) v.push_back(k);
  return v;
}

inline const Kernel& find_kernel(const std::string& name) {
  for (const Kernel& k : all_kernels())
    if (name == k.name) {
      if (!cpu_has(k.isa)) fail("kernels " + name, "not supported by this CPU or build");
      return k;
    }
  std::string names;
  for (const Kernel& k : all_kernels()) names += std::string(names.empty() ? "" : ", ") + k.name;
  fail("kernels " + name, "unknown kernel (this build has: " + names + ")");
}

// What a model computes with. gemm() takes the decode kernel for one token, the prefill
// kernel for many; rmsnorm + int8 quantisation uses the widest SIMD the CPU has (every
// version returns the same bits, ops.hpp).
//
// A few tokens (a batch of decoding sequences: Model::step_batch) go through the decode kernel
// once per token over blocks of rows small enough to stay in L2 (kBatchRows rows of K 2-bit
// weights), so the weights still come from memory once: GEMM kernels tiled for long prompts
// cost ~2x the blocked way at 2 tokens. Up to `batch_by_rows` tokens.
inline constexpr int64_t kBatchRows = 64;
struct KernelTable {
  Kernel decode, prefill;
  ScaleQuantizeFn scale_quantize = mmfree::scale_quantize;
  SumSquaresFn sum_squares = mmfree::sum_squares;
  // Token counts in [2, batch_by_rows] take the blocked decode kernel. On AMD EPYC Zen 4 (2 threads,
  // 1.3B) it wins at 2 and 4 tokens (21 and 38 ms a step against 43 and 44) and loses at 8.
  int64_t batch_by_rows = 4;

  void gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out, int64_t ldo, int64_t r0,
            int64_t r1) const {
    if (n == 1 || n > batch_by_rows) return (n == 1 ? decode : prefill).gemm(W, Q, ldq, n, out, ldo, r0, r1);
    for (int64_t b0 = r0; b0 < r1; b0 += kBatchRows) {
      const int64_t b1 = std::min(r1, b0 + kBatchRows);
      for (int64_t t = 0; t < n; ++t) decode.gemm(W, Q + t * ldq, ldq, 1, out + t * ldo, ldo, b0, b1);
    }
  }
};

inline KernelTable make_table(const Kernel& decode, const Kernel& prefill) {
  KernelTable t;
  t.decode = decode;
  t.prefill = prefill;
#if defined(__x86_64__)
  if (cpu_has(Isa::Avx512)) {
    t.scale_quantize = avx512::scale_quantize;
    t.sum_squares = avx512::sum_squares;
  } else if (cpu_has(Isa::Avx2)) {
    t.scale_quantize = avx2::scale_quantize;
    t.sum_squares = avx2::sum_squares;
  }
#endif
  return t;
}

// The first kernel of the preference order that can serve regime r for format f.
inline Kernel incumbent(Regime r, TernaryFormat f) {
  for (const Kernel& k : available_kernels())
    if (k.for_regime(r) && k.for_format(f)) return k;
  return all_kernels().back();  // scalar
}

// A forced choice, as --kernels takes it: "NAME" for both regimes, or "DECODE,PREFILL". A
// kernel that is no candidate for a regime (amx for one token, the prefetching decoders for
// many) leaves that regime to the preferred kernel of its own ISA family (amx: avx512).
inline KernelTable forced_table(const std::string& spec, TernaryFormat f) {
  const size_t comma = spec.find(',');
  const Kernel& d = find_kernel(spec.substr(0, comma));
  const Kernel& p = find_kernel(comma == std::string::npos ? spec : spec.substr(comma + 1));
  auto serve = [&](const Kernel& k, Regime r) -> Kernel {
    if (k.for_regime(r)) return k;
    const Isa family = k.isa == Isa::Amx ? Isa::Avx512 : k.isa;
    for (const Kernel& c : available_kernels())
      if (c.isa == family && c.for_regime(r)) return c;
    return incumbent(r, f);
  };
  return make_table(serve(d, Regime::Decode), serve(p, Regime::Prefill));
}

// Names accepted by --kernels, for messages.
inline std::string kernel_names() {
  std::string s;
  for (const Kernel& k : all_kernels()) s += std::string(s.empty() ? "" : "|") + k.name;
  return s;
}

}  // namespace mmfree::kernels
