// mmfree: speculative decoding's drafters and the rule that sets how many tokens they draft.
//
// A drafter guesses the next few tokens; the model reads the pending token and every guess in one
// pass (BasicModel::prefill_states, which costs about one step while decoding is memory-bound),
// keeps the guesses it agrees with (Sampler::verify), adds one token of its own, and rolls its
// recurrent state back to just after the last token kept: a copy of one D-vector per layer. The
// loop that does this is generate_from's (generate.hpp). Greedy output is identical to plain
// decoding; sampled output has exactly the model's distribution (docs/speculative.md).
#pragma once

#include <algorithm>
#include <array>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <map>
#include <random>
#include <string>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/model.hpp"
#include "mmfree/sampler.hpp"

namespace mmfree {

struct Draft {
  std::vector<int32_t> tokens;
  // q[i]: the distribution tokens[i] was drawn from (speculative sampling needs it); empty, or
  // empty for a token: that token was proposed for certain (a point mass).
  std::vector<std::vector<TokenProb>> q;
};

class Drafter {
 public:
  virtual ~Drafter() = default;
  // Up to k tokens to follow `history` (the prompt and every token emitted so far).
  virtual Draft propose(const std::vector<int32_t>& history, int k) = 0;
  // How many tokens of the last proposal were kept: the history goes on with those and one more.
  virtual void kept(int n) { (void)n; }
};

// Prompt-lookup decoding: the longest suffix of the history (at most n_max tokens, at least n_min;
// by default 2, as one token matches almost anywhere) that occurred before proposes what followed
// its latest earlier occurrence. No second model; strong wherever the output repeats its input
// (quotations, extraction, edits, code).
class LookupDrafter : public Drafter {
 public:
  explicit LookupDrafter(int n_max = 3, int n_min = 2) : n_max_(n_max), n_min_(std::min(n_min, n_max)) {
    if (n_min < 1 || n_max < 1) fail("--lookup", "n-gram length must be at least 1");
  }
  Draft propose(const std::vector<int32_t>& h, int k) override {
    Draft d;
    const int64_t L = int64_t(h.size());
    for (int64_t n = std::min<int64_t>(n_max_, L - 1); n >= n_min_ && k > 0; --n) {
      const int32_t* key = h.data() + L - n;
      // The latest earlier occurrence that has at least one token after it.
      for (int64_t i = L - n - 1; i >= 0; --i) {
        if (!std::equal(key, key + n, h.data() + i)) continue;
        const int64_t from = i + n, to = std::min(L, from + k);
        d.tokens.assign(h.begin() + from, h.begin() + to);
        return d;
      }
    }
    return d;
  }

 private:
  int n_max_, n_min_;
};

// A smaller model of the same vocabulary drafts, greedily at temperature 0 and otherwise by
// sampling its own distribution (which it reports as q) with the target's options `o` and random
// numbers of its own. It keeps its own state, and rolls it back like the target's: one copy per
// drafted token.
template <class Acc>
class DraftModelDrafter : public Drafter {
 public:
  DraftModelDrafter(const BasicModel<Acc>& draft, SamplerOptions o) : m_(draft), sampler_(own_options(o)) {
    state_ = m_.new_state();
  }
  Draft propose(const std::vector<int32_t>& h, int k) override {
    Draft d;
    if (k <= 0 || h.empty()) return d;
    // Catch up with the history (the tokens kept and the one the target added); start afresh when
    // the history is not the one this state has read.
    if (seen_.size() > h.size() || !std::equal(seen_.begin(), seen_.end(), h.begin())) {
      state_ = m_.new_state();
      seen_.clear();
    }
    if (seen_.size() == h.size()) {  // nothing new to read: step the last token again from a copy
      state_ = m_.new_state();
      seen_.clear();
    }
    logits_ = m_.prefill_last(std::span<const int32_t>(h.data() + seen_.size(), h.size() - seen_.size()), state_);
    seen_ = h;
    snaps_.resize(size_t(k));
    snaps_[0] = state_;
    const bool greedy = sampler_.options().temperature == 0;
    for (int i = 0; i < k; ++i) {
      int32_t t;
      if (greedy) {
        t = int32_t(argmax(logits_.data(), int64_t(logits_.size())));
      } else {
        std::vector<int32_t> ctx = seen_;
        ctx.insert(ctx.end(), d.tokens.begin(), d.tokens.end());
        auto q = sampler_.distribution(logits_, ctx);
        t = sampler_.draw_from(q);
        d.q.push_back(std::move(q));
      }
      d.tokens.push_back(t);
      if (i + 1 < k) {
        logits_ = m_.step(t, state_);
        snaps_[size_t(i + 1)] = state_;
      }
    }
    drafted_ = d.tokens;
    return d;
  }
  void kept(int n) override {
    // snaps_[i] has read the history and the first i drafted tokens; the last one never was.
    const int k = int(drafted_.size());
    if (k == 0) return;
    const int at = std::min(n, k - 1);
    state_ = snaps_[size_t(at)];
    seen_.insert(seen_.end(), drafted_.begin(), drafted_.begin() + at);
  }

