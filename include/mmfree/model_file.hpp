// mmfree: model files. One entry point, load_model(path), takes a Hugging Face checkpoint
// directory (load_hf.hpp) or a .gguf file (load_gguf.hpp); load_weights stops before the Model,
// for a Model of another accumulate (hw/). Writing: write_gguf.hpp, random_model.hpp.
#pragma once

#include <algorithm>
#include <filesystem>
#include <memory>
#include <string>

#include "mmfree/kernels/chooser.hpp"
#include "mmfree/load_gguf.hpp"
#include "mmfree/load_hf.hpp"
#include "mmfree/model.hpp"
#include "mmfree/tokenizer_json.hpp"

namespace mmfree {

// A .gguf name, or the GGUF magic at the start of a regular file.
inline bool looks_like_gguf(const std::string& path) {
  std::error_code ec;
  const bool named = path.ends_with(".gguf");
  return is_gguf_file(path) || (named && !std::filesystem::is_directory(path, ec));
}

// The ternary weights are repacked into opt.format (default: the file's format; for a Hugging
// Face directory, kDefaultFormat) while they load, over `pool`.
inline ModelWeights load_weights(const std::string& path, const ModelOptions& opt, ThreadPool& pool) {
  if (looks_like_gguf(path)) {
    GgufLoader g(path);
    return g.load(opt.format.value_or(g.file_format()), opt.huge_pages, pool);
  }
  return HfLoader(path).load(opt.format.value_or(kDefaultFormat), opt.huge_pages, pool);
}

// Loads with opt.threads threads (or opt.pool's), then keeps the pool for the Model.
// Kernels are chosen by measuring them on this CPU (kernels/chooser.hpp) unless opt forces them
// or brings its own choose_kernels.
inline Model load_model(const std::string& path, const ModelOptions& opt = {}) {
  opt.validate();
  std::shared_ptr<ThreadPool> pool = opt.pool ? opt.pool : std::make_shared<ThreadPool>(opt.threads);
  ModelWeights w = load_weights(path, opt, *pool);
  ModelOptions o = opt;
  if (o.kernels.empty() && !o.choose_kernels) {
    kernels::ChooserOptions co;
    co.prefill_tokens = std::min(co.prefill_tokens, o.prefill_chunk);
    o.choose_kernels = kernels::measuring(co);
  }
  return Model(std::move(w), o, std::move(pool));
}

// The tokenizer that belongs to a model: tokenizer.json of the directory, or the one in the GGUF.
inline Tokenizer load_tokenizer(const std::string& model_path) {
  if (looks_like_gguf(model_path)) return GgufLoader(model_path).tokenizer();
  const std::string p = (std::filesystem::path(model_path) / "tokenizer.json").string();
  if (!std::filesystem::exists(p)) fail(model_path, "has no tokenizer.json");
  return read_tokenizer(p);
}

}  // namespace mmfree
