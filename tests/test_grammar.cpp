// Grammars (GBNF), JSON Schema to grammar, the grammar as a token filter, and constrained
// generation: what a grammar accepts and refuses, masks equal to asking token by token, and
// generated text that always parses.
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include "mmfree/generate.hpp"
#include "mmfree/grammar.hpp"
#include "mmfree/grammar_filter.hpp"
#include "mmfree/json_schema_grammar.hpp"
#include "mmfree/model_file.hpp"
#include "test_util.hpp"

namespace tests_grammar {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;

namespace {

bool accepts(const Grammar& g, const std::string& text) { return GrammarMatcher(g).accepts(text); }
bool prefix_ok(const Grammar& g, const std::string& text) {
  GrammarMatcher m(g);
  return GrammarMatcher::alive(m.feed(m.position(), text));
}

const Model& model() { return test::bundled(); }
const Tokenizer& tokenizer() { return test::bundled_tokenizer(); }
std::shared_ptr<const TokenTrie> trie() {
  static const auto t = std::make_shared<const TokenTrie>(tokenizer());
  return t;
}

}  // namespace

TEST(Grammar, LiteralsClassesAndOperators) {
  const Grammar g = Grammar::parse(R"(
    # a comment
    root ::= "ab" [0-9]+ ( "x" | "yz" )? tail{1,2}
    tail ::= [^a-c\n] )");
  EXPECT_TRUE(accepts(g, "ab1x!"));
  EXPECT_TRUE(accepts(g, "ab123yzdd"));
  EXPECT_TRUE(accepts(g, "ab7zz"));
  EXPECT_FALSE(accepts(g, "ab1"));        // tail needs one at least
  EXPECT_FALSE(accepts(g, "ab1xddd"));    // ... and two at most
  EXPECT_FALSE(accepts(g, "abx!"));       // a digit first
  EXPECT_FALSE(accepts(g, "ab1xa"));      // a is excluded
  EXPECT_TRUE(prefix_ok(g, "ab12"));
  EXPECT_FALSE(prefix_ok(g, "b"));
}

TEST(Grammar, UnicodeAcrossBytes) {
  const Grammar g = Grammar::parse("root ::= [α-ω]+ \"\\u00e9\" .");
  EXPECT_TRUE(accepts(g, "αβé!"));
  EXPECT_TRUE(accepts(g, "ωé€"));
  EXPECT_FALSE(accepts(g, "aé!"));
  // A character cut between tokens: its first byte is a prefix while some character can follow.
  EXPECT_TRUE(prefix_ok(g, "\xCE"));   // α..ω start with CE or CF
  EXPECT_FALSE(prefix_ok(g, "\xC3"));  // é cannot come first
  EXPECT_FALSE(prefix_ok(g, "\xFF"));  // never UTF-8
}

TEST(Grammar, RecursionAndNesting) {
  const Grammar g = Grammar::parse("root ::= list\nlist ::= \"(\" ( list | [a-z] )* \")\"");
  EXPECT_TRUE(accepts(g, "(a(b(c))d)"));
  EXPECT_FALSE(accepts(g, "(a(b)"));
  EXPECT_TRUE(accepts(g, std::string(200, '(') + std::string(200, ')')));
}

TEST(Grammar, BadGrammarsAreRefusedWithWhere) {
  auto err = [](const std::string& text) { return test::error_of([&] { Grammar::parse(text, "g.gbnf"); }); };
  EXPECT_NE(err("root ::= \"abc").find("g.gbnf: unterminated string at line 1"), std::string::npos);
  EXPECT_NE(err("root ::= foo").find("'foo' is used but never defined"), std::string::npos);
  EXPECT_NE(err("start ::= \"a\"").find("no 'root' rule"), std::string::npos);
  EXPECT_NE(err("root ::= [z-a]").find("backwards"), std::string::npos);
  EXPECT_NE(err("root ::= \"a\"{3,1}").find("n < m"), std::string::npos);
  EXPECT_NE(err("root ::= \"a\"\nroot ::= \"b\"").find("defined twice"), std::string::npos);
  EXPECT_NE(err("root ::= \"\\q\"").find("unknown escape"), std::string::npos);
  EXPECT_NE(err("root ::= ( \"a\" ").find("expected ')'"), std::string::npos);
  // Left recursion is found when first expanded, not a stack overflow.
  EXPECT_NE(test::error_of([] { GrammarMatcher m(Grammar::parse("root ::= root \"a\" | \"b\"")); }).find("left recursion"),
            std::string::npos);
}

TEST(JsonSchema, ObjectsWithRequiredAndOptionalProperties) {
  const auto schema = JsonSchemaGrammar::Json::parse(R"({
    "type": "object",
    "properties": {
      "name": {"type": "string", "maxLength": 8},
      "age": {"type": "integer"},
      "tags": {"type": "array", "items": {"enum": ["a", "b"]}, "maxItems": 3},
      "ok": {"type": ["boolean", "null"]}
    },
    "required": ["age"]
  })");
  const Grammar g = Grammar::parse(JsonSchemaGrammar::convert(schema));
  EXPECT_TRUE(accepts(g, R"({"age": 3})"));
  EXPECT_TRUE(accepts(g, R"({"name":"bo","age":-12})"));
  EXPECT_TRUE(accepts(g, "{\n\"name\": \"x\\\"y\", \"age\": 0, \"tags\": [\"a\", \"b\"], \"ok\": null}"));
  EXPECT_TRUE(accepts(g, R"({"age": 1, "ok": true})"));
  EXPECT_FALSE(accepts(g, R"({"name": "bo"})"));                    // age is required
  EXPECT_FALSE(accepts(g, R"({"age": 01})"));                       // no leading zeros
  EXPECT_FALSE(accepts(g, R"({"name": "123456789", "age": 1})"));   // maxLength
  EXPECT_FALSE(accepts(g, R"({"age": 1, "tags": ["c"]})"));         // enum
  EXPECT_FALSE(accepts(g, R"({"age": 1, "tags": ["a","a","a","a"]})"));  // maxItems
  EXPECT_FALSE(accepts(g, R"({"age": 1, "name": "x"})"));           // the schema's order
  EXPECT_FALSE(accepts(g, R"({"age": 1,})"));
}

