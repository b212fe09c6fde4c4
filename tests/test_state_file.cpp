// State files (state_file.hpp): exact round trips, and every kind of bad file refused by name.
#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

#include "mmfree/mmfree.hpp"
#include "test_util.hpp"

namespace tests_state_file {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;
using namespace mmfree::test;

namespace {

std::string bytes_of_state(const Model& m, const State& s) {
  std::ostringstream o;
  write_state(m, s, o);
  return o.str();
}

State state_of_bytes(const Model& m, const std::string& b) {
  std::istringstream in(b);
  return read_state(m, in, "s.state");
}

}  // namespace

// Saving after some tokens and continuing from the file gives exactly the logits of never
// having stopped.
TEST(StateFile, RoundTripContinuesExactly) {
  Model m = load_model(data_dir() + "/kjv-tiny");
  TempDir d;
  State s = m.new_state();
  m.prefill_last(std::vector<int32_t>{1, 1142, 333, 2693}, s);
  save_state(m, s, d.file("a.state"));
  EXPECT_EQ(std::filesystem::file_size(d.file("a.state")), 32 + 2 * 128 * 4 + 8u);
  State r = load_state(m, d.file("a.state"));
  EXPECT_EQ(r.position, 4);
  EXPECT_EQ(r.h, s.h);
  EXPECT_EQ(m.step(464, r), m.step(464, s));
  // No temporary files are left beside it.
  size_t files = 0;
  for (auto& e : std::filesystem::directory_iterator(d.path)) files += e.is_regular_file();
  EXPECT_EQ(files, 1u);
}

TEST(StateFile, BadFilesAreRefusedByName) {
  Model m = load_model(data_dir() + "/kjv-tiny");
  State s = m.new_state();
  m.prefill_last(std::vector<int32_t>{1, 1142}, s);
  const std::string good = bytes_of_state(m, s);
  // Every truncation.
  for (size_t n = 0; n < good.size(); ++n) {
    const std::string e = error_of([&] { state_of_bytes(m, good.substr(0, n)); });
    EXPECT_EQ(e.rfind("s.state: ", 0), 0u) << n << ": " << e;
  }
  EXPECT_NE(error_of([&] { state_of_bytes(m, good.substr(0, 100)); }).find("truncated (100 bytes of 1064)"), std::string::npos);
  // Every single-bit flip is caught (by the checksum, or the header checks before it).
  for (size_t i = 0; i < good.size(); ++i) {
    std::string b = good;
    b[i] = char(b[i] ^ (1 << (i % 8)));
    EXPECT_FALSE(error_of([&] { state_of_bytes(m, b); }).empty()) << "flip at byte " << i;
  }
  std::string b = good;
  b[40] = char(b[40] ^ 1);
  EXPECT_NE(error_of([&] { state_of_bytes(m, b); }).find("corrupted (checksum mismatch)"), std::string::npos);
  b = good;
  b[4] = 2;  // version 2
  EXPECT_NE(error_of([&] { state_of_bytes(m, b); }).find("version 2 is newer than this mmfree reads (1)"), std::string::npos);
  EXPECT_NE(error_of([&] { state_of_bytes(m, good + "x"); }).find("bytes after the checksum"), std::string::npos);
  EXPECT_NE(error_of([&] { state_of_bytes(m, "GGUF" + good.substr(4)); }).find("bad magic"), std::string::npos);
  // A state of another model: other shapes, or the same shapes with other weights.
  Model odd = load_model(data_dir() + "/odd-b");
  EXPECT_NE(error_of([&] { state_of_bytes(odd, good); }).find("is a state of a model with 2 layers of width 128"),
            std::string::npos);
  TempDir d;
  convert_to_gguf(data_dir() + "/kjv-tiny", d.file("t.gguf"));
  Model same = load_model(d.file("t.gguf"));  // the same model as GGUF (TQ1): the same fingerprint
  EXPECT_EQ(state_of_bytes(same, good).h, s.h);
  EXPECT_EQ(model_fingerprint(same), model_fingerprint(m));
  ModelWeights w = m.weights();
  w.arena = nullptr;
  w.blocks[1].mlp_norm[3] += 1.0f;
  Model other(std::move(w), ModelOptions{});
  EXPECT_NE(error_of([&] { state_of_bytes(other, good); }).find("the state of another model"), std::string::npos);
  EXPECT_NE(error_of([&] { load_state(m, d.file("missing.state")); }).find("missing.state: cannot open"), std::string::npos);
}

// The CLI round trip: A, then 8 generated; saved; then B and 8 more from the file gives exactly
// the ids of one greedy run over A, the 8, and B.
TEST(StateFile, CliSaveAndLoadContinueOneGreedyRun) {
  TempDir d;
  auto run = [&](const std::string& args) {
    const std::string cmd = std::string(MMFREE_CLI) + " generate " + args + " >" + d.file("o") + " 2>" + d.file("e");
    EXPECT_EQ(std::system(cmd.c_str()), 0) << read_file(d.file("e"));
    std::vector<int32_t> ids;
    std::istringstream in(read_file(d.file("o")));
    for (int32_t x; in >> x;) ids.push_back(x);
    return ids;
  };
  const auto first = run("--ids 1,1142,333 -n 8 --temperature 0 --print-ids --no-stats --save-state " + d.file("s.state"));
  ASSERT_EQ(first.size(), 3u + 8);
  const auto second = run("--load-state " + d.file("s.state") + " --ids 2693,464 -n 8 --temperature 0 --print-ids --no-stats");
  ASSERT_EQ(second.size(), 2u + 8);
  EXPECT_EQ(second[0], 2693);
  std::vector<int32_t> all = first;
  all.insert(all.end(), second.begin(), second.begin() + 2);
  const auto one = run("--ids " + [&] {
    std::string s;
    for (int32_t x : all) s += (s.empty() ? "" : ",") + std::to_string(x);
    return s;
  }() + " -n 8 --temperature 0 --print-ids --no-stats");
  ASSERT_EQ(one.size(), all.size() + 8);
  EXPECT_EQ(std::vector<int32_t>(one.end() - 8, one.end()), std::vector<int32_t>(second.end() - 8, second.end()));
  // A truncated state file is refused with a clear error.
  {
    const std::string bytes = read_file(d.file("s.state"));
    std::ofstream(d.file("t.state"), std::ios::binary) << bytes.substr(0, bytes.size() / 2);
  }
  const std::string cmd = std::string(MMFREE_CLI) + " generate --load-state " + d.file("t.state") + " --ids 5 2>" + d.file("e");
  EXPECT_NE(std::system(cmd.c_str()), 0);
  EXPECT_NE(read_file(d.file("e")).find("t.state: truncated"), std::string::npos) << read_file(d.file("e"));
}

}  // namespace tests_state_file
