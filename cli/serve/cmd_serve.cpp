// mmfree-cli serve: an OpenAI-compatible HTTP server (cpp-httplib) over one continuous-batching
// Scheduler. The serving logic is the library's (include/mmfree/serve/: request parsing and
// documents, the scheduler, sessions, the prefix cache, the state stores); this file binds it to
// HTTP: routes, streaming, limits, keys, metrics. Connections are in connections.hpp, the Redis
// store in redis_store.hpp.
#include <httplib.h>
#include <malloc.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <functional>
#include <mutex>
#include <random>
#include <thread>

#include "commands.hpp"
#include "mmfree/grammar_filter.hpp"
#include "mmfree/roofline.hpp"
#include "mmfree/serve/prefix_cache.hpp"
#include "mmfree/serve/request.hpp"
#include "mmfree/serve/scheduler.hpp"
#include "mmfree/serve/sessions.hpp"
#include "mmfree/serve/state_store.hpp"
#include "mmfree/serve/stop_text.hpp"
#include "serve/connections.hpp"
#include "serve/redis_store.hpp"

namespace cli {

namespace {

using nlohmann::json;
using namespace std::chrono_literals;
using mmfree::Finish;

// One completion request between the HTTP thread that serves it and the scheduler thread that
// produces its tokens: one Choice per sequence (n, best_of). The scheduler's callbacks only
// append here and notify.
struct Job {
  std::mutex mu;
  std::condition_variable cv;
  struct Piece {
    size_t choice = 0;
    std::string text;
    std::vector<int32_t> tokens;
    std::vector<mmfree::api::LogprobEntry> logprobs;
  };
  std::deque<Piece> pieces;  // produced, not yet sent (streaming)
  struct Choice {
    std::string text;  // everything released so far
    std::vector<int32_t> tokens;
    std::vector<mmfree::api::LogprobEntry> logprobs;  // with echo and logprobs, the prompt's first
    double sum_logprob = 0;                          // of the generated tokens (best_of)
    int64_t offset = 0;                              // bytes of text the logprobs have covered
    bool done = false, announced = false;
    Finish finish = Finish::Length;
    std::string error;
    // Weak: the sequence's callbacks hold the Job, so a strong pointer back would be a cycle that
    // leaked both (~30 KB a request on kjv-demo, a state and a row of logits each).
    std::weak_ptr<mmfree::Sequence> seq;
  };
  std::vector<Choice> choices;
  int64_t prompt_seen = 0;  // prompt log-probabilities received
  mmfree::State final_state;  // keep_state (choice 0): the state after every token returned
  std::optional<mmfree::State> snapshot;  // sessions, --persist-every: a mid-stream state to persist
  bool all_done() const {
    return std::all_of(choices.begin(), choices.end(), [](const Choice& c) { return c.done; });
  }
  // The first choice that failed, or the last one (they all answered).
  const Choice& outcome() const {
    for (const auto& c : choices)
      if (mmfree::api::http_status(c.finish) != 200) return c;
    return choices.back();
  }
  void cancel() {
    for (auto& c : choices)
      if (auto s = c.seq.lock()) s->cancelled = true;
  }
};

// A request's hold on a named session. release() is the one place a hold ends: with the final
// state the session continues from it; without (an error, a client gone, a timeout), the session
// stays where it was. A hold never released explicitly is released without a state.
class SessionHold {
 public:
  SessionHold(mmfree::serve::Sessions& s, std::string id) : sessions_(s), id_(std::move(id)) {}
  ~SessionHold() {
    try {
      release(nullptr);
    } catch (...) {  // a shared store's lock runs out by itself
    }
  }
  SessionHold(const SessionHold&) = delete;
  SessionHold& operator=(const SessionHold&) = delete;
  void release(const mmfree::State* s) {
    std::lock_guard<std::mutex> l(mu_);
    if (released_) return;
    released_ = true;
    sessions_.release(id_, s);
  }
  void persist(const mmfree::State& s) {  // a mid-stream snapshot
    std::lock_guard<std::mutex> l(mu_);
    if (!released_) sessions_.persist(id_, s);
  }
  const std::string& id() const { return id_; }

