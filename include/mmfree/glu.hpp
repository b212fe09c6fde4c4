// mmfree: the GLU channel mixer: [gate, up] = gate_proj(x); out = down_proj(silu(gate) * up).
#pragma once

#include <cstdint>
#include <vector>

#include "mmfree/bitlinear.hpp"
#include "mmfree/ops.hpp"

namespace mmfree {

struct GluScratch {
  std::vector<float> gate_up;  // [n, 2I]
  std::vector<float> act;      // [n, I]
  void reserve(int64_t n, int64_t inter) {
    if (gate_up.size() < size_t(n * 2 * inter)) gate_up.resize(size_t(n * 2 * inter));
    if (act.size() < size_t(n * inter)) act.resize(size_t(n * inter));
  }
};

struct GLU {
  BitLinear gate_proj;  // [2I, H]: first half gate, second half up
  BitLinear down_proj;  // [H, I]

  int64_t intermediate() const { return down_proj.in_features(); }

  void forward(const float* x, int64_t n, float* out, GluScratch& s, BitLinearScratch& bs, const Exec& ex) const {
    const int64_t inter = intermediate();
    s.reserve(n, inter);
    gate_proj.forward(x, n, s.gate_up.data(), bs, ex);
    for (int64_t t = 0; t < n; ++t) {
      const float* gate = s.gate_up.data() + t * 2 * inter;
      const float* up = gate + inter;
      float* a = s.act.data() + t * inter;
      for (int64_t c = 0; c < inter; ++c) a[c] = silu(gate[c]) * up[c];
    }
    down_proj.forward(s.act.data(), n, out, bs, ex);
  }
};

}  // namespace mmfree
