// mmfree-cli: run MatMul-free language models from the command line.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <optional>
#include <thread>
#include <cstring>
#include <iostream>
#include <map>
#include <string>
#include <vector>

#include "mmfree/mmfree.hpp"
#include "mmfree/parse.hpp"

namespace {

using mmfree::fail;

const char* kUsage =
    "usage: mmfree-cli <command> [options]\n"
    "commands:\n"
    "  generate   [--model M] (--prompt TEXT | --ids 1,5,9) [-n N] [--temperature T] [--top-k K] [--top-p P]\n"
    "             [--min-p P] [--repeat-penalty R] [--repeat-last-n N] [--seed S] [--print-ids] [--no-stats]\n"
    "  tokenize   (--model M | --tokenizer FILE.json) (--text TEXT | --decode \"1 2 3\") [--no-bos]\n"
    "  logits     --model M --ids 1,5,9 --out FILE.safetensors\n"
    "  perplexity --model M --file TEXT [--window 256] [--windows 64]\n"
    "  info       --model M\n"
    "  bench      [--model M] [-p 512] [-n 128] [-t 1,2] [-r 3] [--json]\n"
    "  convert    --model HF_DIR --out FILE.gguf [--weights tq2|tq1] [--embeddings f16|bf16]\n"
    "  init-random --preset 370m|1.3b|2.7b --out FILE.gguf|DIR [--weights tq2|tq1] [--seed S] [--tokenizer JSON]\n"
    "common: -m/--model DIR|FILE.gguf (default: the bundled model), -t/--threads N,\n"
    "        --kernels NAME|DECODE,PREFILL (default: chosen by measuring at load), --format tq2|tq1 (held in memory),\n"
    "        --no-huge-pages (weights in ordinary pages)\n";

// Flags as "--name value" pairs; boolean flags have no value.
struct Args {
  std::string command;
  std::map<std::string, std::string> values;
  std::map<std::string, bool> switches;