 private:
  static SamplerOptions own_options(SamplerOptions o) {
    o.presence_penalty = o.frequency_penalty = 0;  // they count drawn tokens; a draft draws many it drops
    o.seed ^= 0x9e3779b97f4a7c15ull;               // not the target's random numbers
    return o;
  }
  const BasicModel<Acc>& m_;
  Sampler sampler_;
  State state_;
  std::vector<State> snaps_;
  std::vector<float> logits_;
  std::vector<int32_t> seen_, drafted_;
};

// For measuring the mechanism (bench --speculate) and for tests: proposes a continuation known in
// advance (a plain run's output after a prompt of prompt_len tokens), each token replaced by a
// wrong one with probability 1 - alpha. Synthetic: says nothing about how often a real drafter
// is right.
class ScriptedDrafter : public Drafter {
 public:
  ScriptedDrafter(std::vector<int32_t> script, size_t prompt_len, double alpha, uint64_t seed, int32_t vocab)
      : script_(std::move(script)), prompt_len_(prompt_len), alpha_(alpha), rng_(seed), vocab_(vocab) {
    if (!(alpha >= 0 && alpha <= 1)) fail("alpha", "must be in [0, 1]");
    if (vocab < 9) fail("vocab", "too small to propose wrong tokens");
  }
  Draft propose(const std::vector<int32_t>& h, int k) override {
    Draft d;
    for (size_t g = h.size() - prompt_len_; d.tokens.size() < size_t(k) && g < script_.size(); ++g) {
      int32_t t = script_[g];
      if (std::uniform_real_distribution<double>(0, 1)(rng_) >= alpha_) t = (t + 1 + int32_t(rng_() % 7)) % vocab_;
      d.tokens.push_back(t);
    }
    return d;
  }

 private:
  std::vector<int32_t> script_;
  size_t prompt_len_;
  double alpha_;
  std::mt19937_64 rng_;
  int32_t vocab_;
};

// The draft model must speak the target's vocabulary.
template <class Acc>
void check_draft_model(const BasicModel<Acc>& target, const BasicModel<Acc>& draft, const std::string& draft_path) {
  if (draft.vocab_size() != target.vocab_size())
    fail(draft_path, "cannot draft for this model: vocabulary of " + std::to_string(draft.vocab_size()) +
                         " tokens, the model has " + std::to_string(target.vocab_size()));
}

// How many tokens to draft: the k that maximises the expected tokens per pass,
// (1 - a^(k+1)) / (1 - a) for acceptance rate a, over the pass's measured cost (the model's pass
// over k + 1 tokens and the drafter's time for k). Both are measured as decoding goes: a pass's
// cost is the median of the last few of its length, so that one slow pass (a neighbour's burst)
// neither makes a plain step look dear nor flattens the cost's slope into long drafts that look
// free. Drafting must beat a plain step by kMargin: pass costs come from a
// noisy machine, and without a margin a drafter that is never right kept being tried whenever a
// short pass happened to measure cheap (0.90x plain decoding on Zen 5). A drafter that is not
// worth it drafts nothing (k = 0: a plain step) and is probed with one token once in kProbe
// plain passes, so one that becomes right is noticed.
class DraftLength {
 public:
  explicit DraftLength(int max_k, bool adaptive = true) : max_k_(std::max(0, max_k)), adaptive_(adaptive) {}

