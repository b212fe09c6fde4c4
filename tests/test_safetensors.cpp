// The safetensors reader and the checkpoint loader on malformed inputs: every one is an
// mmfree::Error that names the file and the problem.
#include <gtest/gtest.h>

#include <sys/stat.h>

#include "mmfree/mmfree.hpp"
#include "test_util.hpp"

namespace tests_safetensors {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;
using namespace mmfree::test;

namespace {

std::string st_bytes(const std::string& header, size_t data_len) {
  std::string s(8, '\0');
  uint64_t n = header.size();
  std::memcpy(s.data(), &n, 8);
  return s + header + std::string(data_len, '\x01');
}

// Expects `fn` to throw mmfree::Error whose message contains every fragment.
template <class F>
void expect_error(F fn, std::vector<std::string> fragments) {
  const std::string e = error_of(fn);
  EXPECT_FALSE(e.empty()) << "no exception; expected one mentioning '" << fragments[0] << "'";
  for (auto& f : fragments) EXPECT_NE(e.find(f), std::string::npos) << "message: " << e;
}

void copy_dir(const std::string& from, const std::string& to) {
  std::filesystem::copy(from, to, std::filesystem::copy_options::recursive);
  for (auto& e : std::filesystem::recursive_directory_iterator(to))
    std::filesystem::permissions(e.path(), std::filesystem::perms::owner_write, std::filesystem::perm_options::add);
}

}  // namespace

TEST(Safetensors, ReadsValidFile) {
  TempDir d;
  write_safetensors(d.file("a.safetensors"),
                    {make_blob("x", DType::F32, {2, 2}, std::vector<float>{1, 2, 3, 4}),
                     make_blob("b", DType::BF16, {1}, std::vector<uint16_t>{float_to_bf16(-1.5f)}),
                     make_blob("h", DType::F16, {2}, std::vector<uint16_t>{float_to_f16(0.25f), float_to_f16(65504.0f)})});
  SafetensorsFile f(d.file("a.safetensors"));
  EXPECT_EQ(f.find("x")->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(f.find("x")->to_floats()[3], 4.0f);
  EXPECT_EQ(f.find("b")->to_floats()[0], -1.5f);
  EXPECT_EQ(f.find("h")->to_floats()[0], 0.25f);
  EXPECT_EQ(f.find("h")->to_floats()[1], 65504.0f);
  EXPECT_EQ(f.find("missing"), nullptr);
}

TEST(Safetensors, HalfConversionsRoundTripEveryValue) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = f16_to_float(uint16_t(h));
    if (std::isnan(f)) continue;
    ASSERT_EQ(float_to_f16(f), h) << h;
    ASSERT_EQ(float_to_bf16(bf16_to_float(uint16_t(h))), h) << h;
  }
  EXPECT_EQ(f16_to_float(0x3c00), 1.0f);
  EXPECT_EQ(f16_to_float(0x0001), 0x1p-24f);
}

TEST(Safetensors, MalformedFilesAreRefused) {
  TempDir d;
  const std::string p = d.file("bad.safetensors");
  auto open = [&] { SafetensorsFile f(p); };
  struct Case {
    std::string bytes;
    std::vector<std::string> msg;
  };
  const std::string ok_header = R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})";
  std::vector<Case> cases = {
      {"", {p, "truncated", "too short"}},
      {"abc", {p, "truncated"}},
      {st_bytes(ok_header, 8).substr(0, 20), {p, "truncated", "runs past the end"}},
      {st_bytes(ok_header, 4), {p, "tensor 'a'", "past the end of the data"}},
      {st_bytes("{not json", 0), {p, "not valid JSON"}},
      {st_bytes("[1,2]", 0), {p, "not an object"}},
      {st_bytes(R"({"a":{"dtype":"Q7","shape":[2],"data_offsets":[0,8]}})", 8), {p, "unknown dtype 'Q7'"}},
      {st_bytes(R"({"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}})", 8), {p, "needs 12 bytes", "span 8"}},
      {st_bytes(R"({"a":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8), {p, "'shape[0]' is out of range [0, 1099511627776], got -2"}},
      {st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[8,0]}})", 8), {p, "begin 8 > end 0"}},
      {st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", 8), {p, "data_offsets must be"}},
      {st_bytes(R"({"a":{"shape":[2],"data_offsets":[0,8]}})", 8), {p, "dtype"}},
      {st_bytes(R"({"a":{"dtype":"F32","shape":[4294967296,4294967296,16],"data_offsets":[0,8]}})", 8),
       {p, "overflows"}},
      {st_bytes(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                R"("b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                12),
       {p, "tensors overlap"}},
      {st_bytes(R"({"a":1})", 0), {p, "tensor 'a'", "not an object"}},
  };
  // A header length near 2^64 must not wrap around.
  {
    std::string s(8, '\xff');
    cases.push_back({s + "{}", {p, "header length"}});
  }
  for (auto& c : cases) {
    write_file(p, c.bytes);
    expect_error(open, c.msg);
  }
}

