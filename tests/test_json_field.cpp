// Numbers read from JSON: every field class of tokenizer.json, config.json and safetensors
// headers refuses a float where an integer belongs, a huge, a negative or an out-of-range value,
// and the wrong type, with an error naming the file, the field and the value; never a changed value.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "mmfree/mmfree.hpp"
#include "test_util.hpp"

namespace tests_json_field {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;
using namespace mmfree::test;
using ::testing::HasSubstr;

namespace {


nlohmann::json parse(const std::string& s) { return nlohmann::json::parse(s); }

}  // namespace

TEST(JsonField, IntegersAreIntegersInRange) {
  using json_field::integer;
  EXPECT_EQ(integer(parse("7"), "f.json", "x", 0, 10), 7);
  EXPECT_EQ(integer(parse("-3"), "f.json", "x", -5, 10), -3);
  EXPECT_EQ(integer(parse("9223372036854775807"), "f.json", "x", 0, INT64_MAX), INT64_MAX);
  EXPECT_THAT(error_of([] { integer(parse("4.5"), "f.json", "x", 0, 10); }), HasSubstr("f.json: 'x' must be an integer, got 4.5"));
  EXPECT_THAT(error_of([] { integer(parse("5.0"), "f.json", "x", 0, 10); }), HasSubstr("must be an integer, got 5.0"));
  EXPECT_THAT(error_of([] { integer(parse("1e300"), "f.json", "x", 0, 10); }), HasSubstr("must be an integer, got 1e+300"));
  EXPECT_THAT(error_of([] { integer(parse("\"7\""), "f.json", "x", 0, 10); }), HasSubstr("must be an integer, got \"7\""));
  EXPECT_THAT(error_of([] { integer(parse("true"), "f.json", "x", 0, 10); }), HasSubstr("must be an integer, got true"));
  EXPECT_THAT(error_of([] { integer(parse("null"), "f.json", "x", 0, 10); }), HasSubstr("must be an integer, got null"));
  EXPECT_THAT(error_of([] { integer(parse("-1"), "f.json", "x", 0, 10); }), HasSubstr("'x' is out of range [0, 10], got -1"));
  EXPECT_THAT(error_of([] { integer(parse("11"), "f.json", "x", 0, 10); }), HasSubstr("out of range [0, 10], got 11"));
  // Above int64: refused, not wrapped to a negative number.
  EXPECT_THAT(error_of([] { integer(parse("18446744073709551615"), "f.json", "x", -1, 10); }),
              HasSubstr("out of range [-1, 10], got 18446744073709551615"));
  EXPECT_THAT(error_of([] { integer(parse("9223372036854775808"), "f.json", "x", INT64_MIN, INT64_MAX); }),
              HasSubstr("out of range"));
}

TEST(JsonField, NumbersBooleansStrings) {
  using namespace json_field;
  EXPECT_EQ(number(parse("3"), "f", "x", 0, 10), 3.0);
  EXPECT_EQ(number(parse("2.5e-1"), "f", "x", 0, 10), 0.25);
  EXPECT_THAT(error_of([] { number(parse("\"1\""), "f", "x", 0, 10); }), HasSubstr("'x' must be a number, got \"1\""));
  EXPECT_THAT(error_of([] { number(parse("1e300"), "f", "x", 0, 10); }), HasSubstr("out of range"));
  EXPECT_THAT(error_of([] { boolean(parse("1"), "f", "x"); }), HasSubstr("'x' must be true or false, got 1"));
  EXPECT_THAT(error_of([] { string(parse("[]"), "f", "x"); }), HasSubstr("'x' must be a string, got []"));
  const auto o = parse(R"({"a": null, "b": 2})");
  EXPECT_EQ(integer_or(o, "a", 5, "f", 0, 9), 5);  // null: the default
  EXPECT_EQ(integer_or(o, "missing", 5, "f", 0, 9), 5);
  EXPECT_EQ(integer_or(o, "b", 5, "f", 0, 9), 2);
  // Long values are shortened in messages.
  const std::string longs = "\"" + std::string(1000, 'x') + "\"";
  EXPECT_LT(error_of([&] { integer(parse(longs), "f", "x", 0, 1); }).size(), 120u);
}

// ---- tokenizer.json ------------------------------------------------------------------------

namespace {

// A five-token tokenizer whose added token "<x>" has id `id` (as the fuzzing report's).
std::string tokenizer_with_added_id(const std::string& id) {
  return R"({"model":{"type":"BPE","vocab":{"<unk>":0,"<s>":1,"a":2,"b":3,"ab":4},"merges":["a b"],
            "byte_fallback":true,"unk_token":"<unk>"},
            "added_tokens":[{"id":1,"content":"<s>","special":true},{"id":)" + id + R"(,"content":"<x>","special":true}]})";
}

