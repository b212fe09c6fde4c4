// mmfree: the MatMul-free language model (HGRNBit): weights, state and the forward pass.
//
// The forward pass (BasicModel::forward) reads top to bottom like docs/model.md:
//   x = embed(ids); for each block: x += mlgru(norm(x)); x += glu(norm(x));
//   logits = lm_head(norm(x)).
// BasicModel is a template over the ternary accumulate (exec.hpp); Model is the CPU's.
#pragma once

#include <cmath>
#include <cstring>
#include <cstdint>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "mmfree/activations.hpp"
#include "mmfree/config.hpp"
#include "mmfree/exec.hpp"
#include "mmfree/ops.hpp"
#include "mmfree/thread_pool.hpp"
#include "mmfree/weights.hpp"

namespace mmfree {

// What decoding carries from one token to the next: one D-vector per layer. It does not
// grow with the context.
struct State {
  std::vector<std::vector<float>> h;
  int64_t position = 0;  // tokens consumed so far
};

struct ModelOptions {
  int threads = 1;
  // Ternary kernels forced by name: one for every regime, "DECODE,PREFILL" or
  // "DECODE,BATCH,PREFILL" (kernels::kernel_names()). Empty: choose_kernels decides.
  std::string kernels;
  // How kernels are chosen when none is forced: load_model measures them on this CPU
  // (kernels::measuring(), kernels/chooser.hpp); unset, a model takes the preferred kernel of each
  // regime and times nothing (tests, simulators).
  std::function<kernels::KernelChoice(const std::vector<const TernaryMatrix*>&, ThreadPool*)> choose_kernels;
  // The packed format held in memory; unset = the file's (a Hugging Face directory: TQ1).
  // Files of either format repack losslessly into either.
  std::optional<TernaryFormat> format;
  // Tokens of a prompt (or of a batch) per forward pass: longer inputs run in passes of this many,
  // which bounds scratch memory. The scheduler's SchedulerOptions::prefill_chunk is the part of a
  // step that prompts being read may take.
  int64_t prefill_chunk = 128;
  // Weights in 2 MiB pages (weight_arena.hpp): decoding streams them ~1.3x faster.
  bool huge_pages = true;
  // A second copy of the weights in the interleaved layout (interleaved_format.hpp), which passes
  // of several tokens (batched decoding, verification, prefill) read 1.1-1.25x faster where the
  // CPU runs such a kernel (AVX-512 VNNI; TQ1 also VBMI). Unset: built when such a kernel runs
  // here and the memory has room for it twice over, then kept only if the chooser measures a kernel
  // that reads it fastest; true: built wherever such a kernel runs (and used without a chooser);
  // false: never. It costs the weights' size again in memory, never a different result.
  std::optional<bool> interleaved;
  // TQ1 only: a further copy in the interleaved layout's TQ2 digits (interleaved_format.hpp), which
  // prompts (passes of more than kernels::kBatchMaxTokens tokens) may read faster than the TQ1
  // copy (3 decoding ops per chunk, not 7) for 1.25x its bytes: 512-token prefills of the 1.3B and
  // 2.7B TQ1 presets 2-4% faster (AMD Zen 5). Unset, true, false: as `interleaved` (unset: built
  // where such a kernel runs and memory has room for it twice over, kept if the chooser picks it
  // for prompts, where it is the incumbent).
  std::optional<bool> wide;
  // Run on this pool instead of one of the model's own (threads is then its size): models used in
  // turn, such as a draft model and its target, share one set of threads instead of two sets
  // that would spin against each other.
  std::shared_ptr<ThreadPool> pool;