TEST(JsonSchema, RefsAnyOfConstAndAnyValue) {
  const auto schema = JsonSchemaGrammar::Json::parse(R"({
    "$defs": {"node": {"type": "object", "properties": {"v": {"type": "number"}, "next": {"anyOf": [{"$ref": "#/$defs/node"}, {"type": "null"}]}}, "required": ["v", "next"]}},
    "$ref": "#/$defs/node"
  })");
  const Grammar g = Grammar::parse(JsonSchemaGrammar::convert(schema));
  EXPECT_TRUE(accepts(g, R"({"v": 1.5e3, "next": {"v": -2, "next": null}})"));
  EXPECT_FALSE(accepts(g, R"({"v": 1, "next": {"v": 2}})"));
  const Grammar c = Grammar::parse(JsonSchemaGrammar::convert(JsonSchemaGrammar::Json::parse(R"({"const": {"k": [1, "x"]}})")));
  EXPECT_TRUE(accepts(c, R"({"k":[1,"x"]})"));
  const Grammar any = Grammar::parse(JsonSchemaGrammar::any_value());
  EXPECT_TRUE(accepts(any, R"({"a": [1, {"b": "\u00e9\n"}], "c": null})"));
  EXPECT_FALSE(accepts(any, R"([1, 2])"));  // json_object: an object
  EXPECT_FALSE(accepts(any, R"({"a": 1)"));
}

