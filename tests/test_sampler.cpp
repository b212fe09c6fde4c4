// Sampling: greedy equivalences, reproducibility, and the distributions of the filters.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "mmfree/mmfree.hpp"
#include "test_util.hpp"

namespace tests_sampler {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;

namespace {
// Softmax of these logits at temperature 1: p = 0.5, 0.25, 0.125, 0.0625, 0.0625.
const std::vector<float> kLogits = {std::log(8.0f), std::log(4.0f), std::log(2.0f), 0.0f, 0.0f};

SamplerOptions plain() {
  SamplerOptions o;
  o.temperature = 1;
  o.top_k = 0;
  o.top_p = 1;
  o.min_p = 0;
  o.repeat_penalty = 1;
  return o;
}
}  // namespace

TEST(Sampler, TemperatureZeroAndTopK1AreGreedy) {
  SamplerOptions o = plain();
  o.temperature = 0;
  Sampler s(o);
  std::vector<float> l = {0.1f, 2.0f, -1.0f, 1.9f};
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.sample(l, {}), 1);
  o = plain();
  o.top_k = 1;
  Sampler k1(o);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(k1.sample(l, {}), 1);
}

// argmax is greedy decoding's: the index std::max_element gives (the first of equal maxima) on
// every length around the groups of 16, with the maximum at every position, ties, infinities.
TEST(Sampler, ArgmaxIsMaxElement) {
  std::mt19937 g(7);
  std::uniform_int_distribution<int> small(-3, 3);
  for (int64_t n : {1, 2, 15, 16, 17, 31, 32, 33, 47, 100, 1000, 32000, 32001}) {
    for (int trial = 0; trial < 20; ++trial) {
      std::vector<float> x(static_cast<size_t>(n));
      for (auto& v : x) v = float(small(g));  // many ties
      if (trial % 4 == 1) x[size_t(g() % uint64_t(n))] = 1e30f;
      if (trial % 4 == 2) x[size_t(g() % uint64_t(n))] = INFINITY;
      if (trial % 4 == 3) std::fill(x.begin(), x.end(), -INFINITY), x[size_t(n - 1)] = -1e30f;
      ASSERT_EQ(argmax(x.data(), n), std::max_element(x.begin(), x.end()) - x.begin()) << "n " << n << " trial " << trial;
    }
    std::vector<float> x(static_cast<size_t>(n), -INFINITY);
    EXPECT_EQ(argmax(x.data(), n), 0);
    for (int64_t at : {int64_t(0), n / 2, n - 1}) {
      std::fill(x.begin(), x.end(), -2.5f);
      x[size_t(at)] = 0.5f;
      EXPECT_EQ(argmax(x.data(), n), at) << "n " << n;
      if (n - 1 - at != at) {
        x[size_t(n - 1 - at)] = NAN;  // NaNs never win
        EXPECT_EQ(argmax(x.data(), n), at) << "n " << n;
      }
    }
  }
  const std::vector<float> nans(5, NAN);
  EXPECT_EQ(argmax(nans.data(), 5), 0);
  // The sampler's greedy path takes it, with and without a filter or penalties.
  SamplerOptions o = plain();
  o.temperature = 0;
  std::vector<float> l(40000, 1.0f);
  l[39999] = 3.0f, l[12345] = 3.0f, l[20000] = 2.0f;
  EXPECT_EQ(Sampler(o).sample(l, {}), 12345);
  o.logit_bias = {{12345, -5.0f}};
  EXPECT_EQ(Sampler(o).sample(l, {}), 39999);
}

