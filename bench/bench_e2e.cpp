// End-to-end: the published MatMul-free sizes (370M, 1.3B, 2.7B; random weights from
// init-random presets, cached outside the repository), decode and prefill, 1 and 2
// threads, against the same model computed with float matrix products (float_model.hpp)
// in the same run.
//
//   MMFREE_BENCH_CACHE   folder for the generated GGUF files (default /tmp/mmfree-bench-cache)
//   MMFREE_BENCH_PRESETS comma list (default 370m,1.3b,2.7b)
//   MMFREE_BENCH_FORMATS comma list of ternary formats (default tq2,tq1)
//   MMFREE_BENCH_FP32    0 skips the fp32 baseline (default 1)
//
// Counters: tok_s; floor_tok_s = measured bandwidth / packed bytes read per token, and
// floor_frac = tok_s / floor_tok_s; floor2_frac = tok_s over the floor of the same model at 2
// bits per weight (TQ1 beats the 2-bit floor when it is above 1); peak_MiB = peak resident memory of loading and running
// the model (the process's high-water mark, reset before each load); mem_floor_MiB = bytes
// of weights the model must hold; ttft_ms for prefill = prompt in, first token chosen.
// bench/report.py turns the JSON output into the README table and chart. e2e/<preset>/<format>/batch
// runs step_batch over B sequences (2 threads) against the roofline (roofline_frac).
#include <benchmark/benchmark.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <type_traits>

#include "bench_common.hpp"
#include "float_model.hpp"
#include "mmfree/mmfree.hpp"

using namespace mmfree;

namespace {

constexpr int64_t kPrompt = 512;

std::string cache_dir() {
  const char* e = std::getenv("MMFREE_BENCH_CACHE");
  return e && *e ? e : "/tmp/mmfree-bench-cache";
}

std::string preset_file(const std::string& preset, TernaryFormat f) {
  namespace fs = std::filesystem;
  const std::string path = cache_dir() + "/" + preset + "-" + format_name(f) + ".gguf";
  if (!fs::exists(path)) {
    fs::create_directories(cache_dir());
    std::fprintf(stderr, "generating %s (init-random preset %s)...\n", path.c_str(), preset.c_str());
    write_random_gguf(preset_config(preset), path + ".part", f);
    fs::rename(path + ".part", path);
  }
  return path;
}

size_t rss_bytes() {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line))
    if (line.rfind("VmRSS:", 0) == 0) return size_t(std::stoull(line.substr(6))) * 1024;
  return 0;
}
// Linux: writing 5 to clear_refs resets the high-water mark, so each model's peak is its own.
void reset_peak_rss() { std::ofstream("/proc/self/clear_refs") << "5"; }

std::vector<int32_t> prompt_ids(int64_t vocab) {
  std::vector<int32_t> ids(static_cast<size_t>(kPrompt));
  for (int64_t i = 0; i < kPrompt; ++i) ids[size_t(i)] = int32_t(1 + (i * 7919) % (vocab - 1));
  return ids;
}
int32_t argmax(const std::vector<float>& v) { return int32_t(mmfree::argmax(v.data(), int64_t(v.size()))); }

// Bytes every decoded token must read: all packed matrices plus one embedding row (in format
// `as`, when given, instead of the model's own).
size_t packed_bytes_per_token(const ModelWeights& w, std::optional<TernaryFormat> as = {}) {
  auto bytes = [&](const BitLinear& l) {
    const auto& m = l.weights();
    return as ? TernaryMatrix::shape(*as, m.rows, m.cols).nbytes() : m.nbytes();
  };
  size_t s = 0;
  for_each_bitlinear(w, [&](const std::string&, const BitLinear& l) { s += bytes(l); });
  return s + size_t(w.embeddings.cols) * dtype_size(w.embeddings.dtype);
}
size_t resident_weight_bytes(const ModelWeights& w) {
  return packed_bytes_per_token(w) + w.embeddings.nbytes();
}