TEST(JsonSchema, UnsupportedKeywordsAreNamed) {
  auto err = [](const char* s) { return test::error_of([&] { JsonSchemaGrammar::convert_text(s, "response_format"); }); };
  EXPECT_NE(err(R"({"type": "string", "pattern": "^a+$"})").find("response_format: #: 'pattern' is not supported"), std::string::npos);
  EXPECT_NE(err(R"({"type": "object", "properties": {"a": {"type": "integer", "minimum": 0}}})").find("#/properties/a: 'minimum'"), std::string::npos);
  EXPECT_NE(err(R"({"type": "object", "properties": {}, "required": ["x"]})").find("'required' names a property"), std::string::npos);
  EXPECT_NE(err(R"({"$ref": "#/$defs/missing"})").find("names nothing"), std::string::npos);
  EXPECT_NE(err(R"({"type": "tuple"})").find("unknown type 'tuple'"), std::string::npos);
}

// The mask from the trie walk equals asking every token alone, at several points of a document.
TEST(GrammarFilter, MaskEqualsTokenByToken) {
  auto g = std::make_shared<const Grammar>(Grammar::parse(JsonSchemaGrammar::any_value()));
  GrammarFilter f(g, trie());
  const Tokenizer& tok = tokenizer();
  // Walk a document a token at a time, each the longest whose bytes begin what is left.
  std::string rest = R"({"name": "In the beginning", "n": [1, 2.5, true]})";
  size_t checked = 0;
  for (;;) {
    std::vector<uint8_t> mask;
    f.mask(mask);
    size_t allowed = 0;
    for (int32_t id = 0; id < int32_t(tok.vocab_size()); ++id) {
      ASSERT_EQ(mask[size_t(id)] != 0, f.allows(id)) << "token " << id << " with '" << rest << "' to go";
      allowed += mask[size_t(id)];
    }
    EXPECT_GT(allowed, 0u);
    ++checked;
    if (rest.empty()) {
      EXPECT_TRUE(f.complete());
      EXPECT_TRUE(f.allows(tok.eos_id()));
      break;
    }
    EXPECT_FALSE(f.allows(tok.eos_id()));
    int32_t best = -1;
    for (int32_t id = 0; id < int32_t(tok.vocab_size()); ++id) {
      const std::string& b = trie()->bytes(id);
      if (!b.empty() && rest.starts_with(b) && (best < 0 || b.size() > trie()->bytes(best).size())) best = id;
    }
    ASSERT_GE(best, 0);
    ASSERT_TRUE(f.allows(best));
    f.accept(best);
    rest.erase(0, trie()->bytes(best).size());
  }
  EXPECT_GT(checked, 10u);
}

// Constrained sampling: every output of many seeds parses and satisfies the schema's shape;
// greedy decoding with a grammar takes the most likely allowed token.
TEST(GrammarFilter, GeneratedJsonAlwaysParses) {
  const auto schema = JsonSchemaGrammar::Json::parse(R"({"type": "object", "properties": {
      "book": {"enum": ["Genesis", "Exodus", "Psalms"]}, "chapter": {"type": "integer"},
      "verse": {"type": "string", "maxLength": 40}}, "required": ["book", "chapter", "verse"]})");
  auto g = std::make_shared<const Grammar>(Grammar::parse(JsonSchemaGrammar::convert(schema)));
  const auto prompt = tokenizer().encode("And God said, Let there be light");
  int parsed = 0;
  for (uint64_t seed = 0; seed < 40; ++seed) {
    GenerateOptions o;
    o.max_new_tokens = 200;
    o.sampling.temperature = 1.0f, o.sampling.top_k = 0, o.sampling.top_p = 1.0f, o.sampling.min_p = 0.0f;
    o.sampling.seed = seed;
    o.eos_id = int32_t(model().config().eos_token_id);
    o.constraint = [&] { return std::make_unique<GrammarFilter>(g, trie()); };
    std::vector<int32_t> out;
    generate(model(), prompt, o, [&](int32_t t) { return out.push_back(t), true; });
    std::string text, ids;
    for (int32_t t : out) {
      text += trie()->bytes(t);
      ids += ' ';
      ids += std::to_string(t);
    }
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const std::exception& e) {
      FAIL() << "seed " << seed << ": " << e.what() << "\ntext: " << text << "\nids:" << ids;
    }
    ASSERT_TRUE(j.is_object());
    EXPECT_TRUE(j["book"] == "Genesis" || j["book"] == "Exodus" || j["book"] == "Psalms");
    EXPECT_TRUE(j["chapter"].is_number_integer());
    EXPECT_LE(j["verse"].get<std::string>().size(), 40u * 4);
    ++parsed;
  }
  EXPECT_EQ(parsed, 40);
}

}  // namespace tests_grammar
