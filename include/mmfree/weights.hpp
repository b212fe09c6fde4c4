// mmfree: a model's weights, and the one list of its tensors.
//
// tensor_list() is the only place the checkpoint's tensor names and shapes are written down.
// Both loaders, both writers, the converter, the weight copy, the state-file fingerprint, the
// CLI and the benchmarks walk it, so a new tensor is one line here. Per layer l, with
// H = hidden_size, D = input_dim, I = intermediate_size, V = vocab_size (shapes [out, in]):
//
//   model.embeddings.weight            [V, H]
//   model.lower_bounds                 [L, H]   raw; only when use_lower_bound
//   model.layers.l.attn_norm.weight    [H]
//   model.layers.l.mlp_norm.weight     [H]
//   model.layers.l.attn.{i,f,g}_proj   BitLinear [D, H]
//   model.layers.l.attn.o_proj         BitLinear [H, D]
//   model.layers.l.attn.g_norm.weight  [D]
//   model.layers.l.mlp.gate_proj       BitLinear [2I, H]  (gate rows, then up rows)
//   model.layers.l.mlp.down_proj       BitLinear [H, I]
//   model.norm.weight                  [H]
//   lm_head                            BitLinear [V, H]
//
// A BitLinear P is stored as P.weight [out, in] (latent floats in a Hugging Face checkpoint,
// packed ternary in GGUF), P.norm.weight [in], and in GGUF P.weight.scale [1].
#pragma once

#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <type_traits>
#include <vector>

#include "mmfree/bitlinear.hpp"
#include "mmfree/config.hpp"
#include "mmfree/embedding.hpp"
#include "mmfree/glu.hpp"
#include "mmfree/interleaved_format.hpp"
#include "mmfree/mlgru.hpp"
#include "mmfree/thread_pool.hpp"
#include "mmfree/weight_arena.hpp"

