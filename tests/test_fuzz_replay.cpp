// Every input the fuzzers keep (fuzz/corpus/<target>) and every input that ever made a target fail
// (fuzz/regressions/<target>) goes through the same target code (fuzz/targets.hpp) in the normal
// suite, under the sanitizers in CI: a fixed bug stays fixed, and the coverage the campaigns reached
// is exercised by every test run.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "../fuzz/targets.hpp"

namespace tests_fuzz_replay {  // this file's own names (the tests compile in unity batches)

namespace fs = std::filesystem;

namespace {

std::vector<uint8_t> bytes_of(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::vector<uint8_t>((std::istreambuf_iterator<char>(in)), {});
}

// Replays every file under fuzz/<kind>/<target>; returns how many.
size_t replay(const std::string& kind) {
  size_t n = 0;
  for (auto& [name, target] : mmfree::fuzz::all(MMFREE_TEST_DATA "/kjv-tiny/tokenizer.json")) {
    const fs::path dir = fs::path(MMFREE_FUZZ_DIR) / kind / name;
    if (!fs::exists(dir)) continue;
    for (auto& e : fs::directory_iterator(dir)) {
      if (!e.is_regular_file()) continue;
      const auto b = bytes_of(e.path());
      SCOPED_TRACE(e.path().string());
      EXPECT_EQ(target(b.data(), b.size()), 0);
      ++n;
    }
  }
  return n;
}

}  // namespace

TEST(FuzzReplay, EveryRegressionInput) {
  const size_t n = replay("regressions");
  std::printf("[ replay ] %zu regression inputs\n", n);
  EXPECT_GE(n, 1u);  // at least the tokenizer id of 4.4e64 the 240 s campaign found
}

TEST(FuzzReplay, TheKeptCorpus) {
  const size_t n = replay("corpus");
  std::printf("[ replay ] %zu corpus inputs\n", n);
  EXPECT_GE(n, 6u);  // a corpus for every target
}

}  // namespace tests_fuzz_replay