  // Every option checked once, for the loader and the model alike.
  void validate() const {
    if (threads < 1) fail("threads", "must be at least 1, got " + std::to_string(threads));
    if (prefill_chunk < 1) fail("prefill_chunk", "must be at least 1, got " + std::to_string(prefill_chunk));
  }
};

template <class Acc>
class BasicModel {
 public:
  // `pool` (optional) is the loader's, reused: it must have opt.threads threads. `acc` is the
  // ternary accumulate every BitLinear runs through.
  BasicModel(ModelWeights w, const ModelOptions& opt, std::shared_ptr<ThreadPool> pool = nullptr, Acc acc = {})
      : w_(std::move(w)), opt_(opt), pool_(std::move(pool)) {
    opt.validate();
    if (!pool_) pool_ = opt.pool;
    if (!pool_) pool_ = std::make_shared<ThreadPool>(opt.threads);
    opt_.threads = pool_->size();
    opt_.pool = pool_;
    exec_.accumulate = std::move(acc);
    if (!w_.arena) copy_into_arena(w_, opt_.format.value_or(w_.lm_head.weights().format), opt_.huge_pages, *pool_);
    const TernaryFormat f = format();
    const bool copies_run = kernels::interleaved_runs(f) && opt.interleaved.value_or(true);
    const bool wide_runs = kernels::wide_runs(f) && opt.wide.value_or(true);
    auto add_interleaved = [&] { interleaved_bytes_ = mmfree::add_copies(w_, false, opt_.huge_pages, *pool_); };
    auto add_wide = [&] { wide_bytes_ = mmfree::add_copies(w_, true, opt_.huge_pages, *pool_); };
    if (!opt.kernels.empty()) {
      choice_ = kernels::KernelChoice::of_table(kernels::forced_table(opt.kernels, f));
      if (copies_run && choice_.table().reads_interleaved()) add_interleaved();
      if (wide_runs && choice_.table().reads_wide()) add_wide();
    } else if (opt.choose_kernels) {  // on the matrices in their final place, as they will run
      if (copies_run && (opt.interleaved || copies_fit(false))) add_interleaved();
      if (wide_runs && (opt.wide || copies_fit(true))) add_wide();
      std::vector<const TernaryMatrix*> ms;
      for_each_bitlinear(w_, [&](const std::string&, const BitLinear& l) { ms.push_back(&l.weights()); });
      choice_ = opt.choose_kernels(ms, pool_.get());
      if (interleaved_bytes_ && !choice_.table().reads_interleaved() && !opt.interleaved) {
        drop_interleaved_copies(w_);  // measured no faster here: not worth its memory
        interleaved_bytes_ = 0;
      }
      if (wide_bytes_ && !choice_.table().reads_wide() && !opt.wide) {
        drop_wide_copies(w_);
        wide_bytes_ = 0;
      }
    } else {
      if (copies_run && opt.interleaved.value_or(false)) add_interleaved();
      if (wide_runs && opt.wide.value_or(false)) add_wide();
      choice_ = kernels::KernelChoice::of_table(kernels::preferred_table(f, interleaved_bytes_ > 0, wide_bytes_ > 0));
    }
    exec_.kernels = choice_.table();
  }
  // Bytes of the interleaved copies the model holds (0: none; ModelOptions::interleaved).
  size_t interleaved_bytes() const { return interleaved_bytes_; }
  // Bytes of the wide copies the model holds (0: none; ModelOptions::wide).
  size_t wide_bytes() const { return wide_bytes_; }

  const Config& config() const { return w_.config; }
  const ModelWeights& weights() const { return w_; }
  const ModelOptions& options() const { return opt_; }
  // The kernels chosen for each regime, with what the measurement saw (empty when forced).
  const kernels::KernelChoice& kernel_choice() const { return choice_; }
  TernaryFormat format() const { return w_.lm_head.weights().format; }
  int64_t vocab_size() const { return w_.config.vocab_size; }

  State new_state() const {
    State s;
    s.h.assign(size_t(w_.config.num_hidden_layers), std::vector<float>(size_t(w_.config.input_dim()), 0.0f));
    return s;
  }

