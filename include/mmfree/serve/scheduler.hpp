// mmfree: continuous batching. One thread decodes every active sequence together: each step
// feeds one token of every decoding sequence, and a bounded chunk of the prompts being read,
// through one Model::forward_tokens call, so each BitLinear multiplies a [B, K] input and the
// weights are read once per step, not B times. A long prompt is read a chunk per step, so
// running streams never wait for it. A sequence's recurrent state is its whole context (one vector per layer), so
// admitting or finishing one costs nothing beyond its State.
//
// Results do not depend on the company a sequence keeps: forward_tokens is bit-identical to
// each sequence's own prefill and step calls, and each sequence samples with its own Sampler (its own
// seed). The same request gives the same tokens alone or among 64 others, and the same as
// generate() with the same options.
#pragma once

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "mmfree/generate.hpp"
#include "mmfree/logprobs.hpp"
#include "mmfree/model.hpp"
#include "mmfree/sampler.hpp"

namespace mmfree {

// Why a sequence ended.
enum class Finish { Length, Stop, Cancelled, Timeout, Error };
// OpenAI's finish_reason: "length" when max_tokens ended it, "stop" for everything else that
// ends a sequence with a response (EOS, a stop string; a cancelled stream sends nothing more).
inline const char* finish_reason(Finish f) { return f == Finish::Length ? "length" : "stop"; }

// One sequence to run: a prompt, how to sample, and where its tokens go. The callbacks run on
// the scheduler's thread, so they must be quick (hand the token to another thread).
struct Sequence {
  std::vector<int32_t> prompt;
  GenerateOptions gen;  // max_new_tokens, sampling (with its seed), eos_id
  // Called with each generated token; returning false ends the sequence (Finish::Stop: e.g. a
  // stop string was found).
  std::function<bool(int32_t)> on_token;
  // Called once at the end, with the reason and the error message (Finish::Error).
  std::function<void(Finish, const std::string&)> on_done;
  // Set from any thread (a client that went away); checked before every step.
  std::atomic<bool> cancelled{false};
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  // Sessions: start from `state` as given (a conversation so far) instead of a new one, and
  // before ending consume the last token too, so that on_done sees a state that has read every
  // token passed to on_token (EOS, never passed on, is not read).
  bool continue_state = false;
  bool keep_state = false;
  // While generating, every `snapshot_every` tokens (0: never): on_snapshot gets the state as it
  // is once it has read every token passed to on_token so far (for persisting in mid-stream).
  int64_t snapshot_every = 0;
  std::function<void(const State&)> on_snapshot;
  // Prefix cache: `state` has already read prompt[0, cached) (a cached prefix: the sequence reads
  // only the rest). While reading the prompt, once the state has read prompt[0, p) for each p in
  // `checkpoints` (ascending, within (cached, prompt.size())), on_checkpoint(p, state) is called:
  // a prompt chunk never runs past the next checkpoint.
  size_t cached = 0;
  std::vector<size_t> checkpoints;
  std::function<void(size_t, const State&)> on_checkpoint;
  // Log-probabilities (logprobs.hpp): with logprobs >= 0, on_logprob gets each generated token's
  // (with the `logprobs` most likely), just before on_token; with prompt_logprobs too, every
  // prompt token's after the first, in order, as the prompt is read (prompt = true). A prompt's
  // logprobs need its logits, so the sequence reads it whole: `cached` must be 0.
  int logprobs = -1;
  bool prompt_logprobs = false;
  std::function<void(const TokenLogprob&, bool prompt)> on_logprob;
  // Restricts every draw (a grammar); its accept() is told each token drawn.
  std::unique_ptr<TokenFilter> filter;
  // Speculative decoding: with gen.drafter (and no filter), the scheduler drafts tokens for this
  // sequence while its steps are memory-bound (SchedulerOptions::speculative_tokens).
  std::unique_ptr<Drafter> drafter;
  std::unique_ptr<DraftLength> draft_length;
  std::vector<State> after;  // the state after each token of this step's pass
  Draft draft;               // this step's
  double draft_seconds = 0;  // the drafter's time for it
  // Several choices from one prompt (OpenAI's n): once this sequence has read its prompt, each
  // fork starts from a copy of its state and logits and decodes on its own (its own options,
  // seed, callbacks), so the prompt is read once. Forks must not have prompts of their own.
  std::vector<std::shared_ptr<Sequence>> forks;

