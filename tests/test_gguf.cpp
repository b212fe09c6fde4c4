// GGUF: converted files give the same logits as their source; corrupted files are refused.
#include <gtest/gtest.h>

#include <random>

#include "mmfree/mmfree.hpp"
#include "test_util.hpp"

namespace tests_gguf {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;
using namespace mmfree::test;

namespace {

void expect_same_logits(const std::string& dir, TernaryFormat f, std::optional<DType> emb = {}) {
  TempDir d;
  const std::string out = d.file("m.gguf");
  ConvertOptions o;
  o.weights = f;
  o.embeddings = emb;
  convert_to_gguf(dir, out, o);
  ModelOptions mo;
  mo.format = f;
  Model a = load_model(dir, mo), b = load_model(out, mo);
  const auto g = SafetensorsFile(dir + "/golden.safetensors");
  for (auto& [name, t] : g.tensors()) {
    if (name.find(".greedy_ids") == std::string::npos) continue;
    const auto ids = t.to_int32();
    EXPECT_EQ(a.prefill(ids), b.prefill(ids)) << dir << " " << name << " " << format_name(f);
  }
  if (std::filesystem::exists(dir + "/tokenizer.json")) {
    const Tokenizer ta = load_tokenizer(dir), tb = load_tokenizer(out);
    const std::string text = "In the beginning God created the heaven and the earth. <s> caf\xc3\xa9";
    EXPECT_EQ(ta.encode(text), tb.encode(text));
  }
}

std::string tiny_gguf(const TempDir& d) {
  const std::string out = d.file("tiny.gguf");
  convert_to_gguf(data_dir() + "/kjv-tiny", out);
  return out;
}

}  // namespace

TEST(Gguf, ConvertedKjvTinyEqualsDirectory) {
  expect_same_logits(data_dir() + "/kjv-tiny", TernaryFormat::TQ2);
  expect_same_logits(data_dir() + "/kjv-tiny", TernaryFormat::TQ1);
}

TEST(Gguf, ConvertedOddBEqualsDirectory) { expect_same_logits(data_dir() + "/odd-b", TernaryFormat::TQ1); }

// kjv-demo's Hugging Face weights (27 MB) stay in ../shared; the bundled GGUF made from them is
// checked against the reference's goldens in every clone (Conformance.KjvDemoBundledGguf).
TEST(Gguf, ConvertedKjvDemoEqualsDirectory) {
  MMFREE_REQUIRE_SHARED();
  expect_same_logits(shared_dir() + "/kjv-demo", TernaryFormat::TQ2);
}

TEST(Gguf, F16EmbeddingsStayWithinConformance) {
  // BF16 -> F16 can round; the result must still agree with the reference as SPEC defines.
  TempDir d;
  ConvertOptions o;
  o.embeddings = DType::F16;
  convert_to_gguf(data_dir() + "/kjv-tiny", d.file("f16.gguf"), o);
  Model m = load_model(d.file("f16.gguf"));
  const auto g = SafetensorsFile(data_dir() + "/kjv-tiny/golden.safetensors");
  const auto ids = g.find("genesis.input_ids")->to_int32();
  const auto ref = g.find("genesis.logits")->to_floats();
  const auto a = agreement(ref, m.prefill(ids), ids.size(), 4096);
  EXPECT_LE(a.max_kl, 5e-3);
  EXPECT_GE(a.top1, 0.95);
}

TEST(Gguf, BundledDefaultModelLoads) {
  const std::string path = bundled_model();
  ASSERT_TRUE(std::filesystem::exists(path)) << path;
  Model m = load_model(path);
  EXPECT_EQ(m.config().hidden_size, 384);
  EXPECT_EQ(m.config().num_hidden_layers, 6);
  const Tokenizer t = load_tokenizer(path);
  EXPECT_EQ(t.encode("In the beginning"), (std::vector<int32_t>{1, 1142, 333, 2693}));
  if (shared_available()) {  // the bundled file is the shared kjv-demo, converted
    Model src = load_model(shared_dir() + "/kjv-demo");
    EXPECT_EQ(src.prefill(std::vector<int32_t>{1, 1142, 333, 2693}), m.prefill(std::vector<int32_t>{1, 1142, 333, 2693}));
  }
}

// Ternary tensors are repacked at load into strips in one arena (2 MiB pages, or ordinary ones
// with huge_pages = false): the same ternary values as the file holds, the same logits.
TEST(Gguf, PackedWeightsAreRepackedIntoOneArena) {
  TempDir d;
  const std::string p = tiny_gguf(d);
  ModelOptions plain;
  plain.huge_pages = false;
  Model small = load_model(p, plain);
  Model huge = load_model(p);
  gguf::Reader r(p);
  const auto* t = r.find("model.layers.0.mlp.gate_proj.weight");
  ASSERT_NE(t, nullptr);
  EXPECT_EQ(t->offset % 32, 0u);
  const auto type = TernaryFileType(t->type);
  const int64_t cols = int64_t(t->dims[0]), rows = int64_t(t->dims[1]), rb = file_row_bytes(type, cols);
  std::vector<uint8_t> digits(static_cast<size_t>(cols));
  for (const Model* m : {&small, &huge}) {
    const auto& w = m->weights().blocks[0].mlp.gate_proj.weights();
    EXPECT_EQ(uintptr_t(w.data) % 64, 0u);
    EXPECT_NE(m->weights().arena, nullptr);
    for (int64_t row = 0; row < rows; ++row) {
      decode_file_row(type, t->data + row * rb, cols, digits.data(), "t", row);
      for (int64_t c = 0; c < cols; ++c) ASSERT_EQ(ternary_at(w, row, c), int(digits[size_t(c)]) - 1) << row << "," << c;
    }
  }
  const std::vector<int32_t> ids = {1, 5, 9, 200, 3};
  EXPECT_EQ(small.prefill(ids), huge.prefill(ids));
}

// Either format repacks into either at load, with identical results.
TEST(Gguf, LoadsIntoEitherFormat) {
  TempDir d;
  const std::string p = tiny_gguf(d);
  const std::vector<int32_t> ids = {1, 5, 9, 200, 3};
  std::vector<float> first;
  for (auto f : {TernaryFormat::TQ2, TernaryFormat::TQ1}) {
    ModelOptions o;
    o.format = f;
    Model m = load_model(p, o);
    EXPECT_EQ(m.format(), f);
    const auto l = m.prefill(ids);
    if (first.empty()) first = l;
    EXPECT_EQ(l, first) << format_name(f);
  }
}

TEST(Gguf, RandomPresetWritesAndRuns) {
  TempDir d;
  for (auto f : {TernaryFormat::TQ2, TernaryFormat::TQ1}) {
    const std::string p = d.file(std::string("r-") + format_name(f) + ".gguf");
    write_random_gguf(preset_config("tiny"), p, f, 3);
    Model m = load_model(p);
    State st = m.new_state();
    auto l = m.step(5, st);
    for (int i = 0; i < 20; ++i) l = m.step(int32_t(std::max_element(l.begin(), l.end()) - l.begin()), st);
    for (float v : l) ASSERT_TRUE(std::isfinite(v));
    // The odd-K padding of the random writer encodes zeros, as pack_row does.
    const auto& g = m.weights().blocks[0].attn.i_proj.weights();
    EXPECT_EQ(g.cols, 128);
  }
  EXPECT_NE(error_of([&] { preset_config("7b"); }).find("--preset 7b: unknown"), std::string::npos);
}

TEST(Gguf, CorruptFilesAreRefusedNeverCrash) {
  TempDir d;
  const std::string good = read_file(tiny_gguf(d));
  const std::string p = d.file("bad.gguf");
  gguf::Reader r(tiny_gguf(d));
  // Where the header ends and the data starts.
  size_t data_start = good.size();
  for (auto& t : r.tensors()) data_start = std::min(data_start, size_t(t.data - r.file()->data()));
  // Truncated anywhere in the header, and at points through the data.
  std::vector<size_t> cuts;
  for (size_t i = 0; i < data_start; i += std::max<size_t>(1, data_start / 2000)) cuts.push_back(i);
  for (size_t i = data_start; i < good.size(); i += good.size() / 50) cuts.push_back(i);
  int refused = 0;
  for (size_t cut : cuts) {
    write_file(p, good.substr(0, cut));
    const std::string e = error_of([&] { load_model(p); });
    EXPECT_FALSE(e.empty()) << "truncated at " << cut << " was accepted";
    refused += !e.empty();
  }
  std::printf("[ gguf ] %d truncations refused\n", refused);
  // Random byte flips in the header: an error or (if the flip hits a harmless byte, e.g.
  // inside a string) a model that still loads; never a crash or a sanitizer report.
  std::mt19937 rng(11);
  int errors = 0;
  for (int i = 0; i < 400; ++i) {
    std::string b = good;
    b[rng() % data_start] ^= char(1 + rng() % 255);
    write_file(p, b);
    try {
      Model m = load_model(p);
      auto l = m.prefill(std::vector<int32_t>{1, 2, 3});
      (void)l;
    } catch (const Error&) {
      ++errors;
    }
  }
  std::printf("[ gguf ] 400 header flips: %d refused, the rest harmless\n", errors);
  EXPECT_GT(errors, 0);
}

TEST(Gguf, SpecificCorruptionsHaveExactMessages) {
  TempDir d;
  const std::string good = read_file(tiny_gguf(d));
  const std::string p = d.file("bad.gguf");
  auto with = [&](size_t off, const void* bytes, size_t n) {
    std::string b = good;
    std::memcpy(b.data() + off, bytes, n);
    write_file(p, b);
    return error_of([&] { load_model(p); });
  };
  const uint64_t huge = uint64_t(1) << 62;
  const uint32_t v9 = 9;
  EXPECT_NE(with(0, "GGUX", 4).find("not a GGUF file (bad magic)"), std::string::npos);
  EXPECT_NE(with(4, &v9, 4).find("GGUF version 9 is not supported"), std::string::npos);
  EXPECT_NE(with(8, &huge, 8).find("tensor count 4611686018427387904 is implausible"), std::string::npos);
  EXPECT_NE(with(16, &huge, 8).find("metadata count 4611686018427387904 is implausible"), std::string::npos);
  EXPECT_NE(with(24, &huge, 8).find("truncated: metadata key"), std::string::npos);  // first key's length
  write_file(p, "");
  EXPECT_NE(error_of([&] { gguf::Reader r(p); }).find("bad magic"), std::string::npos);
  // A file that is not a model, and a model whose architecture is another.
  {
    gguf::Writer w(p);
    w.add_string("general.architecture", "llama");
    w.begin();
    w.finish();
    EXPECT_NE(error_of([&] { load_model(p); }).find("general.architecture is not \"hgrn_bit\""), std::string::npos);
  }
  // Unknown tensor type, misaligned offset, overlapping data, dims that overflow.
  auto one_tensor = [&](uint32_t type, uint64_t offset, std::vector<uint64_t> dims) {
    std::string h = "GGUF";
    auto put = [&](auto v) { h.append(reinterpret_cast<const char*>(&v), sizeof v); };
    put(uint32_t(3)), put(uint64_t(2)), put(uint64_t(0));
    for (int i = 0; i < 2; ++i) {
      const std::string name = {'t', char('0' + i)};  // not "t" + to_string: GCC 12 warns -Wrestrict (a false positive)
      put(uint64_t(name.size()));
      h += name;
      put(uint32_t(dims.size()));
      for (auto x : dims) put(x);
      put(type);
      put(i == 0 ? uint64_t(0) : offset);
    }
    h.resize((h.size() + 31) / 32 * 32, '\0');
    h += std::string(256, '\0');
    write_file(p, h);
    return error_of([&] { gguf::Reader r(p); });
  };
  EXPECT_NE(one_tensor(77, 32, {4}).find("tensor 't0' has unknown type 77"), std::string::npos);
  EXPECT_NE(one_tensor(gguf::F32, 33, {4}).find("tensor 't1': offset 33 is not aligned to 32"), std::string::npos);
  EXPECT_NE(one_tensor(gguf::F32, 0, {4}).find("tensor data overlap"), std::string::npos);
  EXPECT_NE(one_tensor(gguf::F32, 64, {uint64_t(1) << 39, uint64_t(1) << 39}).find("size overflows"), std::string::npos);
  EXPECT_NE(one_tensor(gguf::F32, 64, {1000}).find("runs past the end of the file"), std::string::npos);
  EXPECT_NE(one_tensor(gguf::F32, 64, {}).find("0 dimensions"), std::string::npos);
}

TEST(Gguf, RandomHfDirectoryLoadsAndConverts) {
  TempDir d;
  const std::string dir = d.file("rand-hf");
  write_random_hf(preset_config("tiny"), dir, 4);
  Model m = load_model(dir);
  EXPECT_EQ(m.config().hidden_size, 128);
  // The latent values are exactly ternary * 0.02, so ternarisation recovers them.
  SafetensorsFile f(dir + "/model.safetensors");
  const auto w = f.find("model.layers.0.attn.i_proj.weight")->to_floats();
  const auto& t = m.weights().blocks[0].attn.i_proj.weights();
  const float step = bf16_to_float(float_to_bf16(0.02f));  // 0.02 as stored in BF16
  for (int64_t c = 0; c < 128; ++c) EXPECT_EQ(float(ternary_at(t, 5, c)) * step, w[size_t(5 * 128 + c)]);
  // And it converts to a GGUF that computes the same logits.
  convert_to_gguf(dir, d.file("rand.gguf"));
  const std::vector<int32_t> ids = {1, 7, 99, 4000};
  EXPECT_EQ(load_model(d.file("rand.gguf")).prefill(ids), m.prefill(ids));
}

}  // namespace tests_gguf