  // Logits for every position of `ids` ([T, V], row-major), continuing from `state`.
  std::vector<float> prefill(std::span<const int32_t> ids, State& state) const {
    std::vector<int64_t> rows(ids.size());
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = int64_t(i);
    return forward_tokens(ids, std::vector<State*>(ids.size(), &state), rows);
  }
  std::vector<float> prefill(std::span<const int32_t> ids) const {
    State s = new_state();
    return prefill(ids, s);
  }
  // Consume `ids` and return only the logits of the last position ([V]).
  std::vector<float> prefill_last(std::span<const int32_t> ids, State& state) const {
    if (ids.empty()) fail("prefill", "no tokens given");
    const int64_t last[1] = {int64_t(ids.size()) - 1};
    return forward_tokens(ids, std::vector<State*>(ids.size(), &state), last);
  }
  // One decoding step: consume `id`, return its logits ([V]).
  std::vector<float> step(int32_t id, State& state) const {
    const int32_t one[1] = {id};
    return prefill_last(one, state);
  }
  // The verification pass of speculative decoding: logits for every token of `ids` ([T, V]),
  // continuing from `state`, and after[t] = the state having consumed ids[0..t] (resized to T;
  // its vectors are reused from call to call). `state` ends after all of them. One pass over the
  // weights, and bit-identical to stepping token by token: rolling back to any after[t] costs a
  // copy, never a recomputation.
  std::vector<float> prefill_states(std::span<const int32_t> ids, State& state, std::vector<State>& after) const {
    after.resize(ids.size());
    std::vector<State*> snaps(ids.size());
    for (size_t t = 0; t < ids.size(); ++t) {
      if (after[t].h.size() != state.h.size() || (!state.h.empty() && after[t].h[0].size() != state.h[0].size()))
        after[t] = new_state();
      snaps[t] = &after[t];
    }
    std::vector<int64_t> rows(ids.size());
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = int64_t(i);
    return forward_tokens(ids, std::vector<State*>(ids.size(), &state), rows, snaps);
  }
  // One decoding step of B sequences at once: states[b] consumes ids[b]; returns [B, V] logits,
  // bit-identical to B calls of step(). Every BitLinear multiplies a [B, K] input, so the
  // weights are read once for the whole batch instead of B times.
  std::vector<float> step_batch(std::span<const int32_t> ids, std::span<State* const> states) const {
    std::vector<int64_t> rows(ids.size());
    for (size_t i = 0; i < rows.size(); ++i) rows[i] = int64_t(i);
    return forward_tokens(ids, states, rows);
  }
  // The general batch: token t advances *states[t]. Tokens of one sequence must come in order
  // (and may be many: a prompt being read); tokens of different sequences may mix. Returns the
  // logits of the tokens listed in `logit_rows` (ascending), [R, V]. Bit-identical to feeding
  // each sequence its tokens alone (prefill/step): every operation but the recurrence is per
  // token, and the recurrence runs in token order for each state.
  // With `after` (optional; one per token, null where not wanted), *after[t] also receives the
  // state of token t's sequence just after it (prefill_states).
  std::vector<float> forward_tokens(std::span<const int32_t> ids, std::span<State* const> states,
                                    std::span<const int64_t> logit_rows, std::span<State* const> after = {}) const {
    std::vector<float> logits;
    forward_tokens_into(ids, states, logit_rows, after, logits);
    return logits;
  }
  // The same, into `logits` (resized to [R, V]; its memory kept from call to call). A server's
  // steps reuse one buffer: a fresh one per step is a large block that malloc may map and unmap
  // each time (the server returns blocks of 128 KiB and more to the system), and faulting its
  // pages in cost 15% of a 16-token step of 1.3B on Zen 5.
  void forward_tokens_into(std::span<const int32_t> ids, std::span<State* const> states,
                           std::span<const int64_t> logit_rows, std::span<State* const> after,
                           std::vector<float>& logits) const {
    if (ids.size() != states.size())
      fail("forward_tokens", std::to_string(ids.size()) + " ids for " + std::to_string(states.size()) + " states");
    if (!after.empty() && after.size() != ids.size())
      fail("forward_tokens", std::to_string(ids.size()) + " ids for " + std::to_string(after.size()) + " snapshots");
    for (size_t i = 0; i < logit_rows.size(); ++i)
      if (logit_rows[i] < 0 || logit_rows[i] >= int64_t(ids.size()) || (i && logit_rows[i] <= logit_rows[i - 1]))
        fail("forward_tokens", "logit rows must be ascending token indices");
    const int64_t V = vocab_size();
    logits.resize(logit_rows.size() * size_t(V));
    if (ids.empty()) return;
    check_ids(ids);
    for (State* s : states) check_state(*s);
    for (State* s : after)
      if (s) check_state(*s);
    Lease lease(*this);
    size_t r = 0;
    // Passes of at most prefill_chunk tokens; the recurrence carries exactly across them.
    for (size_t t0 = 0; t0 < ids.size(); t0 += size_t(opt_.prefill_chunk)) {
      const size_t m = std::min(ids.size() - t0, size_t(opt_.prefill_chunk));
      std::vector<int64_t> local;  // this chunk's logit rows
      const size_t r_first = r;
      for (; r < logit_rows.size() && logit_rows[r] < int64_t(t0 + m); ++r) local.push_back(logit_rows[r] - int64_t(t0));
      forward(ids.data() + t0, int64_t(m), states.data() + t0, after.empty() ? nullptr : after.data() + t0,
              logits.data() + r_first * size_t(V), local, lease.scratch, lease.ex);
    }
  }

