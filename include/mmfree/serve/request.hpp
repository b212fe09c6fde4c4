// mmfree serving: requests of the OpenAI-compatible API, without the HTTP: parsing and
// validating the bodies of /v1/completions, /tokenize and /detokenize. mmfree-cli serve
// (cli/serve/) binds them to sockets; the fuzz target drives them directly.
//
// Conventions follow OpenAI's /v1/completions and llama-server's extensions (`top_k`, `min_p`,
// `return_tokens`, /tokenize, /detokenize).
#pragma once

#include <cctype>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <random>
#include <string>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/generate.hpp"
#include "mmfree/grammar.hpp"
#include "mmfree/json_field.hpp"
#include "mmfree/json_schema_grammar.hpp"
#include "mmfree/serve/documents.hpp"
#include "mmfree/tokenizer.hpp"

namespace mmfree::api {

// What a client may ask for, at most.
struct Limits {
  int64_t max_prompt_tokens = 8192;
  int64_t max_tokens = 4096;       // max_tokens ceiling
  int64_t default_max_tokens = 16;  // OpenAI's default
  int64_t max_stop_strings = 4;
  int64_t max_stop_length = 256;
  int64_t max_choices = 16;          // n and best_of
  int64_t max_grammar_bytes = 64 << 10;
};

struct CompletionRequest {
  std::vector<int32_t> prompt;
  bool prompt_was_text = false;
  std::string prompt_text;  // when the prompt was text
  GenerateOptions gen;
  std::vector<std::string> stop;
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool return_tokens = false;
  std::string model;
  std::string session;  // extension: continue (or begin) the named session's state
  // extension: start from the state after an earlier completion (its "id"); the prompt follows it
  std::string continue_from;
  int logprobs = -1;  // -1: none; else the top alternatives each token reports (0 ... 20)
  bool echo = false;
  int n = 1, best_of = 1;
  // grammar, json_schema (extensions) or response_format: the constraint on the text, compiled
  std::shared_ptr<const Grammar> grammar;
};

namespace detail {
// Every json_field error is the client's: 400, naming the field.
template <class F>
auto field(F&& f) -> decltype(f()) {
  try {
    return f();
  } catch (const ApiError&) {
    throw;
  } catch (const Error& e) {
    throw ApiError(400, "invalid_request_error", e.what());
  }
}
// A request body: a JSON object, or a 400.
inline nlohmann::json parse_object(const std::string& body) {
  // JSON text is UTF-8 (RFC 8259): name the first bad byte rather than quote it.
  for (size_t i = 0; i < body.size();) {
    const size_t n = utf8::seq_len(body, i);
    if (!n) {
      char buf[96];
      std::snprintf(buf, sizeof buf, "request: body is not valid UTF-8 (byte 0x%02X at offset %zu)",
                    unsigned(static_cast<unsigned char>(body[i])), i);
      throw ApiError(400, "invalid_request_error", buf);
    }
    i += n;
  }
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(body);
  } catch (const std::exception& e) {
    throw ApiError(400, "invalid_request_error", std::string("request: body is not valid JSON (") + e.what() + ")");
  }
  if (!j.is_object()) throw ApiError(400, "invalid_request_error", "request: body must be a JSON object");
  return j;
}
// The text's constraint: `grammar` (GBNF, llama-server's field), `json_schema` (llama-server's)
// or OpenAI's `response_format` ({"type": "json_object"} or {"type": "json_schema",
// "json_schema": {"schema": ...}}); at most one. Schemas are read again from the body in order,
// so properties come in the order the client wrote them.
inline std::shared_ptr<const Grammar> constraint(const std::string& body, const nlohmann::json& j, const Limits& lim) {
  namespace jf = json_field;
  const std::string w = "request";
  const int given = int(jf::has(j, "grammar")) + int(jf::has(j, "json_schema")) +
                    int(jf::has(j, "response_format") && !(j["response_format"].is_object() && j["response_format"].value("type", "") == "text"));
  if (given == 0) return nullptr;
  if (given > 1) fail(w, "give one of 'grammar', 'json_schema' and 'response_format'");
  std::string gbnf, where;
  if (jf::has(j, "grammar")) {
    gbnf = jf::string(j["grammar"], w, "grammar");
    where = "request: 'grammar'";
  } else {
    const auto ordered = JsonSchemaGrammar::Json::parse(body);
    if (jf::has(j, "json_schema")) {
      if (!j["json_schema"].is_object()) jf::bad(w, "json_schema", "must be an object (a JSON Schema)", j["json_schema"]);
      gbnf = JsonSchemaGrammar::convert(ordered["json_schema"], "request: 'json_schema'");
    } else {
      const auto& rf = j["response_format"];
      if (!rf.is_object() || !rf.contains("type") || !rf["type"].is_string()) jf::bad(w, "response_format", "must be an object with a 'type'", rf);
      const std::string type = rf["type"].get<std::string>();
      if (type == "json_object") {
        gbnf = JsonSchemaGrammar::any_value();
      } else if (type == "json_schema") {
        if (!rf.contains("json_schema") || !rf["json_schema"].is_object() || !rf["json_schema"].contains("schema"))
          fail(w, "'response_format' of type json_schema needs 'json_schema': {'schema': ...}");
        gbnf = JsonSchemaGrammar::convert(ordered["response_format"]["json_schema"]["schema"], "request: 'response_format.json_schema.schema'");
      } else {
        fail(w, "'response_format.type' must be 'text', 'json_object' or 'json_schema', not '" + type + "'");
      }
    }
    where = "request: grammar of the schema";
  }
  if (int64_t(gbnf.size()) > lim.max_grammar_bytes) fail(w, "the grammar is larger than the server allows");
  auto g = std::make_shared<Grammar>(Grammar::parse(gbnf, where));
  GrammarMatcher check(*g);  // left recursion is refused here, not in the middle of a generation
  return g;
}
}  // namespace detail

