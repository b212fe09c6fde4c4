// mmfree-cli eval: a multiple-choice file (JSONL: context, choices, answer) scored by
// log-likelihood through the library, and with --server through a running mmfree-cli serve
// (echo + logprobs + max_tokens 0, as evaluation harnesses call OpenAI-compatible servers), with
// the two sets of numbers compared.
#include <httplib.h>

#include <cmath>

#include "commands.hpp"
#include "mmfree/evaluate.hpp"

namespace cli {

namespace {

// The choice's log-likelihood as the server reports it: the prompt sent as ids, echoed with its
// log-probabilities, nothing generated.
double server_logprob(httplib::Client& c, const std::string& key, const mmfree::ChoiceTokens& t) {
  const nlohmann::json body = {{"prompt", t.ids}, {"echo", true}, {"logprobs", 0}, {"max_tokens", 0}, {"temperature", 0}};
  httplib::Headers h;
  if (!key.empty()) h.emplace("Authorization", "Bearer " + key);
  auto r = c.Post("/v1/completions", h, body.dump(), "application/json");
  if (!r) fail("--server", "no answer (" + httplib::to_string(r.error()) + ")");
  if (r->status != 200) fail("--server", "answered " + std::to_string(r->status) + ": " + r->body.substr(0, 300));
  const auto j = nlohmann::json::parse(r->body);
  const auto& lps = j.at("choices").at(0).at("logprobs").at("token_logprobs");
  if (lps.size() != t.ids.size()) fail("--server", "returned log-probabilities for " + std::to_string(lps.size()) + " tokens, not " + std::to_string(t.ids.size()));
  double s = 0;
  for (size_t i = t.begin; i < t.ids.size(); ++i) s += lps[i].get<double>();
  return s;
}

}  // namespace

int cmd_eval(const Args& a) {
  a.allow({"file", "server", "api-key", "limit", "json"});
  if (!a.has("file")) fail("eval", "give -f/--file QUESTIONS.jsonl (one {\"context\", \"choices\", \"answer\"} a line)");
  auto questions = mmfree::read_multiple_choice(a.str("file"));
  if (a.has("limit")) questions.resize(std::min(questions.size(), size_t(mmfree::parse_int(a.str("limit"), "--limit", 1, 1 << 30))));
  const std::string path = model_path(a);
  const mmfree::Model m = load(a);
  const mmfree::Tokenizer tok = mmfree::load_tokenizer(path);
  std::unique_ptr<httplib::Client> client;
  if (a.has("server")) {
    client = std::make_unique<httplib::Client>(a.str("server"));
    client->set_read_timeout(600, 0);
  }
  int64_t acc = 0, acc_norm = 0, server_acc = 0, compared = 0;
  double chance = 0, max_diff = 0;
  const auto t0 = std::chrono::steady_clock::now();
  for (size_t i = 0; i < questions.size(); ++i) {
    const auto& q = questions[i];
    const auto s = mmfree::score_choices(m, tok, q);
    acc += int64_t(mmfree::best_choice(s, false)) == q.answer;
    acc_norm += int64_t(mmfree::best_choice(s, true)) == q.answer;
    chance += 1.0 / double(q.choices.size());
    if (client) {
      std::vector<mmfree::ChoiceScore> v = s;
      for (size_t k = 0; k < q.choices.size(); ++k) {
        v[k].logprob = server_logprob(*client, a.has("api-key") ? a.str("api-key") : "", mmfree::choice_tokens(tok, q.context, q.choices[k]));
        max_diff = std::max(max_diff, std::abs(v[k].logprob - s[k].logprob));
        ++compared;
      }
      server_acc += int64_t(mmfree::best_choice(v, false)) == q.answer;
    }
    if (!a.on("json")) progress("scoring", double(i + 1) / double(questions.size()));
  }
  const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  const double n = double(questions.size());
  nlohmann::json out = {{"model", path}, {"file", a.str("file")}, {"questions", questions.size()}, {"acc", double(acc) / n},
                        {"acc_norm", double(acc_norm) / n}, {"chance", chance / n}, {"seconds", secs}};
  if (client) out["server"] = {{"url", a.str("server")}, {"acc", double(server_acc) / n}, {"choices_compared", compared}, {"max_abs_diff", max_diff}};
  if (a.on("json")) {
    std::printf("%s\n", out.dump(2).c_str());
  } else {
    std::printf("%zu questions: acc %.3f, acc_norm %.3f, chance %.3f (%.1f s)\n", questions.size(), double(acc) / n, double(acc_norm) / n, chance / n, secs);
    if (client)
      std::printf("server %s: acc %.3f, %lld choices scored, largest difference from the library %.2g\n", a.str("server").c_str(),
                  double(server_acc) / n, (long long)compared, max_diff);
  }
  // The library and the server score the same numbers, or the run says it did not.
  if (client && max_diff > 1e-4) fail("eval", "the server's log-likelihoods differ from the library's by up to " + std::to_string(max_diff));
  return 0;
}

}  // namespace cli
