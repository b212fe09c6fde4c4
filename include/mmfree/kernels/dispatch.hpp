// mmfree: the ternary kernels this build has, which of them this CPU can run, and the table a
// model computes with (a kernel for one token, for a few, for many: kernels/chooser.hpp picks
// them by measuring).
//
// The library is compiled for the baseline ISA; SIMD kernels carry their own target attributes,
// so users never need -march=native.
#pragma once

#include <algorithm>
#include <cstdint>
#include <string>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/interleaved_format.hpp"
#include "mmfree/kernels/quantize_simd.hpp"
#include "mmfree/kernels/ternary_amx.hpp"
#include "mmfree/kernels/ternary_avx2.hpp"
#include "mmfree/kernels/ternary_avx_vnni.hpp"
#include "mmfree/kernels/ternary_avx512.hpp"
#include "mmfree/kernels/ternary_avx512_interleaved.hpp"
#include "mmfree/kernels/ternary_neon.hpp"
#include "mmfree/kernels/ternary_scalar.hpp"
#include "mmfree/ops.hpp"
#include "mmfree/ternary_format.hpp"

namespace mmfree::kernels {

// Every kernel: out[t * ldo + r] = row r of W . Q[t * ldq ...] for t < n, r in [r0, r1).
using TernaryGemmFn = void (*)(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out,
                               int64_t ldo, int64_t r0, int64_t r1);
// The same rows dequantised in the store: out[t * ldo + r] = float(row r of W . Q[t]) * scale[t]
// (the bits of the integer kernel followed by scale_ints). `qsum`, when not null, holds each
// token's sum of Q[t] (over W's padded columns), which the kernel would otherwise compute again
// on every call: a product's rows come in several calls per thread.
using TernaryGemmScaledFn = void (*)(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n,
                                     const float* scale, const int32_t* qsum, float* out, int64_t ldo, int64_t r0,
                                     int64_t r1);
using ScaleQuantizeFn = float (*)(const float* x, float r, const float* w, int64_t n, int8_t* q, int64_t n_padded,
                                  int32_t* qsum);
using SumSquaresFn = double (*)(const float* x, int64_t n);
using SumSquaresRowsFn = void (*)(const float* x, int64_t ld, int64_t rows, int64_t n, double* out);

// What a kernel needs from the CPU.
enum class Isa { Scalar, Avx2, AvxVnni, Avx512, Avx512Vbmi, Amx, Neon, NeonDotprod };

// The three regimes a model runs in, by tokens per pass over the weights: one (decoding a
// single sequence: bandwidth-bound), a few (a batch of decoding sequences, drafted tokens being
// verified: between the two bounds), many (prompts: compute-bound).
enum class Regime { Decode, Batch, Prefill };
inline constexpr Regime kRegimes[] = {Regime::Decode, Regime::Batch, Regime::Prefill};
inline const char* regime_name(Regime r) { return r == Regime::Decode ? "decode" : r == Regime::Batch ? "batch" : "prefill"; }

struct Kernel {
  const char* name = "scalar";
  Isa isa = Isa::Scalar;
  TernaryGemmFn gemm = ternary_gemm_scalar;
  bool decode = true, batch = true, prefill = true;  // a candidate for the regime
  bool tq2 = true, tq1 = true;                      // a candidate for the format (all kernels compute both)
  TernaryGemmScaledFn gemm_scaled = nullptr;        // its dequantising twin, where it has one
  bool interleaved = false;  // reads the matrices' interleaved copies (interleaved_format.hpp)
  bool wide = false;         // reads TQ1 matrices' wide copies (interleaved_format.hpp)
  bool for_format(TernaryFormat f) const { return f == TernaryFormat::TQ2 ? tq2 : tq1; }
  bool for_regime(Regime r) const { return r == Regime::Decode ? decode : r == Regime::Batch ? batch : prefill; }
};

// Every kernel of this build, in order of preference when measurements tie: the incumbent
// of a regime is the first candidate that this CPU can run.
inline const std::vector<Kernel>& all_kernels() {
  static const std::vector<Kernel> k = {
#if defined(__x86_64__)
      // name, ISA, kernel, decode, batch, prefill, tq2, tq1[, dequantising twin]
      {"amx", Isa::Amx, amx::ternary_gemm, false, true, true, true, true},
      {"avx512", Isa::Avx512, avx512::ternary_gemm<false>, true, true, true, true, true},
      {"avx512-vbmi", Isa::Avx512Vbmi, avx512::ternary_gemm<false, true>, true, true, true, false, true},
      {"avx512-prefetch", Isa::Avx512, avx512::ternary_gemm<true>, true, false, false, true, true},
      {"avx512-vbmi-prefetch", Isa::Avx512Vbmi, avx512::ternary_gemm<true, true>, true, false, false, false, true},
      // Several tokens with the planes decoded in registers (ternary_avx512.hpp): one token is
      // the plain decoder's, so these are no decode candidates of their own.
      {"avx512-direct", Isa::Avx512, avx512::ternary_gemm_direct<false>, false, true, true, true, true,
       avx512::ternary_gemm_direct_scaled<false>},
      {"avx512-vbmi-direct", Isa::Avx512Vbmi, avx512::ternary_gemm_direct<false, true>, false, true, true, false, true,
       avx512::ternary_gemm_direct_scaled<false, true>},
      {"avx512-direct-prefetch", Isa::Avx512, avx512::ternary_gemm_direct<true>, false, true, true, true, true,
       avx512::ternary_gemm_direct_scaled<true>},
      {"avx512-vbmi-direct-prefetch", Isa::Avx512Vbmi, avx512::ternary_gemm_direct<true, true>, false, true, true, false, true,
       avx512::ternary_gemm_direct_scaled<true, true>},
      // Passes on the interleaved copies (ternary_avx512_interleaved.hpp): chosen only where the
      // model holds them (ModelOptions::interleaved). One token too: TQ1's copy decodes in 7 ops
      // per chunk where the strips take 9, and one core streamed it 38% faster from L2.
      {"avx512-interleaved", Isa::Avx512, avx512::ternary_gemm_interleaved<false>, true, true, true, true, false,
       avx512::ternary_gemm_interleaved_scaled<false>, true},
      {"avx512-vbmi-interleaved", Isa::Avx512Vbmi, avx512::ternary_gemm_interleaved<true>, true, true, true, false, true,
       avx512::ternary_gemm_interleaved_scaled<true>, true},
      // TQ1 prompts (passes of more than batch_max tokens) on the wide copies (TQ2 digits): 3
      // decoding ops per chunk instead of 7 where the pass is bound by the multiply-adds, for 25%
      // more bytes than the TQ1 copy, so no candidate where memory binds (1.3B TQ1 preset, 2
      // threads: 16 sequences 3% faster than the TQ1 copy, 8 sequences 1-4% slower; AMD Zen 5).
      {"avx512-wide", Isa::Avx512, avx512::ternary_gemm_wide, false, false, true, false, true,
       avx512::ternary_gemm_wide_scaled, false, true},
      // AVX-VNNI without AVX-512 (ternary_avx_vnni.hpp): vpdpbusd on 256 bits, every regime.
      {"avx-vnni", Isa::AvxVnni, avx_vnni::ternary_gemm, true, true, true, true, true},
      // Several tokens with the planes decoded in registers (ternary_avx2.hpp), as avx512-direct:
      // ahead of the buffered GEMM, which it beat at 2-16 tokens by 1.1-2.5x (AMD Zen 5, AVX2
      // kernels forced), so it is the batch regime's incumbent where nothing is measured.
      {"avx2-direct", Isa::Avx2, avx2::ternary_gemm_direct, false, true, true, true, true},
      {"avx2", Isa::Avx2, avx2::ternary_gemm, true, true, true, true, true},
#endif
#if defined(__aarch64__)
      {"neon-dotprod", Isa::NeonDotprod, neon::ternary_gemm_dotprod, true, true, true, true, true},
      {"neon-dotprod-direct", Isa::NeonDotprod, neon::ternary_gemm_dotprod_direct, false, true, true, true, true},
      {"neon", Isa::Neon, neon::ternary_gemm, true, true, true, true, true},
#endif
      {"scalar", Isa::Scalar, ternary_gemm_scalar, true, true, true, true, true},
  };
  return k;
}

inline bool cpu_has(Isa isa) {
  switch (isa) {
    case Isa::Scalar: return true;
#if defined(__x86_64__)  // the x86 kernels are built for x86-64 only
    case Isa::Avx2: return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    case Isa::AvxVnni: return cpu_has(Isa::Avx2) && avx_vnni::available();
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

// The multiple of rows at which kernel k may split W's rows: a whole group of the copy it reads,
// a strip where it reads the strips.
inline int64_t kernel_row_grain(const Kernel& k, const TernaryMatrix& W) {
  if (k.wide && W.wide) return interleaved_group_rows(TernaryFormat::TQ2);
  return k.interleaved && W.interleaved ? interleaved_group_rows(W.format) : kStripRows;
}

// The bytes kernel k reads W from: the copy it streams.
struct WeightSpan {
  const uint8_t* p = nullptr;
  size_t bytes = 0;
};
inline WeightSpan kernel_reads(const Kernel& k, const TernaryMatrix& W) {
  if (k.wide && W.wide) return {W.wide, interleaved_bytes(W, TernaryFormat::TQ2)};
  if (k.interleaved && W.interleaved) return {W.interleaved, interleaved_bytes(W)};
  return {W.data, W.nbytes()};
}

// Tokens per pass up to which the batch kernel serves (a batched step of up to 16 sequences,
// k + 1 drafted tokens being verified).
inline constexpr int64_t kBatchMaxTokens = 16;

// What a model computes with: a kernel per regime; rmsnorm + int8 quantisation use the widest
// SIMD the CPU has (every version returns the same bits, ops.hpp). Every kernel returns the same
// bits too, so which one runs never changes a result.
struct KernelTable {
  Kernel decode, batch, prefill;
  // Passes of 2 .. batch_max tokens take the batch kernel, longer ones the prefill kernel.
  int64_t batch_max = kBatchMaxTokens;
  ScaleQuantizeFn scale_quantize = mmfree::scale_quantize;
  SumSquaresFn sum_squares = mmfree::sum_squares;
  SumSquaresRowsFn sum_squares_rows = mmfree::sum_squares_rows;

  const Kernel& for_tokens(int64_t n) const { return n == 1 ? decode : n <= batch_max ? batch : prefill; }
  // The multiple of rows to split W's rows at among threads for a pass of n tokens: whole groups
  // where the kernel reads the interleaved copy (a range ending inside a group would compute the
  // group twice), strips otherwise.
  int64_t row_grain(const TernaryMatrix& W, int64_t n) const { return kernel_row_grain(for_tokens(n), W); }
  // Whether a kernel of the table reads interleaved copies, or wide ones (the model then builds them).
  bool reads_interleaved() const { return decode.interleaved || batch.interleaved || prefill.interleaved; }
  bool reads_wide() const { return decode.wide || batch.wide || prefill.wide; }
  const Kernel& for_regime(Regime r) const { return r == Regime::Decode ? decode : r == Regime::Batch ? batch : prefill; }
  void gemm(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, int32_t* out, int64_t ldo, int64_t r0,
            int64_t r1) const {
    for_tokens(n).gemm(W, Q, ldq, n, out, ldo, r0, r1);
  }
  // The dequantising twin of gemm for the token count's kernel; false (nothing written) when
  // that kernel has none.
  bool gemm_scaled(const TernaryMatrix& W, const int8_t* Q, int64_t ldq, int64_t n, const float* scale,
                   const int32_t* qsum, float* out, int64_t ldo, int64_t r0, int64_t r1) const {
    const TernaryGemmScaledFn f = for_tokens(n).gemm_scaled;
    if (!f) return false;
    f(W, Q, ldq, n, scale, qsum, out, ldo, r0, r1);
    return true;
  }
};

inline KernelTable make_table(const Kernel& decode, const Kernel& batch, const Kernel& prefill) {
  KernelTable t;
  t.decode = decode;
  t.batch = batch;
  t.prefill = prefill;
#if defined(__x86_64__)
  if (cpu_has(Isa::Avx512)) {
    t.scale_quantize = avx512::scale_quantize;
    t.sum_squares = avx512::sum_squares;
    t.sum_squares_rows = avx512::sum_squares_rows;
  } else if (cpu_has(Isa::Avx2)) {
    t.scale_quantize = avx2::scale_quantize;
    t.sum_squares = avx2::sum_squares;
    t.sum_squares_rows = avx2::sum_squares_rows;
  }
#endif
  return t;
}

// The first kernel of the preference order that can serve regime r for format f; with
// `interleaved` (the matrices hold interleaved copies), the first that reads them, if any, for
// passes of several tokens, which the copies are for. One token keeps the strips' decoder: on
// AMD Zen 5 with 2 threads the copies' kernel decoded TQ2 1.5-2.4% slower (and TQ1 0-5% faster),
// so it decodes only where the chooser measures it faster. With `wide` (TQ1 matrices hold wide
// copies, built for the compute-bound passes), prefill's is the first kernel that reads them.
inline Kernel incumbent(Regime r, TernaryFormat f, bool interleaved = false, bool wide = false) {
  if (wide && r == Regime::Prefill)
    for (const Kernel& k : available_kernels())
      if (k.for_regime(r) && k.for_format(f) && k.wide) return k;
  if (interleaved && r != Regime::Decode)
    for (const Kernel& k : available_kernels())
      if (k.for_regime(r) && k.for_format(f) && k.interleaved) return k;
  for (const Kernel& k : available_kernels())
    if (k.for_regime(r) && k.for_format(f) && !k.interleaved && !k.wide) return k;
  return all_kernels().back();  // scalar
}
// Whether a kernel that reads interleaved copies runs here for format f.
inline bool interleaved_runs(TernaryFormat f) {
  for (const Kernel& k : available_kernels())
    if (k.interleaved && k.for_format(f)) return true;
  return false;
}
// Whether a kernel that reads wide copies runs here for format f (TQ1 only).
inline bool wide_runs(TernaryFormat f) {
  for (const Kernel& k : available_kernels())
    if (k.wide && k.for_format(f)) return true;
  return false;
}

// A forced choice, as --kernels takes it: "NAME" for every regime, "DECODE,PREFILL" (the batch
// regime takes the prefill kernel) or "DECODE,BATCH,PREFILL". A kernel that is no candidate for
// a regime (amx or the direct kernels for one token, the prefetching decoders for many) leaves
// that regime to the preferred kernel of its own ISA family (amx: avx512).
inline KernelTable forced_table(const std::string& spec, TernaryFormat f) {
  std::vector<std::string> names;
  for (size_t b = 0;;) {
    const size_t e = spec.find(',', b);
    names.push_back(spec.substr(b, e == std::string::npos ? std::string::npos : e - b));
    if (e == std::string::npos) break;
    b = e + 1;
  }
  if (names.size() > 3) fail("kernels " + spec, "expected NAME, DECODE,PREFILL or DECODE,BATCH,PREFILL");
  const Kernel& d = find_kernel(names[0]);
  const Kernel& p = find_kernel(names.back());
  const Kernel& b = find_kernel(names.size() == 3 ? names[1] : names.back());
  auto serve = [&](const Kernel& k, Regime r) -> Kernel {
    if (k.for_regime(r)) return k;
    const Isa family = k.isa == Isa::Amx ? Isa::Avx512 : k.isa;
    for (const Kernel& c : available_kernels())
      if (c.isa == family && c.for_regime(r)) return c;
    return incumbent(r, f);
  };
  return make_table(serve(d, Regime::Decode), serve(b, Regime::Batch), serve(p, Regime::Prefill));
}

// A regime's kernel, with every candidate's measured rate when the chooser measured them.
struct RegimeChoice {
  Kernel chosen;
  struct Candidate {
    std::string name;
    double rate = 0;  // decode: GB/s of weights; batch and prefill: GMAC/s
  };
  std::vector<Candidate> candidates;  // in preference order; empty when not measured
};
// The kernels of a model: one per regime, and the time measuring them took (kernels/chooser.hpp).
struct KernelChoice {
  RegimeChoice decode, batch, prefill;
  double seconds = 0;
  KernelTable table() const { return make_table(decode.chosen, batch.chosen, prefill.chosen); }
  RegimeChoice& of(Regime r) { return r == Regime::Decode ? decode : r == Regime::Batch ? batch : prefill; }
  const RegimeChoice& of(Regime r) const { return r == Regime::Decode ? decode : r == Regime::Batch ? batch : prefill; }
  // The choice a table makes, nothing measured (forced kernels, or the preferred ones).
  static KernelChoice of_table(const KernelTable& t) {
    KernelChoice c;
    for (Regime r : kRegimes) c.of(r).chosen = t.for_regime(r);
    return c;
  }
};

// The preferred kernel of every regime for format f: what runs when nothing is measured.
inline KernelTable preferred_table(TernaryFormat f, bool interleaved = false, bool wide = false) {
  return make_table(incumbent(Regime::Decode, f, interleaved, wide), incumbent(Regime::Batch, f, interleaved, wide),
                    incumbent(Regime::Prefill, f, interleaved, wide));
}

// Names accepted by --kernels, for messages.
inline std::string kernel_names() {
  std::string s;
  for (const Kernel& k : all_kernels()) s += std::string(s.empty() ? "" : "|") + k.name;
  return s;
}

}  // namespace mmfree::kernels
