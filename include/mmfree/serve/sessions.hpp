// mmfree serving: named sessions (the server's "session" extension): a conversation's recurrent
// state kept between requests, held by one request at a time. In memory, and through a
// StateStore on disk (written when each request ends, so a session survives a restart or kill -9
// at its last completed request) or in a store shared by replicas (then always read from there).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>

#include "mmfree/model.hpp"
#include "mmfree/serve/state_store.hpp"
#include "mmfree/state_file.hpp"

namespace mmfree::serve {

class Sessions {
 public:
  // store: nullptr keeps sessions in memory only. cap_bytes: states kept in memory at most (0: no
  // cap; a cap needs an unshared store, where states beyond it wait); the least recently used
  // are dropped from memory and read back on use. lock_ms: how long a shared store's lock
  // outlives a crashed holder.
  Sessions(const Model& m, StateStore* store, size_t cap_bytes, int64_t lock_ms)
      : model_(m), store_(store), cap_(cap_bytes), lock_ms_(lock_ms) {
    if (cap_ && (!store_ || store_->shared()))
      fail("--sessions-memory", "needs --state-dir (sessions beyond the cap wait on disk)");
    state_bytes_ = size_t(m.config().num_hidden_layers * m.config().input_dim()) * sizeof(float) + 256;
  }
  // Takes the session for one request: its state (new if unknown), or nullopt when another
  // request holds it.
  std::optional<State> acquire(const std::string& id) {
    if (store_ && store_->shared()) {  // the state is always the store's, never a local copy
      if (!store_->try_lock(id, lock_ms_)) return std::nullopt;
      try {
        const auto bytes = store_->get("session", id);
        if (!bytes) return model_.new_state();
        std::istringstream in(*bytes);
        return read_state(model_, in, "session '" + id + "' in " + store_->describe());
      } catch (...) {
        store_->unlock(id);
        throw;
      }
    }
    std::lock_guard<std::mutex> l(mu_);
    if (busy_.count(id)) return std::nullopt;
    State s;
    if (auto it = states_.find(id); it != states_.end()) {
      s = unkeep(it->second);
    } else if (auto bytes = store_ ? store_->get("session", id) : std::nullopt) {
      std::istringstream in(*bytes);
      s = read_state(model_, in, "session '" + id + "' in " + store_->describe());
    } else {
      s = model_.new_state();
    }
    busy_.insert(id);
    return s;
  }
  // Persists a state of a session still held by a request (a mid-stream snapshot).
  void persist(const std::string& id, const State& s) {
    if (store_) store_->put("session", id, state_bytes(model_, s));
    if (store_ && store_->shared()) return;
    std::lock_guard<std::mutex> l(mu_);  // memory and store agree, whatever happens next
    states_[id] = keep(s);
  }
  // Ends the request's hold; with a state, the session continues from it from now on. The one
  // place a hold ends.
  void release(const std::string& id, const State* s) {
    if (store_ && store_->shared()) {
      struct Unlock {
        StateStore* st;
        const std::string& id;
        ~Unlock() {
          try {
            st->unlock(id);
          } catch (...) {  // the lock expires by itself
          }
        }
      } unlock{store_, id};
      if (s) store_->put("session", id, state_bytes(model_, *s));
      return;
    }
    struct Free {  // the hold ends even when persisting fails
      Sessions* self;
      const std::string& id;
      ~Free() {
        std::lock_guard<std::mutex> l(self->mu_);
        self->busy_.erase(id);
      }
    } free{this, id};
    if (s && store_) store_->put("session", id, state_bytes(model_, *s));
    std::lock_guard<std::mutex> l(mu_);
    if (s) states_[id] = keep(*s);
    if (cap_)  // evict the least recently used (not busy) until under the cap
      while (states_.size() * state_bytes_ > cap_) {
        auto victim = states_.end();
        for (auto it = states_.begin(); it != states_.end(); ++it)
          if (!busy_.count(it->first) && it->first != id && (victim == states_.end() || it->second.used < victim->second.used))
            victim = it;
        if (victim == states_.end()) break;
        states_.erase(victim);
        ++evicted_;
      }
  }
  size_t in_memory() {
    std::lock_guard<std::mutex> l(mu_);
    return states_.size();
  }
  size_t evicted() {
    std::lock_guard<std::mutex> l(mu_);
    return evicted_;
  }

 private:
  // A kept state in one block (a 2.7B state: 328 KB, one mmap'd allocation returned whole when
  // dropped) rather than a vector per layer, which would scatter over the threads' malloc arenas
  // and hold ~3x its size in resident memory across thousands of sessions.
  struct Kept {
    std::vector<float> h;  // [layers * width]
    int64_t position = 0;
    uint64_t used = 0;  // release order: the smallest is the least recently used
  };
  Kept keep(const State& s) {
    Kept k;
    k.position = s.position;
    k.h.reserve(s.h.size() * (s.h.empty() ? 0 : s.h[0].size()));
    for (const auto& v : s.h) k.h.insert(k.h.end(), v.begin(), v.end());
    k.used = ++clock_;
    return k;
  }
  State unkeep(const Kept& k) const {
    State s = model_.new_state();
    s.position = k.position;
    size_t o = 0;
    for (auto& v : s.h) std::copy(k.h.begin() + long(o), k.h.begin() + long(o + v.size()), v.begin()), o += v.size();
    return s;
  }

  const Model& model_;
  StateStore* store_;
  std::mutex mu_;
  size_t cap_ = 0, state_bytes_ = 0, evicted_ = 0;
  int64_t lock_ms_ = 0;
  uint64_t clock_ = 0;
  std::map<std::string, Kept> states_;
  std::set<std::string> busy_;
};

}  // namespace mmfree::serve