  int next() const {
    if (!adaptive_ || max_k_ == 0) return max_k_;
    if (pass_[0] == 0) return 0;  // a plain step first: what drafting is weighed against
    const double a = std::min(0.99, acceptance());
    int best = 0;
    double best_rate = 0;
    for (int k = 1; k <= max_k_; ++k) {
      const double tokens = (1 - std::pow(a, k + 1)) / (1 - a);
      const double rate = tokens / cost(k);
      if (rate > best_rate) best = k, best_rate = rate;
    }
    if (best_rate > kMargin / cost(0)) return best;
    return plain_passes_ >= kProbe ? 1 : 0;
  }
  // A pass that drafted k tokens (the drafter took draft_seconds), kept n, and took pass_seconds.
  // The acceptance evidence decays with drafting passes only: plain passes say nothing of it.
  void record(int k, int n, double pass_seconds, double draft_seconds) {
    if (k > 0) {
      kept_ = kept_ * kDecay + n;
      rejected_ = rejected_ * kDecay + (n < k ? 1 : 0);
      plain_passes_ = 0;
    } else {
      ++plain_passes_;
    }
    if (size_t(k) < pass_.size()) {  // the median of its last kRecent passes
      Recent& r = recent_[size_t(k)];
      r.t[size_t(r.n++ % kRecent)] = pass_seconds;
      std::array<double, kRecent> v = r.t;
      const size_t m = size_t(std::min(r.n, kRecent));
      for (size_t a = 1; a < m; ++a)  // (insertion sort: std::sort on part of it drew GCC 12's -Warray-bounds)
        for (size_t b = a; b > 0 && v[b - 1] > v[b]; --b) std::swap(v[b - 1], v[b]);
      pass_[size_t(k)] = m % 2 ? v[m / 2] : 0.5 * (v[m / 2 - 1] + v[m / 2]);
    }
    if (k > 0) draft_per_token_ = draft_per_token_ > 0 ? draft_per_token_ + 0.25 * (draft_seconds / k - draft_per_token_) : draft_seconds / k;
  }
  // The chance that a drafted token is kept, given the ones before it were: kept over kept plus
  // rejected, a pass rejecting at most one (the tokens after the first rejection are never
  // judged), with half a token of each to start from (0.5 before any evidence). Kept over drafted
  // read low by the tokens drafted after a rejection: at 0.8 per token and 3 drafted, 0.65; the
  // length then came out too short (2.4 tokens on average where the measured pass costs made 3
  // pay most: 2.7B preset on AMD Zen 5).
  double acceptance() const { return (kept_ + 0.5) / (kept_ + rejected_ + 1.0); }

 private:
  static constexpr double kDecay = 0.97;    // evidence halves in ~23 drafting passes
  static constexpr double kMargin = 1.05;   // drafting must promise 5% more tokens per second
  static constexpr int kProbe = 64;         // plain passes between probes of a drafter not worth it
  // Seconds of a pass over k + 1 tokens plus drafting k. A length not measured yet is
  // interpolated between the nearest measured ones, or, past the longest, extrapolated along the
  // slope of the two longest measured (25% a token while only one is: next() measures k = 0 first).
  double cost(int k) const {
    int lo = k, hi = k;
    while (lo >= 0 && pass_[size_t(lo)] == 0) --lo;
    while (hi <= max_k_ && pass_[size_t(hi)] == 0) ++hi;
    double c;
    if (lo == k) c = pass_[size_t(k)];
    else if (lo >= 0 && hi <= max_k_) c = pass_[size_t(lo)] + (pass_[size_t(hi)] - pass_[size_t(lo)]) * (k - lo) / (hi - lo);
    else if (lo >= 0) {  // past the longest measured: along the slope of the two longest
      int below = lo - 1;
      while (below >= 0 && pass_[size_t(below)] == 0) --below;
      const double slope = below >= 0 ? std::max(0.0, (pass_[size_t(lo)] - pass_[size_t(below)]) / (lo - below))
                                      : 0.25 * pass_[size_t(lo)];
      c = pass_[size_t(lo)] + slope * (k - lo);
    } else {
      c = 1 + 0.25 * k;
    }
    return c + draft_per_token_ * k;
  }
  int max_k_;
  bool adaptive_;
  double kept_ = 0, rejected_ = 0, draft_per_token_ = 0;
  int plain_passes_ = 0;
  // Seconds of a pass over k + 1 tokens: the median of the last kRecent (one slow pass in a few,
  // common on a shared machine, moves it not at all; an average it moved by a quarter).
  static constexpr int kRecent = 5;
  struct Recent {
    std::array<double, kRecent> t{};
    int n = 0;
  };
  std::vector<Recent> recent_ = std::vector<Recent>(65);
  std::vector<double> pass_ = std::vector<double>(65, 0.0);
};

}  // namespace mmfree