  static Args parse(int argc, char** argv, const std::vector<std::string>& bools,
                    const std::map<std::string, std::string>& aliases) {
    Args a;
    if (argc < 2) fail("mmfree-cli", std::string("no command given\n") + kUsage);
    a.command = argv[1];
    for (int i = 2; i < argc; ++i) {
      std::string k = argv[i];
      if (auto it = aliases.find(k); it != aliases.end()) k = it->second;
      if (k.rfind("--", 0) != 0) fail("argument '" + k + "'", "unexpected (flags start with --)");
      k = k.substr(2);
      if (std::find(bools.begin(), bools.end(), k) != bools.end()) {
        a.switches[k] = true;
        continue;
      }
      if (i + 1 >= argc) fail("--" + k, "missing value");
      a.values[k] = argv[++i];
    }
    return a;
  }
  bool has(const std::string& k) const { return values.count(k) > 0; }
  std::string str(const std::string& k) const {
    auto it = values.find(k);
    if (it == values.end()) fail("--" + k, "is required");
    return it->second;
  }
  void allow(const std::vector<std::string>& known) const {
    for (auto& [k, v] : values)
      if (std::find(known.begin(), known.end(), k) == known.end()) fail("--" + k, "unknown option for '" + command + "'");
    for (auto& [k, v] : switches)
      if (std::find(known.begin(), known.end(), k) == known.end()) fail("--" + k, "unknown option for '" + command + "'");
  }
};

std::string model_path(const Args& a) { return a.has("model") ? a.str("model") : std::string(MMFREE_DEFAULT_MODEL); }

mmfree::Model load(const Args& a);

mmfree::ModelOptions model_options(const Args& a) {
  mmfree::ModelOptions o;
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  if (a.has("threads")) o.threads = int(mmfree::parse_int(a.str("threads"), "--threads", 1, hw));
  if (a.has("kernels")) o.kernels = a.str("kernels");
  if (a.has("format")) o.format = mmfree::parse_format(a.str("format"), "--format");
  if (a.switches.count("no-huge-pages")) o.huge_pages = false;
  return o;
}

mmfree::Model load(const Args& a) { return mmfree::load_model(model_path(a), model_options(a)); }

// "decode avx512 (...), prefill avx512 (...), measured in 21 ms" / "... (forced by --kernels)".
std::string kernel_summary(const mmfree::Model& m) {
  using mmfree::kernels::Regime;
  const auto& c = m.kernel_choice();
  std::string s = std::string("decode ") + describe(c.decode, Regime::Decode) + ", prefill " + describe(c.prefill, Regime::Prefill);
  char buf[64];
  if (m.options().kernels.empty()) std::snprintf(buf, sizeof buf, ", chosen by measurement in %.0f ms", c.seconds * 1e3);
  else std::snprintf(buf, sizeof buf, " (forced by --kernels)");
  return s + buf;
}

// The tokenizer that comes with a model (its tokenizer.json, or the one inside the GGUF).
mmfree::Tokenizer model_tokenizer(const std::string& model) { return mmfree::load_tokenizer(model); }

// A one-line progress bar on stderr.
void progress(const char* what, double frac) {
  static int last = -1;
  if (int(frac * 100) == last) return;
  last = int(frac * 100);
  const int w = 40, n = int(frac * w);
  std::fprintf(stderr, "\r%s [%.*s%*s] %3d%%", what, n, "========================================", w - n, "", int(frac * 100));
  if (frac >= 1) std::fprintf(stderr, "\n");
}

int cmd_convert(const Args& a) {
  a.allow({"model", "out", "weights", "embeddings"});
  mmfree::ConvertOptions o;
  if (a.has("weights")) o.weights = mmfree::parse_format(a.str("weights"), "--weights");
  if (a.has("embeddings")) {
    const std::string e = a.str("embeddings");
    if (e == "f16") o.embeddings = mmfree::DType::F16;
    else if (e == "bf16") o.embeddings = mmfree::DType::BF16;
    else fail("--embeddings " + e, "unknown (expected f16 or bf16)");
  }
  o.progress = [](double f) { progress("converting", f); };
  const std::string out = a.str("out");
  mmfree::convert_to_gguf(a.str("model"), out, o);
  std::fprintf(stderr, "wrote %s (%.2f MiB)\n", out.c_str(), double(std::filesystem::file_size(out)) / (1 << 20));
  return 0;
}

int cmd_init_random(const Args& a) {
  a.allow({"preset", "out", "weights", "seed", "tokenizer"});
  const mmfree::Config c = mmfree::preset_config(a.str("preset"));
  const mmfree::TernaryFormat f = a.has("weights") ? mmfree::parse_format(a.str("weights"), "--weights") : mmfree::kDefaultFormat;
  const std::string out = a.str("out");
  const uint64_t seed = a.has("seed") ? uint64_t(mmfree::parse_int(a.str("seed"), "--seed", 0, INT64_MAX)) : 1;
  const bool gguf_out = out.size() > 5 && out.compare(out.size() - 5, 5, ".gguf") == 0;
  if (!gguf_out) {  // a Hugging Face directory (config.json + BF16 model.safetensors)
    mmfree::write_random_hf(c, out, seed, [](double x) { progress("writing", x); });
    std::fprintf(stderr, "wrote %s/\n", out.c_str());
    return 0;
  }
  mmfree::write_random_gguf(c, out, f, seed, [](double x) { progress("writing", x); }, a.has("tokenizer") ? a.str("tokenizer") : "");
  std::fprintf(stderr, "wrote %s (%.2f MiB)\n", out.c_str(), double(std::filesystem::file_size(out)) / (1 << 20));
  return 0;
}

const std::vector<std::string> kModelFlags = {"model", "threads", "kernels", "format", "no-huge-pages"};
std::vector<std::string> with_model_flags(std::vector<std::string> v) {
  v.insert(v.end(), kModelFlags.begin(), kModelFlags.end());
  return v;
}

int cmd_logits(const Args& a) {
  a.allow(with_model_flags({"ids", "out"}));
  mmfree::Model m = load(a);
  const auto ids = mmfree::parse_id_list(a.str("ids"), "--ids", m.vocab_size() - 1);
  if (ids.empty()) fail("--ids", "no token ids given");
  const std::string out = a.str("out");
  const auto logits = m.prefill(ids);
  const int64_t T = int64_t(ids.size());
  mmfree::write_safetensors(out, {mmfree::make_blob("input_ids", mmfree::DType::I32, {T}, ids),
                                  mmfree::make_blob("logits", mmfree::DType::F32, {T, m.vocab_size()}, logits)});
  return 0;
}

int cmd_generate(const Args& a) {
  a.allow(with_model_flags({"ids", "prompt", "max-new-tokens", "temperature", "top-k", "top-p", "min-p", "repeat-penalty",
                            "repeat-last-n", "seed", "print-ids", "no-stats"}));
  if (a.has("ids") == a.has("prompt")) fail("generate", "give exactly one of --prompt TEXT or --ids 1,5,9");
  mmfree::GenerateOptions g;
  g.max_new_tokens = a.has("max-new-tokens") ? mmfree::parse_int(a.str("max-new-tokens"), "-n", 0, 1 << 24) : 128;
  auto& s = g.sampling;
  if (a.has("temperature")) s.temperature = float(mmfree::parse_double(a.str("temperature"), "--temperature", 0, 100));
  if (a.has("top-k")) s.top_k = int32_t(mmfree::parse_int(a.str("top-k"), "--top-k", 0, INT32_MAX));
  if (a.has("top-p")) s.top_p = float(mmfree::parse_double(a.str("top-p"), "--top-p", 1e-9, 1));
  if (a.has("min-p")) s.min_p = float(mmfree::parse_double(a.str("min-p"), "--min-p", 0, 1));
  if (a.has("repeat-penalty")) s.repeat_penalty = float(mmfree::parse_double(a.str("repeat-penalty"), "--repeat-penalty", 1e-3, 100));
  if (a.has("repeat-last-n")) s.repeat_last_n = int32_t(mmfree::parse_int(a.str("repeat-last-n"), "--repeat-last-n", 0, 1 << 20));
  if (a.has("seed")) s.seed = uint64_t(mmfree::parse_int(a.str("seed"), "--seed", 0, INT64_MAX));
  s.validate();

  mmfree::Model m = load(a);
  std::optional<mmfree::Tokenizer> tok;
  std::vector<int32_t> prompt;
  if (a.has("prompt")) {
    tok.emplace(model_tokenizer(model_path(a)));
    if (tok->vocab_size() > m.vocab_size()) fail(tok->source(), "has more tokens than the model's vocabulary");
    prompt = tok->encode(a.str("prompt"));
    if (prompt.empty()) fail("--prompt", "encodes to no tokens (and the tokenizer adds no BOS)");
  } else {
    prompt = mmfree::parse_id_list(a.str("ids"), "--ids", m.vocab_size() - 1);
    if (prompt.empty()) fail("--ids", "no token ids given");
  }
  const bool print_ids = a.switches.count("print-ids") > 0;
  g.eos_id = print_ids ? -1 : int32_t(m.config().eos_token_id);  // --print-ids: exactly -n tokens
  std::vector<int32_t> all = prompt;
  std::optional<mmfree::IncrementalDecoder> dec;
  if (tok && !print_ids) {
    std::fputs(a.str("prompt").c_str(), stdout);
    dec.emplace(*tok);
    // Prime the decoder with the prompt so spacing continues naturally.
    for (int32_t id : prompt) dec->push(id);
  }
  const auto stats = mmfree::generate(m, prompt, g, [&](int32_t id) {
    all.push_back(id);
    if (dec) {
      std::fputs(dec->push(id).c_str(), stdout);
      std::fflush(stdout);
    }
    return true;
  });
  if (dec) std::fputs((dec->finish() + "\n").c_str(), stdout);
  if (print_ids || !tok) {
    for (size_t i = 0; i < all.size(); ++i) std::printf("%s%d", i ? " " : "", all[i]);
    std::printf("\n");
  }
  std::fflush(stdout);  // the text ends before the stats line when both go to one terminal or pipe
  if (!a.switches.count("no-stats"))
    std::fprintf(stderr,
                 "prompt tokens: %lld, prefill %.1f tok/s, decode %.1f tok/s (%lld tokens), time to first token %.1f ms, "
                 "peak memory %.1f MiB, kernels: decode %s, prefill %s\n",
                 (long long)stats.prompt_tokens, stats.prefill_tokens_per_second(), stats.decode_tokens_per_second(),
                 (long long)stats.generated_tokens, stats.time_to_first_token * 1e3,
                 double(mmfree::peak_rss_bytes()) / (1 << 20), m.kernel_choice().decode.chosen.name,
                 m.kernel_choice().prefill.chosen.name);
  return 0;
}

int cmd_tokenize(const Args& a) {
  a.allow({"model", "tokenizer", "text", "decode", "no-bos"});
  if (a.has("model") == a.has("tokenizer")) fail("tokenize", "give exactly one of --model DIR or --tokenizer FILE.json");
  const mmfree::Tokenizer tok =
      a.has("tokenizer") ? mmfree::Tokenizer::from_file(a.str("tokenizer")) : model_tokenizer(a.str("model"));
  if (a.has("text") == a.has("decode")) fail("tokenize", "give exactly one of --text TEXT or --decode \"1 2 3\"");
  if (a.has("decode")) {
    const auto ids = mmfree::parse_id_list(a.str("decode"), "--decode", tok.vocab_size() - 1);
    std::printf("%s\n", tok.decode(ids).c_str());
    return 0;
  }
  const auto ids = tok.encode(a.str("text"), !a.switches.count("no-bos"));
  for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? " " : "", ids[i]);
  std::printf("\n");
  return 0;
}

