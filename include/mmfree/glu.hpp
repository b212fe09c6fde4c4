// mmfree: the GLU channel mixer (the checkpoint calls it "mlp"): [gate, up] = gate_proj(x); out = down_proj(silu(gate) * up).
#pragma once

#include <algorithm>
#include <cstdint>
#include <vector>

#include "mmfree/activations.hpp"
#include "mmfree/bitlinear.hpp"
#include "mmfree/exec.hpp"
#include "mmfree/ops.hpp"

namespace mmfree {

// a = silu(gate) * up, element-wise (restrict: vectorised).
MMFREE_ELEMENTWISE_CLONES inline void silu_mul(const float* __restrict gate, const float* __restrict up, int64_t n, float* __restrict a) {
  int64_t c = 0;
  for (; c + 16 <= n; c += 16)  // fixed groups of 16: -O2's cheap vectoriser takes them (8: half the speed)
    for (int k = 0; k < 16; ++k) a[c + k] = silu(gate[c + k]) * up[c + k];
  for (; c < n; ++c) a[c] = silu(gate[c]) * up[c];
}

struct GLU {
  BitLinear gate_proj;  // [2I, H]: first half gate, second half up
  BitLinear down_proj;  // [H, I]

  int64_t intermediate() const { return down_proj.in_features(); }

  template <class Acc>
  void forward(const float* x, int64_t n, float* out, Activations& s, const BasicExec<Acc>& ex) const {
    reserve(n, s);
    ex.for_tokens(n, [&](int64_t t0, int64_t t1) { quantize_tokens(x, t0, t1, s, ex); });
    forward_quantized(n, out, s, ex);
  }

  // The two halves of forward (as MLGRU's): scratch, the input's quantisation for tokens
  // [t0, t1) on the calling thread, and everything after it.
  void reserve(int64_t n, Activations& s) const {
    s.reserve_glu(n, intermediate());
    gate_proj.reserve(n, s.bl);
  }
  template <class Acc>
  void quantize_tokens(const float* x, int64_t t0, int64_t t1, Activations& s, const BasicExec<Acc>& ex) const {
    gate_proj.quantize_tokens(x, t0, t1, s.bl, ex);
  }
  template <class Acc>
  void forward_quantized(int64_t n, float* out, Activations& s, const BasicExec<Acc>& ex) const {
    const int64_t inter = intermediate();
    BitLinearScratch& bs = s.bl;
    const int64_t grain = ex.row_grain(gate_proj.weights(), n), shift = (grain - inter % grain) % grain;
    if (n > 1 && shift > 0) return forward_quantized_aligned(n, out, s, ex, grain, shift);
    // Channel c needs rows c (gate) and I + c (up): each thread takes both rows of its
    // channels, so the activation joins the same parallel section.
    ex.for_rows(inter, n, [&](int64_t c0, int64_t c1) {
      gate_proj.forward_rows(n, bs, ex, s.gate_up.data(), 2 * inter, c0, c1);
      gate_proj.forward_rows(n, bs, ex, s.gate_up.data(), 2 * inter, inter + c0, inter + c1);
      for (int64_t t = 0; t < n; ++t) {
        const float* gate = s.gate_up.data() + t * 2 * inter;
        silu_mul(gate + c0, gate + inter + c0, c1 - c0, s.act.data() + t * inter + c0);
      }
    }, grain, &gate_proj.weights());
    down_proj.forward(s.act.data(), n, out, bs, ex);
  }

 private:
  // The same where the kernel's groups of rows (`grain`) do not divide I, as TQ1's interleaved
  // copies (groups of 80 rows; I = 5632 in the 1.3B preset): there the up rows of a range of
  // channels start and end inside a group, and a kernel computes such a group whole. A pass of
  // several tokens hands its ranges out in pieces of 2-3 groups (ThreadPool::for_range_balanced),
  // so each piece computed a group more. Here each range takes the up rows `shift` channels
  // further on, whole groups, and silu(gate) * up waits for the per-token section that quantises
  // down_proj's input. The same bits. Alternated in one process (1.3B TQ1 preset, 2 threads, AMD
  // Zen 5): 2-16 sequences 2-5% faster, a 128-token chunk of a prompt 3% (the gate/up section
  // 9-11% shorter). Not where the groups divide I (nothing to gain), nor for one token: a range
  // per thread costs a group more each, and its activation, moved to the calling thread alone,
  // made a token 2-3% slower.
  template <class Acc>
  void forward_quantized_aligned(int64_t n, float* out, Activations& s, const BasicExec<Acc>& ex, int64_t grain,
                                 int64_t shift) const {
    const int64_t inter = intermediate();
    BitLinearScratch& bs = s.bl;
    auto up = [&](int64_t c) { return c == 0 ? c : std::min(inter, c + shift); };  // ranges tile [0, I) still
    ex.for_rows(inter, n, [&](int64_t c0, int64_t c1) {
      gate_proj.forward_rows(n, bs, ex, s.gate_up.data(), 2 * inter, c0, c1);
      gate_proj.forward_rows(n, bs, ex, s.gate_up.data(), 2 * inter, inter + up(c0), inter + up(c1));
    }, grain, &gate_proj.weights());
    down_proj.reserve(n, bs);
    ex.for_tokens(n, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; ++t) {
        const float* gate = s.gate_up.data() + t * 2 * inter;
        silu_mul(gate, gate + inter, inter, s.act.data() + t * inter);
      }
      down_proj.quantize_tokens(s.act.data(), t0, t1, bs, ex);
    });
    down_proj.forward_quantized(n, out, down_proj.out_features(), bs, ex);
  }
};

}  // namespace mmfree