// One model in memory at a time (the float 2.7B alone takes 10.5 GB); kept across the
// benchmarks that share it.
struct Loaded {
  std::string key;
  std::unique_ptr<Model> ternary;
  std::unique_ptr<bench::FloatModel> fp32;
  size_t bytes_per_token = 0, mem_floor = 0;
  size_t bytes_per_token_2bit = 0;  // the same model's weights at 2 bits per weight
  size_t base = 0;  // resident bytes before loading
};
// fmt: the ternary model's format; the fp32 model is built from the TQ2 file.
Loaded& load(const std::string& preset, TernaryFormat fmt, bool fp32, int threads) {
  static Loaded cur;
  const std::string key = preset + (fp32 ? "/fp32/" : std::string("/") + format_name(fmt) + "/") + std::to_string(threads);
  if (cur.key == key) return cur;
  cur = Loaded{};
  const std::string path = preset_file(preset, fp32 ? TernaryFormat::TQ2 : fmt);
  const size_t before = rss_bytes();
  reset_peak_rss();
  ModelOptions o;
  o.threads = threads;
  if (!fp32) {
    cur.ternary = std::make_unique<Model>(load_model(path, o));
    cur.bytes_per_token = packed_bytes_per_token(cur.ternary->weights());
    cur.mem_floor = resident_weight_bytes(cur.ternary->weights());
    cur.bytes_per_token_2bit = packed_bytes_per_token(cur.ternary->weights(), TernaryFormat::TQ2);
  } else {
    o.huge_pages = false;  // only read once, to build the float copy
    Model m = load_model(path, o);
    cur.fp32 = std::make_unique<bench::FloatModel>(m.weights(), threads);
    cur.bytes_per_token = cur.fp32->weight_bytes() + size_t(m.config().hidden_size) * 4;
    cur.mem_floor = cur.fp32->weight_bytes() + m.weights().embeddings.nbytes();
  }
  cur.key = key;
  cur.base = before;
  return cur;
}
size_t peak_since_load(size_t before) {
  const size_t hwm = peak_rss_bytes();
  return hwm > before ? hwm - before : 0;
}

void set_counters(benchmark::State& state, const Loaded& L, double tok_s, int /*threads*/, double bw) {
  const double floor = bw * 1e9 / double(L.bytes_per_token);
  state.counters["tok_s"] = tok_s;
  state.counters["floor_tok_s"] = floor;
  state.counters["floor_frac"] = tok_s / floor;
  state.counters["bw_GBs"] = bw;
  state.counters["peak_MiB"] = double(peak_since_load(L.base)) / (1 << 20);
  state.counters["mem_floor_MiB"] = double(L.mem_floor) / (1 << 20);
  state.counters["bytes_per_token_MB"] = double(L.bytes_per_token) / 1e6;
  if (L.ternary) {
    state.counters["floor2_frac"] = tok_s / (bw * 1e9 / double(L.bytes_per_token_2bit));
    const auto& c = L.ternary->kernel_choice();
    state.SetLabel(std::string("kernels: decode ") + c.decode.chosen.name + ", batch " + c.batch.chosen.name + ", prefill " +
                   c.prefill.chosen.name + " | measured: " + kernels::describe(c.decode, kernels::Regime::Decode) + "; " +
                   kernels::describe(c.batch, kernels::Regime::Batch) + "; " + kernels::describe(c.prefill, kernels::Regime::Prefill));
    state.counters["chooser_ms"] = c.seconds * 1e3;
  }
}

