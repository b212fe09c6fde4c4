// Whole models through the Verilog core: every ternary row product of every layer runs on the
// Verilated ternary_acc (hw/sim/rtl_accumulate.hpp). Logits must equal the CPU model's bit for
// bit, so greedy generation gives the same ids.
#include <gtest/gtest.h>

#include "mmfree/mmfree.hpp"
#include "rtl_accumulate.hpp"

using namespace mmfree;

namespace {

struct Pair {
  Model cpu;
  std::unique_ptr<hw::Core> core;
  BasicModel<hw::RtlAccumulate> rtl;
};

ModelOptions one_thread() {
  ModelOptions o;
  o.threads = 1;
  o.kernels = "scalar";
  o.huge_pages = false;
  return o;
}

std::unique_ptr<Pair> load_pair(const std::string& path, int lanes) {
  ThreadPool pool(1);
  auto core = hw::make_core(lanes);
  hw::Core* c = core.get();
  ModelOptions cpu_opt;
  cpu_opt.threads = 2;  // the CPU side on its own dispatched kernels
  return std::unique_ptr<Pair>(new Pair{load_model(path, cpu_opt), std::move(core),
                                        BasicModel<hw::RtlAccumulate>(load_weights(path, one_thread(), pool), one_thread(),
                                                                      nullptr, hw::RtlAccumulate{c})});
}

void same_model(const std::string& path, int lanes, const std::vector<int32_t>& prompt, int64_t n) {
  auto p = load_pair(path, lanes);
  const int64_t V = p->cpu.vocab_size();
  // Logits of every prompt position, then greedy decoding step by step.
  const auto want = p->cpu.prefill(prompt);
  const uint64_t c0 = p->core->cycles();
  const auto got = p->rtl.prefill(prompt);
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < got.size(); ++i) ASSERT_EQ(got[i], want[i]) << "logit " << i % size_t(V) << " of position " << i / size_t(V);
  EXPECT_GT(p->core->cycles(), c0);

  GenerateOptions g;
  g.max_new_tokens = n;
  g.sampling.temperature = 0;
  std::vector<int32_t> ids_cpu, ids_rtl;
  generate(p->cpu, prompt, g, [&](int32_t id) { return ids_cpu.push_back(id), true; });
  generate(p->rtl, prompt, g, [&](int32_t id) { return ids_rtl.push_back(id), true; });
  EXPECT_EQ(ids_rtl, ids_cpu);
  EXPECT_EQ(int64_t(ids_cpu.size()), n);
  std::printf("[ %d-lane core ] %s: %zu prompt logits bit-identical, %lld greedy ids equal\n", lanes, path.c_str(),
              want.size(), (long long)n);
}

}  // namespace

TEST(HwModel, KjvTinyThroughTheCore16Lanes) {
  same_model(std::string(MMFREE_TEST_DATA) + "/kjv-tiny", 16, {1, 450, 1887, 310, 2545}, 12);
}

// 96 wide, vocabulary 777, intermediate not a multiple of 256: rows end in partial blocks.
TEST(HwModel, OddShapedModelThroughTheCore64Lanes) {
  same_model(std::string(MMFREE_TEST_DATA) + "/odd-b", 64, {1, 17, 400, 776, 3}, 12);
}

TEST(HwModel, KjvTinyThroughTheCore256Lanes) {
  same_model(std::string(MMFREE_TEST_DATA) + "/kjv-tiny", 256, {1, 29, 4095}, 6);
}