 private:
  mmfree::serve::Sessions& sessions_;
  const std::string id_;
  std::mutex mu_;
  bool released_ = false;
};

// Constant-time comparison of a presented key with the configured one.
bool same_key(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i)
    diff |= static_cast<unsigned char>((i < a.size() ? a[i] : 0) ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

bool is_loopback(const std::string& host) { return host == "127.0.0.1" || host == "::1" || host == "localhost"; }

void send_json(httplib::Response& res, int status, const json& body) {
  res.status = status;
  res.set_content(mmfree::api::to_wire(body), "application/json");
}

void send_error(httplib::Response& res, int status, const std::string& type, const std::string& msg) {
  send_json(res, status, mmfree::api::error_body(status, type, msg));
}

httplib::Server* g_server = nullptr;
void on_signal(int) {
  if (g_server) g_server->stop();
}

// A completion's id: "cmpl-" and 16 random hex digits. With the prefix cache it also names the
// state after the completion (continue_from).
std::string new_completion_id() {
  static std::mutex mu;
  static std::mt19937_64 rng{(uint64_t(std::random_device{}()) << 32) ^ std::random_device{}()};
  std::lock_guard<std::mutex> l(mu);
  char buf[24];
  std::snprintf(buf, sizeof buf, "cmpl-%016llx", static_cast<unsigned long long>(rng()));
  return buf;
}

// What the handlers share, and the handlers.
struct Service {
  const mmfree::Model& model;
  const mmfree::Tokenizer& tok;
  std::string name;
  mmfree::api::Limits lim;
  double timeout = 600;
  int64_t persist_every = 0;
  mmfree::serve::Sessions& sessions;
  mmfree::serve::PrefixCache* cache;  // nullptr: --prefix-cache 0
  mmfree::Scheduler& sched;
  std::shared_ptr<const mmfree::TokenTrie> trie;  // the vocabulary's bytes, for grammars
  DrafterArgs drafter;                             // --draft / --lookup: speculative decoding
  std::atomic<int64_t> requests{0}, rejected{0}, errors{0};
  const std::chrono::steady_clock::time_point started = std::chrono::steady_clock::now();

  void refuse(httplib::Response& res, int status, const std::string& type, const std::string& msg) {
    ++rejected;
    send_error(res, status, type, msg);
  }

  // POST /v1/completions.
  void completions(const httplib::Request& req, httplib::Response& res) {
    mmfree::api::CompletionRequest r;
    try {
      r = mmfree::api::parse_completion(req.body, tok, model.vocab_size(), lim, int32_t(model.config().eos_token_id));
    } catch (const mmfree::api::ApiError& e) {
      return refuse(res, e.status, e.type, e.what());
    }
    auto job = std::make_shared<Job>();
    job->choices.resize(size_t(r.best_of));
    auto seq = std::make_shared<mmfree::Sequence>();
    std::shared_ptr<SessionHold> hold;
    int64_t cached = 0;
    size_t own = 0;  // where this request's own prompt begins (after a continued completion's ids)
    const std::string id = new_completion_id();
    const bool prompt_logprobs = r.echo && r.logprobs >= 0;

    if (!r.session.empty()) {  // a session: continue its state (409 while another request holds it)
      std::optional<mmfree::State> st;
      try {
        st = sessions.acquire(r.session);
      } catch (const mmfree::Error& e) {
        return send_error(res, 500, "server_error", std::string("session '") + r.session + "': " + e.what());
      }
      if (!st) return refuse(res, 409, "conflict", "session '" + r.session + "' is in use by another request");
      hold = std::make_shared<SessionHold>(sessions, r.session);
      if (st->position > 0 && !continue_text(r)) return refuse(res, 400, "invalid_request_error", "request: 'prompt' encodes to no tokens");
      seq->state = std::move(*st);
      seq->continue_state = seq->keep_state = true;
      if (persist_every > 0 && r.stream) {
        seq->snapshot_every = persist_every;
        seq->on_snapshot = [job](const mmfree::State& st) {
          std::lock_guard<std::mutex> l(job->mu);
          job->snapshot = st;  // the stream's thread writes it
          job->cv.notify_all();
        };
      }
    } else if (cache) {
      if (!r.continue_from.empty()) {  // the earlier completion's ids, then this prompt
        auto before = cache->resolve(r.continue_from);
        if (!before)
          return refuse(res, 404, "not_found_error",
                        "completion '" + r.continue_from + "' is not held (never made here, or evicted from the prefix cache): send its whole text instead");
        if (!continue_text(r))
          return refuse(res, 400, "invalid_request_error", "request: 'prompt' encodes to no tokens (continue_from needs at least one new token)");
        own = before->size();
        r.prompt.insert(r.prompt.begin(), before->begin(), before->end());
        if (int64_t(r.prompt.size()) > lim.max_prompt_tokens)
          return refuse(res, 400, "invalid_request_error", "request: the continued prompt has " + std::to_string(r.prompt.size()) +
                                                               " tokens, more than the " + std::to_string(lim.max_prompt_tokens) + " the server allows");
      }
      // Prompt log-probabilities need the prompt's logits: it is read whole (checkpoints still kept).
      use_prefix_cache(*seq, r.prompt, /*lookup=*/!prompt_logprobs);
      cached = int64_t(seq->cached);
    } else if (!r.continue_from.empty()) {
      return refuse(res, 404, "not_found_error", "completion '" + r.continue_from + "' is not held: the server runs without a prefix cache");
    }

    // The echoed prompt: this request's own part, as the client sent it.
    const std::vector<int32_t> own_prompt(r.prompt.begin() + long(own), r.prompt.end());
    const std::string echo_text = !r.echo ? "" : r.prompt_was_text ? r.prompt_text : tok.decode(own_prompt);
    if (prompt_logprobs) {  // the prompt's tokens first, the first of the text without a log-probability
      mmfree::IncrementalDecoder d(tok);
      auto& c0 = job->choices[0];
      for (size_t i = 0; i < own_prompt.size(); ++i) {
        mmfree::api::LogprobEntry e;
        e.id = own_prompt[i];
        e.text = d.push(e.id);
        e.offset = c0.offset;
        c0.offset += int64_t(e.text.size());
        c0.logprobs.push_back(std::move(e));
      }
    }

    // Every choice: the first sequence reads the prompt, the others fork from it (its state is
    // copied once read) and sample with seed + index.
    std::vector<std::shared_ptr<mmfree::Sequence>> seqs{seq};
    for (int k = 1; k < r.best_of; ++k) seqs.push_back(std::make_shared<mmfree::Sequence>());
    const bool want_logprobs = r.logprobs >= 0 || r.best_of > r.n;
    for (size_t k = 0; k < seqs.size(); ++k) {
      auto& s = *seqs[k];
      if (k == 0) s.prompt = r.prompt;
      s.gen = r.gen;
      s.gen.sampling.seed = r.gen.sampling.seed + k;
      if (r.grammar) s.gen.constraint = [g = r.grammar, t = trie] { return std::make_unique<mmfree::GrammarFilter>(g, t); };
      if (drafter) drafter.apply(s.gen);  // used while steps are memory-bound (SchedulerOptions::speculative_tokens)
      s.deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                          std::chrono::duration<double>(timeout));
      // Decoder and stop strings run on the scheduler thread; only their output crosses over.
      auto dec = std::make_shared<mmfree::IncrementalDecoder>(tok);
      if (r.prompt_was_text)
        for (int32_t t : r.prompt) dec->push(t);  // continue the prompt's spacing
      auto stop = std::make_shared<mmfree::api::StopText>(r.stop);
      auto lp = std::make_shared<std::optional<mmfree::TokenLogprob>>();  // the token's, until on_token
      if (want_logprobs) {
        s.logprobs = std::max(r.logprobs, 0);
        s.prompt_logprobs = k == 0 && prompt_logprobs;
        s.on_logprob = [job, lp, own, this](const mmfree::TokenLogprob& t, bool in_prompt) {
          if (!in_prompt) return void(*lp = t);
          std::lock_guard<std::mutex> l(job->mu);
          // Prompt tokens arrive from the second on; those before this request's own part are not echoed.
          auto& es = job->choices[0].logprobs;
          const size_t pos = size_t(job->prompt_seen++) + 1;
          if (pos < own) return;
          auto& e = es[pos - own];
          e.logprob = t.logprob;
          e.top = tops(t);
        };
      }
      s.on_token = [job, dec, stop, lp, k, this](int32_t t) {
        const std::string piece = dec->push(t);
        const std::string out = stop->push(piece);
        std::lock_guard<std::mutex> l(job->mu);
        auto& c = job->choices[k];
        c.tokens.push_back(t);
        c.text += out;
        Job::Piece p{k, out, {t}, {}};
        if (lp->has_value()) {
          mmfree::api::LogprobEntry e{t, piece, (*lp)->logprob, tops(**lp), c.offset};
          c.offset += int64_t(piece.size());
          c.sum_logprob += (*lp)->logprob;
          c.logprobs.push_back(e);
          p.logprobs.push_back(std::move(e));
          lp->reset();
        }
        job->pieces.push_back(std::move(p));
        job->cv.notify_all();
        return !stop->stopped();
      };
      mmfree::Sequence* raw_seq = &s;  // alive while the scheduler calls on_done
      s.on_done = [job, dec, stop, raw_seq, k](Finish f, const std::string& msg) {
        const bool answered = f == Finish::Stop || f == Finish::Length;
        const std::string tail = answered ? stop->push(dec->finish()) + stop->finish() : "";
        std::lock_guard<std::mutex> l(job->mu);
        auto& c = job->choices[k];
        if (!tail.empty()) c.text += tail, job->pieces.push_back({k, tail, {}, {}});
        if (raw_seq->keep_state && answered) job->final_state = std::move(raw_seq->state);  // it has ended: the state moves out
        c.done = true;
        c.finish = f;
        c.error = msg;
        job->cv.notify_all();
      };
      job->choices[k].seq = seqs[k];
      if (k > 0) seq->forks.push_back(seqs[k]);
    }
    if (r.best_of > 1 || r.n > 1) seq->keep_state = seq->continue_state;  // a completion of several choices is not held under its id
    try {
      if (!sched.submit(seq)) {
        res.set_header("Retry-After", "1");
        return refuse(res, 503, "server_busy", "the queue is full (" + std::to_string(sched.options().max_queued) + " waiting): retry later");
      }
    } catch (const mmfree::Error& e) {
      return refuse(res, 400, "invalid_request_error", std::string("request: ") + e.what());
    }
    const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    auto prompt = std::make_shared<const std::vector<int32_t>>(r.prompt);
    auto doc = [id, created, name = name](json choices) {
      return json{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", name}, {"choices", std::move(choices)}};
    };
    const bool with_top = r.logprobs > 0;
    auto choice_logprobs = [&r, with_top](const std::vector<mmfree::api::LogprobEntry>& es) {
      return r.logprobs >= 0 ? mmfree::api::logprobs_doc(es, with_top) : json(nullptr);
    };
    auto generated = [](const Job& j) {
      int64_t n = 0;
      for (const auto& c : j.choices) n += int64_t(c.tokens.size());
      return n;
    };

    if (!r.stream) {
      {
        std::unique_lock<std::mutex> l(job->mu);
        job->cv.wait(l, [&] { return job->all_done(); });
      }
      const int64_t position = finish(*job, hold.get(), *prompt, id, r.n == 1 && r.best_of == 1);
      const auto& outcome = job->outcome();
      const int status = mmfree::api::http_status(outcome.finish);
      if (status != 200) return send_error(res, status, status == 504 ? "timeout" : "server_error", failure_message(outcome));
      // best_of: the n choices of highest summed log-probability, in the order they were made.
      std::vector<size_t> order(job->choices.size());
      for (size_t k = 0; k < order.size(); ++k) order[k] = k;
      if (r.best_of > r.n) {
        std::stable_sort(order.begin(), order.end(),
                         [&](size_t a, size_t b) { return job->choices[a].sum_logprob > job->choices[b].sum_logprob; });
        order.resize(size_t(r.n));
        std::sort(order.begin(), order.end());
      }
      json choices = json::array();
      for (size_t i = 0; i < order.size(); ++i) {
        const auto& c = job->choices[order[i]];
        std::vector<mmfree::api::LogprobEntry> es = c.logprobs;
        std::string text = c.text;
        if (r.echo) {
          text = echo_text + text;
          if (order[i] != 0 && prompt_logprobs) es.insert(es.begin(), job->choices[0].logprobs.begin(), job->choices[0].logprobs.begin() + long(own_prompt.size()));
        }
        json ch = mmfree::api::completion_choice(text, mmfree::finish_reason(c.finish), int64_t(i), choice_logprobs(es));
        if (r.return_tokens) ch["tokens"] = c.tokens;
        choices.push_back(std::move(ch));
      }
      json body = doc(std::move(choices));
      body["usage"] = mmfree::api::usage(int64_t(prompt->size()), generated(*job), cached);
      if (r.return_tokens) body["tokens"] = job->choices[0].tokens;
      if (position >= 0) body["session_position"] = position;
      return send_json(res, 200, body);
    }

    // Server-sent events: with echo the prompt first; one chunk per token (each with its choice's
    // index), each choice's finish reason, usage if asked, [DONE].
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, job, r, id, doc, prompt, hold, cached, echo_text, choice_logprobs, generated, own_prompt](size_t, httplib::DataSink& sink) {
          auto event = [&](const json& j) {
            const std::string s = "data: " + mmfree::api::to_wire(j) + "\n\n";
            return sink.write(s.data(), s.size());
          };
          std::unique_lock<std::mutex> l(job->mu);
          if (r.echo) {  // the prompt's log-probabilities are known once it has been read
            if (r.logprobs >= 0) job->cv.wait(l, [&] { return job->prompt_seen + 1 >= int64_t(prompt->size()) || job->all_done(); });
            json chs = json::array();
            for (size_t k = 0; k < job->choices.size(); ++k) {
              std::vector<mmfree::api::LogprobEntry> es(job->choices[0].logprobs.begin(),
                                                         job->choices[0].logprobs.begin() + long(r.logprobs >= 0 ? own_prompt.size() : 0));
              chs.push_back(mmfree::api::completion_choice(echo_text, nullptr, int64_t(k), choice_logprobs(es)));
            }
            l.unlock();
            const bool ok = event(doc(chs));
            l.lock();
            if (!ok) return job->cancel(), false;
          }
          for (;;) {
            job->cv.wait_for(l, 200ms, [&] { return job->all_done() || !job->pieces.empty(); });
            if (job->snapshot && hold) {
              const mmfree::State st = std::move(*job->snapshot);
              job->snapshot.reset();
              l.unlock();
              hold->persist(st);
              l.lock();
            }
            while (!job->pieces.empty()) {
              Job::Piece p = std::move(job->pieces.front());
              job->pieces.pop_front();
              json ch = mmfree::api::completion_choice(p.text, nullptr, int64_t(p.choice), choice_logprobs(p.logprobs));
              if (r.return_tokens) ch["tokens"] = p.tokens;
              json c = doc(json::array({ch}));
              if (r.return_tokens) c["tokens"] = p.tokens;
              l.unlock();
              const bool ok = event(c);
              l.lock();
              if (!ok) return job->cancel(), false;  // the client went away
            }
            // A choice that has ended and whose pieces are all sent: its finish reason.
            for (size_t k = 0; k < job->choices.size(); ++k) {
              auto& c = job->choices[k];
              if (!c.done || c.announced || mmfree::api::http_status(c.finish) != 200 || job->choices.size() == 1) continue;
              c.announced = true;
              json ch = mmfree::api::completion_choice("", mmfree::finish_reason(c.finish), int64_t(k), choice_logprobs({}));
              l.unlock();
              const bool ok = event(doc(json::array({ch})));
              l.lock();
              if (!ok) return job->cancel(), false;
            }
            if (job->all_done() && job->pieces.empty()) break;
            if (!sink.is_writable()) return job->cancel(), false;
          }
          l.unlock();
          const int64_t position = finish(*job, hold.get(), *prompt, id, r.n == 1);  // kept before the client hears "done"
          const auto& outcome = job->outcome();
          const int status = mmfree::api::http_status(outcome.finish);
          if (status != 200) {
            event(mmfree::api::error_body(status, status == 504 ? "timeout" : "server_error", failure_message(outcome)));
          } else if (job->choices.size() == 1) {
            json c = doc(json::array({mmfree::api::completion_choice("", mmfree::finish_reason(outcome.finish), 0, choice_logprobs({}))}));
            if (position >= 0) c["session_position"] = position;
            event(c);
          }
          if (r.include_usage) {
            json u = doc(json::array());
            u["usage"] = mmfree::api::usage(int64_t(prompt->size()), generated(*job), cached);
            event(u);
          }
          const std::string done = "data: [DONE]\n\n";
          sink.write(done.data(), done.size());
          sink.done();
          return true;
        },
        [job](bool) { job->cancel(); });  // ended either way: a cancelled sequence stops
  }