  // The recurrent state; the scheduler's own bookkeeping below.
  State state;
  std::vector<float> logits;
  std::vector<int32_t> history;
  std::unique_ptr<Sampler> sampler;
  size_t prefilled = 0;   // prompt tokens consumed
  int64_t generated = 0;  // tokens passed to on_token
  int32_t next = -1;      // the token the next decode step consumes
  std::optional<Finish> ending;  // keep_state: ends once `next` is consumed
  int64_t snapshot_due = 0;      // generated count at which on_snapshot is next called
};

struct SchedulerOptions {
  int64_t max_active = 16;     // sequences decoding at once (the batch)
  int64_t max_queued = 64;     // sequences waiting for a place; submit() refuses beyond
  int64_t prefill_chunk = 32;  // prompt tokens read per step, beside the decoding tokens
  // Speculative decoding (sequences whose gen.drafter is set) fills steps up to this many tokens
  // and no further: a step is bound by reading the weights up to about
  // (weight bytes / bandwidth) / (MACs per token / int8 peak) tokens (roofline.hpp), and drafted
  // tokens are nearly free only below that. When batching fills the steps, nobody drafts.
  int64_t speculative_tokens = 0;
};

// Counters for /metrics (monotonic, read from any thread).
struct SchedulerStats {
  std::atomic<int64_t> sequences{0}, prompt_tokens{0}, generated_tokens{0}, steps{0}, batched_tokens{0};
  std::atomic<int64_t> drafted_tokens{0}, accepted_tokens{0};  // speculative decoding
  std::atomic<int64_t> active{0}, queued{0};
  std::atomic<double> busy_seconds{0};  // time spent in forward passes
};

class Scheduler {
 public:
  Scheduler(const Model& model, SchedulerOptions opt) : model_(model), opt_(opt) {
    if (opt_.max_active < 1 || opt_.max_queued < 0 || opt_.prefill_chunk < 1) fail("Scheduler", "bad options");
    thread_ = std::thread([this] { loop(); });
  }
  Scheduler(const Scheduler&) = delete;
  Scheduler& operator=(const Scheduler&) = delete;
  ~Scheduler() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    thread_.join();
  }

  // Queues a sequence; false when the queue is full (the caller answers 503). Bad input (token
  // ids out of range, an empty prompt) is refused here with an Error.
  bool submit(std::shared_ptr<Sequence> s) {
    if (s->prompt.empty()) fail("prompt", "is empty (no tokens to start from)");
    model_.check_ids(s->prompt);
    s->gen.sampling.validate();
    if (s->gen.max_new_tokens < 0) fail("max_tokens", "must be >= 0");
    if (s->cached >= s->prompt.size()) fail("Sequence", "a cached prefix must leave at least the prompt's last token to read");
    if (s->cached > 0 && s->state.position != int64_t(s->cached)) fail("Sequence", "a cached state's position must be its prefix's length");
    if (s->prompt_logprobs && s->cached > 0) fail("Sequence", "prompt log-probabilities need the prompt read whole (no cached prefix)");
    for (const auto& f : s->forks) {
      if (!f || !f->prompt.empty() || f->continue_state || f->cached || !f->forks.empty()) fail("Sequence", "a fork starts from its parent's prompt and nothing else");
      f->gen.sampling.validate();
      if (f->gen.max_new_tokens < 0) fail("max_tokens", "must be >= 0");
    }
    {
      std::lock_guard<std::mutex> l(mu_);
      if (int64_t(queue_.size()) >= opt_.max_queued) return false;
      queue_.push_back(std::move(s));
      stats_.queued = int64_t(queue_.size());
    }
    cv_.notify_all();
    return true;
  }

  const SchedulerStats& stats() const { return stats_; }
  const SchedulerOptions& options() const { return opt_; }

 private:
  using clock = std::chrono::steady_clock;

