// mmfree-cli bench: prefill and decode speed, llama-bench style.
#include <cmath>
#include <chrono>
#include <filesystem>
#include <optional>

#include "bench_roofline.hpp"
#include "commands.hpp"
#include "mmfree/roofline.hpp"

namespace cli {

namespace {

// bench --batch: Model::step_batch over B sequences for each B, against the roofline of this
// machine measured in the same run: a pass over B tokens costs at least
// max(weight bytes / read bandwidth, B x MACs per token / int8 peak).
int bench_batches(const Args& a, const std::vector<int32_t>& threads, int64_t reps, int64_t prompt, bool json) {
  std::vector<int64_t> batches;
  for (int32_t b : mmfree::parse_id_list(a.str("batch"), "--batch", 4097))
    if (b < 1) fail("--batch", "batch sizes must be >= 1");
    else batches.push_back(b);
  const std::string path = model_path(a);
  nlohmann::json runs = nlohmann::json::array();
  for (int32_t t : threads) {
    mmfree::ModelOptions o = model_options(a);
    o.threads = t;
    mmfree::Model m = mmfree::load_model(path, o);
    const PassWork work = pass_work(m);
    const double bytes = work.bytes, macs = work.macs, head_macs = work.head_macs;
    Ceilings ceil;
    const int64_t V = m.vocab_size();
    // One sequence set per B, stepped in interleaved rounds (every B once per round, the
    // ceilings probed between), so that a neighbour's burst on a shared machine slows every B
    // alike; each B's step time is its median over the rounds.
    struct Batch {
      int64_t B;
      std::vector<mmfree::State> states;
      std::vector<mmfree::State*> ptrs;
      std::vector<int32_t> ids;
      int64_t steps_per_round = 2, step_no = 0;
      std::vector<double> step_s;
    };
    std::vector<Batch> bs;
    for (int64_t B : batches) {
      Batch b{B, std::vector<mmfree::State>(size_t(B), m.new_state()), {}, std::vector<int32_t>(size_t(B)), 2, 0, {}};
      for (auto& s : b.states) b.ptrs.push_back(&s);
      bs.push_back(std::move(b));
    }
    using clk = std::chrono::steady_clock;
    auto step = [&](Batch& b) {
      for (int64_t i = 0; i < b.B; ++i) b.ids[size_t(i)] = int32_t(1 + (i * 7919 + b.step_no * 104729) % (V - 1));
      ++b.step_no;
      if (m.step_batch(b.ids, b.ptrs).empty()) std::abort();
    };
    for (Batch& b : bs) {  // warm-up (scratch grows to B tokens), and about 0.2 s of steps per round
      step(b);
      const auto t0 = clk::now();
      step(b);
      b.steps_per_round = std::max<int64_t>(2, int64_t(0.2 / std::max(std::chrono::duration<double>(clk::now() - t0).count(), 1e-6)));
    }
    // The first step after a probe wakes the workers and is not timed: it took 24-26 ms instead of
    // 8-10 in 2 of 8 rounds (one token of the 1.3B preset; the woken worker waits for a vCPU), and
    // B = 1, measured first in every round, read up to 8% slow in such a round (AMD Zen 5, 2 vCPUs).
    auto probe = [&] { ceil.probe(m, t); };
    for (int64_t r = 0; r < reps; ++r) {
      probe();
      step(bs.front());
      for (Batch& b : bs) {
        const auto t0 = clk::now();
        for (int64_t i = 0; i < b.steps_per_round; ++i) step(b);
        b.step_s.push_back(std::chrono::duration<double>(clk::now() - t0).count() / double(b.steps_per_round));
      }
    }
    nlohmann::json rows = nlohmann::json::array();
    for (const Batch& b : bs)
      rows.push_back({{"batch", b.B}, {"step_ms", median(b.step_s) * 1e3}, {"tok_s", double(b.B) / median(b.step_s)}});
    probe();
    // A prompt of `prompt` tokens: its ternary MACs (the head runs once).
    nlohmann::json pre;
    {
      std::vector<int32_t> ids(static_cast<size_t>(prompt));
      for (int64_t i = 0; i < prompt; ++i) ids[size_t(i)] = int32_t(1 + (i * 7919) % (V - 1));
      std::vector<double> secs;
      for (int64_t r = 0; r < reps + 1; ++r) {
        mmfree::State st = m.new_state();
        const auto t0 = std::chrono::steady_clock::now();
        (void)m.prefill_last(ids, st);
        if (r) secs.push_back(std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count());
      }
      const double s = median(secs), gmacs = (double(prompt) * (macs - head_macs) + head_macs) / s / 1e9;
      pre = {{"tokens", prompt}, {"ms", s * 1e3}, {"tok_s", double(prompt) / s}, {"gmac_s", gmacs}};
    }
    // Both ceilings as Ceilings says: medians over the rounds, never below what this run did.
    ceil.settle(m);
    for (const auto& r : rows) {
      const double step_s = r["batch"].get<double>() / r["tok_s"].get<double>();
      ceil.saw(bytes, r["batch"].get<double>() * macs, step_s);
    }
    ceil.saw(0, double(prompt) * (macs - head_macs) + head_macs, pre["ms"].get<double>() / 1e3);
    const double bw = ceil.bw, peak = ceil.peak;
    pre["peak_frac"] = peak > 0 ? pre["gmac_s"].get<double>() / peak : 0.0;
    for (auto& r : rows) {
      const double B = r["batch"].get<double>();
      r["roofline_tok_s"] = B / ceil.floor_seconds(work, B, macs);
      r["roofline_frac"] = r["tok_s"].get<double>() / r["roofline_tok_s"].get<double>();
      r["bound"] = ceil.memory_bound(work, B, macs) ? "memory" : "compute";
    }
    const auto& c = m.config();
    runs.push_back({{"cpu", mmfree::roofline::cpu_model()}, {"model", path},
                    {"desc", std::to_string(c.num_hidden_layers) + "x" + std::to_string(c.hidden_size) + " " +
                                 mmfree::format_name(m.format())},
                    {"threads", t}, {"read_gbs", bw}, {"int8_peak_gmacs", peak}, {"read_probe_gbs", ceil.bw_probe},
                    {"int8_probe_gmacs", ceil.peak_probe}, {"read_from", ceil.bw_from}, {"int8_peak_from", ceil.peak_from},
                    {"weight_bytes_per_token", bytes},
                    {"macs_per_token", macs}, {"kernels", kernel_summary(m)}, {"batches", rows}, {"prefill", pre}});
  }
  if (json) {
    std::printf("%s\n", runs.dump(2).c_str());
    return 0;
  }
  for (auto& r : runs) {
    auto ceiling = [&](const char* value, const char* probe, const char* from, const char* unit) {
      return Ceilings::describe(r[value].get<double>(), r[probe].get<double>(), r[from].get<std::string>(), unit);
    };
    std::printf("%s, %s, %d threads: read %s, int8 peak %s, %.1f MB and %.2f GMAC per token\n",
                r["cpu"].get<std::string>().c_str(), r["desc"].get<std::string>().c_str(), r["threads"].get<int>(),
                ceiling("read_gbs", "read_probe_gbs", "read_from", "GB/s").c_str(),
                ceiling("int8_peak_gmacs", "int8_probe_gmacs", "int8_peak_from", "GMAC/s").c_str(),
                r["weight_bytes_per_token"].get<double>() / 1e6, r["macs_per_token"].get<double>() / 1e9);
    std::printf("kernels: %s\n\n", r["kernels"].get<std::string>().c_str());
    std::printf("| B | step ms | tok/s | roofline tok/s | of roofline | bound |\n| --- | --- | --- | --- | --- | --- |\n");
    for (auto& b : r["batches"])
      std::printf("| %lld | %.2f | %.1f | %.1f | %.0f%% | %s |\n", (long long)b["batch"].get<int64_t>(), b["step_ms"].get<double>(),
                  b["tok_s"].get<double>(), b["roofline_tok_s"].get<double>(), 100 * b["roofline_frac"].get<double>(),
                  b["bound"].get<std::string>().c_str());
    const auto& p = r["prefill"];
    std::printf("\nprefill %lld tokens: %.0f ms, %.1f tok/s, %.0f GMAC/s (%.0f%% of the int8 peak)\n\n",
                (long long)p["tokens"].get<int64_t>(), p["ms"].get<double>(), p["tok_s"].get<double>(),
                p["gmac_s"].get<double>(), 100 * p["peak_frac"].get<double>());
  }
  return 0;
}

}  // namespace

// bench --grammar FILE / --json-schema FILE: decoding with the constraint against decoding
// without, the same model in the same run, rounds interleaved. Sampling at temperature 1 with no
// filters (the server's defaults): the widest distributions, so the most draws the grammar
// refuses and the most whole masks. A document that is complete starts again (a fresh filter).
int bench_grammar(const Args& a, int32_t threads, int64_t n, int64_t reps, bool json) {
  const std::string path = model_path(a);
  mmfree::ModelOptions o = model_options(a);
  o.threads = threads;
  mmfree::Model m = mmfree::load_model(path, o);
  const mmfree::Tokenizer tok = mmfree::load_tokenizer(path);
  const std::string file = a.str(a.has("grammar") ? "grammar" : "json-schema");
  const auto grammar = grammar_from_args(a);
  auto trie = std::make_shared<const mmfree::TokenTrie>(tok);
  // Counts and times the filter's whole masks.
  struct Timed : mmfree::GrammarFilter {
    using GrammarFilter::GrammarFilter;
    mutable int64_t masks = 0;
    mutable double mask_s = 0;
    void mask(std::vector<uint8_t>& allowed) const override {
      const auto t0 = std::chrono::steady_clock::now();
      GrammarFilter::mask(allowed);
      mask_s += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      ++masks;
    }
  };
  const std::vector<int32_t> prompt = tok.encode("And God said");
  std::vector<double> plain, constrained;
  int64_t masks = 0, tokens = 0, documents = 0;
  double mask_s = 0;
  for (int64_t rep = 0; rep < reps + 1; ++rep)
    for (int with = 0; with < 2; ++with) {
      mmfree::SamplerOptions so;
      so.temperature = 1, so.top_k = 0, so.top_p = 1, so.min_p = 0, so.seed = uint64_t(rep);
      mmfree::Sampler sampler(so);
      mmfree::State st = m.new_state();
      std::vector<float> logits = m.prefill_last(prompt, st);
      std::vector<int32_t> history = prompt;
      std::unique_ptr<Timed> f;
      if (with) f = std::make_unique<Timed>(grammar, trie);
      const auto t0 = std::chrono::steady_clock::now();
      for (int64_t i = 0; i < n;) {
        const int32_t t = sampler.sample(logits, history, f.get());
        if (f && (t < 0 || t == tok.eos_id())) {  // complete: another document
          if (rep > 0) masks += f->masks, mask_s += f->mask_s, ++documents;
          f = std::make_unique<Timed>(grammar, trie);
          continue;
        }
        if (f) f->accept(t);
        history.push_back(t);
        logits = m.step(t, st);
        ++i;
      }
      const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      if (rep == 0) continue;
      (with ? constrained : plain).push_back(double(n) / s);
      if (with) masks += f->masks, mask_s += f->mask_s, tokens += n;
    }
  const double tp = median(plain), tc = median(constrained);
  const std::string cpu = mmfree::roofline::cpu_model();
  if (json) {
    std::printf("%s\n", nlohmann::json{{"model", path}, {"grammar", file}, {"cpu", cpu}, {"threads", threads}, {"tokens", n},
                                       {"plain_tps", tp}, {"constrained_tps", tc}, {"ratio", tc / tp},
                                       {"masks_per_token", double(masks) / double(tokens)},
                                       {"mask_ms", masks ? mask_s / double(masks) * 1e3 : 0.0}, {"documents", documents}}
                             .dump(2)
                             .c_str());
    return 0;
  }
  std::printf("| model | grammar | CPU | threads | plain tok/s | constrained tok/s | ratio | whole masks per token | ms per mask |\n");
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- | --- |\n");
  std::printf("| %s | %s | %s | %d | %.1f | %.1f | %.2f | %.3f | %.2f |\n", std::filesystem::path(path).filename().c_str(),
              std::filesystem::path(file).filename().c_str(), cpu.c_str(), threads, tp, tc, tc / tp,
              double(masks) / double(tokens), masks ? mask_s / double(masks) * 1e3 : 0.0);
  return 0;
}

// llama-bench style: prefill of -p tokens and decode of -n tokens, for each thread count,
// repeated -r times; mean +- stddev. Figures come from the same model in this process.
int cmd_bench(const Args& a) {
  a.allow({"prompt-tokens", "max-new-tokens", "threads-list", "repetitions", "json", "batch", "grammar", "json-schema", "speculate",
           "draft-tokens", "draft", "lookup", "file"});
  const std::string path = model_path(a);
  const int64_t p = a.has("prompt-tokens") ? mmfree::parse_int(a.str("prompt-tokens"), "-p", 1, 1 << 16) : 512;
  const int64_t n = a.has("max-new-tokens") ? mmfree::parse_int(a.str("max-new-tokens"), "-n", 1, 1 << 16) : 128;
  const int64_t reps = a.has("repetitions") ? mmfree::parse_int(a.str("repetitions"), "-r", 1, 1000) : 3;
  const int64_t cores = mmfree::available_cores();
  const std::string default_threads = cores > 1 ? "1," + std::to_string(cores) : "1";
  std::vector<int32_t> threads;
  for (int32_t t : mmfree::parse_id_list(a.has("threads-list") ? a.str("threads-list") : default_threads, "-t", 4 * cores))
    if (t < 1) fail("-t", "thread counts must be >= 1");
    else threads.push_back(t);
  const bool json = a.on("json");
  if (a.has("batch")) return bench_batches(a, threads, reps, p, json);
  if (a.has("grammar") || a.has("json-schema")) return bench_grammar(a, threads.back(), n, reps, json);
  if (a.has("draft") || a.has("lookup")) return bench_drafter(a, threads.back(), n, reps, json);
  if (a.has("speculate")) return bench_speculate(a, threads.back(), a.has("prompt-tokens") ? p : 32, n, reps, json);
  struct Row {
    int threads;
    std::vector<double> pp, tg, ttft;
    std::string decode_kernel, batch_kernel, prefill_kernel;
  };
  std::vector<Row> rows;
  size_t file_bytes = 0;
  std::string desc;
  for (int32_t t : threads) {
    mmfree::ModelOptions o = model_options(a);
    o.threads = t;
    mmfree::Model m = mmfree::load_model(path, o);
    const auto& c = m.config();
    desc = std::to_string(c.num_hidden_layers) + "x" + std::to_string(c.hidden_size) + " " +
           mmfree::format_name(m.weights().lm_head.weights().format);
    file_bytes = m.weights().embeddings.nbytes();
    mmfree::for_each_bitlinear(m.weights(), [&](const std::string&, const mmfree::BitLinear& l) { file_bytes += l.weights().nbytes(); });
    Row r{t, {}, {}, {}, m.kernel_choice().decode.chosen.name, m.kernel_choice().batch.chosen.name,
          m.kernel_choice().prefill.chosen.name};
    std::vector<int32_t> ids(static_cast<size_t>(p));
    for (int64_t i = 0; i < p; ++i) ids[size_t(i)] = int32_t(1 + i % (m.vocab_size() - 1));
    for (int64_t rep = 0; rep < reps + 1; ++rep) {  // the first run warms the page cache
      using clk = std::chrono::steady_clock;
      mmfree::State st = m.new_state();
      auto t0 = clk::now();
      auto logits = m.prefill_last(ids, st);
      const double pp = std::chrono::duration<double>(clk::now() - t0).count();
      int32_t next = int32_t(mmfree::argmax(logits.data(), int64_t(logits.size())));
      const double ttft = std::chrono::duration<double>(clk::now() - t0).count();
      mmfree::State s2 = m.new_state();
      logits = m.step(next, s2);
      auto t1 = clk::now();
      for (int64_t i = 0; i < n; ++i) {
        next = int32_t(mmfree::argmax(logits.data(), int64_t(logits.size())));
        logits = m.step(next, s2);
      }
      const double tg = std::chrono::duration<double>(clk::now() - t1).count();
      if (rep == 0) continue;
      r.pp.push_back(double(p) / pp), r.tg.push_back(double(n) / tg), r.ttft.push_back(ttft * 1e3);
    }
    rows.push_back(r);
  }
  auto mean_sd = [](const std::vector<double>& v) {
    double m = 0, s = 0;
    for (double x : v) m += x / double(v.size());
    for (double x : v) s += (x - m) * (x - m);
    return std::pair<double, double>{m, v.size() > 1 ? std::sqrt(s / double(v.size() - 1)) : 0.0};
  };
  const double rss = double(mmfree::peak_rss_bytes()) / (1 << 20);
  if (json) {
    nlohmann::json out = nlohmann::json::array();
    for (auto& r : rows) {
      auto [pm, ps] = mean_sd(r.pp);
      auto [tm, ts] = mean_sd(r.tg);
      auto [fm, fs] = mean_sd(r.ttft);
      out.push_back({{"model", path}, {"desc", desc}, {"size_bytes", file_bytes}, {"threads", r.threads},
                     {"prompt_tokens", p}, {"gen_tokens", n}, {"prefill_tps", pm}, {"prefill_tps_sd", ps},
                     {"decode_tps", tm}, {"decode_tps_sd", ts}, {"ttft_ms", fm}, {"ttft_ms_sd", fs}, {"peak_rss_mib", rss},
                     {"decode_kernel", r.decode_kernel}, {"batch_kernel", r.batch_kernel}, {"prefill_kernel", r.prefill_kernel}});
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("| model | size | threads | pp%lld tok/s | tg%lld tok/s | time to first token | peak RSS | kernels (decode, batch, prefill) |\n",
              (long long)p, (long long)n);
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (auto& r : rows) {
    auto [pm, ps] = mean_sd(r.pp);
    auto [tm, ts] = mean_sd(r.tg);
    auto [fm, fs] = mean_sd(r.ttft);
    std::printf("| %s | %.1f MiB | %d | %.1f ± %.1f | %.1f ± %.1f | %.1f ± %.1f ms | %.0f MiB | %s, %s, %s |\n", desc.c_str(),
                double(file_bytes) / (1 << 20), r.threads, pm, ps, tm, ts, fm, fs, rss, r.decode_kernel.c_str(),
                r.batch_kernel.c_str(), r.prefill_kernel.c_str());
  }
  return 0;
}

}  // namespace cli
