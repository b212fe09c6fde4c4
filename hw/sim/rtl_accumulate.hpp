// The Verilog core as the ternary accumulate of a BasicModel (include/mmfree/exec.hpp): every
// row product of every BitLinear of every layer runs on the Verilated core, beat by beat, with
// the weights as TQ2 row bytes. Everything else (norms, quantisation, the recurrence, the
// sampler) is the library's own code, so the model's logits are bit-identical to the CPU's
// whenever the core's sums are.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <vector>

#include "core_driver.hpp"
#include "mmfree/exec.hpp"
#include "mmfree/kernels/dispatch.hpp"

namespace mmfree::hw {

// A core of some lane count behind one interface.
class Core {
 public:
  virtual ~Core() = default;
  virtual int lanes() const = 0;
  virtual uint64_t cycles() const = 0;
  // acc[t, r] = W[r] . q[t] for n tokens, rows [r0, r1), through the core.
  virtual void gemm(const TernaryMatrix& W, const int8_t* q, int64_t ldq, int64_t n, int32_t* acc, int64_t ldacc,
                    int64_t r0, int64_t r1) = 0;
};

template <class V, int BYTES>
class VerilatedCore final : public Core {
 public:
  int lanes() const override { return 4 * BYTES; }
  uint64_t cycles() const override { return drv_.cycles; }
  void gemm(const TernaryMatrix& W, const int8_t* q, int64_t ldq, int64_t n, int32_t* acc, int64_t ldacc, int64_t r0,
            int64_t r1) override {
    // Each matrix's TQ2 row bytes, made once: what a memory would hold for the core.
    auto it = rows_.find(W.data);
    if (it == rows_.end()) it = rows_.emplace(W.data, tq2_rows(W)).first;
    const int64_t row_bytes = (W.cols + 255) / 256 * 64;
    for (int64_t t = 0; t < n; ++t) drv_.stream(it->second.data(), row_bytes, q + t * ldq, r0, r1, acc + t * ldacc + r0);
  }

 private:
  Driver<V, BYTES> drv_;
  std::map<const uint8_t*, std::vector<uint8_t>> rows_;
};

// The accumulate a BasicModel calls. Not thread-safe: run the model with one thread.
struct RtlAccumulate {
  Core* core = nullptr;
  void operator()(const kernels::KernelTable&, const TernaryMatrix& W, const int8_t* q, int64_t ldq, int64_t n,
                  int32_t* acc, int64_t ldacc, int64_t r0, int64_t r1) const {
    core->gemm(W, q, ldq, n, acc, ldacc, r0, r1);
  }
};

}  // namespace mmfree::hw

namespace mmfree::hw {
// A Verilated core of 16, 64 or 256 lanes (hw/sim/cores.cpp); other counts are an error.
std::unique_ptr<Core> make_core(int lanes);
}  // namespace mmfree::hw
