// mmfree: turning logits into the next token, llama.cpp style.
//
// Chain: logit bias, OpenAI's presence and frequency penalties (over the tokens this sampler
// drew), repeat penalty over the last `repeat_last_n` tokens of the history -> top-k -> top-p ->
// min-p -> temperature -> draw. Temperature 0 is greedy (argmax after biases and penalties).
//
// A TokenFilter (a grammar, grammar.hpp) restricts the draw to the tokens it allows: the result is
// drawn from the chain's distribution restricted to them (renormalised), or, when the chain kept
// none of them, from the chain applied to the allowed tokens' logits alone. The filter is asked
// about single tokens first (the drawn one, then a short distribution's), and for its whole mask
// only when that is not enough, which keeps constrained decoding close to unconstrained speed.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <numeric>
#include <random>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/ops.hpp"

namespace mmfree {

struct SamplerOptions {
  float temperature = 0.8f;
  int32_t top_k = 40;         // 0: off
  float top_p = 0.95f;        // 1: off
  float min_p = 0.05f;        // 0: off
  float repeat_penalty = 1.0f;  // 1: off (llama.cpp default)
  int32_t repeat_last_n = 64;
  uint64_t seed = 0;
  // OpenAI's: added to a token's logit (-100 bans it in practice, +100 all but forces it).
  std::vector<std::pair<int32_t, float>> logit_bias;
  // OpenAI's: logit -= frequency_penalty * count + presence_penalty * (count > 0), over the
  // tokens this sampler has drawn (a request's generated text; the prompt is not counted).
  float presence_penalty = 0, frequency_penalty = 0;

  void validate() const {
    if (!(temperature >= 0 && temperature <= 100)) fail("--temperature", "must be in [0, 100]");
    if (top_k < 0) fail("--top-k", "must be >= 0");
    if (!(top_p > 0 && top_p <= 1)) fail("--top-p", "must be in (0, 1]");
    if (!(min_p >= 0 && min_p <= 1)) fail("--min-p", "must be in [0, 1]");
    if (!(repeat_penalty > 0 && repeat_penalty <= 100)) fail("--repeat-penalty", "must be in (0, 100]");
    if (repeat_last_n < 0) fail("--repeat-last-n", "must be >= 0");
    if (!(presence_penalty >= -2 && presence_penalty <= 2)) fail("presence_penalty", "must be in [-2, 2]");
    if (!(frequency_penalty >= -2 && frequency_penalty <= 2)) fail("frequency_penalty", "must be in [-2, 2]");
    for (const auto& [id, b] : logit_bias) {
      if (id < 0) fail("logit_bias", "token ids must be >= 0, got " + std::to_string(id));
      if (!(b >= -100 && b <= 100)) fail("logit_bias", "biases must be in [-100, 100]");
    }
  }
};

// Which tokens may come next (a grammar). allows() answers for one token; mask() for all
// (mask[id] != 0: allowed), and may cost a pass over the vocabulary; accept() moves on past a
// token drawn (one that was allowed).
class TokenFilter {
 public:
  virtual ~TokenFilter() = default;
  virtual bool allows(int32_t id) const = 0;
  virtual void mask(std::vector<uint8_t>& allowed) const = 0;
  virtual void accept(int32_t id) = 0;
};

struct TokenProb {
  int32_t id;
  float p;
};

// The k ids of the largest logits, largest first (ties: the lower id first), as std::partial_sort
// of all ids by that order gives them, without sorting 32,000 ids: one pass keeps the k best
// seen so far in a heap and skips, 16 logits at a time, every block with none above the weakest
// of them (45 us for 32,000 logits and k = 40 before, on Zen 5).
inline std::vector<int32_t> top_k_ids(const std::vector<float>& l, size_t k) {
  const size_t n = l.size();
  k = std::min(k, n);
  auto before = [&](int32_t a, int32_t b) { return l[size_t(a)] != l[size_t(b)] ? l[size_t(a)] > l[size_t(b)] : a < b; };
  std::vector<int32_t> ids;
  if (k == 0) return ids;
  if (k > n / 8) {  // most of them: a plain partial sort
    ids.resize(n);
    std::iota(ids.begin(), ids.end(), 0);
    std::partial_sort(ids.begin(), ids.begin() + long(k), ids.end(), before);
    ids.resize(k);
    return ids;
  }
  ids.resize(k);
  std::iota(ids.begin(), ids.end(), 0);
  std::make_heap(ids.begin(), ids.end(), before);  // its top: the weakest kept
  // A later id ranks above the weakest kept only with a strictly larger logit (an equal one has
  // the higher id). NaNs never do.
  float weakest = l[size_t(ids.front())];
  auto offer = [&](size_t i) {
    if (!(l[i] > weakest)) return;
    std::pop_heap(ids.begin(), ids.end(), before);
    ids.back() = int32_t(i);
    std::push_heap(ids.begin(), ids.end(), before);
    weakest = l[size_t(ids.front())];
  };
  for (size_t i = k; (i = size_t(next_block_above(l.data(), int64_t(i), int64_t(n), weakest))) < n;) {
    const size_t end = std::min(n, i + 16);
    for (; i < end; ++i) offer(i);
  }
  std::sort(ids.begin(), ids.end(), before);
  return ids;
}

class Sampler {
 public:
  explicit Sampler(SamplerOptions o = {}) : o_(o), rng_(o.seed) { o_.validate(); }

