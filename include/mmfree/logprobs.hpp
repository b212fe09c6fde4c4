// mmfree: log-probabilities of tokens under the model's own distribution: log softmax of the raw
// logits, before logit bias, penalties, temperature and filters (what evaluation harnesses score,
// and what OpenAI's `logprobs` report).
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <span>
#include <utility>
#include <vector>

#include "mmfree/error.hpp"

namespace mmfree {

struct TokenLogprob {
  int32_t id = -1;
  double logprob = 0;
  std::vector<std::pair<int32_t, double>> top;  // the `top_n` most likely tokens, most likely first
};

// log(sum(exp(l))) in double, stable.
inline double log_sum_exp(std::span<const float> l) {
  double mx = -INFINITY;
  for (float v : l) mx = std::max(mx, double(v));
  if (mx == -INFINITY) return mx;
  double z = 0;
  for (float v : l) z += std::exp(double(v) - mx);
  return mx + std::log(z);
}

// The log-probability of `id` given a row of logits, and the top_n most likely tokens (ties by id).
inline TokenLogprob token_logprob(std::span<const float> logits, int32_t id, int top_n = 0) {
  if (id < 0 || size_t(id) >= logits.size())
    fail("logprobs", "token id " + std::to_string(id) + " is outside the vocabulary of " + std::to_string(logits.size()));
  TokenLogprob r;
  r.id = id;
  const double lse = log_sum_exp(logits);
  r.logprob = double(logits[size_t(id)]) - lse;
  if (top_n > 0) {
    const size_t n = std::min(size_t(top_n), logits.size());
    std::vector<int32_t> idx(logits.size());
    for (size_t i = 0; i < idx.size(); ++i) idx[i] = int32_t(i);
    std::partial_sort(idx.begin(), idx.begin() + long(n), idx.end(), [&](int32_t a, int32_t b) {
      return logits[size_t(a)] != logits[size_t(b)] ? logits[size_t(a)] > logits[size_t(b)] : a < b;
    });
    for (size_t i = 0; i < n; ++i) r.top.emplace_back(idx[i], double(logits[size_t(idx[i])]) - lse);
  }
  return r;
}

}  // namespace mmfree