  // Alternatives as OpenAI names them: the text of each token (a lone byte as <0xNN>).
  std::vector<std::pair<std::string, double>> tops(const mmfree::TokenLogprob& t) const {
    std::vector<std::pair<std::string, double>> out;
    for (const auto& [i, lp] : t.top) out.emplace_back(tok.is_special(i) ? tok.piece(i) : tok.piece_text(i), lp);
    return out;
  }

  // A text prompt that continues a state is encoded again without BOS; false when nothing is left.
  bool continue_text(mmfree::api::CompletionRequest& r) const {
    if (r.prompt_was_text) r.prompt = tok.encode(r.prompt_text, /*add_special=*/false);
    return !r.prompt.empty();
  }

  // The sequence starts from the longest cached prefix of its prompt (never the whole prompt: its
  // last token is read for the logits), leaves checkpoints along the rest, and keeps its state
  // to the end, for the cache (finish()).
  void use_prefix_cache(mmfree::Sequence& seq, const std::vector<int32_t>& prompt, bool lookup = true) {
    auto hit = lookup ? cache->lookup(prompt, prompt.size() - 1) : mmfree::serve::PrefixCache::Hit{};
    if (hit.length > 0) seq.state = std::move(hit.state), seq.cached = hit.length;
    seq.checkpoints = cache->checkpoints(prompt, hit.length);
    auto ids = std::make_shared<const std::vector<int32_t>>(prompt);
    seq.on_checkpoint = [c = cache, ids](size_t p, const mmfree::State& st) { c->insert(std::span(*ids).first(p), st); };
    seq.keep_state = true;
  }