// top_k_ids is std::partial_sort of all ids by (logit descending, id ascending), cut at k: on
// ties (few distinct values), spread values, every k from one to more than there are ids, and
// lengths on both sides of the blocks of 16; NaNs are never taken before numbers.
TEST(Sampler, TopKIsPartialSort) {
  std::mt19937 g(11);
  for (int trial = 0; trial < 600; ++trial) {
    const size_t n = trial % 10 == 0 ? 32000 : 1 + g() % 700;
    std::vector<float> l(n);
    for (auto& x : l)
      x = trial % 3 == 0 ? float(int(g() % 7) - 3) : trial % 3 == 1 ? std::normal_distribution<float>(0, 3)(g) : float(g() % 1000) * 0.01f;
    if (trial % 5 == 4) l[g() % n] = INFINITY, l[g() % n] = -INFINITY, l[g() % n] = -0.0f;
    for (size_t k : {size_t(1), size_t(2), size_t(5), size_t(40), n / 9, n / 7, n, n + 3}) {
      std::vector<int32_t> want(n);
      std::iota(want.begin(), want.end(), 0);
      const size_t kk = std::min(k, n);
      std::partial_sort(want.begin(), want.begin() + long(kk), want.end(),
                        [&](int32_t a, int32_t b) { return l[size_t(a)] != l[size_t(b)] ? l[size_t(a)] > l[size_t(b)] : a < b; });
      want.resize(kk);
      ASSERT_EQ(top_k_ids(l, k), want) << "n " << n << " k " << k << " trial " << trial;
    }
  }
  std::vector<float> l(100, 1.0f);
  l[3] = NAN, l[50] = 2.0f;
  EXPECT_EQ(top_k_ids(l, 2), (std::vector<int32_t>{50, 0}));
}

TEST(Sampler, SameSeedSameDraws) {
  SamplerOptions o = plain();
  o.seed = 42;
  Sampler a(o), b(o);
  o.seed = 43;
  Sampler c(o);
  std::vector<int32_t> da, db, dc;
  for (int i = 0; i < 200; ++i) da.push_back(a.sample(kLogits, {})), db.push_back(b.sample(kLogits, {})), dc.push_back(c.sample(kLogits, {}));
  EXPECT_EQ(da, db);
  EXPECT_NE(da, dc);
}

TEST(Sampler, Distributions) {
  SamplerOptions o = plain();
  auto d = Sampler(o).distribution(kLogits, {});
  ASSERT_EQ(d.size(), 5u);
  EXPECT_NEAR(d[0].p, 0.5, 1e-6);
  EXPECT_NEAR(d[3].p, 0.0625, 1e-6);
  // top-p 0.8: 0.5 + 0.25 = 0.75 < 0.8, + 0.125 reaches it -> 3 tokens, renormalised.
  o.top_p = 0.8f;
  d = Sampler(o).distribution(kLogits, {});
  ASSERT_EQ(d.size(), 3u);
  EXPECT_NEAR(d[0].p, 0.5 / 0.875, 1e-6);
  EXPECT_NEAR(d[2].p, 0.125 / 0.875, 1e-6);
  // min-p 0.2: keep p >= 0.1 -> 3 tokens.
  o = plain();
  o.min_p = 0.2f;
  d = Sampler(o).distribution(kLogits, {});
  ASSERT_EQ(d.size(), 3u);
  // top-k 2 and temperature 0.5: p proportional to (8, 4)^2 = 64:16.
  o = plain();
  o.top_k = 2;
  o.temperature = 0.5f;
  d = Sampler(o).distribution(kLogits, {});
  ASSERT_EQ(d.size(), 2u);
  EXPECT_NEAR(d[0].p, 0.8, 1e-6);
  // Repeat penalty 2 on token 0 (positive logit is divided): log(8)/2 = log(2.83).
  o = plain();
  o.repeat_penalty = 2;
  d = Sampler(o).distribution(kLogits, {0});
  EXPECT_EQ(d[0].id, 1);
  // Empirical frequencies follow the distribution.
  o = plain();
  o.seed = 7;
  Sampler s(o);
  std::vector<int> count(5);
  const int n = 40000;
  for (int i = 0; i < n; ++i) count[size_t(s.sample(kLogits, {}))]++;
  EXPECT_NEAR(count[0] / double(n), 0.5, 0.01);
  EXPECT_NEAR(count[2] / double(n), 0.125, 0.01);
}

