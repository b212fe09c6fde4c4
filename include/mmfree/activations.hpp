// mmfree: the scratch memory of a forward pass over n tokens, in one struct of named buffers
// (llama2.c's RunState, gemma.cpp's Activations). H = hidden_size, D = input_dim (the MLGRU
// width), I = intermediate_size, K / N = a BitLinear's in / out features, Kp = K padded to
// whole blocks. Buffers only grow, so a thread's Activations stop allocating after the first
// few calls; the Model keeps one per thread, so several threads can share one Model.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace mmfree {

// One BitLinear call's quantised input and integer sums.
struct BitLinearScratch {
  std::vector<int8_t> q;     // [n, Kp] int8 activations
  std::vector<float> s_x;    // [n]     their scales
  std::vector<float> deq;    // [n]     weight scale / s_x: what dequantises token t's sums
  std::vector<int32_t> qsum; // [n]     sum of each token's q (the kernels' offset term)
  std::vector<int32_t> acc;  // [n, N]  ternary sums

  void reserve(int64_t n, int64_t k_padded, int64_t out) {
    grow(q, n * k_padded), grow(s_x, n), grow(deq, n), grow(qsum, n), grow(acc, n * out);
  }
  template <class T>
  static void grow(std::vector<T>& v, int64_t size) {
    if (v.size() < size_t(size)) v.resize(size_t(size));
  }
};

struct Activations {
  // The residual stream x, its normalised copy xn, and a sublayer's output y.
  std::vector<float> x, xn, y;  // [n, H]
  std::vector<float*> h;        // [n] the MLGRU state each token advances, in the current layer
  std::vector<float*> snap;     // [n] where token t's state is copied after it (or null)

  // MLGRU (token mixer).
  std::vector<float> f, i, g, o;  // [n, D] forget gate, input, output gate, gated output
  std::vector<float> rms;         // [n] rms factors of the mixer's input, shared by f, i, g
  BitLinearScratch fq, iq, gq;    // f_proj, i_proj, g_proj (quantised side by side)

  // GLU (channel mixer).
  std::vector<float> gate_up;  // [n, 2I] gate_proj's output: gate, then up
  std::vector<float> act;      // [n, I]  silu(gate) * up

  // Every other BitLinear (o_proj, gate_proj, down_proj, lm_head), one at a time.
  BitLinearScratch bl;

  void reserve_residual(int64_t n, int64_t H) {
    for (auto* v : {&x, &xn, &y}) BitLinearScratch::grow(*v, n * H);
  }
  void reserve_mixer(int64_t n, int64_t D) {
    for (auto* v : {&f, &i, &g, &o}) BitLinearScratch::grow(*v, n * D);
    BitLinearScratch::grow(rms, n);
  }
  void reserve_glu(int64_t n, int64_t I) {
    BitLinearScratch::grow(gate_up, n * 2 * I);
    BitLinearScratch::grow(act, n * I);
  }
};

}  // namespace mmfree
