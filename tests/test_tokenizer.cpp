// tokenizer.json against the Hugging Face tokenizers library's own output, plus layouts
// and inputs the goldens do not cover.
#include <gtest/gtest.h>

#include "mmfree/mmfree.hpp"
#include "test_util.hpp"

namespace tests_tokenizer {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;
using namespace mmfree::test;
using nlohmann::json;

namespace {

const std::string kKjvTok = data_dir() + "/kjv-tiny/tokenizer.json";

std::string ids_str(const std::vector<int32_t>& v) {
  std::string s;
  for (auto i : v) s += std::to_string(i) + " ";
  return s;
}

void check_goldens(const std::string& tok_path, const std::string& key) {
  const json g = json::parse(read_file(data_dir() + "/tokenizer_golden.json"));
  const Tokenizer t = read_tokenizer(tok_path);
  int n = 0;
  for (const auto& c : g.at(key)) {
    const std::string text = c["text"];
    const auto want = c["ids"].get<std::vector<int32_t>>();
    EXPECT_EQ(ids_str(t.encode(text)), ids_str(want)) << key << ": " << text;
    EXPECT_EQ(t.decode(want), c["decoded"].get<std::string>()) << key << ": " << text;
    // Streaming gives the same text.
    IncrementalDecoder d(t);
    std::string streamed;
    for (int32_t id : want) streamed += d.push(id);
    streamed += d.finish();
    EXPECT_EQ(streamed, c["decoded"].get<std::string>()) << key << " streamed: " << text;
    ++n;
  }
  std::printf("[ %s ] %d golden cases equal\n", key.c_str(), n);
  EXPECT_GT(n, 10);
}

// A tiny tokenizer.json of the newer layout: Metaspace pre-tokenizer, merges as pairs.
json metaspace_tokenizer(const std::string& scheme, bool split) {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}, {"\xe2\x96\x81", 3}, {"a", 4}, {"b", 5},
                {"\xe2\x96\x81" "a", 6}, {"ab", 7}, {"\xe2\x96\x81" "ab", 8}};
  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    vocab[name] = 9 + b;
  }
  return json{{"model",
               {{"type", "BPE"}, {"vocab", vocab}, {"merges", json::array({json::array({"a", "b"}), json::array({"\xe2\x96\x81", "a"}), json::array({"\xe2\x96\x81", "ab"})})},
                {"byte_fallback", true}, {"fuse_unk", true}, {"unk_token", "<unk>"}}},
              {"added_tokens", json::array({{{"id", 1}, {"content", "<s>"}, {"special", true}}, {{"id", 2}, {"content", "</s>"}, {"special", true}}})},
              {"normalizer", nullptr},
              {"pre_tokenizer", {{"type", "Metaspace"}, {"replacement", "\xe2\x96\x81"}, {"prepend_scheme", scheme}, {"split", split}}},
              {"decoder", {{"type", "Metaspace"}, {"replacement", "\xe2\x96\x81"}, {"prepend_scheme", scheme}, {"split", split}}},
              {"post_processor", nullptr}};
}

}  // namespace

TEST(Tokenizer, KjvGoldens) {
  check_goldens(kKjvTok, "kjv");
}

TEST(Tokenizer, MistralGoldens) {
  check_goldens(data_dir() + "/mistral-tokenizer.json", "mistral");
}

TEST(Tokenizer, OwnCases) {
  const Tokenizer t = read_tokenizer(kKjvTok);
  EXPECT_EQ(t.encode(""), (std::vector<int32_t>{1}));
  EXPECT_EQ(t.encode("", false), (std::vector<int32_t>{}));
  EXPECT_EQ(t.encode("   ").front(), 1);
  EXPECT_EQ(t.decode(t.encode("   ")), "   ");
  // Every special token is split out, wherever it stands.
  EXPECT_EQ(t.encode("<s></s><unk>", false), (std::vector<int32_t>{1, 2, 0}));
  const auto mid = t.encode("a<s>b", false);
  EXPECT_EQ(std::count(mid.begin(), mid.end(), 1), 1);
  EXPECT_EQ(t.decode(mid), "a b");  // legacy: the segment after a special token gets its own "▁"
  EXPECT_EQ(t.decode({1, 2, 0}), "");
  // Invalid UTF-8 and NUL bytes fall back to their byte tokens and decode to U+FFFD.
  const std::string bad = std::string("ok\xff\xc3(x") + '\0' + "y";
  const auto ids = t.encode(bad, false);
  EXPECT_NE(std::find(ids.begin(), ids.end(), 3 + 0xff), ids.end());  // <0xFF> is id 258
  EXPECT_NE(std::find(ids.begin(), ids.end(), 3), ids.end());         // <0x00>
  EXPECT_EQ(t.decode(ids), "ok\xef\xbf\xbd\xef\xbf\xbd(x" + std::string(1, '\0') + "y");
  // A very long word, and text that round-trips.
  const std::string longword(100000, 'z');
  EXPECT_EQ(t.decode(t.encode(longword)), longword);
  const std::string verse = "And God said, Let there be light: and there was light.\n";
  EXPECT_EQ(t.decode(t.encode(verse)), verse);
  // Ids out of range are refused, naming the id.
  EXPECT_THROW(t.decode({5000}), Error);
  try {
    t.decode({-1});
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("token id -1: out of range [0, 4096)"), std::string::npos);
  }
}

