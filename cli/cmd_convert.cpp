// mmfree-cli convert, init-random: GGUF files from a checkpoint, or random ones of the paper's sizes.
#include <cmath>
#include <chrono>
#include <filesystem>
#include <optional>

#include "commands.hpp"

namespace cli {

int cmd_convert(const Args& a) {
  a.allow({"model", "out", "weights", "embeddings"}, /*model_flags=*/false);
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
  a.allow({"preset", "out", "weights", "seed", "tokenizer"}, /*model_flags=*/false);
  const mmfree::Config c = mmfree::preset_config(a.str("preset"));
  const mmfree::TernaryFormat f = a.has("weights") ? mmfree::parse_format(a.str("weights"), "--weights") : mmfree::kDefaultFormat;
  const std::string out = a.str("out");
  const uint64_t seed = a.has("seed") ? uint64_t(mmfree::parse_int(a.str("seed"), "--seed", 0, INT64_MAX)) : 1;
  const bool gguf_out = out.ends_with(".gguf");
  if (!gguf_out) {  // a Hugging Face directory (config.json + BF16 model.safetensors)
    mmfree::write_random_hf(c, out, seed, [](double x) { progress("writing", x); });
    std::fprintf(stderr, "wrote %s/\n", out.c_str());
    return 0;
  }
  mmfree::write_random_gguf(c, out, f, seed, [](double x) { progress("writing", x); }, a.has("tokenizer") ? a.str("tokenizer") : "");
  std::fprintf(stderr, "wrote %s (%.2f MiB)\n", out.c_str(), double(std::filesystem::file_size(out)) / (1 << 20));
  return 0;
}

}  // namespace cli