  void loop() {
    std::vector<std::shared_ptr<Sequence>> active;
    for (;;) {
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [&] { return stop_ || !active.empty() || !queue_.empty(); });
        if (stop_) break;
        while (int64_t(active.size()) < opt_.max_active && !queue_.empty()) {
          active.push_back(std::move(queue_.front()));
          queue_.pop_front();
          start(*active.back());
        }
        stats_.queued = int64_t(queue_.size());
      }
      stats_.active = int64_t(active.size());
      try {
        step(active);
      } catch (const std::exception& e) {  // not expected: inputs were checked at submit
        for (auto& s : active) end(*s, Finish::Error, e.what());
      }
      std::erase_if(active, [](const std::shared_ptr<Sequence>& s) { return s->on_done == nullptr; });
      stats_.active = int64_t(active.size());
    }
    for (auto& s : active) end(*s, Finish::Cancelled, "server stopping");
    std::lock_guard<std::mutex> l(mu_);
    for (auto& s : queue_) end(*s, Finish::Cancelled, "server stopping");
  }

  void start(Sequence& s) {
    if (!s.continue_state && s.cached == 0) s.state = model_.new_state();
    s.sampler = std::make_unique<Sampler>(s.gen.sampling);
    if (!s.filter && s.gen.constraint) s.filter = s.gen.constraint();
    if (s.gen.drafter && !s.filter && opt_.speculative_tokens > 1) {
      s.drafter = s.gen.drafter();
      s.draft_length = std::make_unique<DraftLength>(s.gen.draft_tokens, s.gen.adaptive_draft);
    }
    s.snapshot_due = s.snapshot_every;
    // The history (repetition penalty) holds the whole prompt, read or cached.
    s.history.assign(s.prompt.begin(), s.prompt.begin() + long(s.cached));
    s.prefilled = s.cached;
    std::erase_if(s.checkpoints, [&](size_t p) { return p <= s.cached || p >= s.prompt.size(); });
    ++stats_.sequences;
  }

  // Ends a sequence: on_done is called once and cleared (which marks it for removal), and the
  // other callbacks are dropped with whatever they hold.
  static void end(Sequence& s, Finish f, const std::string& msg = "") {
    if (!s.on_done) return;
    auto done = std::move(s.on_done);
    s.on_done = nullptr;
    s.on_token = nullptr;
    s.on_snapshot = nullptr;
    s.on_checkpoint = nullptr;
    s.on_logprob = nullptr;
    auto forks = std::move(s.forks);  // forks that never started end with it
    s.forks.clear();
    done(f, msg);
    for (auto& k : forks) end(*k, f, msg);
  }

  // Passes a token drawn from `logits` on (log-probability, history, on_token); the reason s
  // ends with it, if it does.
  std::optional<Finish> take(Sequence& s, int32_t next, std::span<const float> logits) {
    if (s.logprobs >= 0 && s.on_logprob) s.on_logprob(token_logprob(logits, next, s.logprobs), false);
    s.history.push_back(next);
    ++s.generated;
    ++stats_.generated_tokens;
    if (!s.on_token(next)) return Finish::Stop;
    if (s.generated >= s.gen.max_new_tokens) return Finish::Length;
    return std::nullopt;
  }

  // Draws the next token of s from s.logits; false when s ended.
  bool draw(Sequence& s) {
    if (s.generated >= s.gen.max_new_tokens) return end(s, Finish::Length), false;
    int32_t next;
    try {  // a grammar that fails (too ambiguous) ends its own sequence, not the batch
      next = s.sampler->sample(s.logits, s.history, s.filter.get());
      if (next >= 0 && next != s.gen.eos_id && s.filter) s.filter->accept(next);
    } catch (const std::exception& e) {
      return end(s, Finish::Error, e.what()), false;
    }
    if (next < 0 || next == s.gen.eos_id) return end(s, Finish::Stop), false;  // EOS, or the filter allows nothing more
    const std::optional<Finish> f = take(s, next, s.logits);
    if (f && !s.keep_state) return end(s, *f), false;
    s.next = next;
    s.ending = f;
    return true;
  }

  // A sequence's rows of a speculative pass (its pending token and its draft): the drafted
  // tokens kept in order, then the model's own; the state rolls back to after the last kept.
  void verify(Sequence& s, const float* rows, double pass_seconds) {
    const size_t V = size_t(model_.vocab_size());
    const int nd = int(s.draft.tokens.size());
    int kept = 0;
    int32_t own = -1;
    std::optional<Finish> f;
    bool eos = false;
    for (int i = 0; i <= nd; ++i) {
      const std::vector<float> row(rows + size_t(i) * V, rows + size_t(i + 1) * V);
      bool ok = false;
      const int32_t t = i < nd ? s.sampler->verify(row, s.history, s.draft.tokens[size_t(i)],
                                                   size_t(i) < s.draft.q.size() ? s.draft.q[size_t(i)] : std::vector<TokenProb>{}, ok)
                               : s.sampler->sample(row, s.history);
      if (t < 0 || t == s.gen.eos_id) {
        eos = true;
        break;
      }
      f = take(s, t, row);
      if (ok) ++kept;
      else own = t;
      if (f || !ok) break;
    }
    s.drafter->kept(kept);
    stats_.drafted_tokens += nd;
    stats_.accepted_tokens += kept;
    s.draft_length->record(nd, kept, pass_seconds, nd ? s.draft_seconds : 0);
    std::swap(s.state, s.after[size_t(kept)]);  // it has read its pending token and the drafts kept
    if (eos) return end(s, Finish::Stop);
    if (f && (own < 0 || !s.keep_state)) return end(s, *f);  // own < 0: the state has read every token passed on
    s.next = own;
    s.ending = f;
  }

  // One scheduler step, one forward pass: the next token of every decoding sequence, plus up
  // to prefill_chunk prompt tokens of sequences still reading their prompts (oldest first). A
  // long prompt is read over several steps, so running streams keep their pace.
  void step(std::vector<std::shared_ptr<Sequence>>& active) {
    const auto now = clock::now();
    for (auto& s : active) {
      if (s->cancelled.load(std::memory_order_relaxed)) end(*s, Finish::Cancelled);
      else if (now > s->deadline) end(*s, Finish::Timeout, "request timed out");
    }
    std::vector<int32_t> ids;
    std::vector<State*> states;
    std::vector<int64_t> rows;  // tokens whose logits are used, ascending
    struct Use {
      Sequence* s;
      int64_t prompt_pos;  // >= 0: logits after prompt[prompt_pos], for the logprob of the next
    };
    std::vector<Use> uses;  // one per row: -1 draws the sequence's next token
    std::vector<State*> snaps;  // per token: where a speculative pass keeps its state after it
    std::vector<Sequence*> speculating;
    std::vector<Sequence*> decoders;
    size_t prompt_left = 0;
    for (auto& s : active) {
      if (s->on_done && s->prefilled == s->prompt.size() && s->next >= 0) decoders.push_back(s.get());
      else if (s->on_done) prompt_left += s->prompt.size() - s->prefilled;
    }
    // Tokens the drafts may add while the step stays memory-bound.
    int64_t spare = opt_.speculative_tokens - int64_t(decoders.size()) - std::min<int64_t>(int64_t(prompt_left), opt_.prefill_chunk);
    int64_t decoding = 0;
    for (Sequence* s : decoders) {
      s->draft.tokens.clear(), s->draft.q.clear();
      if (s->drafter && !s->ending && spare > 0) {
        const int k = int(std::min<int64_t>({int64_t(s->draft_length->next()), spare, s->gen.max_new_tokens - s->generated - 1}));
        if (k > 0) {
          const auto td = clock::now();
          s->draft = s->drafter->propose(s->history, k);
          s->draft_seconds = std::chrono::duration<double>(clock::now() - td).count();
          if (int(s->draft.tokens.size()) > k) s->draft.tokens.resize(size_t(k));
          model_.check_ids(s->draft.tokens);
        }
        if (!s->draft.tokens.empty() || k == 0) {  // measured even at k = 0: what drafting is weighed against
          spare -= int64_t(s->draft.tokens.size());
          speculating.push_back(s);
          s->after.resize(s->draft.tokens.size() + 1);
          for (auto& st : s->after)
            if (st.h.size() != s->state.h.size()) st = model_.new_state();
          rows.push_back(int64_t(ids.size()));
          uses.push_back({s, -2});
          for (size_t i = 0; i <= s->draft.tokens.size(); ++i) {
            if (i > 0) rows.push_back(int64_t(ids.size())), uses.push_back({s, -3});
            ids.push_back(i == 0 ? s->next : s->draft.tokens[i - 1]), states.push_back(&s->state);
            snaps.resize(ids.size(), nullptr);
            snaps.back() = &s->after[i];
          }
          s->next = -1;
          decoding += int64_t(s->draft.tokens.size()) + 1;
          continue;
        }
      }
      rows.push_back(int64_t(ids.size()));
      uses.push_back({s, -1});
      ids.push_back(s->next), states.push_back(&s->state), s->next = -1;
      ++decoding;
    }
    int64_t budget = opt_.prefill_chunk;
    std::vector<Sequence*> checkpointed;  // sequences whose chunk ends at a checkpoint
    for (auto& s : active) {
      if (budget == 0) break;
      if (!s->on_done || s->prefilled >= s->prompt.size()) continue;
      size_t n = std::min(s->prompt.size() - s->prefilled, size_t(budget));
      auto cp = std::upper_bound(s->checkpoints.begin(), s->checkpoints.end(), s->prefilled);
      if (cp != s->checkpoints.end() && *cp <= s->prefilled + n) {
        n = *cp - s->prefilled;
        checkpointed.push_back(s.get());
      }
      for (size_t k = 0; k < n; ++k) {
        const size_t pos = s->prefilled + k;
        if (s->prompt_logprobs && pos + 1 < s->prompt.size()) rows.push_back(int64_t(ids.size())), uses.push_back({s.get(), int64_t(pos)});
        ids.push_back(s->prompt[pos]), states.push_back(&s->state);
      }
      s->history.insert(s->history.end(), s->prompt.begin() + long(s->prefilled), s->prompt.begin() + long(s->prefilled + n));
      s->prefilled += n;
      budget -= int64_t(n);
      stats_.prompt_tokens += int64_t(n);
      if (s->prefilled == s->prompt.size()) rows.push_back(int64_t(ids.size()) - 1), uses.push_back({s.get(), -1});
    }
    if (ids.empty()) return;
    // forward_tokens wants ascending rows: decode rows come first, prompt rows after them.
    const auto t0 = clock::now();
    if (!snaps.empty()) snaps.resize(ids.size(), nullptr);
    model_.forward_tokens_into(ids, states, rows, snaps, logits_);
    const std::vector<float>& logits = logits_;
    const double pass_seconds = std::chrono::duration<double>(clock::now() - t0).count();
    add_busy(t0);
    ++stats_.steps;
    stats_.batched_tokens += decoding;
    for (Sequence* s : checkpointed)
      if (s->on_checkpoint) s->on_checkpoint(s->prefilled, s->state);
    const size_t V = size_t(model_.vocab_size());
    std::vector<std::shared_ptr<Sequence>> started;
    for (size_t r = 0; r < rows.size(); ++r) {
      Sequence& s = *uses[r].s;
      const std::span<const float> row(logits.data() + r * V, V);
      if (uses[r].prompt_pos >= 0) {
        if (s.on_done && s.on_logprob) s.on_logprob(token_logprob(row, s.prompt[size_t(uses[r].prompt_pos) + 1], s.logprobs), true);
        continue;
      }
      if (uses[r].prompt_pos == -3) continue;  // a drafted token's row: read with its sequence's first
      if (uses[r].prompt_pos == -2) {          // a speculative pass: its rows follow this one
        if (!s.on_done) continue;
        if (s.snapshot_every > 0 && s.on_snapshot && s.generated > 0 && s.generated >= s.snapshot_due) {
          s.snapshot_due = s.generated + s.snapshot_every;
          s.on_snapshot(s.after[0]);  // it has read every token passed on so far
        }
        verify(s, logits.data() + r * V, pass_seconds);
        continue;
      }
      if (s.ending) {  // its last token is read: done
        end(s, *s.ending);
        continue;
      }
      if (!s.on_done) continue;
      if (s.snapshot_every > 0 && s.on_snapshot && s.generated > 0 && s.generated >= s.snapshot_due &&
          s.prefilled == s.prompt.size() && r < size_t(decoding)) {
        s.snapshot_due = s.generated + s.snapshot_every;
        s.on_snapshot(s.state);  // it has read every token passed on so far
      }
      s.logits.assign(row.begin(), row.end());
      if (r >= size_t(decoding))  // it has just read its prompt: its forks start from here
        for (auto& f : s.forks) {
          if (!f->on_done) continue;
          start(*f);
          f->state = s.state;
          f->logits = s.logits;
          f->history = s.history;
          f->prefilled = f->prompt.size();
          if (draw(*f)) started.push_back(f);
        }
      s.forks.clear();
      draw(s);
    }
    for (auto& f : started) active.push_back(std::move(f));
  }

  void add_busy(clock::time_point t0) {
    const double dt = std::chrono::duration<double>(clock::now() - t0).count();
    double cur = stats_.busy_seconds.load();
    while (!stats_.busy_seconds.compare_exchange_weak(cur, cur + dt)) {
    }
  }

  const Model& model_;
  SchedulerOptions opt_;
  SchedulerStats stats_;
  std::vector<float> logits_;  // every step's, in one buffer (Model::forward_tokens_into)
  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Sequence>> queue_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace mmfree