TEST(Tokenizer, IncrementalDecoderNeverSplitsACharacter) {
  const Tokenizer t = read_tokenizer(kKjvTok);
  const std::string text = "emoji \xf0\x9f\xa6\x99 and caf\xc3\xa9";
  IncrementalDecoder d(t);
  std::string all;
  for (int32_t id : t.encode(text)) {
    const std::string piece = d.push(id);
    EXPECT_TRUE(utf8::valid(piece)) << "partial character emitted";
    all += piece;
  }
  EXPECT_EQ(all + d.finish(), text);
  // A dangling lead byte is released as U+FFFD at the end, not before.
  IncrementalDecoder d2(t);
  EXPECT_EQ(d2.push(3 + 0xf0), "");
  EXPECT_EQ(d2.finish(), "\xef\xbf\xbd");
}

TEST(Tokenizer, MetaspaceLayouts) {
  const std::string sp = "\xe2\x96\x81";
  {
    Tokenizer t = parse_tokenizer(metaspace_tokenizer("always", true), json(), "always.json");
    EXPECT_EQ(t.encode("ab ab", false), (std::vector<int32_t>{8, 8}));
    EXPECT_EQ(t.decode({8, 8}), "ab ab");
    EXPECT_EQ(t.encode("ab</s>ab", false), (std::vector<int32_t>{8, 2, 8}));  // "always": after specials too
  }
  {
    Tokenizer t = parse_tokenizer(metaspace_tokenizer("first", false), json(), "first.json");
    EXPECT_EQ(t.encode("ab</s>ab", false), (std::vector<int32_t>{8, 2, 7}));  // "first": only the first segment
    EXPECT_EQ(t.encode("ab"), (std::vector<int32_t>{1, 8}));                  // no template: Llama's BOS default
  }
  {
    Tokenizer t = parse_tokenizer(metaspace_tokenizer("never", true), json(), "never.json");
    EXPECT_EQ(t.encode("ab", false), (std::vector<int32_t>{7}));
    EXPECT_EQ(t.encode("c", false), (std::vector<int32_t>{9 + 'c'}));  // byte fallback
  }
  // tokenizer_config.json switches: add_eos_token, bos_token by content object.
  {
    json cfg = {{"add_bos_token", false}, {"add_eos_token", true}, {"bos_token", {{"content", "<s>"}}}};
    Tokenizer t = parse_tokenizer(metaspace_tokenizer("always", true), cfg, "cfg.json");
    EXPECT_EQ(t.encode("ab"), (std::vector<int32_t>{8, 2}));
  }
  // Merges as "a b" strings give the same result as pairs.
  {
    json j = metaspace_tokenizer("always", true);
    j["model"]["merges"] = json::array({"a b", sp + " a", sp + " ab"});
    Tokenizer t = parse_tokenizer(j, json(), "strings.json");
    EXPECT_EQ(t.encode("ab ab", false), (std::vector<int32_t>{8, 8}));
  }
  // Without byte fallback an unknown character is <unk>, and a run of them is fused.
  {
    json j = metaspace_tokenizer("never", true);
    j["model"]["byte_fallback"] = false;
    Tokenizer t = parse_tokenizer(j, json(), "unk.json");
    EXPECT_EQ(t.encode("xyzab", false), (std::vector<int32_t>{0, 7}));
  }
}

TEST(Tokenizer, BadFilesAreRefused) {
  TempDir d;
  auto err = [&](const std::string& content) -> std::string {
    write_file(d.file("tokenizer.json"), content);
    return error_of([&] { read_tokenizer(d.file("tokenizer.json")); });
  };
  const std::string p = d.file("tokenizer.json");
  EXPECT_NE(err("").find(p + ": not valid JSON"), std::string::npos);
  EXPECT_NE(err("{\"model\": {\"type\": \"BPE\"").find("not valid JSON"), std::string::npos);
  EXPECT_NE(err("[]").find("not a JSON object"), std::string::npos);
  EXPECT_NE(err("{}").find("missing 'model'"), std::string::npos);
  EXPECT_NE(err(R"({"model":{"type":"Unigram","vocab":[]}})").find("model type \"Unigram\" is not supported"), std::string::npos);
  EXPECT_NE(err(R"({"model":{"type":"BPE","vocab":{"a":-4}}})").find("'model.vocab[\"a\"]' is out of range [0, 16777216], got -4"), std::string::npos);
  EXPECT_NE(err(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":["a b"]}})").find("merge 'a b' uses tokens missing"),
            std::string::npos);
  EXPECT_NE(err(R"({"model":{"type":"BPE","vocab":{"a":0},"merges":[3]}})").find("merge #0"), std::string::npos);
  EXPECT_NE(err(R"({"model":{"type":"BPE","vocab":{"a":0}},"normalizer":{"type":"NFKC"}})").find("normalizer 'NFKC'"),
            std::string::npos);
  EXPECT_NE(err(R"({"model":{"type":"BPE","vocab":{"a":0}},"added_tokens":[{"id":1}]})").find("'added_tokens[0].content' is missing"),
            std::string::npos);
  EXPECT_NE(err(R"({"model":{"type":"BPE","vocab":{"a":0}},"decoder":{"type":"WordPiece"}})").find("decoder 'WordPiece'"),
            std::string::npos);
  try {
    read_tokenizer(d.file("absent.json"));
    FAIL();
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("absent.json: cannot open"), std::string::npos);
  }
}

}  // namespace tests_tokenizer