  // Every token id in [0, vocab_size), or an Error naming the first that is not: the one check,
  // for every path into the model and for callers that queue ids for later (the scheduler).
  void check_ids(std::span<const int32_t> ids) const {
    for (int32_t id : ids)
      if (id < 0 || id >= vocab_size())
        fail("token id " + std::to_string(id), "out of range [0, " + std::to_string(vocab_size()) + ")");
  }
 private:
  void check_state(const State& state) const {
    if (state.h.size() != size_t(w_.config.num_hidden_layers))
      fail("State", "does not belong to this model (wrong number of layers)");
    for (const auto& h : state.h)
      if (h.size() != size_t(w_.config.input_dim())) fail("State", "does not belong to this model (wrong width)");
  }

  // The execution context of one forward call: the pool when this caller may drive it (one
  // caller at a time; the others compute on their own thread), and this thread's scratch.
  struct Lease {
    std::unique_lock<std::mutex> lock;
    BasicExec<Acc> ex;
    Activations& scratch;
    explicit Lease(const BasicModel& m) : lock(m.pool_->driver(), std::try_to_lock), ex(m.exec_), scratch(thread_scratch()) {
      ex.pool = lock.owns_lock() ? m.pool_.get() : nullptr;
      ex.warm = ex.pool ? &m.warm_plan_ : nullptr;
    }
    static Activations& thread_scratch() {
      static thread_local Activations s;
      return s;
    }
  };

  // The forward pass over m tokens; token t advances the recurrent state *sts[t] (the same
  // State for consecutive tokens of one sequence, or one per sequence in a batch). Writes the
  // logits of the tokens in `logit_rows` (ascending), one row of `logits` each.
  // `snaps` (may be null): where token t's state is copied after it (null entries: nowhere).
  void forward(const int32_t* ids, int64_t m, State* const* sts, State* const* snaps, float* logits,
               std::span<const int64_t> logit_rows, Activations& a, const BasicExec<Acc>& ex) const {
    const Config& c = w_.config;
    const int64_t H = c.hidden_size;
    const double eps = c.rms_norm_eps;
    a.reserve_residual(m, H);
    float* x = a.x.data();    // [m, H] the residual stream
    float* xn = a.xn.data();  // [m, H] its normalised copy, a sublayer's input
    float* y = a.y.data();    // [m, H] a sublayer's output

    for (int64_t t = 0; t < m; ++t) w_.embeddings.row(ids[t], x + t * H);

    for (size_t l = 0; l < w_.blocks.size(); ++l) {
      const Block& b = w_.blocks[l];
      a.h.resize(size_t(m));
      for (int64_t t = 0; t < m; ++t) a.h[size_t(t)] = sts[t]->h[l].data();
      if (snaps) {
        a.snap.resize(size_t(m));
        for (int64_t t = 0; t < m; ++t) a.snap[size_t(t)] = snaps[t] ? snaps[t]->h[l].data() : nullptr;
      }
      // Token mixer: x += mlgru(rmsnorm(x)), advancing this layer's recurrent states. (The
      // previous sublayer's y joins x here, in the same section as the norm and quantisation.)
      b.attn.reserve(m, a);
      per_token(m, ex, [&](int64_t t0, int64_t t1) {
        add_norm_rows(x, l > 0 ? y : nullptr, t0, t1, b.attn_norm.data(), eps, xn, ex);
        b.attn.quantize_tokens(xn, t0, t1, a, ex);
      });
      b.attn.forward_quantized(m, a.h.data(), y, eps, a, ex, snaps ? a.snap.data() : nullptr);
      // Channel mixer: x += glu(rmsnorm(x)).
      b.mlp.reserve(m, a);
      per_token(m, ex, [&](int64_t t0, int64_t t1) {
        add_norm_rows(x, y, t0, t1, b.mlp_norm.data(), eps, xn, ex);
        b.mlp.quantize_tokens(xn, t0, t1, a, ex);
      });
      b.mlp.forward_quantized(m, y, a, ex);
    }
    for (int64_t t = 0; t < m; ++t) {
      ++sts[t]->position;
      if (snaps && snaps[t]) snaps[t]->position = sts[t]->position;
    }
    if (logit_rows.empty()) return;  // a prompt chunk whose logits nobody reads

    // logits = lm_head(rmsnorm(x + the last block's y)), for the rows asked for only.
    const int64_t rows = int64_t(logit_rows.size());
    per_token(rows, ex, [&](int64_t r0, int64_t r1) {
      for (int64_t r = r0; r < r1; ++r) {
        const int64_t t = logit_rows[size_t(r)];
        if (!w_.blocks.empty()) add_into(x + t * H, y + t * H, H);
        ex.rmsnorm(x + t * H, w_.final_norm.data(), H, eps, xn + r * H);
      }
    });
    w_.lm_head.forward(xn, rows, logits, a.bl, ex);
  }