TEST(Safetensors, NonFiniteAndWrongDtypeValues) {
  TempDir d;
  write_safetensors(d.file("n.safetensors"), {make_blob("w", DType::F32, {2}, std::vector<float>{1.0f, NAN}),
                                              make_blob("i", DType::I32, {1}, std::vector<int32_t>{3})});
  SafetensorsFile f(d.file("n.safetensors"));
  expect_error([&] { f.find("w")->to_floats(); }, {"n.safetensors", "tensor 'w'", "NaN or Inf"});
  expect_error([&] { f.find("i")->to_floats(); }, {"tensor 'i'", "not a float type"});
}

TEST(Safetensors, MissingFileAndDirectory) {
  TempDir d;
  expect_error([&] { SafetensorsFile f(d.file("nope.safetensors")); }, {"nope.safetensors", "cannot open"});
  expect_error([&] { SafetensorsFile f(d.path.string()); }, {d.path.string(), "directory"});
}

TEST(Loader, BrokenCheckpointsAreRefused) {
  TempDir d;
  const std::string src = data_dir() + "/kjv-tiny";
  int n = 0;
  auto fresh = [&] {
    std::string dst = d.file("m" + std::to_string(n++));
    copy_dir(src, dst);
    return dst;
  };
  // Missing tensor.
  {
    std::string m = fresh();
    SafetensorsFile f(m + "/model.safetensors");
    std::vector<TensorBlob> keep;
    for (auto& [k, t] : f.tensors())
      if (k != "model.layers.1.attn.g_proj.weight")
        keep.push_back(TensorBlob{k, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)});
    write_safetensors(m + "/model.safetensors.tmp", keep);
    std::filesystem::rename(m + "/model.safetensors.tmp", m + "/model.safetensors");
    expect_error([&] { load_model(m); }, {m, "missing tensor 'model.layers.1.attn.g_proj.weight'"});
  }
  // Wrong shape.
  {
    std::string m = fresh();
    SafetensorsFile f(m + "/model.safetensors");
    std::vector<TensorBlob> keep;
    for (auto& [k, t] : f.tensors()) {
      TensorBlob b{k, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)};
      if (k == "model.norm.weight") b.shape = {64, 2};
      keep.push_back(b);
    }
    write_safetensors(m + "/model.safetensors.tmp", keep);
    std::filesystem::rename(m + "/model.safetensors.tmp", m + "/model.safetensors");
    expect_error([&] { load_model(m); }, {"model.safetensors", "tensor 'model.norm.weight'", "shape [64, 2]", "expected [128]"});
  }
  // Truncated weights file.
  {
    std::string m = fresh();
    std::string b = read_file(m + "/model.safetensors");
    write_file(m + "/model.safetensors", b.substr(0, b.size() / 2));
    expect_error([&] { load_model(m); }, {"model.safetensors", "past the end"});
  }
  // Bad JSON config, unsupported settings.
  {
    std::string m = fresh();
    write_file(m + "/config.json", "{\"hidden_size\": 128,");
    expect_error([&] { load_model(m); }, {m + "/config.json", "not valid JSON"});
    write_file(m + "/config.json", R"({"hidden_size":128,"num_hidden_layers":2,"vocab_size":4096,"use_short_conv":true})");
    expect_error([&] { load_model(m); }, {"config.json", "use_short_conv"});
    write_file(m + "/config.json", R"({"hidden_size":128,"num_hidden_layers":2,"vocab_size":4096,"attn_mode":"chunk"})");
    expect_error([&] { load_model(m); }, {"config.json", "attn_mode"});
    write_file(m + "/config.json", R"({"hidden_size":256,"num_hidden_layers":2,"vocab_size":4096})");
    expect_error([&] { load_model(m); }, {"model.embeddings.weight", "expected [4096, 256]"});
  }
  // No weights, a file instead of a directory, nothing at all.
  {
    std::string m = fresh();
    std::filesystem::remove(m + "/model.safetensors");
    expect_error([&] { load_model(m); }, {m, "no model.safetensors"});
    expect_error([&] { load_model(m + "/config.json"); }, {"config.json", "not a checkpoint directory"});
    expect_error([&] { load_model(d.file("absent")); }, {"absent", "no such file"});
  }
  // NaN weight.
  {
    std::string m = fresh();
    SafetensorsFile f(m + "/model.safetensors");
    std::vector<TensorBlob> keep;
    for (auto& [k, t] : f.tensors()) {
      TensorBlob b{k, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)};
      if (k == "model.layers.0.mlp.down_proj.weight") b.bytes[10] = 0xc0, b.bytes[11] = 0x7f;  // BF16 NaN
      keep.push_back(b);
    }
    write_safetensors(m + "/model.safetensors.tmp", keep);
    std::filesystem::rename(m + "/model.safetensors.tmp", m + "/model.safetensors");
    expect_error([&] { load_model(m); }, {"model.layers.0.mlp.down_proj.weight", "NaN or Inf"});
  }
  // Unreadable file (skipped when running as root, who can read anything).
  if (::geteuid() != 0) {
    std::string m = fresh();
    std::filesystem::permissions(m + "/model.safetensors", std::filesystem::perms::none);
    expect_error([&] { load_model(m); }, {"model.safetensors", "cannot open"});
  }
}

