// mmfree: generation and evaluation loops on top of Model, Tokenizer and Sampler.
#pragma once

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "mmfree/model.hpp"
#include "mmfree/sampler.hpp"
#include "mmfree/speculative.hpp"
#include "mmfree/tokenizer.hpp"

namespace mmfree {

// Peak resident memory of this process in bytes (VmHWM), 0 where unknown.
inline size_t peak_rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmHWM:", 0) == 0) return size_t(std::stoull(line.substr(6))) * 1024;
  return 0;
}

struct GenerateOptions {
  int64_t max_new_tokens = 128;
  SamplerOptions sampling;
  int32_t eos_id = -1;  // stop when this token is drawn (it is not passed on); -1: never
  // Called with the fraction of the prompt consumed, every progress_every tokens of a longer
  // prompt (read in parts, it gives the same logits as in one call: the recurrence is exact).
  std::function<void(double)> prefill_progress;
  int64_t progress_every = 1024;
  // A constraint on the tokens drawn (a grammar: grammar_filter.hpp), made fresh for each
  // generation: only tokens it allows are drawn, and generation ends when it allows none.
  std::function<std::unique_ptr<TokenFilter>()> constraint;
  // Speculative decoding (speculative.hpp): a drafter, made fresh for each generation, proposes
  // tokens and one pass keeps those the model agrees with. Greedy output is identical to plain
  // decoding, and sampled output has exactly the model's distribution. Set aside under a
  // constraint (a grammar cannot be rolled back).
  std::function<std::unique_ptr<Drafter>()> drafter;
  // Called with each token passed on, just before on_token, and the logits it was drawn from
  // (the model's raw output: log-probabilities, logprobs.hpp).
  std::function<void(int32_t, const std::vector<float>&)> on_logits;
  int draft_tokens = 8;         // at most this many per pass, fewer as acceptance says (1 .. 64)
  bool adaptive_draft = true;   // false: always draft_tokens (as many as the drafter gives)
};

struct GenerateStats {
  int64_t prompt_tokens = 0, generated_tokens = 0;
  double prefill_seconds = 0, decode_seconds = 0, time_to_first_token = 0;
  // Speculative decoding: model passes, tokens drafted, kept, and refused (at most one a pass: the
  // rest of a draft after a refusal is never checked). accepted / (accepted + rejected) is the
  // rate at which the drafter's tokens are right, whatever the draft lengths.
  int64_t passes = 0, drafted = 0, accepted = 0, rejected = 0;
  double prefill_tokens_per_second() const { return prefill_seconds > 0 ? double(prompt_tokens) / prefill_seconds : 0; }
  double decode_tokens_per_second() const {
    return decode_seconds > 0 && generated_tokens > 1 ? double(generated_tokens - 1) / decode_seconds : 0;
  }
};

template <class Acc>
GenerateStats generate_speculative(const BasicModel<Acc>& model, State& state, std::vector<float>& logits,
                                   const std::vector<int32_t>& prompt, const GenerateOptions& opt, Sampler& sampler,
                                   std::vector<int32_t>& history, const std::function<bool(int32_t)>& on_token,
                                   bool consume_generated);

// Continues from `state`: consumes `prompt` (which may be empty when the state has already
// consumed tokens and `logits` holds its last output), then draws up to max_new_tokens, calling
// on_token(id) for each; the callback returns false to stop. With consume_generated, the state
// has also consumed every token passed to on_token when this returns (so the next call, or a
// saved state, continues after them); without, the last one is left out, saving one step.
// Time to first token = prefill + first draw.
template <class Acc>
GenerateStats generate_from(const BasicModel<Acc>& model, State& state, std::vector<float>& logits,
                            const std::vector<int32_t>& prompt, const GenerateOptions& opt, Sampler& sampler,
                            std::vector<int32_t>& history, const std::function<bool(int32_t)>& on_token,
                            bool consume_generated = true) {
  using clock = std::chrono::steady_clock;
  if (prompt.empty() && logits.empty()) fail("prompt", "is empty (no tokens to start from)");
  if (opt.max_new_tokens < 0) fail("max_new_tokens", "must be >= 0");
  if (opt.drafter && !opt.constraint)
    return generate_speculative(model, state, logits, prompt, opt, sampler, history, on_token, consume_generated);
  GenerateStats st;
  st.prompt_tokens = int64_t(prompt.size());
  history.insert(history.end(), prompt.begin(), prompt.end());
  const auto t0 = clock::now();
  if (!opt.prefill_progress || int64_t(prompt.size()) <= opt.progress_every) {
    if (!prompt.empty()) logits = model.prefill_last(prompt, state);
  } else {
    for (size_t i = 0; i < prompt.size(); i += size_t(opt.progress_every)) {
      const size_t n = std::min(prompt.size() - i, size_t(opt.progress_every));
      logits = model.prefill_last(std::vector<int32_t>(prompt.begin() + i, prompt.begin() + i + n), state);
      opt.prefill_progress(double(i + n) / double(prompt.size()));
    }
  }
  st.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();
  auto t_first = clock::now();
  const std::unique_ptr<TokenFilter> filter = opt.constraint ? opt.constraint() : nullptr;
  for (int64_t i = 0; i < opt.max_new_tokens; ++i) {
    const int32_t next = sampler.sample(logits, history, filter.get());
    if (i == 0) {
      t_first = clock::now();
      st.time_to_first_token = std::chrono::duration<double>(t_first - t0).count();
    }
    if (next < 0 || next == opt.eos_id) break;
    if (filter) filter->accept(next);
    history.push_back(next);
    ++st.generated_tokens;
    if (opt.on_logits) opt.on_logits(next, logits);
    const bool go_on = on_token(next);
    if (consume_generated || (go_on && i + 1 < opt.max_new_tokens)) logits = model.step(next, state);
    if (!go_on) break;
  }
  st.decode_seconds = std::chrono::duration<double>(clock::now() - t_first).count();
  return st;
}