  // After a sequence ended (on the HTTP thread): a session continues from its final state; a
  // completion's final state enters the prefix cache under its id. Returns the session's position
  // (-1: no session, or it stays where it was).
  int64_t finish(Job& job, SessionHold* hold, const std::vector<int32_t>& prompt, const std::string& id, bool held) {
    const bool answered = mmfree::api::http_status(job.outcome().finish) == 200;
    if (hold) {
      hold->release(answered ? &job.final_state : nullptr);
      return answered ? job.final_state.position : -1;
    }
    if (cache && answered && held) {
      std::vector<int32_t> ids = prompt;
      ids.insert(ids.end(), job.choices[0].tokens.begin(), job.choices[0].tokens.end());
      try {
        cache->insert(ids, job.final_state, id);
      } catch (const mmfree::Error& e) {
        std::fprintf(stderr, "prefix cache: %s\n", e.what());
      }
    }
    return -1;
  }

  static std::string failure_message(const Job::Choice& c) {
    return c.finish == Finish::Timeout ? "request timed out (--timeout)" : c.error.empty() ? "generation failed" : c.error;
  }

  // GET /metrics: Prometheus text.
  void metrics(const httplib::Request&, httplib::Response& res) {
    const auto& st = sched.stats();
    const double busy = st.busy_seconds.load(), up = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::string m;
    auto metric = [&](const char* n, const char* type, const char* help, double v) {
      char line[256];
      std::snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", n, help, n, type, n, v);
      m += line;
    };
    metric("mmfree_http_requests_total", "counter", "HTTP requests received", double(requests.load()));
    metric("mmfree_http_requests_rejected_total", "counter", "requests refused (4xx, 503)", double(rejected.load()));
    metric("mmfree_sequences_total", "counter", "completions started", double(st.sequences.load()));
    metric("mmfree_prompt_tokens_total", "counter", "prompt tokens read", double(st.prompt_tokens.load()));
    metric("mmfree_generated_tokens_total", "counter", "tokens generated", double(st.generated_tokens.load()));
    metric("mmfree_decode_steps_total", "counter", "batched decode steps", double(st.steps.load()));
    metric("mmfree_decode_batch_tokens_total", "counter", "tokens decoded in batched steps", double(st.batched_tokens.load()));
    metric("mmfree_speculative_drafted_tokens_total", "counter", "tokens drafted for speculative decoding", double(st.drafted_tokens.load()));
    metric("mmfree_speculative_accepted_tokens_total", "counter", "drafted tokens the model kept", double(st.accepted_tokens.load()));
    metric("mmfree_busy_seconds_total", "counter", "seconds spent in forward passes", busy);
    metric("mmfree_generated_tokens_per_second", "gauge", "tokens generated per second of forward passes",
           busy > 0 ? double(st.generated_tokens.load()) / busy : 0);
    metric("mmfree_active_sequences", "gauge", "sequences decoding now", double(st.active.load()));
    metric("mmfree_queued_sequences", "gauge", "sequences waiting for a place", double(st.queued.load()));
    metric("mmfree_uptime_seconds", "gauge", "seconds since the server started", up);
    metric("mmfree_sessions_in_memory", "gauge", "session states held in memory", double(sessions.in_memory()));
    metric("mmfree_sessions_evicted_total", "counter", "session states dropped from memory (kept on disk)", double(sessions.evicted()));
    if (cache) {
      const auto& c = cache->stats();
      metric("mmfree_prefix_cache_lookups_total", "counter", "prompts looked up in the prefix cache", double(c.lookups.load()));
      metric("mmfree_prefix_cache_hits_total", "counter", "prompts that started from a cached prefix", double(c.hits.load()));
      metric("mmfree_prefix_cache_misses_total", "counter", "prompts read from their first token", double(c.misses.load()));
      metric("mmfree_prefix_cache_tokens_saved_total", "counter", "prompt tokens not read again", double(c.tokens_saved.load()));
      metric("mmfree_prefix_cache_bytes", "gauge", "bytes the prefix cache holds in memory", double(cache->bytes()));
      metric("mmfree_prefix_cache_max_bytes", "gauge", "the prefix cache's cap (--prefix-cache)", double(cache->options().max_bytes));
      metric("mmfree_prefix_cache_entries", "gauge", "states the prefix cache holds", double(cache->entries()));
      metric("mmfree_prefix_cache_inserted_total", "counter", "states added to the prefix cache", double(c.inserted.load()));
      metric("mmfree_prefix_cache_evicted_total", "counter", "states dropped, least recently used first", double(c.evicted.load()));
      metric("mmfree_prefix_cache_rejected_total", "counter", "stored entries refused (checksum, wrong prefix)", double(c.rejected.load()));
      metric("mmfree_prefix_cache_write_failures_total", "counter", "entries the store failed to write", double(c.write_failures.load()));
    }
    res.set_content(m, "text/plain; version=0.0.4");
  }
};

}  // namespace

