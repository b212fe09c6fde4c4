// mmfree-cli generate: text from a prompt, once or turn by turn (--interactive).
#include <iostream>
#include <optional>

#include "commands.hpp"

namespace cli {

namespace {

mmfree::GenerateOptions generate_options(const Args& a) {
  mmfree::GenerateOptions g;
  g.max_new_tokens = a.has("max-new-tokens") ? mmfree::parse_int(a.str("max-new-tokens"), "-n", 0, 1 << 24) : 128;
  auto& s = g.sampling;
  if (a.has("temperature")) s.temperature = float(mmfree::parse_double(a.str("temperature"), "--temperature", 0, 100));
  if (a.has("top-k")) s.top_k = int32_t(mmfree::parse_int(a.str("top-k"), "--top-k", 0, INT32_MAX));
  if (a.has("top-p")) s.top_p = float(mmfree::parse_double(a.str("top-p"), "--top-p", 1e-9, 1));
  if (a.has("min-p")) s.min_p = float(mmfree::parse_double(a.str("min-p"), "--min-p", 0, 1));
  if (a.has("repeat-penalty")) s.repeat_penalty = float(mmfree::parse_double(a.str("repeat-penalty"), "--repeat-penalty", 1e-3, 100));
  if (a.has("repeat-last-n")) s.repeat_last_n = int32_t(mmfree::parse_int(a.str("repeat-last-n"), "--repeat-last-n", 0, 1 << 20));
  if (a.has("seed")) s.seed = uint64_t(mmfree::parse_int(a.str("seed"), "--seed", 0, INT64_MAX));
  if (a.has("presence-penalty")) s.presence_penalty = float(mmfree::parse_double(a.str("presence-penalty"), "--presence-penalty", -2, 2));
  if (a.has("frequency-penalty")) s.frequency_penalty = float(mmfree::parse_double(a.str("frequency-penalty"), "--frequency-penalty", -2, 2));
  if (a.has("logit-bias")) {  // ID:BIAS,ID:BIAS
    const std::string v = a.str("logit-bias");
    size_t i = 0;
    while (i < v.size()) {
      size_t j = v.find(',', i);
      if (j == std::string::npos) j = v.size();
      const std::string item = v.substr(i, j - i);
      const size_t colon = item.find(':');
      if (colon == std::string::npos) fail("--logit-bias", "expects ID:BIAS[,ID:BIAS...], got '" + item + "'");
      s.logit_bias.emplace_back(int32_t(mmfree::parse_int(item.substr(0, colon), "--logit-bias id", 0, INT32_MAX)),
                                float(mmfree::parse_double(item.substr(colon + 1), "--logit-bias bias", -100, 100)));
      i = j + 1;
    }
  }
  s.validate();
  g.prefill_progress = [](double f) { progress("reading the prompt", f); };
  return g;
}

void print_stats(const mmfree::Model& m, const mmfree::GenerateStats& st) {
  std::fprintf(stderr,
               "prompt tokens: %lld, prefill %.1f tok/s, decode %.1f tok/s (%lld tokens), time to first token %.1f ms, "
               "peak memory %.1f MiB, threads %d, kernels: decode %s, batch %s, prefill %s\n",
               (long long)st.prompt_tokens, st.prefill_tokens_per_second(), st.decode_tokens_per_second(),
               (long long)st.generated_tokens, st.time_to_first_token * 1e3, double(mmfree::peak_rss_bytes()) / (1 << 20),
               m.options().threads, m.kernel_choice().decode.chosen.name, m.kernel_choice().batch.chosen.name,
               m.kernel_choice().prefill.chosen.name);
  if (st.passes > 0)
    std::fprintf(stderr, "speculative: accepted %lld of %lld drafted (%.0f%%), %.2f tokens per pass\n", (long long)st.accepted,
                 (long long)st.drafted, st.drafted ? 100.0 * double(st.accepted) / double(st.drafted) : 0.0,
                 double(st.generated_tokens) / double(st.passes));
}

}  // namespace

int cmd_generate(const Args& a) {
  a.allow({"ids", "prompt", "file", "interactive", "save-state", "load-state", "max-new-tokens", "temperature", "top-k", "top-p", "min-p",
           "repeat-penalty", "repeat-last-n", "seed", "print-ids", "no-stats", "presence-penalty", "frequency-penalty",
           "logit-bias", "grammar", "json-schema", "draft", "draft-tokens", "lookup"});
  const bool interactive = a.on("interactive");
  const int given = int(a.has("ids")) + int(a.has("prompt")) + int(a.has("file"));
  if (given > 1 || (given == 0 && !interactive && !a.has("load-state")))
    fail("generate", "give one of -p/--prompt TEXT, -f/--file FILE or --ids 1,5,9 (or -i for interactive)");
  mmfree::GenerateOptions g = generate_options(a);

  mmfree::Model m = load(a);
  const DrafterArgs drafter = drafter_args(a, m);
  drafter.apply(g);
  std::optional<mmfree::Tokenizer> tok;
  std::string prompt_text;
  std::vector<int32_t> prompt;
  for (const auto& [id, b] : g.sampling.logit_bias)
    if (id >= m.vocab_size()) fail("--logit-bias", "token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(m.vocab_size()));
  const auto grammar = grammar_from_args(a);
  const bool constrained = grammar != nullptr;
  if (a.has("prompt") || a.has("file") || interactive || constrained) {
    tok.emplace(mmfree::load_tokenizer(model_path(a)));
    if (tok->vocab_size() > m.vocab_size()) fail(tok->source(), "has more tokens than the model's vocabulary");
  }
  if (a.has("ids")) {
    prompt = mmfree::parse_id_list(a.str("ids"), "--ids", m.vocab_size() - 1);
    if (prompt.empty()) fail("--ids", "no token ids given");
  } else if (a.has("prompt") || a.has("file")) {
    prompt_text = a.has("prompt") ? a.str("prompt") : read_text_file(a.str("file"));
    prompt = tok->encode(prompt_text, /*add_special=*/!a.has("load-state"));  // a loaded state continues: no BOS
    if (prompt.empty()) fail(a.has("prompt") ? "--prompt" : a.str("file"), "encodes to no tokens (and the tokenizer adds no BOS)");
  }
  if (constrained) {  // every token drawn keeps the text a prefix of the grammar's language
    auto trie = std::make_shared<const mmfree::TokenTrie>(*tok);
    g.constraint = [grammar, trie] { return std::make_unique<mmfree::GrammarFilter>(grammar, trie); };
  }
  const bool ids_out = a.on("print-ids") || !(a.has("prompt") || a.has("file") || interactive);
  g.eos_id = a.on("print-ids") ? -1 : int32_t(m.config().eos_token_id);  // --print-ids: exactly -n tokens

  // One state for the whole run: in interactive mode each turn continues from it.
  // --load-state: continue a saved sequence (its prompt, if any, is read after the state).
  mmfree::State state = a.has("load-state") ? mmfree::load_state(m, a.str("load-state")) : m.new_state();
  std::vector<float> logits;
  if (a.has("load-state") && prompt.empty() && !interactive)
    fail("--load-state", "give the text or ids to continue with (-p, -f or --ids)");
  std::vector<int32_t> history;
  mmfree::Sampler sampler(g.sampling);
  std::optional<mmfree::IncrementalDecoder> dec;
  if (tok && !ids_out) dec.emplace(*tok);
  std::vector<int32_t> printed;  // --print-ids: the ids of this run

  auto turn = [&](const std::vector<int32_t>& ids, const std::string& text) {
    if (dec) {
      std::fputs(text.c_str(), stdout);
      for (int32_t id : ids) dec->push(id);  // the decoder continues the text's spacing
    }
    printed.insert(printed.end(), ids.begin(), ids.end());
    const auto st = mmfree::generate_from(m, state, logits, ids, g, sampler, history, [&](int32_t id) {
      printed.push_back(id);
      if (dec) {
        std::fputs(dec->push(id).c_str(), stdout);
        std::fflush(stdout);
      }
      return true;
    }, /*consume_generated=*/interactive || a.has("save-state"));
    if (dec) std::fputs((dec->finish() + "\n").c_str(), stdout);
    std::fflush(stdout);  // the text ends before the stats line when both go to one terminal or pipe
    if (!a.on("no-stats")) print_stats(m, st);
  };

  if (!prompt.empty()) turn(prompt, prompt_text);
  if (interactive) {
    // Each line is read as a continuation of everything so far (no BOS after the first turn): the
    // recurrent state holds the conversation, so a turn costs only its own tokens.
    std::string line;
    while (std::fprintf(stderr, "> "), std::getline(std::cin, line)) {
      if (line.empty()) continue;
      std::vector<int32_t> ids = tok->encode(line, /*add_special=*/state.position == 0);
      if (ids.empty()) continue;
      turn(ids, line);
    }
    std::fprintf(stderr, "\n");
  }
  if (ids_out) print_ids(printed);
  // Every token this run printed has been consumed: a later --load-state continues after them.
  if (a.has("save-state")) mmfree::save_state(m, state, a.str("save-state"));
  return 0;
}

}  // namespace cli
