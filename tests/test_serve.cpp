// Serving without sockets (include/mmfree/serve/): the scheduler (determinism, fairness,
// cancellation, prefix-cache checkpoints), the stop-string matcher, the prefix cache (the tree,
// checkpoints, the byte cap, records that check themselves, a directory that outlives a restart),
// the state stores and sessions.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <future>
#include <map>
#include <random>

#include "mmfree/generate.hpp"
#include "mmfree/model_file.hpp"
#include "mmfree/serve/prefix_cache.hpp"
#include "mmfree/serve/scheduler.hpp"
#include "mmfree/serve/sessions.hpp"
#include "mmfree/serve/state_store.hpp"
#include "mmfree/serve/stop_text.hpp"
#include "test_util.hpp"

namespace mmfree::tests_serve {  // this file's own names (the tests compile in unity batches)
namespace {

using serve::PrefixCache;
using serve::PrefixCacheOptions;

const Model& model() { return test::bundled(); }

std::vector<int32_t> ids_of(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::vector<int32_t> v{1};
  while (v.size() < n) v.push_back(int32_t(3 + rng() % 4000));
  return v;
}
std::vector<int32_t> join(std::vector<int32_t> a, const std::vector<int32_t>& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// What generate() gives: the reference every scheduled sequence must equal.
std::vector<int32_t> reference(const std::vector<int32_t>& prompt, const GenerateOptions& g) {
  std::vector<int32_t> out;
  generate(model(), prompt, g, [&](int32_t t) { return out.push_back(t), true; });
  return out;
}

GenerateOptions sampling(int64_t n, uint64_t seed, float temperature = 0.9f) {
  GenerateOptions g;
  g.max_new_tokens = n;
  g.sampling.temperature = temperature;
  g.sampling.seed = seed;
  return g;
}

// A sequence whose tokens and end are collected; wait() blocks until it ended.
struct Job {
  std::shared_ptr<Sequence> seq = std::make_shared<Sequence>();
  std::vector<int32_t> tokens;
  std::promise<Finish> done;
  std::future<Finish> finished = done.get_future();
  State final_state;
  Job(std::vector<int32_t> prompt, GenerateOptions g) {
    seq->prompt = std::move(prompt);
    seq->gen = g;
    seq->on_token = [this](int32_t t) { return tokens.push_back(t), true; };
    Sequence* s = seq.get();
    seq->on_done = [this, s](Finish f, const std::string&) {
      if (s->keep_state) final_state = std::move(s->state);
      done.set_value(f);
    };
  }
  Finish wait() { return finished.get(); }
};

TEST(Scheduler, SequencesGetWhatGenerateGivesAloneOrTogether) {
  SchedulerOptions so;
  so.max_active = 8;
  so.prefill_chunk = 7;  // prompts read over several steps, beside decoding sequences
  Scheduler sched(model(), so);
  std::vector<std::unique_ptr<Job>> runs;
  for (uint32_t k = 0; k < 12; ++k) runs.push_back(std::make_unique<Job>(ids_of(5 + 9 * k, k), sampling(10 + k, 100 + k)));
  for (auto& r : runs) ASSERT_TRUE(sched.submit(r->seq));
  for (auto& r : runs) EXPECT_EQ(r->wait(), Finish::Length);
  for (size_t k = 0; k < runs.size(); ++k)
    EXPECT_EQ(runs[k]->tokens, reference(runs[k]->seq->prompt, runs[k]->seq->gen)) << "sequence " << k;
  EXPECT_GT(sched.stats().batched_tokens.load(), sched.stats().steps.load());  // sequences did share passes
}

// Speculative decoding in the scheduler: greedy sequences with a drafter (right 70% of the time,
// or a lookup) give exactly what plain generate() gives, alone or among others, with or without
// a prompt being read beside them, stopping anywhere inside a pass; a kept state has read every
// token passed on, as plain decoding's has. With no room below the memory-bound limit, nobody drafts.
TEST(Scheduler, SpeculativeSequencesGetWhatPlainDecodingGives) {
  for (int64_t room : {16, 3, 0}) {
    SCOPED_TRACE("speculative_tokens " + std::to_string(room));
    SchedulerOptions so;
    so.max_active = 4;
    so.prefill_chunk = 5;
    so.speculative_tokens = room;
    Scheduler sched(model(), so);
    std::vector<std::unique_ptr<Job>> runs;
    std::vector<std::vector<int32_t>> want;
    std::vector<State> want_state;
    for (uint32_t k = 0; k < 6; ++k) {
      GenerateOptions g = sampling(7 + 5 * k, 0, 0);  // greedy
      g.eos_id = k == 5 ? 2 : -1;
      const std::vector<int32_t> prompt = ids_of(4 + 6 * k, k);
      want.push_back(reference(prompt, g));
      // The plain state after the prompt and every token passed on.
      State st = model().new_state();
      model().prefill_last(join(prompt, want.back()), st);
      want_state.push_back(std::move(st));
      if (k % 2 == 0) {
        g.drafter = [script = want.back(), n = prompt.size(), k] {
          return std::make_unique<ScriptedDrafter>(script, n, 0.7, k + 1, 4096);
        };
      } else {
        g.drafter = [] { return std::make_unique<LookupDrafter>(2, 1); };
      }
      g.draft_tokens = 4;
      runs.push_back(std::make_unique<Job>(prompt, g));
      runs.back()->seq->keep_state = true;
    }
    for (auto& r : runs) ASSERT_TRUE(sched.submit(r->seq));
    for (size_t k = 0; k < runs.size(); ++k) {
      runs[k]->wait();
      EXPECT_EQ(runs[k]->tokens, want[k]) << "sequence " << k;
      EXPECT_EQ(runs[k]->final_state.position, want_state[k].position) << "sequence " << k;
      EXPECT_EQ(runs[k]->final_state.h, want_state[k].h) << "sequence " << k;
    }
    const int64_t generated = sched.stats().generated_tokens.load(), steps = sched.stats().steps.load();
    if (room == 16) {
      EXPECT_LT(steps, generated) << "drafts were kept, several tokens a step";
    }
  }
}

// n choices: forks start from a copy of the parent's state once it has read its prompt, and each
// gets what generate() gives with its own seed. Prompt log-probabilities arrive in order and
// equal those of one pass over the prompt; generated tokens' arrive before each token.
TEST(Scheduler, ForksAndLogprobs) {
  SchedulerOptions so;
  so.max_active = 4;
  so.prefill_chunk = 5;  // the prompt is read over several steps
  Scheduler sched(model(), so);
  const auto prompt = ids_of(23, 7);
  Job parent(prompt, sampling(12, 50));
  std::vector<std::unique_ptr<Job>> forks;
  for (uint64_t k = 1; k <= 3; ++k) {
    forks.push_back(std::make_unique<Job>(std::vector<int32_t>{}, sampling(8 + int64_t(k), 50 + k)));
    parent.seq->forks.push_back(forks.back()->seq);
  }
  std::vector<double> prompt_lps, token_lps;
  parent.seq->logprobs = 2;
  parent.seq->prompt_logprobs = true;
  parent.seq->on_logprob = [&](const TokenLogprob& t, bool in_prompt) {
    (in_prompt ? prompt_lps : token_lps).push_back(t.logprob);
    if (!in_prompt) {
      EXPECT_EQ(t.top.size(), 2u);
    }
  };
  ASSERT_TRUE(sched.submit(parent.seq));
  EXPECT_EQ(parent.wait(), Finish::Length);
  EXPECT_EQ(parent.tokens, reference(prompt, sampling(12, 50)));
  for (uint64_t k = 1; k <= 3; ++k) {
    EXPECT_EQ(forks[k - 1]->wait(), Finish::Length);
    EXPECT_EQ(forks[k - 1]->tokens, reference(prompt, sampling(8 + int64_t(k), 50 + k))) << "fork " << k;
  }
  const auto all = join(prompt, parent.tokens);
  const auto logits = model().prefill(std::span(all).first(all.size() - 1));
  const size_t V = size_t(model().vocab_size());
  ASSERT_EQ(prompt_lps.size(), prompt.size() - 1);
  ASSERT_EQ(token_lps.size(), parent.tokens.size());
  for (size_t i = 1; i < all.size(); ++i) {
    const double want = token_logprob(std::span(logits).subspan((i - 1) * V, V), all[i]).logprob;
    EXPECT_EQ(i < prompt.size() ? prompt_lps[i - 1] : token_lps[i - prompt.size()], want) << "token " << i;
  }
  // A parent cancelled before its prompt is read ends its forks too.
  Job p2(ids_of(200, 8), sampling(4, 1));
  Job f2({}, sampling(4, 2));
  p2.seq->forks.push_back(f2.seq);
  p2.seq->cancelled = true;
  ASSERT_TRUE(sched.submit(p2.seq));
  EXPECT_EQ(p2.wait(), Finish::Cancelled);
  EXPECT_EQ(f2.wait(), Finish::Cancelled);
  // A fork with a prompt of its own, or prompt log-probabilities over a cached prefix, is refused.
  Job p3(ids_of(10, 9), sampling(2, 1));
  p3.seq->forks.push_back(std::make_shared<Sequence>());
  p3.seq->forks.back()->prompt = {1};
  EXPECT_THROW(sched.submit(p3.seq), Error);
}

TEST(Scheduler, ALongPromptDoesNotStallDecodingSequences) {
  SchedulerOptions so;
  so.max_active = 4;
  so.prefill_chunk = 16;
  Scheduler sched(model(), so);
  Job a(ids_of(4, 1), sampling(40, 1));
  ASSERT_TRUE(sched.submit(a.seq));
  while (sched.stats().generated_tokens.load() < 2) std::this_thread::yield();
  // A 600-token prompt is read 16 tokens a step, and every step also decodes `a`: when it has
  // read its prompt (>= 38 steps), `a` has drawn a token at each of them.
  Job b(ids_of(600, 2), sampling(1, 2));
  std::atomic<int64_t> a_tokens_when_b_drew{-1};
  b.seq->on_token = [&](int32_t t) {
    b.tokens.push_back(t);
    a_tokens_when_b_drew = int64_t(a.tokens.size());  // the scheduler's thread: a is not written now
    return true;
  };
  ASSERT_TRUE(sched.submit(b.seq));
  EXPECT_EQ(b.wait(), Finish::Length);
  EXPECT_EQ(a.wait(), Finish::Length);
  EXPECT_TRUE(a_tokens_when_b_drew >= 38 || a_tokens_when_b_drew == 40) << a_tokens_when_b_drew;
  EXPECT_EQ(a.tokens, reference(a.seq->prompt, a.seq->gen));
  EXPECT_EQ(b.tokens, reference(b.seq->prompt, b.seq->gen));
}

TEST(Scheduler, CancellingOneLeavesTheOthersExact) {
  SchedulerOptions so;
  so.max_active = 4;
  Scheduler sched(model(), so);
  Job keep(ids_of(9, 3), sampling(30, 3)), cut(ids_of(9, 4), sampling(100000, 4));
  cut.seq->on_token = [&](int32_t t) {
    cut.tokens.push_back(t);
    if (cut.tokens.size() == 5) cut.seq->cancelled = true;  // as a client that went away
    return true;
  };
  ASSERT_TRUE(sched.submit(cut.seq));
  ASSERT_TRUE(sched.submit(keep.seq));
  EXPECT_EQ(cut.wait(), Finish::Cancelled);
  EXPECT_LE(cut.tokens.size(), 6u);  // it stops at the next step
  EXPECT_EQ(keep.wait(), Finish::Length);
  EXPECT_EQ(keep.tokens, reference(keep.seq->prompt, keep.seq->gen));
}

TEST(Scheduler, ADeadlineEndsASequenceWithTimeout) {
  Scheduler sched(model(), SchedulerOptions{});
  Job r(ids_of(5, 5), sampling(1 << 30, 5));
  r.seq->deadline = std::chrono::steady_clock::now() + std::chrono::milliseconds(50);
  ASSERT_TRUE(sched.submit(r.seq));
  EXPECT_EQ(r.wait(), Finish::Timeout);
}

TEST(Scheduler, AFullQueueRefusesAndBadSequencesAreErrors) {
  SchedulerOptions so;
  so.max_active = 1;
  so.max_queued = 1;
  Scheduler sched(model(), so);
  Job busy(ids_of(5, 6), sampling(1 << 30, 6)), waiting(ids_of(5, 7), sampling(1, 7)), refused(ids_of(5, 8), sampling(1, 8));
  ASSERT_TRUE(sched.submit(busy.seq));
  while (sched.stats().active.load() == 0) std::this_thread::yield();
  ASSERT_TRUE(sched.submit(waiting.seq));
  EXPECT_FALSE(sched.submit(refused.seq));
  busy.seq->cancelled = true;
  EXPECT_EQ(waiting.wait(), Finish::Length);
  Job empty({}, sampling(1, 9)), out_of_range({1, int32_t(model().vocab_size())}, sampling(1, 9));
  EXPECT_NE(test::error_of([&] { sched.submit(empty.seq); }), "");
  EXPECT_NE(test::error_of([&] { sched.submit(out_of_range.seq); }), "");
  Job all_cached(ids_of(5, 10), sampling(1, 10));
  all_cached.seq->cached = 5;
  EXPECT_NE(test::error_of([&] { sched.submit(all_cached.seq); }).find("last token"), std::string::npos);
}

// The state at a checkpoint is the state after exactly that prefix, and a sequence started from
// it (`cached`) continues bit for bit as one that read everything.
TEST(Scheduler, CheckpointsHoldTheStateAfterTheirPrefixAndResumeExactly) {
  SchedulerOptions so;
  so.prefill_chunk = 50;
  Scheduler sched(model(), so);
  const std::vector<int32_t> prompt = ids_of(137, 11);
  Job r(prompt, sampling(12, 11));
  r.seq->checkpoints = {1, 3, 64, 100, 136};
  std::map<size_t, State> at;
  r.seq->on_checkpoint = [&](size_t p, const State& s) { at[p] = s; };
  ASSERT_TRUE(sched.submit(r.seq));
  EXPECT_EQ(r.wait(), Finish::Length);
  ASSERT_EQ(at.size(), 5u);
  for (auto& [p, s] : at) {
    State ref = model().new_state();
    model().prefill_last(std::span(prompt).first(p), ref);
    EXPECT_EQ(s.position, int64_t(p));
    EXPECT_EQ(s.h, ref.h) << "checkpoint " << p;
  }
  for (size_t p : {size_t(1), size_t(100), size_t(136)}) {
    Job resumed(prompt, sampling(12, 11));
    resumed.seq->state = at[p];
    resumed.seq->cached = p;
    ASSERT_TRUE(sched.submit(resumed.seq));
    EXPECT_EQ(resumed.wait(), Finish::Length);
    EXPECT_EQ(resumed.tokens, r.tokens) << "resumed at " << p;
  }
}

TEST(StopText, ReleasesTextOnlyWhenItCannotBeginAStopString) {
  api::StopText s({"END", "\n\n"});
  EXPECT_EQ(s.push("Hello E"), "Hello ");  // "E" may begin "END"
  EXPECT_EQ(s.push("N"), "");
  EXPECT_EQ(s.push("x"), "ENx");  // it did not
  EXPECT_EQ(s.push(" more\n"), " more");
  EXPECT_FALSE(s.stopped());
  EXPECT_EQ(s.push("\nafter"), "");  // "\n\n" completed across pieces
  EXPECT_TRUE(s.stopped());
  EXPECT_EQ(s.push("ignored"), "");
  EXPECT_EQ(s.finish(), "");
  EXPECT_EQ(s.text(), "Hello ENx more");
}

TEST(StopText, TheEarliestStopStringWinsAndHeldTextComesOutAtTheEnd) {
  api::StopText s({"cd", "bcde"});
  EXPECT_EQ(s.push("abcdef"), "a");  // "bcde" begins first, though "cd" ends first
  EXPECT_TRUE(s.stopped());
  api::StopText t({"xyz"});
  EXPECT_EQ(t.push("axy"), "a");
  EXPECT_EQ(t.finish(), "xy");  // no stop string came: nothing is lost
  api::StopText none({});
  EXPECT_EQ(none.push("abc"), "abc");
  // Byte by byte, a multi-byte stop string and text around it.
  api::StopText u({"é!"});
  std::string out;
  for (char c : std::string("café au lait é! x")) out += u.push(std::string(1, c));
  EXPECT_EQ(out + u.finish(), "café au lait ");
}

State state_after(const std::vector<int32_t>& ids) {
  State s = model().new_state();
  model().prefill_last(ids, s);
  return s;
}

TEST(PrefixCache, TheLongestCachedPrefixIsFoundAndNeverTheWholePrompt) {
  PrefixCache c(model(), PrefixCacheOptions{});
  const auto a = ids_of(200, 1);
  EXPECT_EQ(c.lookup(a, a.size() - 1).length, 0u);
  for (size_t p : {size_t(10), size_t(64), size_t(150)}) c.insert(std::span(a).first(p), state_after({a.begin(), a.begin() + long(p)}));
  c.insert(a, state_after(a));
  EXPECT_EQ(c.entries(), 4u);
  auto h = c.lookup(a, a.size() - 1);  // the whole of a is held, but its last token must be read
  EXPECT_EQ(h.length, 150u);
  EXPECT_EQ(h.state.position, 150);
  EXPECT_EQ(h.state.h, state_after({a.begin(), a.begin() + 150}).h);
  // A prompt parting from a at 100 finds 64; one parting at 5 nothing.
  auto b = a;
  b[100] = b[100] == 7 ? 8 : 7;
  EXPECT_EQ(c.lookup(b, b.size() - 1).length, 64u);
  auto d = a;
  d[5] = d[5] == 7 ? 8 : 7;
  EXPECT_EQ(c.lookup(d, d.size() - 1).length, 0u);
  EXPECT_EQ(c.stats().hits.load(), 2);
  EXPECT_EQ(c.stats().misses.load(), 2);
  EXPECT_EQ(c.stats().tokens_saved.load(), 214);
  EXPECT_NE(test::error_of([&] { c.insert(std::span(a).first(20), state_after(a)); }), "");  // position != 20
}

TEST(PrefixCache, CheckpointsAlongThePromptAndWhereItPartsFromEveryCachedOne) {
  PrefixCacheOptions o;
  o.interval = 64;
  PrefixCache c(model(), o);
  const auto a = ids_of(300, 2);
  EXPECT_EQ(c.checkpoints(a, 0), (std::vector<size_t>{1, 2, 4, 8, 16, 32, 64, 128, 192, 256, 299}));
  EXPECT_EQ(c.checkpoints(a, 100), (std::vector<size_t>{128, 192, 256, 299}));
  for (size_t p : c.checkpoints(a, 0)) c.insert(std::span(a).first(p), state_after({a.begin(), a.begin() + long(p)}));
  // b shares a's first 217 ids: its second checkpoint list holds 217 (the parting point), and
  // nothing a already left.
  auto b = a;
  b.resize(217);
  const auto tail = ids_of(60, 3);
  b.insert(b.end(), tail.begin() + 1, tail.end());
  EXPECT_EQ(c.checkpoints(b, 192), (std::vector<size_t>{217, 256, b.size() - 1}));
  c.insert(std::span(b).first(217), state_after({b.begin(), b.begin() + 217}));
  // A third prompt sharing those 217 ids starts exactly there.
  auto e = b;
  e[230] = e[230] == 9 ? 10 : 9;
  EXPECT_EQ(c.lookup(e, e.size() - 1).length, 217u);
}

TEST(PrefixCache, HoldsNoMoreThanItsCapLeastRecentlyUsedOut) {
  const size_t state_bytes = size_t(model().config().num_hidden_layers * model().config().input_dim()) * 4;
  PrefixCacheOptions o;
  o.max_bytes = 10 * state_bytes;
  PrefixCache c(model(), o);
  std::vector<std::vector<int32_t>> p;
  for (uint32_t k = 0; k < 30; ++k) {
    p.push_back(ids_of(20, 100 + k));
    c.insert(p.back(), state_after(p.back()));
    EXPECT_LE(c.bytes(), o.max_bytes);
    if (k == 5) {
      EXPECT_EQ(c.lookup(join(p[0], {5}), 20).length, 20u);  // p[0] used: it stays longer
    }
  }
  EXPECT_LT(c.entries(), 10u);
  EXPECT_GT(c.entries(), 5u);
  EXPECT_GT(c.stats().evicted.load(), 19);
  EXPECT_EQ(c.lookup(join(p[29], {5}), 20).length, 20u);  // the newest are held
  EXPECT_EQ(c.lookup(join(p[1], {5}), 20).length, 0u);    // the oldest are not
}

TEST(PrefixCache, RecordsCheckThemselves) {
  PrefixCache c(model(), PrefixCacheOptions{});
  const auto a = ids_of(30, 4);
  const State s = state_after(a);
  const std::string rec = c.encode(a, s);
  EXPECT_EQ(c.decode(rec, a, "r").h, s.h);
  for (size_t at : {size_t(0), size_t(10), size_t(40), rec.size() / 2, rec.size() - 20, rec.size() - 1}) {
    std::string bad = rec;
    bad[at] ^= 0x20;
    EXPECT_NE(test::error_of([&] { c.decode(bad, a, "r"); }), "") << "a flipped byte at " << at;
  }
  EXPECT_NE(test::error_of([&] { c.decode(rec.substr(0, rec.size() - 9), a, "r"); }), "");
  EXPECT_NE(test::error_of([&] { c.decode("", a, "r"); }), "");
  auto other = a;
  other[3] ^= 1;
  EXPECT_NE(test::error_of([&] { c.decode(rec, other, "r"); }).find("another prefix"), std::string::npos);
}

TEST(PrefixCache, ADirectoryKeepsItAcrossARestartAndCorruptEntriesAreRemoved) {
  const std::string dir = (std::filesystem::temp_directory_path() / ("mmfree-prefix-" + std::to_string(::getpid()))).string();
  std::filesystem::remove_all(dir);
  const auto a = ids_of(90, 5), b = ids_of(70, 6);
  {
    serve::DirectoryStore store(dir);
    PrefixCache c(model(), PrefixCacheOptions{}, &store);
    c.insert(std::span(a).first(64), state_after({a.begin(), a.begin() + 64}));
    c.insert(a, state_after(a), "cmpl-aaaa");
    c.insert(b, state_after(b), "cmpl-bbbb");
    c.flush();
  }
  serve::DirectoryStore store(dir);
  std::ofstream(dir + "/prefix/.x.prefix.tmp.123") << "partial";  // a write cut by kill -9
  {  // corrupt b's record
    const std::string f = store.path("prefix", PrefixCache(model(), PrefixCacheOptions{}).id_of(b));
    std::fstream io(f, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(200);
    io.put('\x5a');
  }
  serve::DirectoryStore reopened(dir);  // removes temporary files
  EXPECT_FALSE(std::filesystem::exists(dir + "/prefix/.x.prefix.tmp.123"));
  PrefixCache c(model(), PrefixCacheOptions{}, &reopened);
  EXPECT_EQ(c.entries(), 2u);
  EXPECT_EQ(c.stats().rejected.load(), 1);
  auto h = c.lookup(join(a, {5}), a.size());
  EXPECT_EQ(h.length, a.size());
  EXPECT_EQ(h.state.h, state_after(a).h);
  EXPECT_EQ(c.resolve("cmpl-aaaa"), std::optional(a));
  EXPECT_EQ(c.resolve("cmpl-bbbb"), std::nullopt);  // its entry was corrupt
  EXPECT_EQ(c.lookup(join(b, {5}), b.size()).length, 0u);
  std::filesystem::remove_all(dir);
}

TEST(PrefixCache, ASharedStoreAnnouncesEntriesToTheOtherReplicas) {
  // A store shared in one process stands in for Redis: same interface, same announcements.
  struct Shared : serve::MemoryStore {
    std::vector<std::pair<std::string, std::string>> log;
    bool shared() const override { return true; }
    void announce(std::string_view, const std::string& id, const std::string& s) override { log.emplace_back(id, s); }
    std::vector<std::pair<std::string, std::string>> announced_since(std::string_view, std::string& cursor) override {
      const size_t from = cursor.empty() ? 0 : std::stoul(cursor);
      cursor = std::to_string(log.size());
      return {log.begin() + long(from), log.end()};
    }
  } store;
  PrefixCache one(model(), PrefixCacheOptions{}, &store), two(model(), PrefixCacheOptions{}, &store);
  const auto a = ids_of(50, 7);
  one.insert(a, state_after(a), "cmpl-1");
  one.flush();
  auto h = two.lookup(join(a, {9}), a.size());
  EXPECT_EQ(h.length, a.size());
  EXPECT_EQ(h.state.h, state_after(a).h);
  EXPECT_EQ(two.resolve("cmpl-1"), std::optional(a));
  // A corrupted record in the store is refused, never used.
  const auto b = ids_of(40, 8);
  one.insert(b, state_after(b));
  one.flush();
  std::string rec = *store.get("prefix", one.id_of(b));
  rec[rec.size() / 2] ^= 1;
  store.put("prefix", one.id_of(b), rec);
  EXPECT_EQ(two.lookup(join(b, {9}), b.size()).length, 0u);
  EXPECT_EQ(two.stats().rejected.load(), 1);
}

TEST(Sessions, OneHolderAtATimeAndTheStateContinues) {
  serve::MemoryStore store;
  serve::Sessions s(model(), &store, 0, 1000);
  auto st = s.acquire("x");
  ASSERT_TRUE(st);
  EXPECT_EQ(st->position, 0);
  EXPECT_FALSE(s.acquire("x"));  // held
  const State after = state_after(ids_of(12, 9));
  s.release("x", &after);
  auto again = s.acquire("x");
  ASSERT_TRUE(again);
  EXPECT_EQ(again->h, after.h);
  s.release("x", nullptr);  // without a state: it stays where it was
  EXPECT_EQ(s.acquire("x")->position, 12);
}

}  // namespace
}  // namespace mmfree::tests_serve
