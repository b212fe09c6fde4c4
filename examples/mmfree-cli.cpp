// mmfree-cli: run MatMul-free language models from the command line.
#include <cstdio>
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
    "  logits   --model DIR --ids 1,5,9 --out FILE.safetensors\n"
    "  generate --model DIR --ids 1,5,9 [-n N] [--temperature 0] [--print-ids]\n"
    "common options: -t/--threads N, --kernels scalar|avx2|avx512, --format tq2|tq1\n";

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

mmfree::ModelOptions model_options(const Args& a) {
  mmfree::ModelOptions o;
  if (a.has("threads")) o.threads = int(mmfree::parse_int(a.str("threads"), "--threads", 1, 1024));
  if (a.has("kernels")) o.isa = mmfree::kernels::parse_isa(a.str("kernels"));
  if (a.has("format")) {
    const std::string f = a.str("format");
    if (f == "tq2") o.format = mmfree::TernaryFormat::TQ2;
    else if (f == "tq1") o.format = mmfree::TernaryFormat::TQ1;
    else fail("--format " + f, "unknown (expected tq2 or tq1)");
  }
  return o;
}

int cmd_logits(const Args& a) {
  a.allow({"model", "ids", "out", "threads", "kernels", "format"});
  mmfree::Model m = mmfree::load_model(a.str("model"), model_options(a));
  const auto ids = mmfree::parse_id_list(a.str("ids"), "--ids", m.vocab_size() - 1);
  if (ids.empty()) fail("--ids", "no token ids given");
  const auto logits = m.prefill(ids);
  const int64_t T = int64_t(ids.size());
  mmfree::write_safetensors(a.str("out"), {mmfree::make_blob("input_ids", mmfree::DType::I32, {T}, ids),
                                            mmfree::make_blob("logits", mmfree::DType::F32, {T, m.vocab_size()}, logits)});
  return 0;
}

int argmax(const std::vector<float>& v) {
  return int(std::max_element(v.begin(), v.end()) - v.begin());
}

int cmd_generate(const Args& a) {
  a.allow({"model", "ids", "max-new-tokens", "temperature", "print-ids", "threads", "kernels", "format"});
  mmfree::Model m = mmfree::load_model(a.str("model"), model_options(a));
  auto ids = mmfree::parse_id_list(a.str("ids"), "--ids", m.vocab_size() - 1);
  if (ids.empty()) fail("--ids", "no token ids given");
  const int64_t n = a.has("max-new-tokens") ? mmfree::parse_int(a.str("max-new-tokens"), "-n", 0, 1 << 24) : 32;
  const double temp = a.has("temperature") ? mmfree::parse_double(a.str("temperature"), "--temperature", 0, 100) : 0;
  if (temp != 0) fail("--temperature", "only 0 (greedy) is supported with --ids");
  mmfree::State st = m.new_state();
  std::vector<float> logits = m.prefill_last(ids, st);
  for (int64_t i = 0; i < n; ++i) {
    const int32_t next = argmax(logits);
    ids.push_back(next);
    if (i + 1 < n) logits = m.step(next, st);
  }
  for (size_t i = 0; i < ids.size(); ++i) std::printf("%s%d", i ? " " : "", ids[i]);
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    const std::map<std::string, std::string> aliases = {{"-n", "--max-new-tokens"}, {"-t", "--threads"},
                                                        {"-m", "--model"}, {"-p", "--prompt"}};
    Args a = Args::parse(argc, argv, {"print-ids", "help"}, aliases);
    if (a.command == "logits") return cmd_logits(a);
    if (a.command == "generate") return cmd_generate(a);
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