// generate_from with a drafter. The loop keeps one token pending: emitted but not yet read by the
// model (at first, the prompt's last token). Each pass reads the pending token and k drafted ones
// in one forward pass that also keeps the state after each (prefill_states); the drafts are checked
// in order against the model's distributions, the first one refused is replaced by the model's
// own draw (and when all are kept, one more is drawn), and the state rolls back to just after the
// last drafted token kept. The token drawn last becomes the pending one.
template <class Acc>
GenerateStats generate_speculative(const BasicModel<Acc>& model, State& state, std::vector<float>& logits,
                                   const std::vector<int32_t>& prompt, const GenerateOptions& opt, Sampler& sampler,
                                   std::vector<int32_t>& history, const std::function<bool(int32_t)>& on_token,
                                   bool consume_generated) {
  using clock = std::chrono::steady_clock;
  if (opt.draft_tokens < 1 || opt.draft_tokens > 64) fail("--draft-tokens", "must be in [1, 64]");
  const std::unique_ptr<Drafter> drafter = opt.drafter();
  GenerateStats st;
  st.prompt_tokens = int64_t(prompt.size());
  history.insert(history.end(), prompt.begin(), prompt.end());
  const auto t0 = clock::now();
  auto t_first = t0;
  bool done = opt.max_new_tokens == 0;
  // Emits t; false when generation ends with it (EOS, which is not emitted; the caller said stop;
  // the limit).
  auto emit = [&](int32_t t, const std::vector<float>& from) {
    if (st.generated_tokens == 0) {
      t_first = clock::now();
      st.time_to_first_token = std::chrono::duration<double>(t_first - t0).count();
    }
    if (t < 0 || t == opt.eos_id) {
      done = true;
      return false;
    }
    history.push_back(t);
    ++st.generated_tokens;
    if (opt.on_logits) opt.on_logits(t, from);
    if (!on_token(t) || st.generated_tokens >= opt.max_new_tokens) done = true;
    return !done;
  };
  bool pending = false;  // history.back() was emitted (or is the prompt's last) but not yet read
  if (!prompt.empty()) {
    const std::span<const int32_t> head(prompt.data(), prompt.size() - 1);
    for (size_t i = 0; i < head.size(); i += size_t(opt.progress_every)) {
      const size_t n = std::min(head.size() - i, size_t(opt.progress_every));
      model.forward_tokens(head.subspan(i, n), std::vector<State*>(n, &state), {});
      if (opt.prefill_progress && int64_t(prompt.size()) > opt.progress_every)
        opt.prefill_progress(double(i + n) / double(prompt.size()));
    }
    pending = true;
  } else if (!done) {
    const size_t before = history.size();
    emit(sampler.sample(logits, history), logits);
    pending = history.size() > before;
  }
  st.prefill_seconds = std::chrono::duration<double>(clock::now() - t0).count();

  DraftLength length(opt.draft_tokens, opt.adaptive_draft);
  std::vector<State> after;
  const size_t V = size_t(model.vocab_size());
  while (!done && pending) {
    const int k = int(std::min<int64_t>(length.next(), opt.max_new_tokens - st.generated_tokens - 1));
    const auto td = clock::now();
    Draft d = k > 0 ? drafter->propose(history, k) : Draft{};
    if (int(d.tokens.size()) > k) d.tokens.resize(size_t(k));
    model.check_ids(d.tokens);
    const int nd = int(d.tokens.size());
    std::vector<int32_t> ids{history.back()};
    ids.insert(ids.end(), d.tokens.begin(), d.tokens.end());
    const auto tp = clock::now();
    const std::vector<float> rows = model.prefill_states(ids, state, after);
    const double pass_seconds = std::chrono::duration<double>(clock::now() - tp).count();
    ++st.passes;
    st.drafted += nd;
    // Row i holds the logits after ids[i]: it decides the token after it, d.tokens[i].
    auto row = [&](int i) { return std::vector<float>(rows.begin() + long(size_t(i) * V), rows.begin() + long(size_t(i + 1) * V)); };
    int kept = 0;
    pending = false;
    for (int i = 0; i <= nd; ++i) {
      std::vector<float> li = row(i);
      bool ok = false;
      const int32_t t = i < nd ? sampler.verify(li, history, d.tokens[size_t(i)],
                                                size_t(i) < d.q.size() ? d.q[size_t(i)] : std::vector<TokenProb>{}, ok)
                               : sampler.sample(li, history);
      if (i < nd && !ok) ++st.rejected;
      const size_t before = history.size();
      const bool go = emit(t, li);
      if (history.size() > before) {
        if (ok) ++kept;         // a drafted token, read by this pass
        else pending = true;    // the model's own draw, read by the next
      }
      logits = std::move(li);
      if (!go || !ok) break;
    }
    st.accepted += kept;
    drafter->kept(kept);
    length.record(nd, kept, pass_seconds, std::chrono::duration<double>(tp - td).count());
    std::swap(state, after[size_t(kept)]);  // the state just after ids[kept], the last kept token read
    if (!pending) logits = row(kept);
  }
  // The last token emitted (or the prompt's last, when nothing was) is read now only if asked.
  if (pending && (consume_generated || st.generated_tokens == 0)) logits = model.step(history.back(), state);
  st.decode_seconds = std::chrono::duration<double>(clock::now() - t_first).count();
  return st;
}