// Decode: one token per iteration, from a state that has already seen a few tokens.
// Decode: one token per iteration, from a state that has already seen a few tokens. The read
// bandwidth is probed between segments of 8 tokens (64 MiB, a few ms): on a shared machine it
// moves by tens of percent within a minute, so each segment is compared with the bandwidth of
// its own moment, and floor_frac is the median over segments.
void BM_Decode(benchmark::State& state, std::string preset, TernaryFormat fmt, bool fp32) {
  const int threads = int(state.range(0));
  Loaded& L = load(preset, fmt, fp32, threads);
  int32_t next = 1;
  auto step = [&](auto& st) {
    if constexpr (std::is_same_v<std::decay_t<decltype(st)>, State>) next = argmax(L.ternary->step(next, st));
    else next = argmax(L.fp32->forward(&next, 1, st));
  };
  double secs = 0, seg_secs = 0;
  int seg_tokens = 0;
  std::vector<double> fracs, bws;
  const int segment = fp32 ? 2 : 8;
  auto run = [&](auto st) {
    for (int i = 0; i < 2; ++i) step(st);
    for (auto _ : state) {
      auto t0 = std::chrono::steady_clock::now();
      step(st);
      const double dt = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
      secs += dt, seg_secs += dt;
      if (++seg_tokens == segment) {
        state.PauseTiming();
        if (L.ternary) L.ternary->options().pool->rest();
        if (L.fp32) L.fp32->rest();
        const double bw = bench::measure_bandwidth(threads, size_t(64) << 20, 1);
        bws.push_back(bw);
        fracs.push_back(double(seg_tokens) / seg_secs / (bw * 1e9 / double(L.bytes_per_token)));
        seg_secs = 0, seg_tokens = 0;
        step(st);  // untimed: the first step after rest() wakes the workers (mmfree-cli bench --batch)
        state.ResumeTiming();
      }
    }
  };
  if (fp32) run(L.fp32->new_state());
  else run(L.ternary->new_state());
  auto median = [](std::vector<double> v) {
    std::sort(v.begin(), v.end());
    return v.empty() ? 0.0 : v[v.size() / 2];
  };
  const double bw = median(bws);
  set_counters(state, L, double(state.iterations()) / secs, threads, bw);
  state.counters["floor_frac"] = median(fracs);
  if (L.ternary) state.counters["floor2_frac"] = median(fracs) * double(L.bytes_per_token_2bit) / double(L.bytes_per_token);
}

