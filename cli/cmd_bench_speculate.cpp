// mmfree-cli bench --speculate: the mechanism of speculative decoding, measured with a synthetic
// drafter (ScriptedDrafter) that proposes the model's own greedy continuation, each token wrong
// with probability 1 - ALPHA. It says how fast decoding gets at a given acceptance rate, not how
// often a real drafter is right (README, "Speculative decoding").
#include <chrono>

#include "bench_roofline.hpp"
#include "commands.hpp"
#include "mmfree/roofline.hpp"

namespace cli {

int bench_speculate(const Args& a, int32_t threads, int64_t prompt_tokens, int64_t n, int64_t reps, bool json) {
  std::vector<double> alphas;
  {
    const std::string v = a.str("speculate");
    size_t i = 0;
    while (i <= v.size()) {
      size_t j = v.find(',', i);
      if (j == std::string::npos) j = v.size();
      alphas.push_back(mmfree::parse_double(v.substr(i, j - i), "--speculate", 0, 1));
      i = j + 1;
    }
  }
  const int max_k = a.has("draft-tokens") ? int(mmfree::parse_int(a.str("draft-tokens"), "--draft-tokens", 1, 64)) : 8;
  const std::string path = model_path(a);
  mmfree::ModelOptions o = model_options(a);
  o.threads = threads;
  const mmfree::Model m = mmfree::load_model(path, o);
  const int32_t V = int32_t(m.vocab_size());
  std::vector<int32_t> prompt(static_cast<size_t>(prompt_tokens));
  for (int64_t i = 0; i < prompt_tokens; ++i) prompt[size_t(i)] = int32_t(1 + (i * 7919) % (V - 1));
  using clk = std::chrono::steady_clock;
  auto seconds_since = [](clk::time_point t) { return std::chrono::duration<double>(clk::now() - t).count(); };

  mmfree::GenerateOptions g;
  g.sampling.temperature = 0;
  g.max_new_tokens = n;
  g.draft_tokens = max_k;
  std::vector<int32_t> truth;
  mmfree::generate(m, prompt, g, [&](int32_t t) { return truth.push_back(t), true; });  // the script, and a warm-up

  // Plain decoding and each ALPHA in interleaved rounds, so that a neighbour's burst on a shared
  // machine slows all alike; medians over the rounds.
  struct Run {
    double alpha;
    std::vector<double> tps, per_pass, acceptance, mean_k;
  };
  std::vector<Run> runs;
  for (double al : alphas) runs.push_back({al, {}, {}, {}, {}});
  std::vector<double> plain_tps;
  for (int64_t r = 0; r < reps; ++r) {
    const auto st = mmfree::generate(m, prompt, g, [&](int32_t) { return true; });
    plain_tps.push_back(st.decode_tokens_per_second());
    for (Run& run : runs) {
      mmfree::GenerateOptions sg = g;
      sg.drafter = [&, al = run.alpha, r] {
        return std::make_unique<mmfree::ScriptedDrafter>(truth, prompt.size(), al, uint64_t(r) + 1, V);
      };
      std::vector<int32_t> out;
      const auto ss = mmfree::generate(m, prompt, sg, [&](int32_t t) { return out.push_back(t), true; });
      if (out != truth) fail("bench --speculate", "speculative output differs from plain decoding (a bug: please report it)");
      // Decode speed over the same span as plain decoding's: every token after the first.
      run.tps.push_back(ss.decode_tokens_per_second());
      run.per_pass.push_back(double(ss.generated_tokens) / double(std::max<int64_t>(1, ss.passes)));
      run.acceptance.push_back(ss.drafted ? double(ss.accepted) / double(ss.drafted) : 0.0);
      run.mean_k.push_back(double(ss.drafted) / double(std::max<int64_t>(1, ss.passes)));
    }
  }

  // A verification pass over k + 1 tokens against one decoding step, k = 1 .. max(8, max_k), and
  // against its roofline: it reads every weight once and computes the logits of all k + 1 tokens,
  // so it costs at least max(weight bytes / bandwidth, (k + 1) x MACs per token / int8 peak),
  // both ceilings probed between the rounds (bench_roofline.hpp).
  const int kmax = std::max(8, max_k);
  const PassWork work = pass_work(m);
  Ceilings ceil;
  mmfree::State base = m.new_state();
  m.prefill_last(prompt, base);
  std::vector<std::vector<double>> pass_s(size_t(kmax + 1));
  std::vector<mmfree::State> after;
  for (int64_t r = 0; r < 3 * reps; ++r) {
    if (r % 3 == 0) {
      ceil.probe(m, threads);
      mmfree::State s = base;
      m.step(truth[0], s);  // wakes the workers the probe put to sleep: not timed
    }
    for (int k = 0; k <= kmax; ++k) {
      std::vector<int32_t> ids(size_t(k + 1));
      for (int i = 0; i <= k; ++i) ids[size_t(i)] = truth[size_t(i) % truth.size()];
      mmfree::State s = base;
      const int iters = 8;
      const auto t0 = clk::now();
      for (int it = 0; it < iters; ++it) {
        s = base;
        if (k == 0) m.step(ids[0], s);
        else m.prefill_states(ids, s, after);
      }
      pass_s[size_t(k)].push_back(seconds_since(t0) / iters);
    }
  }
  ceil.settle(m);
  for (int k = 0; k <= kmax; ++k) ceil.saw(work.bytes, double(k + 1) * work.macs, median(pass_s[size_t(k)]));
  auto floor_s = [&](int k) { return ceil.floor_seconds(work, double(k + 1), work.macs); };
  const double step_s = median(pass_s[0]);
  const double plain = median(plain_tps);
  const std::string cpu = mmfree::roofline::cpu_model();
  const auto& c = m.config();
  const std::string desc = std::to_string(c.num_hidden_layers) + "x" + std::to_string(c.hidden_size) + " " +
                           mmfree::format_name(m.format());
  if (json) {
    nlohmann::json costs = nlohmann::json::array();
    for (int k = 1; k <= kmax; ++k)
      costs.push_back({{"k", k}, {"tokens", k + 1}, {"ms", median(pass_s[size_t(k)]) * 1e3},
                       {"of_step", median(pass_s[size_t(k)]) / step_s}, {"roofline_ms", floor_s(k) * 1e3},
                       {"of_roofline", floor_s(k) / median(pass_s[size_t(k)])},
                       {"bound", ceil.memory_bound(work, double(k + 1), work.macs) ? "memory" : "compute"}});
    nlohmann::json out = nlohmann::json::array();
    for (const Run& run : runs)
      out.push_back({{"alpha", run.alpha}, {"speedup", median(run.tps) / plain}, {"tps", median(run.tps)},
                     {"plain_tps", plain}, {"tokens_per_pass", median(run.per_pass)},
                     {"acceptance", median(run.acceptance)}, {"mean_draft", median(run.mean_k)},
                     {"drafter", "synthetic"}, {"max_draft", max_k}, {"tokens", n}, {"model", path}, {"desc", desc},
                     {"cpu", cpu}, {"threads", threads}, {"step_ms", step_s * 1e3}, {"step_of_roofline", floor_s(0) / step_s},
                     {"read_gbs", ceil.bw}, {"int8_peak_gmacs", ceil.peak}, {"read_from", ceil.bw_from},
                     {"int8_peak_from", ceil.peak_from}, {"weight_bytes_per_token", work.bytes},
                     {"macs_per_token", work.macs}, {"pass_cost", costs}});
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("synthetic drafter (the model's own greedy tokens, each wrong with probability 1 - alpha); %s, %s, %d threads, "
              "%lld tokens, drafts of at most %d\n\n",
              cpu.c_str(), desc.c_str(), threads, (long long)n, max_k);
  std::printf("| alpha | tok/s | plain tok/s | speedup | tokens per pass | accepted | mean draft |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- |\n");
  for (const Run& run : runs)
    std::printf("| %.2f | %.1f | %.1f | %.2fx | %.2f | %.0f%% | %.2f |\n", run.alpha, median(run.tps), plain,
                median(run.tps) / plain, median(run.per_pass), 100 * median(run.acceptance), median(run.mean_k));
  std::printf("\nverification pass of k + 1 tokens, against one decoding step (%.2f ms, %.0f%% of its roofline) and "
              "against its own roofline (read %s, int8 peak %s, this run)\n\n",
              step_s * 1e3, 100 * floor_s(0) / step_s, Ceilings::describe(ceil.bw, ceil.bw_probe, ceil.bw_from, "GB/s").c_str(),
              Ceilings::describe(ceil.peak, ceil.peak_probe, ceil.peak_from, "GMAC/s").c_str());
  std::printf("| k |");
  for (int k = 1; k <= kmax; ++k) std::printf(" %d |", k);
  std::printf("\n| --- |");
  for (int k = 1; k <= kmax; ++k) std::printf(" --- |");
  std::printf("\n| x step |");
  for (int k = 1; k <= kmax; ++k) std::printf(" %.2f |", median(pass_s[size_t(k)]) / step_s);
  std::printf("\n| roofline x step |");
  for (int k = 1; k <= kmax; ++k) std::printf(" %.2f |", floor_s(k) / step_s);
  std::printf("\n| of roofline |");
  for (int k = 1; k <= kmax; ++k) std::printf(" %.0f%% |", 100 * floor_s(k) / median(pass_s[size_t(k)]));
  std::printf("\n");
  return 0;
}

// bench --draft MODEL | --lookup N -f PROMPTS: a real drafter on real text. Each line of PROMPTS is
// a prompt; each is decoded greedily with and without the drafter (alternately, -r times), and
// the drafter's acceptance and the speedup are reported over all of them.
int bench_drafter(const Args& a, int32_t threads, int64_t n, int64_t reps, bool json) {
  if (!a.has("file")) fail("bench --draft/--lookup", "give the prompts, one per line: -f FILE");
  const std::string path = model_path(a);
  mmfree::ModelOptions o = model_options(a);
  o.threads = threads;
  const mmfree::Model m = mmfree::load_model(path, o);
  const mmfree::Tokenizer tok = mmfree::load_tokenizer(path);
  mmfree::GenerateOptions g;
  g.sampling.temperature = 0;
  g.max_new_tokens = n;
  g.eos_id = int32_t(m.config().eos_token_id);
  mmfree::GenerateOptions sg = g;
  const DrafterArgs drafter_set = drafter_args(a, m);
  drafter_set.apply(sg);
  // The rate at which the drafter is right, measured with drafts of a fixed length (the adaptive
  // length drafts little where it is often wrong, which would leave the rate poorly measured).
  mmfree::GenerateOptions fixed = sg;
  fixed.adaptive_draft = false;
  if (!a.has("draft-tokens")) fixed.draft_tokens = 4;
  std::vector<std::vector<int32_t>> prompts;
  {
    const std::string text = read_text_file(a.str("file"));
    size_t i = 0;
    while (i < text.size()) {
      size_t j = text.find('\n', i);
      if (j == std::string::npos) j = text.size();
      if (j > i) prompts.push_back(tok.encode(text.substr(i, j - i), true));
      i = j + 1;
    }
  }
  if (prompts.empty()) fail(a.str("file"), "has no prompts (one per line)");
  double plain_s = 0, spec_s = 0;
  int64_t plain_tokens = 0, spec_tokens = 0, drafted = 0, accepted = 0, passes = 0, right = 0, wrong = 0;
  for (int64_t r = 0; r < reps; ++r)
    for (const auto& p : prompts) {
      std::vector<int32_t> x, y;
      const auto a0 = mmfree::generate(m, p, g, [&](int32_t t) { return x.push_back(t), true; });
      const auto a1 = mmfree::generate(m, p, sg, [&](int32_t t) { return y.push_back(t), true; });
      if (x != y) fail("bench", "speculative output differs from plain decoding (a bug: please report it)");
      // Whole decode time, first token included, so that both count the same tokens.
      plain_s += a0.decode_seconds + a0.time_to_first_token - a0.prefill_seconds;
      spec_s += a1.decode_seconds + a1.time_to_first_token - a1.prefill_seconds;
      plain_tokens += a0.generated_tokens, spec_tokens += a1.generated_tokens;
      drafted += a1.drafted, accepted += a1.accepted, passes += a1.passes;
      std::vector<int32_t> z;
      const auto a2 = mmfree::generate(m, p, fixed, [&](int32_t t) { return z.push_back(t), true; });
      if (z != x) fail("bench", "speculative output differs from plain decoding (a bug: please report it)");
      right += a2.accepted, wrong += a2.rejected;
    }
  const double alpha = right + wrong ? double(right) / double(right + wrong) : 0.0;
  const double pt = double(plain_tokens) / plain_s, st = double(spec_tokens) / spec_s;
  const std::string drafter = a.has("draft") ? "draft " + a.str("draft") : "lookup " + a.str("lookup");
  const std::string cpu = mmfree::roofline::cpu_model();
  if (json) {
    std::printf("%s\n", nlohmann::json{{"model", path}, {"drafter", drafter}, {"prompts", a.str("file")},
                                       {"cpu", cpu}, {"threads", threads}, {"tokens", spec_tokens},
                                       {"plain_tps", pt}, {"tps", st}, {"speedup", st / pt},
                                       {"acceptance", drafted ? double(accepted) / double(drafted) : 0.0},
                                       {"alpha", alpha}, {"alpha_draft_tokens", fixed.draft_tokens},
                                       {"tokens_per_pass", double(spec_tokens) / double(std::max<int64_t>(1, passes))}}
                            .dump(2)
                            .c_str());
    return 0;
  }
  std::printf("| model | drafter | prompts | CPU | threads | plain tok/s | tok/s | speedup | accepted | tokens per pass | "
              "alpha (drafts of %d) |\n", fixed.draft_tokens);
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  std::printf("| %s | %s | %zu | %s | %d | %.1f | %.1f | %.2fx | %lld of %lld (%.0f%%) | %.2f | %.2f |\n", path.c_str(),
              drafter.c_str(), prompts.size(), cpu.c_str(), threads, pt, st, st / pt, (long long)accepted, (long long)drafted,
              drafted ? 100.0 * double(accepted) / double(drafted) : 0.0,
              double(spec_tokens) / double(std::max<int64_t>(1, passes)), alpha);
  return 0;
}

}  // namespace cli