TEST(Sampler, OutOfRangeOptionsAreRefused) {
  auto bad = [](auto set) {
    SamplerOptions o;
    set(o);
    EXPECT_THROW(Sampler{o}, Error);
  };
  bad([](SamplerOptions& o) { o.temperature = -1; });
  bad([](SamplerOptions& o) { o.top_p = 0; });
  bad([](SamplerOptions& o) { o.min_p = 2; });
  bad([](SamplerOptions& o) { o.top_k = -5; });
  bad([](SamplerOptions& o) { o.repeat_penalty = 0; });
}

TEST(Generate, GreedyMatchesModelAndStopsAtEos) {
  Model m = load_model(test::data_dir() + "/kjv-tiny");
  GenerateOptions g;
  g.max_new_tokens = 24;
  g.sampling.temperature = 0;
  g.sampling.repeat_penalty = 1;
  std::vector<int32_t> out;
  const std::vector<int32_t> prompt = {1, 1142, 333, 2693};
  auto st = generate(m, prompt, g, [&](int32_t id) { return out.push_back(id), true; });
  SafetensorsFile gold(test::data_dir() + "/kjv-tiny/golden.safetensors");
  auto want = gold.find("genesis.greedy_ids")->to_int32();
  EXPECT_EQ(out, std::vector<int32_t>(want.begin() + 4, want.end()));
  EXPECT_EQ(st.generated_tokens, 24);
  // EOS: make the first greedy token the "eos" and nothing is emitted.
  g.eos_id = want[4];
  out.clear();
  st = generate(m, prompt, g, [&](int32_t id) { return out.push_back(id), true; });
  EXPECT_TRUE(out.empty());
  EXPECT_EQ(st.generated_tokens, 0);
}

TEST(Perplexity, BundledKjvTinyMatchesReference) {
  Model m = load_model(test::data_dir() + "/kjv-tiny", test::options(2));
  const Tokenizer tok = read_tokenizer(test::data_dir() + "/kjv-tiny/tokenizer.json");
  const auto ids = tokenize_chapters(tok, test::read_file(test::data_dir() + "/kjv-val.txt"));
  const auto ref = nlohmann::json::parse(test::read_file(test::data_dir() + "/kjv-tiny/eval.json"));
  EXPECT_EQ(int64_t(ids.size()), ref["val_tokens"].get<int64_t>());
  const auto r = perplexity(m, ids, 256, 64);
  EXPECT_EQ(r.scored, 64 * 256);
  const double want = ref["val_ppl"];
  std::printf("[ kjv-tiny ] perplexity %.4f, reference %.4f (%.4f%%)\n", r.perplexity(), want,
              100 * std::fabs(r.perplexity() / want - 1));
  EXPECT_NEAR(r.perplexity() / want, 1.0, 0.005);
}

// The bundled default model (kjv-demo as GGUF, its own tokenizer inside) against the reference's
// perplexity for kjv-demo.
TEST(Perplexity, KjvDemoBundledMatchesReference) {
  Model m = load_model(test::bundled_model(), test::options(2));
  const Tokenizer tok = load_tokenizer(test::bundled_model());
  const auto ids = tokenize_chapters(tok, test::read_file(test::data_dir() + "/kjv-val.txt"));
  const auto ref = nlohmann::json::parse(test::read_file(test::data_dir() + "/kjv-demo/eval.json"));
  EXPECT_EQ(int64_t(ids.size()), ref["val_tokens"].get<int64_t>());
  const auto r = perplexity(m, ids, 256, 64);
  const double want = ref["val_ppl"];
  std::printf("[ kjv-demo ] perplexity %.4f, reference %.4f (%.4f%%)\n", r.perplexity(), want,
              100 * std::fabs(r.perplexity() / want - 1));
  EXPECT_NEAR(r.perplexity() / want, 1.0, 0.005);
}