// Parses the body of POST /v1/completions. Fields OpenAI defines that change results and that
// mmfree does not implement (suffix) are refused, never silently ignored.
inline CompletionRequest parse_completion(const std::string& body, const Tokenizer& tok, int64_t vocab_size,
                                          const Limits& lim, int32_t eos_id) {
  namespace jf = json_field;
  const std::string w = "request";
  const nlohmann::json j = detail::parse_object(body);
  return detail::field([&] {
    CompletionRequest r;
    if (!jf::has(j, "prompt")) fail(w, "'prompt' is required");
    const auto& p = j["prompt"];
    const nlohmann::json* text = nullptr;
    if (p.is_string()) text = &p;
    else if (p.is_array() && p.size() == 1 && p[0].is_string()) text = &p[0];
    if (text) {
      const std::string s = text->get<std::string>();
      if (int64_t(s.size()) > 16 * lim.max_prompt_tokens) fail(w, "'prompt' is longer than the server allows");
      r.prompt = tok.encode(s);  // with BOS: a continued session's text is encoded again without
      r.prompt_was_text = true;
      r.prompt_text = s;
    } else if (p.is_array()) {
      if (p.empty()) fail(w, "'prompt' is an empty array");
      if (int64_t(p.size()) > lim.max_prompt_tokens) fail(w, "'prompt' has more than " + std::to_string(lim.max_prompt_tokens) + " tokens");
      if (!p[0].is_number()) fail(w, "'prompt' arrays must hold token ids (several prompts in one request are not supported)");
      for (size_t i = 0; i < p.size(); ++i)
        r.prompt.push_back(int32_t(jf::integer(p[i], w, "prompt[" + std::to_string(i) + "]", 0, vocab_size - 1)));
    } else {
      jf::bad(w, "prompt", "must be a string or an array of token ids", p);
    }
    if (r.prompt.empty()) fail(w, "'prompt' encodes to no tokens");
    if (int64_t(r.prompt.size()) > lim.max_prompt_tokens)
      fail(w, "'prompt' has " + std::to_string(r.prompt.size()) + " tokens, more than the " +
                  std::to_string(lim.max_prompt_tokens) + " the server allows");
    r.gen.max_new_tokens = jf::integer_or(j, "max_tokens", lim.default_max_tokens, w, 0, lim.max_tokens);
    auto& s = r.gen.sampling;
    s.temperature = float(jf::number_or(j, "temperature", 1.0, w, 0, 2));  // OpenAI's range and default
    s.top_p = float(jf::number_or(j, "top_p", 1.0, w, 1e-9, 1));
    s.top_k = int32_t(jf::integer_or(j, "top_k", 0, w, 0, vocab_size));
    s.min_p = float(jf::number_or(j, "min_p", 0.0, w, 0, 1));
    s.repeat_penalty = float(jf::number_or(j, "repeat_penalty", 1.0, w, 1e-3, 100));
    s.repeat_last_n = int32_t(jf::integer_or(j, "repeat_last_n", 64, w, 0, 1 << 20));
    // Without a seed each request draws its own (std::random_device); with one, the same text.
    s.seed = jf::has(j, "seed") ? uint64_t(jf::integer(j["seed"], w, "seed", INT64_MIN, INT64_MAX))
                                : (uint64_t(std::random_device{}()) << 32) ^ std::random_device{}();
    r.gen.eos_id = eos_id;
    if (jf::has(j, "stop")) {
      const auto& st = j["stop"];
      if (st.is_string()) r.stop.push_back(st.get<std::string>());
      else if (st.is_array()) {
        if (int64_t(st.size()) > lim.max_stop_strings) fail(w, "'stop' has more than " + std::to_string(lim.max_stop_strings) + " strings");
        for (size_t i = 0; i < st.size(); ++i) r.stop.push_back(jf::string(st[i], w, "stop[" + std::to_string(i) + "]"));
      } else jf::bad(w, "stop", "must be a string or an array of strings", st);
      for (auto& x : r.stop) {
        if (x.empty()) fail(w, "'stop' strings must not be empty");
        if (int64_t(x.size()) > lim.max_stop_length) fail(w, "'stop' strings are limited to " + std::to_string(lim.max_stop_length) + " bytes");
      }
    }
    r.stream = jf::boolean_or(j, "stream", false, w);
    if (jf::has(j, "stream_options")) {
      if (!j["stream_options"].is_object()) jf::bad(w, "stream_options", "must be an object", j["stream_options"]);
      r.include_usage = jf::boolean_or(j["stream_options"], "include_usage", false, w, "stream_options.");
    }
    r.return_tokens = jf::boolean_or(j, "return_tokens", false, w);
    r.session = jf::string_or(j, "session", "", w);
    if (jf::has(j, "session")) {
      if (r.session.empty() || r.session.size() > 128) fail(w, "'session' must be 1 to 128 characters");
      for (char ch : r.session)
        if (!std::isalnum(static_cast<unsigned char>(ch)) && ch != '-' && ch != '_' && ch != '.')
          fail(w, "'session' may hold only letters, digits, '-', '_' and '.'");
      if (r.session[0] == '.') fail(w, "'session' must not start with '.'");
    }
    r.continue_from = jf::string_or(j, "continue_from", "", w);
    if (jf::has(j, "continue_from")) {
      if (r.continue_from.size() < 6 || r.continue_from.size() > 128 || !r.continue_from.starts_with("cmpl-"))
        fail(w, "'continue_from' must be the id of an earlier completion (\"cmpl-...\")");
      if (!r.session.empty()) fail(w, "'continue_from' and 'session' both name a state to start from: give one");
    }
    r.model = jf::string_or(j, "model", "", w);
    r.n = int(jf::integer_or(j, "n", 1, w, 1, lim.max_choices));
    r.best_of = int(jf::integer_or(j, "best_of", r.n, w, 1, lim.max_choices));
    if (r.best_of < r.n) fail(w, "'best_of' must be at least 'n'");
    if (r.best_of > r.n && r.stream) fail(w, "'best_of' greater than 'n' cannot be streamed (the best are known at the end)");
    if ((r.n > 1 || r.best_of > 1) && !r.session.empty()) fail(w, "'n' and 'best_of' cannot continue a session (which choice would it keep?)");
    if (jf::has(j, "logprobs")) r.logprobs = int(jf::integer(j["logprobs"], w, "logprobs", 0, 20));
    r.echo = jf::boolean_or(j, "echo", false, w);
    if (r.echo && !r.session.empty()) fail(w, "'echo' cannot be combined with 'session'");
    if (jf::has(j, "suffix")) fail(w, "'suffix' is not supported (base models have no infill)");
    if (jf::has(j, "logit_bias")) {
      const auto& b = j["logit_bias"];
      if (!b.is_object()) jf::bad(w, "logit_bias", "must be an object of token ids to biases", b);
      for (auto it = b.begin(); it != b.end(); ++it) {
        int64_t id = -1;
        try {
          size_t used = 0;
          id = std::stoll(it.key(), &used);
          if (used != it.key().size()) id = -1;
        } catch (const std::exception&) {
        }
        if (id < 0 || id >= vocab_size) fail(w, "'logit_bias' key '" + it.key() + "' is not a token id of this model (0 ... " + std::to_string(vocab_size - 1) + ")");
        s.logit_bias.emplace_back(int32_t(id), float(jf::number(it.value(), w, "logit_bias[" + it.key() + "]", -100, 100)));
      }
    }
    s.presence_penalty = float(jf::number_or(j, "presence_penalty", 0, w, -2, 2));
    s.frequency_penalty = float(jf::number_or(j, "frequency_penalty", 0, w, -2, 2));
    r.grammar = detail::constraint(body, j, lim);
    return r;
  });
}