  const SamplerOptions& options() const { return o_; }

  // The distribution the next draw uses (sorted by probability, descending), after the
  // whole chain. For temperature 0 it is the argmax with probability 1.
  std::vector<TokenProb> distribution(const std::vector<float>& logits, const std::vector<int32_t>& history) const {
    if (o_.temperature == 0 && !adjusts()) return {{int32_t(argmax(logits.data(), int64_t(logits.size()))), 1.0f}};
    std::vector<float> l = logits;
    adjust(l, history);
    return chain(l);
  }

  int32_t sample(const std::vector<float>& logits, const std::vector<int32_t>& history, const TokenFilter* filter = nullptr) {
    if (o_.temperature == 0 && !adjusts()) {  // greedy: the logits as they are, no copy
      const int32_t t = int32_t(argmax(logits.data(), int64_t(logits.size())));
      if (!filter || filter->allows(t)) return ++counts_[t], t;
    }
    std::vector<float> l = logits;
    adjust(l, history);
    auto d = chain(l);
    int32_t t = draw(d);
    if (filter && !filter->allows(t)) t = draw_allowed(l, d, *filter);
    if (t >= 0) ++counts_[t];
    return t;
  }

  // Speculative sampling (Leviathan et al., Chen et al., 2023). `proposed` was drawn by a drafter
  // from q (empty q: a drafter that proposes one token for certain, a point mass). It is kept with
  // probability min(1, p/q), p being the distribution sample() would draw from; otherwise the
  // token returned is drawn from max(0, p - q), renormalised. Either way the token returned is
  // distributed exactly as sample()'s; `kept` says which happened. At temperature 0 this is
  // "kept iff it is the argmax", and no random number is used.
  int32_t verify(const std::vector<float>& logits, const std::vector<int32_t>& history, int32_t proposed,
                 const std::vector<TokenProb>& q, bool& kept) {
    const std::vector<TokenProb> d = distribution(logits, history);
    std::unordered_map<int32_t, double> qm;
    if (q.empty()) qm[proposed] = 1.0;
    for (const auto& tp : q) qm[tp.id] = tp.p;
    auto q_of = [&](int32_t id) {
      const auto it = qm.find(id);
      return it == qm.end() ? 0.0 : it->second;
    };
    double px = 0;
    for (const auto& tp : d)
      if (tp.id == proposed) px = tp.p;
    const double qx = q_of(proposed);
    kept = px > 0 && (px >= qx || double(rng_() >> 11) * 0x1p-53 < px / qx);
    int32_t t = proposed;
    if (!kept) {
      std::vector<TokenProb> r;
      for (const auto& tp : d) {
        const double rest = double(tp.p) - q_of(tp.id);
        if (rest > 0) r.push_back({tp.id, float(rest)});
      }
      t = r.empty() ? draw(d) : draw(r, /*restricted=*/true);
    }
    if (t >= 0) ++counts_[t];
    return t;
  }

  // One draw from a distribution (distribution()'s), with this sampler's random numbers; the
  // penalties do not count it (a drafter's proposal).
  int32_t draw_from(const std::vector<TokenProb>& d) { return draw(d); }

  // Tokens drawn so far, by id (the presence and frequency penalties count them).
  const std::unordered_map<int32_t, int32_t>& counts() const { return counts_; }