  // Per-token work (norms, residual adds, quantisation) for tokens [t0, t1), the tokens spread
  // over the pool (a few on the calling thread: Exec::for_tokens): one section for everything
  // between two products. Each thread takes its tokens 4 at a time through all of fn, so that
  // their rows stay in L1 from the residual add to the last quantisation: a thread's half of a
  // 512-token prefill is megabytes per step.
  template <class Fn>
  static void per_token(int64_t m, const BasicExec<Acc>& ex, const Fn& fn) {
    ex.for_tokens(m, [&](int64_t t0, int64_t t1) {
      for (int64_t t = t0; t < t1; t += 4) fn(t, std::min<int64_t>(t + 4, t1));
    });
  }
  // x[t] += y[t] (the residual add; none when y is null), then xn[t] = rmsnorm(x[t], w), for
  // tokens [t0, t1).
  void add_norm_rows(float* x, const float* y, int64_t t0, int64_t t1, const float* w, double eps, float* xn,
                     const BasicExec<Acc>& ex) const {
    const int64_t H = w_.config.hidden_size;
    for (int64_t t = t0; t < t1; t += 4) {  // 4 tokens at a time: their sums of squares side by side
      const int64_t k = std::min<int64_t>(4, t1 - t);
      if (y)
        for (int64_t j = t; j < t + k; ++j) add_into(x + j * H, y + j * H, H);
      ex.rmsnorm_rows(x + t * H, w, k, H, H, eps, xn + t * H);
    }
  }

  ModelWeights w_;
  ModelOptions opt_;
  BasicExec<Acc> exec_;
  kernels::KernelChoice choice_;
  size_t interleaved_bytes_ = 0, wide_bytes_ = 0;

  // Room for the interleaved copies (or the wide ones): at most half of the memory available now.
  bool copies_fit(bool wide) const {
    size_t need = 0;
    for_each_bitlinear(w_, [&](const std::string&, const BitLinear& l) {
      need += mmfree::interleaved_bytes(l.weights(), wide ? TernaryFormat::TQ2 : l.weights().format);
    });
    const size_t avail = available_memory();
    return avail == 0 || 2 * need <= avail;
  }
  std::shared_ptr<ThreadPool> pool_;
  mutable WarmPlan warm_plan_;  // used by the pool's driver (Lease) only
};

// The model on this CPU's kernels: what every loader returns and every user holds.
using Model = BasicModel<CpuAccumulate>;

}  // namespace mmfree