TEST(Sampler, LogitBiasAndOpenAIPenalties) {
  SamplerOptions o = plain();
  o.logit_bias = {{4, std::log(16.0f)}};  // token 4: 1 -> 16, now the most likely
  auto d = Sampler(o).distribution(kLogits, {});
  EXPECT_EQ(d[0].id, 4);
  EXPECT_NEAR(d[0].p, 16.0 / 31.0, 1e-6);
  o = plain();
  o.logit_bias = {{0, -100.0f}};
  o.temperature = 0;
  EXPECT_EQ(Sampler(o).sample(kLogits, {}), 1);  // banned in practice
  // Penalties count what the sampler drew, not the history it is given.
  o = plain();
  o.temperature = 0;
  o.frequency_penalty = 0.5f;
  o.presence_penalty = 0.25f;
  Sampler s(o);
  const std::vector<float> l = {1.0f, 0.9f, 0.0f};
  EXPECT_EQ(s.sample(l, {0, 0, 0, 0}), 0);  // nothing drawn yet: no penalty
  EXPECT_EQ(s.counts().at(0), 1);
  EXPECT_EQ(s.sample(l, {}), 1);  // 0: 1.0 - 0.5 - 0.25 = 0.25 < 0.9
  EXPECT_EQ(s.sample(l, {}), 0);  // 1: 0.9 - 0.75 = 0.15 < 0.25
  o.logit_bias = {{-1, 1.0f}};
  EXPECT_THROW(Sampler{o}, Error);
  o.logit_bias = {{1, 101.0f}};
  EXPECT_THROW(Sampler{o}, Error);
  o.logit_bias.clear();
  o.presence_penalty = 2.5f;
  EXPECT_THROW(Sampler{o}, Error);
}

// A filter that allows only even ids: draws never leave it, greedy takes the best allowed, and
// the restricted distribution is the chain's renormalised.
TEST(Sampler, FilterRestrictsDraws) {
  struct Even : TokenFilter {
    mutable int masks = 0;
    bool allows(int32_t id) const override { return id % 2 == 0; }
    void mask(std::vector<uint8_t>& m) const override {
      ++masks;
      for (size_t i = 0; i < m.size(); ++i) m[i] = i % 2 == 0;
    }
    void accept(int32_t) override {}
  } even;
  SamplerOptions o = plain();
  o.temperature = 0;
  EXPECT_EQ(Sampler(o).sample(kLogits, {}, &even), 0);
  const std::vector<float> l = {0.0f, 3.0f, 1.0f, 2.0f};
  EXPECT_EQ(Sampler(o).sample(l, {}, &even), 2);
  o = plain();
  o.seed = 7;
  Sampler s(o);
  even.masks = 0;
  std::vector<int> count(5);
  const int n = 20000;
  for (int i = 0; i < n; ++i) count[size_t(s.sample(kLogits, {}, &even))]++;
  EXPECT_EQ(count[1] + count[3], 0);
  // allowed: p 0.5, 0.125, 0.0625 -> 0.5/0.6875 = 0.727, 0.182, 0.091
  EXPECT_NEAR(count[0] / double(n), 0.5 / 0.6875, 0.015);
  EXPECT_NEAR(count[4] / double(n), 0.0625 / 0.6875, 0.01);
  EXPECT_EQ(even.masks, 0);  // a short distribution never needs the whole mask
}

TEST(Logprobs, LogSoftmaxAndTop) {
  const auto r = token_logprob(kLogits, 2, 3);
  EXPECT_NEAR(r.logprob, std::log(0.125), 1e-6);
  ASSERT_EQ(r.top.size(), 3u);
  EXPECT_EQ(r.top[0].first, 0);
  EXPECT_NEAR(r.top[0].second, std::log(0.5), 1e-6);
  EXPECT_EQ(r.top[2].first, 2);
  EXPECT_EQ(token_logprob(kLogits, 3, 10).top.size(), 5u);
  EXPECT_THROW(token_logprob(kLogits, 5), Error);
}

}  // namespace tests_sampler