 private:
  // The chain after biases and penalties, on logits `l`.
  std::vector<TokenProb> chain(std::vector<float>& l) const {
    if (o_.temperature == 0) {
      const int32_t best = int32_t(argmax(l.data(), int64_t(l.size())));
      return {{best, 1.0f}};
    }
    // Top-k first keeps the sort small.
    const size_t k = o_.top_k > 0 ? std::min(size_t(o_.top_k), l.size()) : l.size();
    std::vector<int32_t> idx = top_k_ids(l, k);
    // Probabilities at temperature 1 decide top-p and min-p (as llama.cpp's default chain).
    std::vector<double> p = softmax(l, idx, 1.0);
    if (o_.top_p < 1) {
      double cum = 0;
      size_t keep = idx.size();
      for (size_t i = 0; i < idx.size(); ++i) {
        cum += p[i];
        if (cum >= o_.top_p) {
          keep = i + 1;
          break;
        }
      }
      idx.resize(keep);
      p.resize(keep);
    }
    if (o_.min_p > 0) {
      const double floor = p[0] * o_.min_p;
      size_t keep = 1;
      while (keep < idx.size() && p[keep] >= floor) ++keep;
      idx.resize(keep);
    }
    p = softmax(l, idx, o_.temperature);
    std::vector<TokenProb> out(idx.size());
    for (size_t i = 0; i < idx.size(); ++i) out[i] = {idx[i], float(p[i])};
    return out;
  }

  // Draws from d; `restricted`: d is part of a distribution, renormalised here.
  int32_t draw(const std::vector<TokenProb>& d, bool restricted = false) {
    if (d.empty()) return -1;
    if (d.size() == 1) return d[0].id;
    // 53 random bits to a double in [0, 1): the same on every standard library.
    double u = double(rng_() >> 11) * 0x1p-53;
    if (restricted) {
      double total = 0;
      for (const auto& tp : d) total += tp.p;
      u *= total;
    }
    double cum = 0;
    for (const auto& tp : d) {
      cum += tp.p;
      if (u < cum) return tp.id;
    }
    return d.back().id;
  }

  // The first draw was forbidden: draw from d restricted to allowed tokens, or from the chain
  // over the allowed tokens alone. -1 when the filter allows nothing at all.
  int32_t draw_allowed(std::vector<float>& l, const std::vector<TokenProb>& d, const TokenFilter& f) {
    std::vector<TokenProb> r;
    if (d.size() <= 64) {
      for (const auto& tp : d)
        if (f.allows(tp.id)) r.push_back(tp);
      if (!r.empty()) return draw(r, true);
    }
    std::vector<uint8_t> m(l.size(), 0);
    f.mask(m);
    if (d.size() > 64) {
      for (const auto& tp : d)
        if (m[size_t(tp.id)]) r.push_back(tp);
      if (!r.empty()) return draw(r, true);
    }
    bool any = false;
    for (size_t i = 0; i < l.size(); ++i)
      if (!m[i]) l[i] = -INFINITY;
      else any = true;
    if (!any) return -1;
    auto d2 = chain(l);
    std::erase_if(d2, [&](const TokenProb& tp) { return !m[size_t(tp.id)]; });
    return draw(d2, true);
  }

  // Whether adjust() can change any logit.
  bool adjusts() const {
    return !o_.logit_bias.empty() || o_.presence_penalty != 0 || o_.frequency_penalty != 0 ||
           (o_.repeat_penalty != 1 && o_.repeat_last_n != 0);
  }
  void adjust(std::vector<float>& l, const std::vector<int32_t>& history) const {
    for (const auto& [id, b] : o_.logit_bias)
      if (size_t(id) < l.size()) l[size_t(id)] += b;
    if (o_.presence_penalty != 0 || o_.frequency_penalty != 0)
      for (const auto& [id, c] : counts_)
        if (size_t(id) < l.size()) l[size_t(id)] -= o_.frequency_penalty * float(c) + o_.presence_penalty;
    apply_repeat_penalty(l, history);
  }

  void apply_repeat_penalty(std::vector<float>& l, const std::vector<int32_t>& history) const {
    if (o_.repeat_penalty == 1 || o_.repeat_last_n == 0) return;
    const size_t from = history.size() > size_t(o_.repeat_last_n) ? history.size() - size_t(o_.repeat_last_n) : 0;
    std::vector<int32_t> seen(history.begin() + long(from), history.end());
    std::sort(seen.begin(), seen.end());
    seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
    for (int32_t id : seen)
      if (id >= 0 && size_t(id) < l.size()) {
        float& v = l[size_t(id)];
        v = v > 0 ? v / o_.repeat_penalty : v * o_.repeat_penalty;
      }
  }
  static std::vector<double> softmax(const std::vector<float>& l, const std::vector<int32_t>& idx, double temp) {
    std::vector<double> p(idx.size());
    double mx = -INFINITY;
    for (int32_t i : idx) mx = std::max(mx, double(l[size_t(i)]));
    double z = 0;
    for (size_t i = 0; i < idx.size(); ++i) z += (p[i] = std::exp((double(l[size_t(idx[i])]) - mx) / temp));
    for (auto& v : p) v /= z;
    return p;
  }

  SamplerOptions o_;
  std::mt19937_64 rng_;
  std::unordered_map<int32_t, int32_t> counts_;
};

}  // namespace mmfree
