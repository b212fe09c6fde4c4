// Conformance against the reference implementation's golden logits and greedy decodes
// (docs/model.md, "Numerics: what agreeing means").
#include <gtest/gtest.h>

#include <set>

#include "mmfree/mmfree.hpp"
#include "test_util.hpp"

namespace tests_conformance {  // this file's own names (the tests compile in unity batches)

using namespace mmfree;
using namespace mmfree::test;

namespace {

struct Golden {
  std::string name;
  std::vector<int32_t> input_ids, greedy_ids;
  std::vector<float> logits;
};

std::vector<Golden> read_goldens(const std::string& path) {
  SafetensorsFile f(path);
  std::set<std::string> names;
  for (auto& [k, v] : f.tensors()) names.insert(k.substr(0, k.find('.')));
  std::vector<Golden> out;
  for (auto& n : names) {
    Golden g;
    g.name = n;
    g.input_ids = f.find(n + ".input_ids")->to_int32();
    g.greedy_ids = f.find(n + ".greedy_ids")->to_int32();
    g.logits = f.find(n + ".logits")->to_floats();
    out.push_back(std::move(g));
  }
  return out;
}

int32_t argmax(const float* v, int64_t n) { return int32_t(std::max_element(v, v + n) - v); }

// Greedy decoding must equal the reference's, except after a near-tie (docs/model.md): where the
// two disagree, the reference's top two logits (estimated by our logits on the
// reference's own sequence) must differ by less than 2e-3 * max|logit|.
void check_greedy(const Model& m, const Golden& g, const std::string& label) {
  const int64_t V = m.vocab_size();
  State st = m.new_state();
  std::vector<int32_t> ours = g.input_ids;
  std::vector<float> logits = m.prefill_last(g.input_ids, st);
  while (ours.size() < g.greedy_ids.size()) {
    ours.push_back(argmax(logits.data(), V));
    logits = m.step(ours.back(), st);
  }
  const auto ref_seq_logits = m.prefill(g.greedy_ids);
  for (size_t i = g.input_ids.size(); i < g.greedy_ids.size(); ++i) {
    if (ours[i] == g.greedy_ids[i]) continue;
    const float* l = ref_seq_logits.data() + (i - 1) * size_t(V);
    float mx = 0;
    for (int64_t k = 0; k < V; ++k) mx = std::max(mx, std::fabs(l[k]));
    const float gap = std::fabs(l[g.greedy_ids[i]] - l[ours[i]]);
    EXPECT_LT(gap, 2e-3f * mx) << label << ": greedy token " << i << " differs (ours " << ours[i] << ", reference "
                               << g.greedy_ids[i] << ") without a near-tie";
    if (gap < 2e-3f * mx) std::printf("[ %s ] greedy diverges at a near-tie at token %zu: accepted\n", label.c_str(), i);
    return;
  }
}

// `model` is a directory or a GGUF file; `goldens` the reference's golden.safetensors.
void check_model(const std::string& model, const std::string& goldens_path, const ModelOptions& opt,
                 const std::string& tag) {
  Model m = load_model(model, opt);
  const auto goldens = read_goldens(goldens_path);
  ASSERT_FALSE(goldens.empty());
  const size_t V = size_t(m.vocab_size());
  for (const auto& g : goldens) {
    const std::string label = tag + "/" + g.name;
    const auto logits = m.prefill(g.input_ids);
    ASSERT_EQ(logits.size(), g.logits.size()) << label;
    const size_t T = g.input_ids.size();
    Agreement a = agreement(g.logits, logits, T, V);
    std::printf("[ %s ] T=%zu max KL %.3g, mean KL %.3g, max rel err %.3g, top-1 %.1f%%\n", label.c_str(), T, a.max_kl,
                a.mean_kl, a.max_rel, 100 * a.top1);
    // Per position, not just the maximum, as SPEC states it.
    for (size_t t = 0; t < T; ++t)
      EXPECT_LE(kl_div(g.logits.data() + t * V, logits.data() + t * V, V), 5e-3) << label << " position " << t;
    EXPECT_LE(a.mean_kl, 1e-3) << label;
    EXPECT_GE(a.top1, 0.95) << label;
    check_greedy(m, g, label);
  }
}

ModelOptions opts(int threads, TernaryFormat f = TernaryFormat::TQ2) {
  ModelOptions o;
  o.threads = threads;
  o.format = f;
  return o;
}

void check_dir(const std::string& dir, const ModelOptions& opt, const std::string& tag) {
  check_model(dir, dir + "/golden.safetensors", opt, tag);
}

}  // namespace

TEST(Conformance, KjvTinyBundled) { check_dir(data_dir() + "/kjv-tiny", opts(1), "kjv-tiny"); }

TEST(Conformance, KjvTinyTwoThreadsTq1) {
  check_dir(data_dir() + "/kjv-tiny", opts(2, TernaryFormat::TQ1), "kjv-tiny/tq1/2t");
}

// The bundled default model (kjv-demo as GGUF) against the reference's goldens for kjv-demo.
TEST(Conformance, KjvDemoBundledGguf) {
  check_model(bundled_model(), data_dir() + "/kjv-demo/golden.safetensors", opts(2), "kjv-demo");
}

TEST(Conformance, KjvDemoBundledGgufTq1OneThread) {
  check_model(bundled_model(), data_dir() + "/kjv-demo/golden.safetensors", opts(1, TernaryFormat::TQ1),
              "kjv-demo/tq1/1t");
}

TEST(Conformance, OddB) { check_dir(data_dir() + "/odd-b", opts(1), "odd-b"); }

// Decoding token by token reproduces the full-sequence logits.
TEST(Conformance, StepEqualsPrefill) {
  for (std::string dir : {data_dir() + "/kjv-tiny", data_dir() + "/odd-b"}) {
    Model m = load_model(dir, opts(1));
    const auto g = read_goldens(dir + "/golden.safetensors").front();
    const auto& ids = g.greedy_ids;
    const auto full = m.prefill(ids);
    State st = m.new_state();
    const size_t V = size_t(m.vocab_size());
    double worst = 0;
    for (size_t t = 0; t < ids.size(); ++t) {
      const auto l = m.step(ids[t], st);
      double mx = 0, err = 0;
      for (size_t k = 0; k < V; ++k) {
        mx = std::max(mx, std::fabs(double(full[t * V + k])));
        err = std::max(err, std::fabs(double(full[t * V + k]) - double(l[k])));
      }
      worst = std::max(worst, err / mx);
    }
    std::printf("[ %s ] step vs prefill: max rel diff %.3g over %zu tokens\n", dir.c_str(), worst, ids.size());
    EXPECT_LE(worst, 1e-5) << dir;
    EXPECT_EQ(st.position, int64_t(ids.size()));
  }
}

// Chunked prefill (small prefill_chunk) equals one-shot prefill exactly.
TEST(Conformance, ChunkedPrefillIsExact) {
  ModelOptions a = opts(1), b = opts(1);
  b.prefill_chunk = 3;
  Model ma = load_model(data_dir() + "/kjv-tiny", a), mb = load_model(data_dir() + "/kjv-tiny", b);
  const auto g = read_goldens(data_dir() + "/kjv-tiny/golden.safetensors").front();
  EXPECT_EQ(ma.prefill(g.greedy_ids), mb.prefill(g.greedy_ids));
}

// step_batch: B sequences, each at its own position, decode one token each in one forward
// pass, bit-identical to B separate step() calls; batches larger than prefill_chunk run in chunks.
TEST(Conformance, StepBatchEqualsSeparateSteps) {
  for (std::string dir : {data_dir() + "/kjv-tiny", data_dir() + "/odd-b"}) {
    for (int threads : {1, 2}) {
      ModelOptions o = opts(threads);
      o.prefill_chunk = 5;
      Model m = load_model(dir, o);
      const int64_t V = m.vocab_size();
      for (size_t B : {size_t(1), size_t(3), size_t(13)}) {
        std::vector<State> batch, single;
        std::vector<int32_t> ids;
        for (size_t b = 0; b < B; ++b) {  // sequence b has consumed b tokens already
          std::vector<int32_t> history;
          for (size_t k = 0; k < b; ++k) history.push_back(int32_t((7 * b + 3 * k + 1) % size_t(V)));
          State s = m.new_state();
          if (!history.empty()) m.prefill_last(history, s);
          batch.push_back(s), single.push_back(s);
          ids.push_back(int32_t((11 * b + 5) % size_t(V)));
        }
        std::vector<State*> ptrs;
        for (auto& s : batch) ptrs.push_back(&s);
        for (int round = 0; round < 3; ++round) {
          const auto got = m.step_batch(ids, ptrs);
          ASSERT_EQ(got.size(), B * size_t(V));
          for (size_t b = 0; b < B; ++b) {
            const auto want = m.step(ids[b], single[b]);
            ASSERT_TRUE(std::equal(want.begin(), want.end(), got.begin() + long(b) * V))
                << dir << " threads " << threads << " B " << B << " sequence " << b << " round " << round;
            EXPECT_EQ(batch[b].h, single[b].h);
            EXPECT_EQ(batch[b].position, single[b].position);
            ids[b] = int32_t(std::max_element(want.begin(), want.end()) - want.begin());
          }
        }
      }
      State s = m.new_state();
      std::vector<State*> one = {&s};
      EXPECT_THROW(m.step_batch(std::vector<int32_t>{1, 2}, one), Error);
      EXPECT_THROW(m.step_batch(std::vector<int32_t>{int32_t(V)}, one), Error);
    }
  }
}

// The wide copies (ModelOptions::wide: a TQ1 model's weights again in 2-bit digits) change which
// bytes prompts read, never a result: prefills in passes of 37 tokens (the prefill kernel) and
// batched steps beside them, on models whose rows are and are not multiples of 64, 1 and 2 threads.
TEST(Conformance, WideCopiesChangeNoBit) {
  if (!kernels::wide_runs(TernaryFormat::TQ1)) GTEST_SKIP() << "no kernel reads wide copies on this CPU";
  for (std::string dir : {data_dir() + "/kjv-tiny", data_dir() + "/odd-b", bundled_model()})
    for (int threads : {1, 2}) {
      ModelOptions a = opts(threads, TernaryFormat::TQ1), b = opts(threads, TernaryFormat::TQ1);
      a.interleaved = false;
      a.wide = false;
      b.wide = true;
      b.kernels = "avx512-vbmi,avx512-vbmi-interleaved,avx512-wide";
      a.prefill_chunk = b.prefill_chunk = 37;
      Model ma = load_model(dir, a), mb = load_model(dir, b);
      const std::string label = dir + " threads " + std::to_string(threads);
      EXPECT_EQ(ma.wide_bytes(), 0u) << label;
      EXPECT_GT(mb.wide_bytes(), 0u) << label;
      EXPECT_TRUE(mb.kernel_choice().prefill.chosen.wide) << label;
      const int64_t V = ma.vocab_size();
      std::vector<int32_t> ids;
      for (int i = 0; i < 100; ++i) ids.push_back(int32_t((29 * i + 5) % V));
      State sa = ma.new_state(), sb = mb.new_state();
      EXPECT_EQ(ma.prefill(ids, sa), mb.prefill(ids, sb)) << label;
      EXPECT_EQ(sa.h, sb.h) << label;
      // 17 sequences in one step: more than batch_max, so the prefill kernel on the wide copy.
      std::vector<State> ba(17, sa), bb(17, sb);
      std::vector<State*> pa, pb;
      for (size_t k = 0; k < ba.size(); ++k) pa.push_back(&ba[k]), pb.push_back(&bb[k]);
      const std::vector<int32_t> step_ids(ids.begin(), ids.begin() + 17);
      ASSERT_EQ(ma.step_batch(step_ids, pa), mb.step_batch(step_ids, pb)) << label;
      for (size_t k = 0; k < ba.size(); ++k) EXPECT_EQ(ba[k].h, bb[k].h) << label << " sequence " << k;
    }
  // A TQ2 model takes none, whatever is asked.
  ModelOptions o = opts(1, TernaryFormat::TQ2);
  o.wide = true;
  EXPECT_EQ(load_model(data_dir() + "/kjv-tiny", o).wide_bytes(), 0u);
}

// The interleaved copies (ModelOptions::interleaved) change which bytes the kernels read, never
// a result: prefills, batched steps and verification passes are bit-identical with and without
// them, on models whose rows are and are not multiples of a group (64 or 80), 1 and 2 threads.
TEST(Conformance, InterleavedCopiesChangeNoBit) {
  for (std::string dir : {data_dir() + "/kjv-tiny", data_dir() + "/odd-b", bundled_model()})
    for (TernaryFormat f : {TernaryFormat::TQ2, TernaryFormat::TQ1})
      for (int threads : {1, 2}) {
        ModelOptions a = opts(threads, f), b = opts(threads, f);
        a.interleaved = false;
        b.interleaved = true;
        // The kernels that read the copies, for every pass (the chooser, measuring on models this
        // small, may prefer others).
        if (kernels::interleaved_runs(f))
          b.kernels = f == TernaryFormat::TQ2 ? "avx512-interleaved" : "avx512-vbmi-interleaved";
        b.prefill_chunk = 37;  // passes of 37 and fewer tokens, both regimes
        Model ma = load_model(dir, a), mb = load_model(dir, b);
        const std::string label = dir + " " + format_name(f) + " threads " + std::to_string(threads);
        EXPECT_EQ(ma.interleaved_bytes(), 0u) << label;
        EXPECT_EQ(mb.interleaved_bytes() > 0, kernels::interleaved_runs(f)) << label;
        if (kernels::interleaved_runs(f)) {
          EXPECT_TRUE(mb.kernel_choice().decode.chosen.interleaved) << label;
          EXPECT_TRUE(mb.kernel_choice().batch.chosen.interleaved) << label;
          EXPECT_TRUE(mb.kernel_choice().prefill.chosen.interleaved) << label;
        }
        const int64_t V = ma.vocab_size();
        std::vector<int32_t> ids;
        for (int i = 0; i < 100; ++i) ids.push_back(int32_t((17 * i + 3) % V));
        EXPECT_EQ(ma.prefill(ids), mb.prefill(ids)) << label;
        for (size_t B : {size_t(2), size_t(5), size_t(13)}) {
          std::vector<State> sa(B, ma.new_state()), sb(B, mb.new_state());
          std::vector<State*> pa, pb;
          std::vector<int32_t> step_ids;
          for (size_t k = 0; k < B; ++k) {
            const std::vector<int32_t> history(ids.begin(), ids.begin() + long(k));
            if (!history.empty()) ma.prefill_last(history, sa[k]), mb.prefill_last(history, sb[k]);
            pa.push_back(&sa[k]), pb.push_back(&sb[k]);
            step_ids.push_back(ids[k + 50]);
          }
          ASSERT_EQ(ma.step_batch(step_ids, pa), mb.step_batch(step_ids, pb)) << label << " B " << B;
          for (size_t k = 0; k < B; ++k) EXPECT_EQ(sa[k].h, sb[k].h) << label << " B " << B;
        }
        State va = ma.new_state(), vb = mb.new_state();
        for (int i = 0; i < 3; ++i) ASSERT_EQ(ma.step(ids[size_t(i)], va), mb.step(ids[size_t(i)], vb)) << label << " step " << i;
        EXPECT_EQ(va.h, vb.h) << label;
        std::vector<State> aa, ab;
        const std::vector<int32_t> draft(ids.begin(), ids.begin() + 6);
        EXPECT_EQ(ma.prefill_states(draft, va, aa), mb.prefill_states(draft, vb, ab)) << label;
        for (size_t t = 0; t < draft.size(); ++t) EXPECT_EQ(aa[t].h, ab[t].h) << label << " position " << t;
      }
}

// forward_tokens: prompts being read (several tokens of one sequence) and decoding sequences
// (one token each) in one forward pass, the logits of chosen rows only: bit-identical to each
// sequence alone.
TEST(Conformance, MixedPrefillAndDecodeBatchEqualsAlone) {
  ModelOptions o = opts(2);
  o.prefill_chunk = 7;  // chunks that split sequences
  Model m = load_model(data_dir() + "/kjv-tiny", o);
  const int64_t V = m.vocab_size();
  State a = m.new_state(), b = m.new_state(), c = m.new_state();
  m.prefill_last(std::vector<int32_t>{1, 1142, 333}, b);  // b is decoding
  State a1 = a, b1 = b, c1 = c;
  // a reads 5 prompt tokens, b decodes one, c reads 6: [a a b a a a c c c c c c]
  const std::vector<int32_t> ids = {1, 1142, 2693, 333, 2693, 464, 1, 500, 600, 700, 800, 900};
  std::vector<State*> st = {&a, &a, &b, &a, &a, &a, &c, &c, &c, &c, &c, &c};
  const std::vector<int64_t> rows = {2, 5, 11};  // b's token, a's last, c's last
  const auto got = m.forward_tokens(ids, st, rows);
  ASSERT_EQ(got.size(), 3 * size_t(V));
  const auto la = m.prefill_last(std::vector<int32_t>{1, 1142, 333, 2693, 464}, a1);
  const auto lb = m.step(2693, b1);
  const auto lc = m.prefill_last(std::vector<int32_t>{1, 500, 600, 700, 800, 900}, c1);
  EXPECT_TRUE(std::equal(lb.begin(), lb.end(), got.begin()));
  EXPECT_TRUE(std::equal(la.begin(), la.end(), got.begin() + V));
  EXPECT_TRUE(std::equal(lc.begin(), lc.end(), got.begin() + 2 * V));
  EXPECT_EQ(a.h, a1.h);
  EXPECT_EQ(b.h, b1.h);
  EXPECT_EQ(c.h, c1.h);
  EXPECT_EQ(a.position, 5);
  EXPECT_THROW(m.forward_tokens(ids, st, std::vector<int64_t>{5, 2}), Error);

  // forward_tokens_into: the same logits in a caller's buffer, which keeps its memory when a
  // later pass asks for fewer rows (stale rows from a longer pass never leak into a shorter one).
  State a2 = m.new_state(), b2 = m.new_state(), c2 = m.new_state();
  m.prefill_last(std::vector<int32_t>{1, 1142, 333}, b2);
  std::vector<State*> st2 = {&a2, &a2, &b2, &a2, &a2, &a2, &c2, &c2, &c2, &c2, &c2, &c2};
  std::vector<float> buf(7 * size_t(V), 99.0f);
  const float* mem = buf.data();
  m.forward_tokens_into(ids, st2, rows, {}, buf);
  ASSERT_EQ(buf.size(), 3 * size_t(V));
  EXPECT_EQ(buf.data(), mem);
  EXPECT_TRUE(std::equal(got.begin(), got.end(), buf.begin()));
  EXPECT_EQ(b2.h, b1.h);
  State d = m.new_state(), d1 = m.new_state();
  m.forward_tokens_into(std::vector<int32_t>{1}, std::vector<State*>{&d}, std::vector<int64_t>{0}, {}, buf);
  const auto ld = m.step(1, d1);
  ASSERT_EQ(buf.size(), size_t(V));
  EXPECT_EQ(buf.data(), mem);
  EXPECT_TRUE(std::equal(ld.begin(), ld.end(), buf.begin()));
}

}  // namespace tests_conformance