// From a fresh state: consumes `prompt`, then draws up to max_new_tokens (see generate_from).
template <class Acc>
GenerateStats generate(const BasicModel<Acc>& model, const std::vector<int32_t>& prompt, const GenerateOptions& opt,
                       const std::function<bool(int32_t)>& on_token) {
  if (prompt.empty()) fail("prompt", "is empty (no tokens to start from)");
  State state = model.new_state();
  std::vector<float> logits;
  std::vector<int32_t> history;
  Sampler sampler(opt.sampling);
  return generate_from(model, state, logits, prompt, opt, sampler, history, on_token, /*consume_generated=*/false);
}

// ---- perplexity (docs/model.md, "Perplexity") ---------------------------------------------------------

struct PerplexityResult {
  double nll = 0;
  int64_t scored = 0;
  int64_t windows = 0;
  double perplexity() const { return std::exp(nll / double(scored)); }
};

// Chapters are separated by blank lines; each is tokenised (no BOS) followed by "\n".
inline std::vector<int32_t> tokenize_chapters(const Tokenizer& tok, const std::string& text) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < text.size()) {
    size_t j = text.find("\n\n", i);
    if (j == std::string::npos) j = text.size();
    std::string ch = text.substr(i, j - i);
    while (!ch.empty() && ch.back() == '\n') ch.pop_back();
    while (!ch.empty() && ch.front() == '\n') ch.erase(0, 1);
    if (!ch.empty()) {
      auto t = tok.encode(ch + "\n", /*add_special=*/false);
      ids.insert(ids.end(), t.begin(), t.end());
    }
    i = j + 2;
  }
  return ids;
}

// Windows of context+1 tokens at 0, context, 2*context, ...; each scores its last `context`
// tokens given the ones before, from a fresh state.
template <class Acc>
PerplexityResult perplexity(const BasicModel<Acc>& model, const std::vector<int32_t>& ids, int64_t context, int64_t max_windows,
                                   const std::function<void(int64_t, int64_t, double)>& progress = {}) {
  if (context < 1) fail("perplexity", "window must be at least 1 token");
  PerplexityResult r;
  const int64_t V = model.vocab_size();
  const int64_t available = (int64_t(ids.size()) - 1) / context;
  const int64_t windows = std::min(max_windows, available);
  if (windows < 1)
    fail("perplexity", "text has " + std::to_string(ids.size()) + " tokens, fewer than one window of " +
                           std::to_string(context + 1));
  for (int64_t w = 0; w < windows; ++w) {
    const std::vector<int32_t> win(ids.begin() + w * context, ids.begin() + w * context + context + 1);
    const std::vector<int32_t> in(win.begin(), win.end() - 1);
    const auto logits = model.prefill(in);
    for (int64_t t = 0; t < context; ++t) {
      const float* l = logits.data() + t * V;
      double mx = -INFINITY;
      for (int64_t k = 0; k < V; ++k) mx = std::max(mx, double(l[k]));
      double z = 0;
      for (int64_t k = 0; k < V; ++k) z += std::exp(double(l[k]) - mx);
      r.nll += -(double(l[win[size_t(t + 1)]]) - mx - std::log(z));
      ++r.scored;
    }
    ++r.windows;
    if (progress) progress(w + 1, windows, r.perplexity());
  }
  return r;
}

}  // namespace mmfree