namespace mmfree {

// One layer. `attn` and `mlp` are the checkpoint's names for the token mixer (an MLGRU, not
// attention) and the channel mixer (a GLU).
struct Block {
  std::vector<float> attn_norm, mlp_norm;  // [H]
  MLGRU attn;
  GLU mlp;
};

// All weights of a model, as the loaders (Hugging Face directory, GGUF file) produce them.
struct ModelWeights {
  Config config;
  Embedding embeddings;        // [V, H]
  std::vector<Block> blocks;   // [L]
  std::vector<float> final_norm;  // [H]
  BitLinear lm_head;           // [V, H]
  // Set when every packed matrix already lives in one arena (the loaders pack into it);
  // otherwise the Model copies them into one (copy_into_arena).
  std::shared_ptr<WeightArena> arena;
};

namespace tensor_name {
inline const std::string kEmbeddings = "model.embeddings.weight";
inline const std::string kLowerBounds = "model.lower_bounds";
inline const std::string kFinalNorm = "model.norm.weight";
inline const std::string kLmHead = "lm_head";
inline std::string weight(const std::string& bitlinear) { return bitlinear + ".weight"; }
inline std::string norm(const std::string& bitlinear) { return bitlinear + ".norm.weight"; }
inline std::string scale(const std::string& bitlinear) { return bitlinear + ".weight.scale"; }
}  // namespace tensor_name

enum class TensorKind { Embeddings, LowerBounds, Vector, BitLinear };

// One entry of the list. With weights given, `vector` / `bitlinear` point at the field it fills.
template <class W>  // ModelWeights or const ModelWeights
struct TensorSlot {
  using Vec = std::conditional_t<std::is_const_v<W>, const std::vector<float>, std::vector<float>>;
  using Lin = std::conditional_t<std::is_const_v<W>, const BitLinear, BitLinear>;
  std::string name;    // the tensor's name; a BitLinear's prefix (tensor_name::weight/norm/scale)
  TensorKind kind;
  int64_t rows, cols;  // [out, in] as the Hugging Face checkpoint stores it; a vector is [1, n]
  int64_t layer;       // the block it belongs to; -1 outside the blocks
  Vec* vector = nullptr;
  Lin* bitlinear = nullptr;
};

// The model's tensors in file order. `w`, when given, must have config c's number of blocks.
template <class W = const ModelWeights>
std::vector<TensorSlot<W>> tensor_list(const Config& c, W* w = nullptr) {
  const int64_t H = c.hidden_size, D = c.input_dim(), I = c.intermediate_size, V = c.vocab_size,
                L = c.num_hidden_layers;
  if (w && int64_t(w->blocks.size()) != L) fail("model weights", "have a block count that differs from the config's");
  std::vector<TensorSlot<W>> v;
  auto vec = [&](std::string name, int64_t n, int64_t layer, auto* field) {
    v.push_back({std::move(name), TensorKind::Vector, 1, n, layer, field, nullptr});
  };
  auto lin = [&](std::string name, int64_t out, int64_t in, int64_t layer, auto* field) {
    v.push_back({std::move(name), TensorKind::BitLinear, out, in, layer, nullptr, field});
  };
  v.push_back({tensor_name::kEmbeddings, TensorKind::Embeddings, V, H, -1});
  if (c.use_lower_bound) v.push_back({tensor_name::kLowerBounds, TensorKind::LowerBounds, L, H, -1});
  for (int64_t l = 0; l < L; ++l) {
    auto* b = w ? &w->blocks[size_t(l)] : nullptr;
    const std::string p = "model.layers." + std::to_string(l) + ".";
    vec(p + "attn_norm.weight", H, l, b ? &b->attn_norm : nullptr);
    vec(p + "mlp_norm.weight", H, l, b ? &b->mlp_norm : nullptr);
    lin(p + "attn.i_proj", D, H, l, b ? &b->attn.i_proj : nullptr);
    lin(p + "attn.f_proj", D, H, l, b ? &b->attn.f_proj : nullptr);
    lin(p + "attn.g_proj", D, H, l, b ? &b->attn.g_proj : nullptr);
    lin(p + "attn.o_proj", H, D, l, b ? &b->attn.o_proj : nullptr);
    vec(p + "attn.g_norm.weight", D, l, b ? &b->attn.g_norm : nullptr);
    lin(p + "mlp.gate_proj", 2 * I, H, l, b ? &b->mlp.gate_proj : nullptr);
    lin(p + "mlp.down_proj", H, I, l, b ? &b->mlp.down_proj : nullptr);
  }
  vec(tensor_name::kFinalNorm, H, -1, w ? &w->final_norm : nullptr);
  lin(tensor_name::kLmHead, V, H, -1, w ? &w->lm_head : nullptr);
  return v;
}

// fn(name, bitlinear) for every BitLinear of `w`, in file order (the order decoding reads them).
template <class W, class Fn>
void for_each_bitlinear(W& w, Fn&& fn) {
  for (auto& s : tensor_list(w.config, &w))
    if (s.kind == TensorKind::BitLinear) fn(s.name, *s.bitlinear);
}

// Bytes of one arena holding every BitLinear of config c in format f.
inline size_t arena_bytes(const Config& c, TernaryFormat f) {
  size_t total = 0;
  for (auto& s : tensor_list(c))
    if (s.kind == TensorKind::BitLinear) total += WeightArena::slice_bytes(TernaryMatrix::shape(f, s.rows, s.cols).nbytes());
  return total;
}

// lb = cumsum(softmax(raw, over layers)) - P[0]; row l is layer l's lower bound.
inline std::vector<std::vector<float>> lower_bounds_from_raw(const std::vector<float>& raw, int64_t layers, int64_t dim) {
  std::vector<std::vector<float>> lb(static_cast<size_t>(layers), std::vector<float>(static_cast<size_t>(dim)));
  std::vector<double> p(static_cast<size_t>(layers));
  for (int64_t c = 0; c < dim; ++c) {
    double mx = -INFINITY;
    for (int64_t l = 0; l < layers; ++l) mx = std::max(mx, double(raw[size_t(l * dim + c)]));
    double z = 0;
    for (int64_t l = 0; l < layers; ++l) z += (p[size_t(l)] = std::exp(double(raw[size_t(l * dim + c)]) - mx));
    double cum = 0;
    for (int64_t l = 0; l < layers; ++l) {
      cum += p[size_t(l)] / z;
      lb[size_t(l)][size_t(c)] = float(cum - p[0] / z);
    }
  }
  return lb;
}
// Layer 0 runs without a bound (the reference skips it); the others take their row.
inline void set_lower_bounds(ModelWeights& w, const std::vector<float>& raw) {
  const Config& c = w.config;
  const auto lb = lower_bounds_from_raw(raw, c.num_hidden_layers, c.hidden_size);
  for (size_t l = 1; l < w.blocks.size(); ++l) w.blocks[l].attn.lower_bound = lb[l];
}

// Weights built outside the loaders: one copy into an arena (in 2 MiB pages when asked),
// converted to format f on the way. Every pool thread copies, a strip range at a time: the
// first touch of each page (the kernel zeroing it) is most of the cost, and it parallelises.
inline void copy_into_arena(ModelWeights& w, TernaryFormat f, bool huge_pages, ThreadPool& pool) {
  w.arena = std::make_shared<WeightArena>(arena_bytes(w.config, f), huge_pages);
  for_each_bitlinear(w, [&](const std::string&, BitLinear& l) {
    const TernaryMatrix& src = l.weights();
    TernaryMatrix dst = TernaryMatrix::shape(f, src.rows, src.cols);
    dst.scale = src.scale;
    if (src.format == f) {
      dst.owner = w.arena->take(dst.nbytes());
      dst.data = static_cast<const uint8_t*>(dst.owner.get());
      uint8_t* out = const_cast<uint8_t*>(dst.data);
      pool.for_range(src.strips, 1, [&](int64_t s0, int64_t s1) {
        std::memcpy(out + s0 * src.strip_bytes(), src.strip(s0), size_t((s1 - s0) * src.strip_bytes()));
      });
    } else {
      dst = pack_into(*w.arena, dst, pool, [&](int64_t r, int64_t c0, int64_t c1, uint8_t* d) {
        // c0 is a multiple of both chunk widths: decode just those chunks of the source row.
        const int64_t cc = chunk_cols(src.format);
        thread_local std::vector<uint8_t> row;
        row.resize(size_t(kRepackCols));
        decode_row(src.format, src.strip(r / kStripRows) + c0 / cc * kChunkBytes, (c1 - c0 + cc - 1) / cc,
                   int(r % kStripRows), row.data());
        std::memcpy(d, row.data(), size_t(c1 - c0));
      });
    }
    l = BitLinear(std::move(dst), l.norm());
  });
}

// Gives every BitLinear of w its interleaved copy (interleaved_format.hpp), or with `wide` every
// TQ1 one its wide copy, in one arena of `huge_pages` like the strips; returns the bytes it took.
// Matrices the layout does not take keep none (the kernels then read their strips).
inline size_t add_copies(ModelWeights& w, bool wide, bool huge_pages, ThreadPool& pool) {
  auto takes = [&](const TernaryMatrix& m) { return wide ? widenable(m) : interleavable(m); };
  auto bytes = [&](const TernaryMatrix& m) { return interleaved_bytes(m, wide ? TernaryFormat::TQ2 : m.format); };
  size_t total = 0;
  for_each_bitlinear(w, [&](const std::string&, BitLinear& l) {
    if (takes(l.weights())) total += WeightArena::slice_bytes(bytes(l.weights()));
  });
  if (total == 0) return 0;
  auto arena = std::make_shared<WeightArena>(total, huge_pages);
  for_each_bitlinear(w, [&](const std::string&, BitLinear& l) {
    if (!takes(l.weights())) return;
    auto mem = arena->take(bytes(l.weights()));
    auto groups = [&](int64_t n, const auto& fn) { pool.for_range(n, 1, fn); };
    l = BitLinear(wide ? with_wide(l.weights(), std::move(mem), groups) : with_interleaved(l.weights(), std::move(mem), groups),
                  l.norm());
  });
  return total;
}
// Drops the copies (their memory goes with the last matrix that held one).
inline void drop_interleaved_copies(ModelWeights& w) {
  for_each_bitlinear(w, [&](const std::string&, BitLinear& l) { l = BitLinear(without_interleaved(l.weights()), l.norm()); });
}
inline void drop_wide_copies(ModelWeights& w) {
  for_each_bitlinear(w, [&](const std::string&, BitLinear& l) { l = BitLinear(without_wide(l.weights()), l.norm()); });
}

}  // namespace mmfree
