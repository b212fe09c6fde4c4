// mmfree: scoring multiple-choice questions by log-likelihood, as evaluation harnesses do
// (lm-evaluation-harness's loglikelihood requests): the log-probability of each choice's tokens
// given the context. `acc` takes the choice of highest summed log-probability, `acc_norm` the
// highest per byte of the choice's text.
//
// Tokens as the harness makes them: the context with the choice appended is encoded whole, and
// the choice's tokens are those after the longest beginning it shares with the context alone
// (so a word the two join into one token is scored once, with the choice). The context's state
// is computed once per question and copied for each choice: a recurrent state is the whole past.
#pragma once

#include <cstdint>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/logprobs.hpp"
#include "mmfree/model.hpp"
#include "mmfree/tokenizer.hpp"

namespace mmfree {

struct MultipleChoice {
  std::string context;
  std::vector<std::string> choices;
  int64_t answer = -1;
};

// JSONL, one {"context", "choices", "answer"} per line (blank lines skipped); errors name the
// file and line.
inline std::vector<MultipleChoice> read_multiple_choice(const std::string& path) {
  std::ifstream f(path);
  if (!f) fail(path, "cannot be opened");
  std::vector<MultipleChoice> out;
  std::string line;
  for (int64_t n = 1; std::getline(f, line); ++n) {
    if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = path + ":" + std::to_string(n);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const std::exception& e) {
      fail(where, std::string("is not JSON (") + e.what() + ")");
    }
    MultipleChoice q;
    if (!j.is_object() || !j.contains("context") || !j["context"].is_string()) fail(where, "needs \"context\": a string");
    q.context = j["context"].get<std::string>();
    if (!j.contains("choices") || !j["choices"].is_array() || j["choices"].size() < 2) fail(where, "needs \"choices\": two strings or more");
    for (const auto& c : j["choices"]) {
      if (!c.is_string() || c.get<std::string>().empty()) fail(where, "\"choices\" must be non-empty strings");
      q.choices.push_back(c.get<std::string>());
    }
    if (!j.contains("answer") || !j["answer"].is_number_integer() || j["answer"].get<int64_t>() < 0 ||
        j["answer"].get<int64_t>() >= int64_t(q.choices.size()))
      fail(where, "needs \"answer\": the index of the right choice");
    q.answer = j["answer"].get<int64_t>();
    out.push_back(std::move(q));
  }
  if (out.empty()) fail(path, "holds no questions");
  return out;
}

// One choice's tokens: the whole text's ids (context and choice, with BOS) and where the choice's
// tokens begin among them.
struct ChoiceTokens {
  std::vector<int32_t> ids;
  size_t begin = 0;
};
inline ChoiceTokens choice_tokens(const Tokenizer& tok, const std::string& context, const std::string& choice) {
  const auto ctx = tok.encode(context);
  ChoiceTokens t;
  t.ids = tok.encode(context + choice);
  while (t.begin < ctx.size() && t.begin < t.ids.size() && ctx[t.begin] == t.ids[t.begin]) ++t.begin;
  if (t.begin == 0) fail("choice '" + choice + "'", "shares no token with its context (nothing to condition on)");
  if (t.begin == t.ids.size()) fail("choice '" + choice + "'", "adds no token to its context");
  return t;
}

struct ChoiceScore {
  double logprob = 0;  // summed over the choice's tokens
  int64_t tokens = 0;
  int64_t bytes = 0;  // of the choice's text, for acc_norm
};

// Log-likelihood of each choice after the context.
template <class Acc>
std::vector<ChoiceScore> score_choices(const BasicModel<Acc>& model, const Tokenizer& tok, const MultipleChoice& q) {
  struct Prefix {
    State state;
    std::vector<float> logits;  // the prediction for the token after the prefix
  };
  std::map<size_t, Prefix> prefixes;  // by length: choices usually share one
  std::vector<ChoiceScore> out;
  for (const auto& choice : q.choices) {
    const ChoiceTokens t = choice_tokens(tok, q.context, choice);
    auto it = prefixes.find(t.begin);
    if (it == prefixes.end()) {
      Prefix p{model.new_state(), {}};
      p.logits = model.prefill_last(std::span(t.ids).first(t.begin), p.state);
      it = prefixes.emplace(t.begin, std::move(p)).first;
    }
    ChoiceScore s;
    s.tokens = int64_t(t.ids.size() - t.begin);
    s.bytes = int64_t(choice.size());
    s.logprob = token_logprob(it->second.logits, t.ids[t.begin]).logprob;
    if (s.tokens > 1) {
      State st = it->second.state;
      const auto rows = model.prefill(std::span(t.ids).subspan(t.begin, size_t(s.tokens - 1)), st);
      const size_t V = size_t(model.vocab_size());
      for (size_t k = 1; k < size_t(s.tokens); ++k)
        s.logprob += token_logprob(std::span(rows).subspan((k - 1) * V, V), t.ids[t.begin + k]).logprob;
    }
    out.push_back(s);
  }
  return out;
}

// The choices `acc` and `acc_norm` pick.
inline size_t best_choice(const std::vector<ChoiceScore>& s, bool per_byte) {
  size_t best = 0;
  for (size_t i = 1; i < s.size(); ++i) {
    const double a = per_byte ? s[i].logprob / double(s[i].bytes) : s[i].logprob;
    const double b = per_byte ? s[best].logprob / double(s[best].bytes) : s[best].logprob;
    if (a > b) best = i;
  }
  return best;
}

}  // namespace mmfree