TEST(Loader, ShardedCheckpointEqualsSingleFile) {
  TempDir d;
  const std::string src = data_dir() + "/kjv-tiny";
  const std::string m = d.file("sharded");
  std::filesystem::create_directories(m);
  for (auto f : {"config.json"}) std::filesystem::copy(src + "/" + f, m + "/" + f);
  SafetensorsFile f(src + "/model.safetensors");
  std::vector<TensorBlob> a, b;
  nlohmann::json index;
  int i = 0;
  for (auto& [k, t] : f.tensors()) {
    TensorBlob blob{k, t.dtype, t.shape, std::vector<uint8_t>(t.data, t.data + t.nbytes)};
    const bool first = (i++ % 2) == 0;
    (first ? a : b).push_back(blob);
    index["weight_map"][k] = first ? "model-00001-of-00002.safetensors" : "model-00002-of-00002.safetensors";
  }
  write_safetensors(m + "/model-00001-of-00002.safetensors", a);
  write_safetensors(m + "/model-00002-of-00002.safetensors", b);
  write_file(m + "/model.safetensors.index.json", index.dump());
  const std::vector<int32_t> ids = {1, 1142, 333, 2693};
  EXPECT_EQ(load_model(m).prefill(ids), load_model(src).prefill(ids));

  // An index naming a shard outside the directory, or one that lacks the tensor.
  index["weight_map"]["model.norm.weight"] = "../evil.safetensors";
  write_file(m + "/model.safetensors.index.json", index.dump());
  expect_error([&] { load_model(m); }, {"model.safetensors.index.json", "invalid shard file '../evil.safetensors'"});
  // Point a tensor of shard 2 at shard 1, which does not hold it.
  index["weight_map"]["model.norm.weight"] = "model-00001-of-00002.safetensors";
  index["weight_map"][b.front().name] = "model-00001-of-00002.safetensors";
  write_file(m + "/model.safetensors.index.json", index.dump());
  expect_error([&] { load_model(m); }, {"model-00001-of-00002.safetensors", "'" + b.front().name + "' listed in the index is missing"});
  write_file(m + "/model.safetensors.index.json", "{\"weight_map\": 3}");
  expect_error([&] { load_model(m); }, {"model.safetensors.index.json", "weight_map"});
}

}  // namespace tests_safetensors