std::string tokenizer_error(const std::string& json_text) {
  TempDir d;
  write_file(d.file("tokenizer.json"), json_text);
  return error_of([&] { read_tokenizer(d.file("tokenizer.json")); });
}

}  // namespace

TEST(JsonField, TokenizerAddedTokenIds) {
  // The fuzzing report: floats, huge values were accepted and changed (1e300 -> 0, 4.5 -> 4).
  for (const char* id : {"1e300", "4.5", "4.44444e+64", "5.0"})
    EXPECT_THAT(tokenizer_error(tokenizer_with_added_id(id)), HasSubstr("'added_tokens[1].id' must be an integer, got ")) << id;
  EXPECT_THAT(tokenizer_error(tokenizer_with_added_id("\"7\"")), HasSubstr("'added_tokens[1].id' must be an integer, got \"7\""));
  EXPECT_THAT(tokenizer_error(tokenizer_with_added_id("-1")), HasSubstr("'added_tokens[1].id' is out of range [0, 16777216], got -1"));
  for (const char* id : {"2147483648", "1099511627776", "18446744073709551615"})
    EXPECT_THAT(tokenizer_error(tokenizer_with_added_id(id)), HasSubstr("'added_tokens[1].id' is out of range")) << id;
  // The file is named.
  EXPECT_THAT(tokenizer_error(tokenizer_with_added_id("4.5")), HasSubstr("tokenizer.json: 'added_tokens[1].id'"));
  // A valid id still works, and the added token is that id.
  TempDir d;
  write_file(d.file("tokenizer.json"), tokenizer_with_added_id("5"));
  const Tokenizer t = read_tokenizer(d.file("tokenizer.json"));
  EXPECT_EQ(t.encode("ab <x>", true).back(), 5);
}

TEST(JsonField, TokenizerOtherNumbersAndTypes) {
  const std::string vocab_float = R"({"model":{"type":"BPE","vocab":{"a":0,"b":1.5}}})";
  EXPECT_THAT(tokenizer_error(vocab_float), HasSubstr("'model.vocab[\"b\"]' must be an integer, got 1.5"));
  EXPECT_THAT(tokenizer_error(R"({"model":{"type":"BPE","vocab":{"a":0,"b":-2}}})"), HasSubstr("'model.vocab[\"b\"]' is out of range"));
  EXPECT_THAT(tokenizer_error(R"({"model":{"type":"BPE","vocab":{"a":0},"byte_fallback":"yes"}})"),
              HasSubstr("'model.byte_fallback' must be true or false, got \"yes\""));
  EXPECT_THAT(tokenizer_error(R"({"model":{"type":"BPE","vocab":{"a":0}},"decoder":{"type":"Strip","content":" ","start":-1}})"),
              HasSubstr("'decoder.start' is out of range [0, 1048576], got -1"));
  EXPECT_THAT(tokenizer_error(R"({"model":{"type":"BPE","vocab":{"a":0}},"decoder":{"type":"Strip","content":" ","start":1.5}})"),
              HasSubstr("'decoder.start' must be an integer, got 1.5"));
  EXPECT_THAT(tokenizer_error(R"({"model":{"type":"BPE","vocab":{"a":0}},"added_tokens":[{"id":0,"content":"a","lstrip":2}]})"),
              HasSubstr("'added_tokens[0].lstrip' must be true or false, got 2"));
}