int cmd_perplexity(const Args& a) {
  a.allow(with_model_flags({"file", "window", "windows"}));
  const int64_t window = a.has("window") ? mmfree::parse_int(a.str("window"), "--window", 1, 1 << 20) : 256;
  const int64_t windows = a.has("windows") ? mmfree::parse_int(a.str("windows"), "--windows", 1, 1 << 30) : 64;
  const std::string file = a.str("file");
  std::ifstream in(file, std::ios::binary);
  if (!in) fail(file, "cannot open");
  const std::string text((std::istreambuf_iterator<char>(in)), {});
  mmfree::Model m = load(a);
  const auto tok = model_tokenizer(model_path(a));
  const auto ids = mmfree::tokenize_chapters(tok, text);
  std::fprintf(stderr, "%s: %zu tokens\n", file.c_str(), ids.size());
  const auto r = mmfree::perplexity(m, ids, window, windows, [](int64_t w, int64_t n, double ppl) {
    std::fprintf(stderr, "\rwindow %lld/%lld  running perplexity %.4f", (long long)w, (long long)n, ppl);
  });
  std::fprintf(stderr, "\n");
  std::printf("perplexity: %.4f over %lld tokens\n", r.perplexity(), (long long)r.scored);
  return 0;
}

// llama-bench style: prefill of -p tokens and decode of -n tokens, for each thread count,
// repeated -r times; mean +- stddev. Figures come from the same model in this process.
int cmd_bench(const Args& a) {
  a.allow({"model", "kernels", "format", "no-huge-pages", "prompt-tokens", "max-new-tokens", "threads-list", "repetitions",
           "json"});
  const std::string path = model_path(a);
  const int64_t p = a.has("prompt-tokens") ? mmfree::parse_int(a.str("prompt-tokens"), "-p", 1, 1 << 16) : 512;
  const int64_t n = a.has("max-new-tokens") ? mmfree::parse_int(a.str("max-new-tokens"), "-n", 1, 1 << 16) : 128;
  const int64_t reps = a.has("repetitions") ? mmfree::parse_int(a.str("repetitions"), "-r", 1, 1000) : 3;
  const int64_t hw = std::max(1u, std::thread::hardware_concurrency());
  std::vector<int32_t> threads;
  for (int32_t t : mmfree::parse_id_list(a.has("threads-list") ? a.str("threads-list") : "1,2", "-t", hw))
    if (t < 1) fail("-t", "thread counts must be >= 1");
    else threads.push_back(t);
  const bool json = a.switches.count("json") > 0;
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
    file_bytes = 0;
    for (auto& b : m.weights().blocks)
      for (auto* l : {&b.attn.i_proj, &b.attn.f_proj, &b.attn.g_proj, &b.attn.o_proj, &b.mlp.gate_proj, &b.mlp.down_proj})
        file_bytes += l->weights().nbytes();
    file_bytes += m.weights().lm_head.weights().nbytes() + m.weights().embeddings.nbytes();
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

int cmd_info(const Args& a) {
  a.allow(with_model_flags({}));
  const std::string path = model_path(a);
  mmfree::Model m = load(a);
  const auto& c = m.config();
  const auto& w = m.weights();
  int64_t ternary_params = 0, float_params = 0;
  size_t packed = 0;
  auto count = [&](const mmfree::BitLinear& b) {
    ternary_params += b.in_features() * b.out_features();
    float_params += b.in_features();
    packed += b.weights().nbytes();
  };
  for (auto& b : w.blocks) {
    for (auto* l : {&b.attn.i_proj, &b.attn.f_proj, &b.attn.g_proj, &b.attn.o_proj, &b.mlp.gate_proj, &b.mlp.down_proj}) count(*l);
    float_params += 3 * c.hidden_size + int64_t(b.attn.lower_bound.size());
  }
  count(w.lm_head);
  const int64_t emb = c.vocab_size * c.hidden_size;
  std::printf("model        %s\n", path.c_str());
  std::printf("architecture hgrn_bit (MatMul-free LM): %lld layers, hidden %lld, mixer dim %lld, intermediate %lld, "
              "vocab %lld, heads %lld\n",
              (long long)c.num_hidden_layers, (long long)c.hidden_size, (long long)c.input_dim(),
              (long long)c.intermediate_size, (long long)c.vocab_size, (long long)c.num_heads);
  std::printf("options      lower bounds %s, rms_norm_eps %g, bos %lld, eos %lld, tied embeddings %s\n",
              c.use_lower_bound ? "yes" : "no", c.rms_norm_eps, (long long)c.bos_token_id, (long long)c.eos_token_id,
              c.tie_word_embeddings ? "yes" : "no");
  std::printf("parameters   %.2fM total: %.2fM ternary, %.2fM embedding, %.3fM other float\n",
              double(ternary_params + emb + float_params) / 1e6, double(ternary_params) / 1e6, double(emb) / 1e6,
              double(float_params) / 1e6);
  std::printf("memory       %.2f MiB packed ternary (%s), %.2f MiB embeddings (%s), fp32 equivalent %.2f MiB\n",
              double(packed) / (1 << 20), mmfree::format_name(w.lm_head.weights().format),
              double(w.embeddings.nbytes()) / (1 << 20), mmfree::dtype_name(w.embeddings.dtype),
              double(4 * (ternary_params + emb + float_params)) / (1 << 20));
  std::printf("kernels      %s\n", kernel_summary(m).c_str());
  std::printf("threads      %d\n", m.options().threads);
  std::optional<mmfree::Tokenizer> t;
  try {
    t.emplace(model_tokenizer(path));
  } catch (const mmfree::Error&) {
  }
  if (t) {
    const auto& tok = *t;
    std::printf("tokenizer    %lld tokens, %zu merges, normaliser %s, bos %d%s, eos %d%s\n", (long long)tok.vocab_size(),
                tok.merge_count(), tok.normalizer_kind().c_str(), tok.bos_id(), tok.adds_bos() ? " (added)" : "",
                tok.eos_id(), tok.adds_eos() ? " (added)" : "");
  } else {
    std::printf("tokenizer    none\n");
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    // bench takes llama-bench's short flags: -p prompt tokens, -t a list of thread counts.
    const bool bench = argc > 1 && std::string(argv[1]) == "bench";
    const std::map<std::string, std::string> aliases = {
        {"-n", "--max-new-tokens"}, {"-t", bench ? "--threads-list" : "--threads"}, {"-m", "--model"},
        {"-p", bench ? "--prompt-tokens" : "--prompt"}, {"-r", "--repetitions"}};
    Args a = Args::parse(argc, argv, {"print-ids", "help", "no-stats", "no-bos", "json", "no-huge-pages"}, aliases);
    if (a.command == "logits") return cmd_logits(a);
    if (a.command == "generate") return cmd_generate(a);
    if (a.command == "tokenize") return cmd_tokenize(a);
    if (a.command == "perplexity") return cmd_perplexity(a);
    if (a.command == "info") return cmd_info(a);
    if (a.command == "convert") return cmd_convert(a);
    if (a.command == "bench") return cmd_bench(a);
    if (a.command == "init-random") return cmd_init_random(a);
    if (a.command == "help" || a.command == "--help" || a.command == "-h") {
      std::fputs(kUsage, stdout);
      return 0;
    }
    fail("mmfree-cli", "unknown command '" + a.command + "'\n" + kUsage);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "error: %s\n", e.what());
    return 1;
  }
}
