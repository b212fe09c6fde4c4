// mmfree-cli bench: the roofline of a pass over several tokens, with both ceilings measured in
// the run that reports against them (bench --batch, bench --speculate). A pass over B tokens
// costs at least max(weight bytes / read bandwidth, B x MACs per token / int8 peak).
#pragma once

#include <algorithm>
#include <string>
#include <vector>

#include "mmfree/mmfree.hpp"
#include "mmfree/roofline.hpp"

namespace cli {

// The median of a run's rounds (the upper one of an even count): the machine slows all rounds alike.
inline double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v.empty() ? 0.0 : v[v.size() / 2];
}

// What one token's pass reads and computes: the ternary weights and one embedding row, and the
// multiply-accumulates of every BitLinear, the LM head's among them (`head_macs`).
struct PassWork {
  double bytes = 0, macs = 0, head_macs = 0;
};
inline PassWork pass_work(const mmfree::Model& m) {
  const mmfree::ModelWeights& w = m.weights();
  PassWork p;
  p.bytes = double(w.embeddings.cols) * double(mmfree::dtype_size(w.embeddings.dtype));
  mmfree::for_each_bitlinear(w, [&](const std::string&, const mmfree::BitLinear& l) {
    p.bytes += double(l.weights().nbytes());
    p.macs += double(l.in_features()) * double(l.out_features());
  });
  p.head_macs = double(w.lm_head.in_features()) * double(w.lm_head.out_features());
  return p;
}

// The read bandwidth and the int8 peak of this run. Both are medians of probes taken between
// the timed rounds, so that one probe in a neighbour's burst does not move every share. A
// ceiling below what the run itself did is no ceiling, though: on a shared machine the int8
// probe read 610-620 GMAC/s through whole runs whose chooser samples of the prefill kernel read
// 710-770 and whose prefill reached 630-720 (AMD EPYC Zen 5, 2 vCPUs), and the shares came out
// above 100%. So the peak is raised to the chooser's samples of the batch and prefill kernels
// on the model's matrices (not its decode samples: on a small model they stream from the
// caches) and to the MAC rates the passes reached; the bandwidth to the weight bytes the passes
// read per second.
struct Ceilings {
  std::vector<double> bw_probes, peak_probes;
  double bw = 0, peak = 0, bw_probe = 0, peak_probe = 0;
  std::string bw_from = "probe", peak_from = "probe";

  // Probes both, with the model's workers asleep rather than spinning after the last pass (a
  // spinning worker took a core from the int8 probe for up to ~20 ms). The next pass wakes them:
  // leave it untimed.
  void probe(const mmfree::Model& m, int threads) {
    m.options().pool->rest();
    bw_probes.push_back(mmfree::roofline::bandwidth_now_gbs(threads));
    peak_probes.push_back(mmfree::roofline::int8_peak_gmacs(threads));
  }
  // The medians of the probes, raised to the chooser's samples.
  void settle(const mmfree::Model& m) {
    bw = bw_probe = median(bw_probes);
    peak = peak_probe = median(peak_probes);
    const auto& kc = m.kernel_choice();
    for (const auto* regime : {&kc.batch, &kc.prefill})
      for (const auto& cand : regime->candidates) raise(peak, peak_from, cand.rate, "chooser");
  }
  // A pass that read `bytes` of weights and did `macs` multiply-accumulates in `seconds`.
  void saw(double bytes, double macs, double seconds) {
    if (seconds <= 0) return;
    raise(bw, bw_from, bytes / seconds / 1e9, "passes");
    raise(peak, peak_from, macs / seconds / 1e9, "passes");
  }
  // The least a pass over `tokens` tokens can take: reading the weights once, or their MACs at
  // the peak, whichever is longer (`macs` per token).
  double floor_seconds(const PassWork& w, double tokens, double macs) const {
    const double mem_s = bw > 0 ? w.bytes / (bw * 1e9) : 0, mac_s = peak > 0 ? tokens * macs / (peak * 1e9) : 0;
    return std::max(mem_s, mac_s);
  }
  bool memory_bound(const PassWork& w, double tokens, double macs) const {
    return bw > 0 && (peak <= 0 || w.bytes / (bw * 1e9) >= tokens * macs / (peak * 1e9));
  }
  // "read 55.0 GB/s" or "read 57.1 GB/s (this run's passes; probe 55.0)"
  static std::string describe(double value, double probe, const std::string& from, const char* unit) {
    char buf[128];
    if (from == "probe") std::snprintf(buf, sizeof buf, "%.1f %s", value, unit);
    else
      std::snprintf(buf, sizeof buf, "%.1f %s (%s; probe %.1f)", value, unit,
                    from == "chooser" ? "the chooser's kernel samples" : "this run's passes", probe);
    return buf;
  }

 private:
  static void raise(double& ceiling, std::string& from, double rate, const char* what) {
    if (rate > ceiling) ceiling = rate, from = what;
  }
};

}  // namespace cli
