// mmfree-cli tokenize, logits, perplexity, info: what a model and its tokenizer do with a text.
#include <cmath>
#include <chrono>
#include <filesystem>
#include <optional>

#include "commands.hpp"

namespace cli {

int cmd_tokenize(const Args& a) {
  a.allow({"model", "tokenizer", "text", "prompt", "file", "decode", "no-bos"}, /*model_flags=*/false);
  if (a.has("model") && a.has("tokenizer")) fail("tokenize", "give --model M or --tokenizer FILE.json, not both");
  const mmfree::Tokenizer tok =
      a.has("tokenizer") ? mmfree::read_tokenizer(a.str("tokenizer")) : mmfree::load_tokenizer(model_path(a));
  const int given = int(a.has("text")) + int(a.has("prompt")) + int(a.has("file")) + int(a.has("decode"));
  if (given != 1) fail("tokenize", "give one of --text/-p TEXT, -f FILE or --decode \"1 2 3\"");
  if (a.has("decode")) {
    const auto ids = mmfree::parse_id_list(a.str("decode"), "--decode", tok.vocab_size() - 1);
    std::printf("%s\n", tok.decode(ids).c_str());
    return 0;
  }
  const std::string text = a.has("file") ? read_text_file(a.str("file")) : a.str(a.has("text") ? "text" : "prompt");
  print_ids(tok.encode(text, !a.on("no-bos")));
  return 0;
}

int cmd_logits(const Args& a) {
  a.allow({"ids", "out"});
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

int cmd_perplexity(const Args& a) {
  a.allow({"file", "window", "windows"});
  const int64_t window = a.has("window") ? mmfree::parse_int(a.str("window"), "--window", 1, 1 << 20) : 256;
  const int64_t windows = a.has("windows") ? mmfree::parse_int(a.str("windows"), "--windows", 1, 1 << 30) : 64;
  const std::string file = a.str("file");
  const std::string text = read_text_file(file);
  mmfree::Model m = load(a);
  const auto tok = mmfree::load_tokenizer(model_path(a));
  const auto ids = mmfree::tokenize_chapters(tok, text);
  std::fprintf(stderr, "%s: %zu tokens\n", file.c_str(), ids.size());
  const auto r = mmfree::perplexity(m, ids, window, windows, [](int64_t w, int64_t n, double ppl) {
    char what[64];
    std::snprintf(what, sizeof what, "perplexity %8.4f", ppl);
    progress(what, double(w) / double(n));
  });
  std::printf("perplexity: %.4f over %lld tokens\n", r.perplexity(), (long long)r.scored);
  return 0;
}

// info --json: a GGUF file's tensors as the file declares them (name, type, shape, bytes) and the
// number of values it stores, for comparison with other GGUF readers.
int info_json(const std::string& path) {
  if (!mmfree::looks_like_gguf(path)) fail(path, "info --json lists the tensors of GGUF files only");
  const mmfree::gguf::Reader r(path);
  nlohmann::json tensors = nlohmann::json::array();
  uint64_t values = 0, bytes = 0;
  for (const auto& t : r.tensors()) {
    uint64_t n = 1;
    for (uint64_t d : t.dims) n *= d;
    values += n, bytes += t.nbytes;
    tensors.push_back({{"name", t.name}, {"type", mmfree::gguf::type_name(t.type)}, {"shape", t.dims}, {"elements", n},
                       {"bytes", t.nbytes}});
  }
  const nlohmann::json out = {{"model", path}, {"parameters", values}, {"tensor_bytes", bytes}, {"tensors", tensors}};
  std::printf("%s\n", out.dump(1).c_str());
  return 0;
}

int cmd_info(const Args& a) {
  a.allow({"json"});
  const std::string path = model_path(a);
  if (a.on("json")) return info_json(path);
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
  for (auto& t : mmfree::tensor_list(c, &w)) {
    if (t.kind == mmfree::TensorKind::BitLinear) count(*t.bitlinear);
    if (t.kind == mmfree::TensorKind::Vector) float_params += t.cols;
  }
  for (auto& b : w.blocks) float_params += int64_t(b.attn.lower_bound.size());
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
  if (m.interleaved_bytes())
    std::printf("interleaved  %.2f MiB: a second copy of the ternary weights, which the kernels named *-interleaved below read\n",
                double(m.interleaved_bytes()) / (1 << 20));
  else
    std::printf("interleaved  none (--interleaved: %s)\n",
                !mmfree::kernels::interleaved_runs(m.format()) ? "no kernel for it on this CPU"
                : m.options().interleaved == false          ? "off"
                                                            : "not faster here, or no memory for it");
  if (m.wide_bytes())
    std::printf("wide         %.2f MiB: the TQ1 weights again in 2-bit digits, which the kernel named avx512-wide below reads\n",
                double(m.wide_bytes()) / (1 << 20));
  else if (m.format() == mmfree::TernaryFormat::TQ1)
    std::printf("wide         none (--wide: %s)\n", !mmfree::kernels::wide_runs(m.format()) ? "no kernel for it on this CPU"
                                                 : m.options().wide == false                ? "off"
                                                                                            : "not faster here, or no memory for it");
  std::printf("kernels      %s\n", kernel_summary(m).c_str());
  std::printf("threads      %d\n", m.options().threads);
  std::optional<mmfree::Tokenizer> t;
  try {
    t.emplace(mmfree::load_tokenizer(path));
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

}  // namespace cli