TEST(JsonField, TokenizerConfigFlags) {
  TempDir d;
  write_file(d.file("tokenizer.json"), tokenizer_with_added_id("5"));
  write_file(d.file("tokenizer_config.json"), R"({"add_bos_token": "false"})");
  EXPECT_THAT(error_of([&] { read_tokenizer(d.file("tokenizer.json")); }),
              HasSubstr("'add_bos_token' must be true or false, got \"false\""));
}

// ---- config.json -------------------------------------------------------------------------

TEST(JsonField, ConfigNumbers) {
  auto cfg_error = [](const std::string& body) { return error_of([&] { parse_config(parse(body), "config.json"); }); };
  EXPECT_THAT(cfg_error(R"({"hidden_size": 64.5})"), HasSubstr("config.json: 'hidden_size' must be an integer, got 64.5"));
  EXPECT_THAT(cfg_error(R"({"hidden_size": 1e300})"), HasSubstr("'hidden_size' must be an integer"));
  EXPECT_THAT(cfg_error(R"({"hidden_size": -64})"), HasSubstr("'hidden_size' is out of range [1, 65536], got -64"));
  EXPECT_THAT(cfg_error(R"({"vocab_size": 18446744073709551615})"), HasSubstr("'vocab_size' is out of range"));
  EXPECT_THAT(cfg_error(R"({"num_hidden_layers": "24"})"), HasSubstr("'num_hidden_layers' must be an integer, got \"24\""));
  EXPECT_THAT(cfg_error(R"({"rms_norm_eps": "1e-6"})"), HasSubstr("'rms_norm_eps' must be a number"));
  EXPECT_THAT(cfg_error(R"({"rms_norm_eps": -1})"), HasSubstr("'rms_norm_eps' is out of range"));
  EXPECT_THAT(cfg_error(R"({"use_lower_bound": 1})"), HasSubstr("'use_lower_bound' must be true or false, got 1"));
  EXPECT_THAT(cfg_error(R"({"model_type": 7})"), HasSubstr("'model_type' must be a string, got 7"));
  EXPECT_EQ(parse_config(parse(R"({"hidden_size": 64, "rms_norm_eps": 1e-5})"), "c").rms_norm_eps, 1e-5);
}

// ---- safetensors headers -----------------------------------------------------------------

namespace {

std::string safetensors_error(const std::string& header, size_t data_bytes) {
  TempDir d;
  std::string bytes(8, '\0');
  const uint64_t n = header.size();
  std::memcpy(bytes.data(), &n, 8);
  bytes += header + std::string(data_bytes, '\0');
  write_file(d.file("m.safetensors"), bytes);
  return error_of([&] { SafetensorsFile f(d.file("m.safetensors")); });
}

}  // namespace

TEST(JsonField, SafetensorsHeaderNumbers) {
  EXPECT_THAT(safetensors_error(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", 8),
              HasSubstr("tensor 'w': 'shape[0]' must be an integer, got 2.0"));
  EXPECT_THAT(safetensors_error(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", 8),
              HasSubstr("'shape[0]' is out of range [0, 1099511627776], got -2"));
  EXPECT_THAT(safetensors_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8.5]}})", 8),
              HasSubstr("'data_offsets[1]' must be an integer, got 8.5"));
  EXPECT_THAT(safetensors_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", 8),
              HasSubstr("'data_offsets[0]' is out of range"));
  EXPECT_THAT(safetensors_error(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,1e300]}})", 8),
              HasSubstr("'data_offsets[1]' must be an integer"));
  EXPECT_THAT(safetensors_error(R"({"w":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", 8),
              HasSubstr("'shape[0]' is out of range"));
  EXPECT_THAT(safetensors_error(R"({"w":{"dtype":32,"shape":[2],"data_offsets":[0,8]}})", 8),
              HasSubstr("'dtype' must be a string, got 32"));
}

}  // namespace tests_json_field
