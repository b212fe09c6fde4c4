// Multiple-choice scoring: a choice's log-likelihood equals the log-softmax of one whole pass
// over context and choice, the file reader names what is wrong, and the bundled model beats
// chance on held-out questions.
#include <gtest/gtest.h>

#include <fstream>

#include "mmfree/evaluate.hpp"
#include "mmfree/model_file.hpp"
#include "test_util.hpp"

namespace tests_evaluate {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;

namespace {
const Model& model() { return test::bundled(); }
const Tokenizer& tokenizer() { return test::bundled_tokenizer(); }
}  // namespace

TEST(Evaluate, ChoiceScoreIsOnePassOverTheWholeText) {
  MultipleChoice q{"And God said, Let there be", {" light: and there was light.", " qz vx jk wq: zz qq.", "x"}, 0};
  const auto s = score_choices(model(), tokenizer(), q);
  ASSERT_EQ(s.size(), 3u);
  const size_t V = size_t(model().vocab_size());
  for (size_t k = 0; k < 3; ++k) {
    const auto t = choice_tokens(tokenizer(), q.context, q.choices[k]);
    const auto logits = model().prefill(t.ids);
    double want = 0;
    for (size_t i = t.begin; i < t.ids.size(); ++i) want += token_logprob(std::span(logits).subspan((i - 1) * V, V), t.ids[i]).logprob;
    EXPECT_NEAR(s[k].logprob, want, 1e-9) << q.choices[k];
    EXPECT_EQ(s[k].tokens, int64_t(t.ids.size() - t.begin));
    EXPECT_EQ(s[k].bytes, int64_t(q.choices[k].size()));
    EXPECT_LT(s[k].logprob, 0);
  }
  EXPECT_GT(s[0].logprob, s[1].logprob);  // Genesis 1:3 over letters at random
  // acc takes the highest sum (a short choice gains), acc_norm the highest per byte.
  const std::vector<ChoiceScore> made = {{-6.0, 3, 12}, {-4.0, 1, 2}, {-9.0, 4, 40}};
  EXPECT_EQ(best_choice(made, false), 1u);
  EXPECT_EQ(best_choice(made, true), 2u);
}

TEST(Evaluate, HeldOutQuestionsBeatChance) {
  const auto qs = read_multiple_choice(test::data_dir() + "/kjv-choices.jsonl");
  ASSERT_EQ(qs.size(), 300u);
  int right = 0;
  for (size_t i = 0; i < 100; ++i) right += int64_t(best_choice(score_choices(model(), tokenizer(), qs[i]), true)) == qs[i].answer;
  EXPECT_GT(right, 35);  // chance: 25 of 100 (kjv-demo scores about 50)
}

TEST(Evaluate, BadFilesAreNamed) {
  const std::string p = ::testing::TempDir() + "/mc.jsonl";
  auto with = [&](const std::string& text) {
    std::ofstream(p) << text;
    return test::error_of([&] { read_multiple_choice(p); });
  };
  EXPECT_NE(with("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": 0}\n{oops\n").find(p + ":2: is not JSON"), std::string::npos);
  EXPECT_NE(with("{\"context\": \"a\", \"choices\": [\"b\"], \"answer\": 0}").find("two strings or more"), std::string::npos);
  EXPECT_NE(with("{\"context\": \"a\", \"choices\": [\"b\", \"c\"], \"answer\": 2}").find("\"answer\""), std::string::npos);
  EXPECT_NE(with("\n\n").find("holds no questions"), std::string::npos);
  EXPECT_NE(test::error_of([] { read_multiple_choice("/nonexistent/q.jsonl"); }).find("/nonexistent/q.jsonl: cannot be opened"), std::string::npos);
}

}  // namespace tests_evaluate