// Prefill: kPrompt tokens from a fresh state, then the first token chosen (time to first
// token, with the model already loaded).
void BM_Prefill(benchmark::State& state, std::string preset, TernaryFormat fmt, bool fp32) {
  const int threads = int(state.range(0));
  Loaded& L = load(preset, fmt, fp32, threads);
  if (L.ternary) L.ternary->options().pool->rest();
  if (L.fp32) L.fp32->rest();
  const double bw = bench::bandwidth_now_gbs(threads);
  const double peak = bench::int8_peak_gmacs(threads);
  const auto ids = prompt_ids(32000);
  double secs = 0;
  for (auto _ : state) {
    auto t0 = std::chrono::steady_clock::now();
    int32_t first;
    if (!fp32) {
      State st = L.ternary->new_state();
      first = argmax(L.ternary->prefill_last(ids, st));
    } else {
      auto st = L.fp32->new_state();
      first = argmax(L.fp32->forward(ids.data(), kPrompt, st));
    }
    benchmark::DoNotOptimize(first);
    secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  const double tok_s = double(kPrompt) * double(state.iterations()) / secs;
  set_counters(state, L, tok_s, threads, bw);
  state.counters["ttft_ms"] = secs / double(state.iterations()) * 1e3;
  if (L.ternary) {  // ternary MACs per token (every BitLinear but lm_head, which prefill runs once)
    double macs = 0;
    const ModelWeights& w = L.ternary->weights();
    for_each_bitlinear(w, [&](const std::string&, const BitLinear& l) {
      if (&l != &w.lm_head) macs += double(l.in_features()) * double(l.out_features());
    });
    state.counters["GMAC_s"] = tok_s * macs / 1e9;
    state.counters["peak_frac"] = tok_s * macs / 1e9 / peak;
  }
}

// Batched decoding: one step_batch of B sequences per iteration, against the roofline of the
// same moment, min(B x bandwidth / bytes per token, int8 peak / MACs per token), both probed
// before the run; roofline_frac = tok_s over it. (mmfree-cli bench --batch interleaves the Bs
// instead, for tables taken on a shared machine.)
void BM_Batch(benchmark::State& state, std::string preset, TernaryFormat fmt) {
  const int threads = int(state.range(0));
  const int64_t B = state.range(1);
  Loaded& L = load(preset, fmt, false, threads);
  const Model& m = *L.ternary;
  std::vector<State> states(size_t(B), m.new_state());
  std::vector<State*> ptrs;
  for (auto& st : states) ptrs.push_back(&st);
  std::vector<int32_t> ids(static_cast<size_t>(B));
  int64_t k = 0;
  auto step = [&] {
    for (int64_t b = 0; b < B; ++b) ids[size_t(b)] = int32_t(1 + (b * 7919 + k * 104729) % (m.vocab_size() - 1));
    ++k;
    benchmark::DoNotOptimize(m.step_batch(ids, ptrs).data());
  };
  step();
  m.options().pool->rest();
  const double bw = bench::bandwidth_now_gbs(threads), peak = bench::int8_peak_gmacs(threads);
  double secs = 0;
  for (auto _ : state) {
    const auto t0 = std::chrono::steady_clock::now();
    step();
    secs += std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  }
  double macs = 0;
  for_each_bitlinear(m.weights(), [&](const std::string&, const BitLinear& l) { macs += double(l.in_features()) * double(l.out_features()); });
  const double tok_s = double(B) * double(state.iterations()) / secs;
  const double roof = std::min(double(B) * bw * 1e9 / double(L.bytes_per_token), peak * 1e9 / macs);
  set_counters(state, L, tok_s, threads, bw);
  state.counters["roofline_tok_s"] = roof;
  state.counters["roofline_frac"] = tok_s / roof;
  state.counters["int8_peak_GMAC_s"] = peak;
}

int register_all() {
  benchmark::AddCustomContext("cpu_model", bench::cpu_model());
  // The bandwidth probe's buffer, before any model: its pages are not a model's peak memory.
  bench::measure_bandwidth(1, size_t(256) << 20, 1);
  std::string names;
  for (const auto& k : kernels::available_kernels()) names += std::string(names.empty() ? "" : ",") + k.name;
  benchmark::AddCustomContext("mmfree_kernels_available", names);
  auto list = [](const char* env, const char* def) {
    const char* e = std::getenv(env);
    std::vector<std::string> v;
    std::stringstream ss(e && *e ? e : def);
    for (std::string x; std::getline(ss, x, ',');) v.push_back(x);
    return v;
  };
  std::vector<TernaryFormat> formats;
  for (const auto& f : list("MMFREE_BENCH_FORMATS", "tq2,tq1")) formats.push_back(parse_format(f, "MMFREE_BENCH_FORMATS"));
  for (const std::string& p : list("MMFREE_BENCH_PRESETS", "370m,1.3b,2.7b")) {
    auto reg = [&](const std::string& kind, TernaryFormat f, bool fp32) {
      // Decode then prefill for each thread count, so each model loads once per count.
      for (int t : {1, 2}) {
        benchmark::RegisterBenchmark(("e2e/" + p + "/" + kind + "/decode").c_str(), BM_Decode, p, f, fp32)
            ->Arg(t)->ArgName("threads")->Iterations(fp32 ? 8 : 64)->Unit(benchmark::kMillisecond)->UseRealTime();
        benchmark::RegisterBenchmark(("e2e/" + p + "/" + kind + "/prefill").c_str(), BM_Prefill, p, f, fp32)
            ->Arg(t)->ArgName("threads")->Iterations(fp32 ? 1 : 3)->Unit(benchmark::kMillisecond)->UseRealTime();
      }
    };
    for (auto f : formats) reg(format_name(f), f, false);
    for (auto f : formats)  // after the single-token runs, so each model loads once more at most
      benchmark::RegisterBenchmark(("e2e/" + p + "/" + format_name(f) + "/batch").c_str(), BM_Batch, p, f)
          ->ArgNames({"threads", "B"})
          ->ArgsProduct({{2}, {1, 2, 4, 8, 16, 32, 64}})
          ->MinTime(0.5)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    if (list("MMFREE_BENCH_FP32", "1").front() != "0") reg("fp32", TernaryFormat::TQ2, true);
  }
  return 0;
}
const int registered = register_all();

}  // namespace

BENCHMARK_MAIN();