// Tokens a step can hold while reading the weights still takes longer than their multiply-adds:
// (weight bytes / read bandwidth) / (MACs per token / int8 peak), both measured now; at least 1,
// at most 16 (and 16 where no int8 peak is measured).
int64_t memory_bound_tokens(const mmfree::Model& m, double& bandwidth, double& peak) {
  double bytes = 0, macs = 0;
  mmfree::for_each_bitlinear(m.weights(), [&](const std::string&, const mmfree::BitLinear& l) {
    bytes += double(l.weights().nbytes());
    macs += double(l.in_features()) * double(l.out_features());
  });
  m.options().pool->rest();  // (the chooser's workers, asleep rather than spinning through the probes)
  bandwidth = mmfree::roofline::bandwidth_now_gbs(m.options().threads);
  peak = mmfree::roofline::int8_peak_gmacs(m.options().threads);
  if (peak <= 0 || bandwidth <= 0) return 16;
  return std::clamp<int64_t>(int64_t((bytes / bandwidth) / (macs / peak)), 1, 16);
}

int cmd_serve(const Args& a) {
  a.allow({"host", "port", "parallel", "queue", "api-key", "api-key-file", "allow-public", "max-body", "state-dir", "sessions-memory",
           "session-store", "persist-every",
           "max-prompt-tokens", "max-tokens", "timeout", "exit-with-parent", "name", "max-connections",
           "max-connections-per-address", "request-time", "prefix-cache", "prefix-interval", "prefix-ttl", "draft", "lookup",
           "draft-tokens", "speculative-tokens"});
  const std::string host = a.has("host") ? a.str("host") : "127.0.0.1";
  const int port = a.has("port") ? int(mmfree::parse_int(a.str("port"), "--port", 0, 65535)) : 8080;
  mmfree::SchedulerOptions so;
  so.max_active = a.has("parallel") ? mmfree::parse_int(a.str("parallel"), "--parallel", 1, 4096) : 64;
  so.max_queued = a.has("queue") ? mmfree::parse_int(a.str("queue"), "--queue", 0, 1 << 16) : 2 * so.max_active;
  mmfree::api::Limits lim;
  if (a.has("max-prompt-tokens")) lim.max_prompt_tokens = mmfree::parse_int(a.str("max-prompt-tokens"), "--max-prompt-tokens", 1, 1 << 24);
  if (a.has("max-tokens")) lim.max_tokens = mmfree::parse_int(a.str("max-tokens"), "--max-tokens", 1, 1 << 24);
  lim.default_max_tokens = std::min(lim.default_max_tokens, lim.max_tokens);
  const size_t max_body = a.has("max-body") ? size_t(mmfree::parse_int(a.str("max-body"), "--max-body", 64, 1 << 30)) : 1 << 20;
  const double timeout = a.has("timeout") ? mmfree::parse_double(a.str("timeout"), "--timeout", 0.001, 1e6) : 600;
  std::string key = a.has("api-key") ? a.str("api-key") : "";
  if (a.has("api-key-file")) {
    key = read_text_file(a.str("api-key-file"));
    while (!key.empty() && (key.back() == '\n' || key.back() == '\r' || key.back() == ' ')) key.pop_back();
    if (key.empty()) fail(a.str("api-key-file"), "holds no key");
  }
  if (!is_loopback(host)) {
    if (key.empty() && !a.on("allow-public"))
      fail("--host " + host, "serving beyond this machine needs --api-key KEY (or --allow-public to serve without one)");
    std::fprintf(stderr, "warning: listening on %s: reachable from other machines%s\n", host.c_str(),
                 key.empty() ? ", with no API key" : "");
  }
  if (a.on("exit-with-parent")) prctl(PR_SET_PDEATHSIG, SIGTERM);
  // Blocks of 128 KiB and more (session states, logits of a batch) come from mmap and go back
  // to the system when freed: glibc would otherwise raise this threshold as such blocks are
  // freed and keep them in its arenas, so resident memory would only grow.
  mallopt(M_MMAP_THRESHOLD, 128 * 1024);  // tests: the server never outlives them
  // That also freezes the trim threshold at 128 KiB, and then freeing a block just under 128 KiB
  // (a row of logits, 32,000 floats) at the top of a thread's heap handed its pages back and the
  // next token faulted them in again: 31 madvise calls per 16-token step, 20% of the server's
  // time on Zen 5. A heap keeps up to 2 MiB free at its top instead.
  mallopt(M_TRIM_THRESHOLD, 2 * 1024 * 1024);

  const std::string path = model_path(a);
  const mmfree::Model model = load(a);
  const mmfree::Tokenizer tok = mmfree::load_tokenizer(path);
  if (tok.vocab_size() > model.vocab_size()) fail(tok.source(), "has more tokens than the model's vocabulary");
  const std::string name = a.has("name") ? a.str("name") : std::filesystem::path(path).filename().string();
  const int64_t persist_every = a.has("persist-every") ? mmfree::parse_int(a.str("persist-every"), "--persist-every", 1, 1 << 20) : 0;
  const size_t sessions_cap =
      a.has("sessions-memory") ? size_t(mmfree::parse_int(a.str("sessions-memory"), "--sessions-memory", 1, 1 << 24)) << 20 : 0;
  // Where states outlive a request: a directory (--state-dir), Redis shared by replicas
  // (--session-store), or this process's memory.
  std::unique_ptr<mmfree::serve::StateStore> store;
  if (a.has("session-store")) {
    if (a.has("state-dir") || sessions_cap) fail("--session-store", "replaces --state-dir and --sessions-memory: give one or the other");
    const int64_t ttl = a.has("prefix-ttl") ? mmfree::parse_int(a.str("prefix-ttl"), "--prefix-ttl", 0, int64_t(1) << 31) : 86400;
    store = std::make_unique<RedisStore>(a.str("session-store"), ttl * 1000);
  } else if (a.has("state-dir")) {
    store = std::make_unique<mmfree::serve::DirectoryStore>(a.str("state-dir"));
  }
  mmfree::serve::Sessions sessions(model, store.get(), sessions_cap, int64_t((timeout + 60) * 1000));
  mmfree::serve::PrefixCacheOptions po;
  po.max_bytes = size_t(a.has("prefix-cache") ? mmfree::parse_int(a.str("prefix-cache"), "--prefix-cache", 0, 1 << 24) : 256) << 20;
  if (a.has("prefix-interval")) po.interval = mmfree::parse_int(a.str("prefix-interval"), "--prefix-interval", 1, 1 << 24);
  std::unique_ptr<mmfree::serve::PrefixCache> cache;
  if (po.max_bytes > 0) cache = std::make_unique<mmfree::serve::PrefixCache>(model, po, store.get());
  const DrafterArgs drafter = drafter_args(a, model);
  if (a.has("speculative-tokens") && !drafter) fail("--speculative-tokens", "needs a drafter: --draft MODEL or --lookup N");
  double knee_bw = 0, knee_peak = 0;
  if (drafter)
    so.speculative_tokens = a.has("speculative-tokens")
                                ? mmfree::parse_int(a.str("speculative-tokens"), "--speculative-tokens", 0, 4096)
                                : memory_bound_tokens(model, knee_bw, knee_peak);
  mmfree::Scheduler sched(model, so);
  Service service{model, tok, name, lim, timeout, persist_every, sessions, cache.get(), sched,
                  std::make_shared<const mmfree::TokenTrie>(tok), drafter};
  auto& requests = service.requests;
  auto& errors = service.errors;

  httplib::Server svr;
  // A thread per open connection (ConnectionThreads), at most --max-connections at once; the
  // process may hold that many sockets (the soft limit is raised to the hard one).
  const size_t max_connections = a.has("max-connections")
      ? size_t(mmfree::parse_int(a.str("max-connections"), "--max-connections", so.max_active + so.max_queued + 4, 1 << 16))
      : std::max<size_t>(2048, size_t(so.max_active + so.max_queued) * 2);
  if (rlimit rl{}; getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
    rl.rlim_cur = rl.rlim_max;
    setrlimit(RLIMIT_NOFILE, &rl);
  }
  svr.new_task_queue = [max_connections] { return new ConnectionThreads(max_connections); };
  const size_t per_address = a.has("max-connections-per-address")
      ? size_t(mmfree::parse_int(a.str("max-connections-per-address"), "--max-connections-per-address", 1, 1 << 16)) : 256;
  const double request_time = a.has("request-time") ? mmfree::parse_double(a.str("request-time"), "--request-time", 0.1, 3600) : 30;
  std::unique_ptr<ConnectionWarden> warden;  // started once the port is known
  svr.set_payload_max_length(max_body);
  svr.set_read_timeout(10, 0);  // a slow sender loses its connection, not a scheduler slot
  svr.set_write_timeout(10, 0);
  svr.set_keep_alive_timeout(5);
  svr.set_keep_alive_max_count(100);
  svr.set_tcp_nodelay(true);  // each streamed token leaves at once (Nagle would hold it for an ACK)
  svr.set_pre_routing_handler([&](const httplib::Request& req, httplib::Response& res) {
    // HTTP threads yield to the model's: a forward pass is hundreds of fork-join sections, and a
    // pool thread kept waiting for a core by a thread writing a token stalls every section.
    static thread_local const bool lowered = setpriority(PRIO_PROCESS, id_t(syscall(SYS_gettid)), 10) == 0;
    (void)lowered;
    if (warden) warden->begin(req.remote_addr, req.remote_port);
    ++requests;
    if (key.empty() || req.path == "/health") return httplib::Server::HandlerResponse::Unhandled;
    const std::string auth = req.get_header_value("Authorization");
    const std::string bearer = "Bearer ";
    if (auth.rfind(bearer, 0) == 0 && same_key(auth.substr(bearer.size()), key))
      return httplib::Server::HandlerResponse::Unhandled;
    send_error(res, 401, "authentication_error", "missing or wrong API key (Authorization: Bearer KEY)");
    return httplib::Server::HandlerResponse::Handled;
  });
  // Errors httplib raises itself (413 body too large, 404, 400 bad request line) get JSON too.
  svr.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (!res.body.empty()) return;
    const std::string msg = res.status == 413 ? "request body is larger than the server allows (--max-body)"
                            : res.status == 404 ? "no such endpoint: " + req.path
                                                : "bad request";
    send_error(res, res.status, "invalid_request_error", msg);
  });
  svr.set_exception_handler([&](const httplib::Request&, httplib::Response& res, std::exception_ptr ep) {
    ++errors;
    std::string msg = "internal error";
    try {
      std::rethrow_exception(ep);
    } catch (const std::exception& e) {
      msg = e.what();
    } catch (...) {
    }
    send_error(res, 500, "server_error", msg);
  });
  svr.set_logger([&](const httplib::Request& req, const httplib::Response& res) {
    if (warden) warden->end(req.remote_addr, req.remote_port);
    std::fprintf(stderr, "%s %s %d\n", req.method.c_str(), req.path.c_str(), res.status);  // never bodies
  });

  svr.Get("/health", [](const httplib::Request&, httplib::Response& res) { send_json(res, 200, {{"status", "ok"}}); });
  svr.Get("/v1/models", [&](const httplib::Request&, httplib::Response& res) {
    send_json(res, 200, {{"object", "list"}, {"data", {{{"id", name}, {"object", "model"}, {"owned_by", "mmfree"}, {"created", 0}}}}});
  });
  svr.Post("/v1/chat/completions", [&](const httplib::Request&, httplib::Response& res) {
    send_error(res, 400, "invalid_request_error",
               "model '" + name + "' is a base model with no chat template: use /v1/completions with a text prompt");
  });
  auto api_call = [&](httplib::Response& res, const std::function<json()>& f) {
    try {
      send_json(res, 200, f());
    } catch (const mmfree::api::ApiError& e) {
      service.refuse(res, e.status, e.type, e.what());
    }
  };
  svr.Post("/tokenize", [&](const httplib::Request& req, httplib::Response& res) {
    api_call(res, [&] { return mmfree::api::tokenize(req.body, tok); });
  });
  svr.Post("/detokenize", [&](const httplib::Request& req, httplib::Response& res) {
    api_call(res, [&] { return mmfree::api::detokenize(req.body, tok); });
  });
  svr.Get("/metrics", [&](const httplib::Request& req, httplib::Response& res) { service.metrics(req, res); });
  svr.Post("/v1/completions", [&](const httplib::Request& req, httplib::Response& res) { service.completions(req, res); });

  int bound = port;
  if (port == 0) bound = svr.bind_to_any_port(host);
  else if (!svr.bind_to_port(host, port)) bound = -1;
  if (bound < 0) fail("--host " + host + " --port " + std::to_string(port), "cannot listen there (in use, or not an address of this machine)");
  widen_listen_backlog(bound);
  warden = std::make_unique<ConnectionWarden>(bound, per_address, request_time);
  g_server = &svr;
  signal(SIGINT, on_signal);
  signal(SIGTERM, on_signal);
  signal(SIGPIPE, SIG_IGN);
  std::fprintf(stderr, "mmfree-cli serve: %s on http://%s:%d (parallel %lld, queue %lld, threads %d, kernels %s/%s/%s)\n",
               name.c_str(), host.c_str(), bound, (long long)so.max_active, (long long)so.max_queued, model.options().threads,
               model.kernel_choice().decode.chosen.name, model.kernel_choice().batch.chosen.name,
               model.kernel_choice().prefill.chosen.name);
  if (cache)
    std::fprintf(stderr, "prefix cache: %zu MiB, checkpoints every %lld tokens, %zu entries restored%s%s\n", po.max_bytes >> 20,
                 (long long)po.interval, cache->entries(), store ? " from " : "", store ? store->describe().c_str() : "");
  if (drafter) {
    std::fprintf(stderr, "speculative decoding: %s, drafts of up to %d tokens while a step holds fewer than %lld tokens",
                 drafter.draft ? ("draft model " + a.str("draft")).c_str() : ("lookup " + std::to_string(drafter.lookup)).c_str(),
                 drafter.draft_tokens, (long long)so.speculative_tokens);
    if (knee_bw > 0) std::fprintf(stderr, " (memory-bound up to there at %.1f GB/s and %.0f GMAC/s, measured now)", knee_bw, knee_peak);
    std::fprintf(stderr, "\n");
  }
  std::fprintf(stderr, "listening on port %d\n", bound);
  std::fflush(stderr);
  svr.listen_after_bind();
  g_server = nullptr;
  if (cache) cache->flush();  // a graceful stop keeps every entry made so far
  return 0;
}

}  // namespace cli