// POST /tokenize {"content": TEXT, "add_special": true} and POST /detokenize {"tokens": [ids]}.
inline nlohmann::json tokenize(const std::string& body, const Tokenizer& tok) {
  namespace jf = json_field;
  const nlohmann::json j = detail::parse_object(body);
  return detail::field([&] {
    if (!jf::has(j, "content")) fail("request", "'content' is required");
    const std::string text = jf::string(j["content"], "request", "content");
    return nlohmann::json{{"tokens", tok.encode(text, jf::boolean_or(j, "add_special", true, "request"))}};
  });
}
inline nlohmann::json detokenize(const std::string& body, const Tokenizer& tok) {
  namespace jf = json_field;
  const nlohmann::json j = detail::parse_object(body);
  return detail::field([&] {
    if (!jf::has(j, "tokens") || !j["tokens"].is_array()) fail("request", "'tokens' must be an array of token ids");
    std::vector<int32_t> ids;
    for (size_t i = 0; i < j["tokens"].size(); ++i)
      ids.push_back(int32_t(jf::integer(j["tokens"][i], "request", "tokens[" + std::to_string(i) + "]", 0, tok.vocab_size() - 1)));
    return nlohmann::json{{"content", tok.decode(ids)}};
  });
}

}  // namespace mmfree::api
