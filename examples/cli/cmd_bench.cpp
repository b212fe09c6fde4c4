// mmfree-cli bench: prefill and decode speed, llama-bench style.
#include <cmath>
#include <chrono>
#include <filesystem>
#include <optional>

#include "commands.hpp"

namespace cli {

// llama-bench style: prefill of -p tokens and decode of -n tokens, for each thread count,
// repeated -r times; mean +- stddev. Figures come from the same model in this process.
int cmd_bench(const Args& a) {
  a.allow({"prompt-tokens", "max-new-tokens", "threads-list", "repetitions", "json"});
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
  struct Row {
    int threads;
    std::vector<double> pp, tg, ttft;
    std::string decode_kernel, prefill_kernel;
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
    Row r{t, {}, {}, {}, m.kernel_choice().decode.chosen.name, m.kernel_choice().prefill.chosen.name};
    std::vector<int32_t> ids(static_cast<size_t>(p));
    for (int64_t i = 0; i < p; ++i) ids[size_t(i)] = int32_t(1 + i % (m.vocab_size() - 1));
    for (int64_t rep = 0; rep < reps + 1; ++rep) {  // the first run warms the page cache
      using clk = std::chrono::steady_clock;
      mmfree::State st = m.new_state();
      auto t0 = clk::now();
      auto logits = m.prefill_last(ids, st);
      const double pp = std::chrono::duration<double>(clk::now() - t0).count();
      int32_t next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
      const double ttft = std::chrono::duration<double>(clk::now() - t0).count();
      mmfree::State s2 = m.new_state();
      logits = m.step(next, s2);
      auto t1 = clk::now();
      for (int64_t i = 0; i < n; ++i) {
        next = int32_t(std::max_element(logits.begin(), logits.end()) - logits.begin());
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
                     {"decode_kernel", r.decode_kernel}, {"prefill_kernel", r.prefill_kernel}});
    }
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
  }
  std::printf("| model | size | threads | pp%lld tok/s | tg%lld tok/s | time to first token | peak RSS | kernels (decode, prefill) |\n",
              (long long)p, (long long)n);
  std::printf("| --- | --- | --- | --- | --- | --- | --- | --- |\n");
  for (auto& r : rows) {
    auto [pm, ps] = mean_sd(r.pp);
    auto [tm, ts] = mean_sd(r.tg);
    auto [fm, fs] = mean_sd(r.ttft);
    std::printf("| %s | %.1f MiB | %d | %.1f ± %.1f | %.1f ± %.1f | %.1f ± %.1f ms | %.0f MiB | %s, %s |\n", desc.c_str(),
                double(file_bytes) / (1 << 20), r.threads, pm, ps, tm, ts, fm, fs, rss, r.decode_kernel.c_str(),
                r.prefill_kernel.c_str());
  }
  return 0;
}

}  // namespace cli
