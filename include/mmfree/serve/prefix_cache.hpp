// mmfree serving: the prefix cache. Prompts that share a beginning read it once: the recurrent
// state after a prefix of token ids is the whole context a continuation needs (one vector per
// layer, 328 KB for 2.7B), so a request starts from the state after the longest cached prefix
// of its prompt and reads only the rest. Results are bit-identical with and without the cache:
// the model's forward pass gives the same state however a sequence's tokens are split.
//
// States are kept in a radix tree over token ids (a node per point where cached prefixes part;
// an edge holds the ids between). Where a request leaves checkpoints (checkpoints()): the end
// of its prompt (less the last token, which is read again for its logits), every `interval`
// tokens along it and at powers of two below that, and the point where it parts from every
// prefix cached so far, so that a third request sharing that part starts exactly there, and a
// second one at most `interval` tokens (or half its shared part) before. Completions are kept
// too, prompt and generated ids, which is what "continue_from" resumes.
//
// Bounded by bytes (states, ids and nodes), least recently used out. With a StateStore each
// entry is also written (by a background thread, so the scheduler never waits on a disk or a
// network) as a self-checking record: a directory's entries are read back at start (a restart,
// even kill -9, keeps the cache; a file that fails its checksum is deleted, never used); a
// shared store's additions are announced to the other replicas, which fetch and check a state
// when a prompt first needs it.
//
// Entry record, version 1 (little-endian): "MMFP", u32 version, u32 n, i32 ids[n], the state
// file of the state after ids (docs/state-files.md: model fingerprint, position = n, checksum),
// u64 FNV-1a 64 of every byte before it.
#pragma once

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <deque>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <span>
#include <sstream>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "mmfree/model.hpp"
#include "mmfree/serve/state_store.hpp"
#include "mmfree/state_file.hpp"

namespace mmfree::serve {

struct PrefixCacheOptions {
  size_t max_bytes = size_t(256) << 20;  // states, ids and tree nodes held in memory
  int64_t interval = 64;                 // checkpoints along a prompt (and at powers of two below it)
};

// Counters for /metrics (read from any thread).
struct PrefixCacheStats {
  std::atomic<int64_t> lookups{0}, hits{0}, misses{0}, tokens_saved{0}, inserted{0}, evicted{0}, rejected{0},
      write_failures{0}, dropped_writes{0};
};

class PrefixCache {
 public:
  PrefixCache(const Model& m, PrefixCacheOptions opt, StateStore* store = nullptr)
      : model_(m), opt_(opt), store_(store), fingerprint_(model_fingerprint(m)) {
    if (opt_.interval < 1) fail("--prefix-interval", "must be at least 1");
    state_floats_ = size_t(m.config().num_hidden_layers * m.config().input_dim());
    // A state is one allocation: counted as the pages it takes (its block and malloc's header).
    state_bytes_ = (state_floats_ * sizeof(float) + 16 + 4095) / 4096 * 4096;
    if (store_) {
      restore();
      writer_ = std::thread([this] { write_loop(); });
    }
  }
  PrefixCache(const PrefixCache&) = delete;
  PrefixCache& operator=(const PrefixCache&) = delete;
  ~PrefixCache() {
    if (writer_.joinable()) {
      {
        std::lock_guard<std::mutex> l(wmu_);
        stop_ = true;
      }
      wcv_.notify_all();
      writer_.join();
    }
  }

  struct Hit {
    size_t length = 0;  // tokens of the prompt the state has read (0: a miss)
    State state;
  };
  // The state after the longest cached prefix of `ids` of at most `limit` tokens.
  Hit lookup(std::span<const int32_t> ids, size_t limit) {
    ++stats_.lookups;
    sync();
    limit = std::min(limit, ids.size());
    for (int attempt = 0; attempt < 64; ++attempt) {
      std::unique_lock<std::mutex> l(mu_);
      Node* best = nullptr;
      walk(ids.first(limit), [&](Node* n) {
        if (n->entry) best = n;
      });
      if (!best) break;
      if (best->entry->local) {
        Hit h{best->depth, unpack(*best->entry, best->depth)};
        touch(best);
        ++stats_.hits;
        stats_.tokens_saved += int64_t(h.length);
        return h;
      }
      // Announced by another replica: fetch and check its record outside the lock.
      const std::string id = best->entry->id;
      const size_t depth = best->depth;
      l.unlock();
      std::optional<State> st;
      try {
        if (auto bytes = store_->get("prefix", id)) st = decode(*bytes, ids.first(depth), "prefix entry " + id + " in " + store_->describe());
      } catch (const Error& e) {
        std::fprintf(stderr, "prefix cache: %s: not used\n", e.what());
      }
      l.lock();
      if (!st) {
        ++stats_.rejected;
        if (Node* n = find(ids.first(depth)); n && n->entry && n->entry->id == id) drop(n);
        continue;
      }
      insert_locked(ids.first(depth), *st, /*persist=*/false, "");
      Hit h{depth, std::move(*st)};
      ++stats_.hits;
      stats_.tokens_saved += int64_t(depth);
      return h;
    }
    ++stats_.misses;
    return {};
  }

  // Where a request that reads ids[start, n) should leave the state behind (positions into ids,
  // ascending, in (start, n - 1]): see the header comment.
  std::vector<size_t> checkpoints(std::span<const int32_t> ids, size_t start) {
    std::vector<size_t> cps;
    if (ids.size() < 2) return cps;
    const size_t last = ids.size() - 1;
    std::vector<size_t> held;
    size_t parted;
    {
      std::lock_guard<std::mutex> l(mu_);
      parted = walk(ids.first(last), [&](Node* n) {
        if (n->entry) held.push_back(n->depth);
      });
    }
    auto want = [&](size_t p) {
      if (p > start && p <= last && !std::binary_search(held.begin(), held.end(), p)) cps.push_back(p);
    };
    for (size_t p = 1; p < size_t(opt_.interval) && p <= last; p *= 2) want(p);
    for (size_t p = size_t(opt_.interval); p <= last; p += size_t(opt_.interval)) want(p);
    want(parted);
    want(last);
    std::sort(cps.begin(), cps.end());
    cps.erase(std::unique(cps.begin(), cps.end()), cps.end());
    return cps;
  }

  // Keeps (a copy of) the state after `ids`; `alias` (a completion's id) names it too.
  void insert(std::span<const int32_t> ids, const State& s, const std::string& alias = "") {
    if (ids.empty()) return;
    if (s.position != int64_t(ids.size())) fail("prefix cache", "a state's position must be the number of its ids");
    std::lock_guard<std::mutex> l(mu_);
    insert_locked(ids, s, /*persist=*/true, alias);
  }

  // The ids of the entry an alias names (a completion's id: what continue_from names), nullopt
  // once evicted, here and in the store.
  std::optional<std::vector<int32_t>> resolve(const std::string& alias) {
    sync();
    std::string id;
    {
      std::lock_guard<std::mutex> l(mu_);
      if (auto a = alias_.find(alias); a != alias_.end()) {
        if (auto it = by_id_.find(a->second); it != by_id_.end()) return ids_of(it->second);
        id = a->second;
      }
    }
    if (!store_) return std::nullopt;
    try {  // named by another replica, or before a restart: the store knows
      if (id.empty()) {
        auto named = store_->get("alias", alias);
        if (!named) return std::nullopt;
        id = *named;
      }
      auto bytes = store_->get("prefix", id);
      if (!bytes) return std::nullopt;
      const std::vector<int32_t> ids = record_ids(*bytes);
      if (ids.empty() || id_of(ids) != id) return std::nullopt;
      const State st = decode(*bytes, ids, "prefix entry " + id + " in " + store_->describe());
      std::lock_guard<std::mutex> l(mu_);
      insert_locked(ids, st, /*persist=*/false, "");
      alias_[alias] = id;
      return ids;
    } catch (const Error& e) {
      std::fprintf(stderr, "prefix cache: %s: not used\n", e.what());
      ++stats_.rejected;
      return std::nullopt;
    }
  }

  // The entry id of the state after `ids` (what continue_from names), whether held or not.
  std::string id_of(std::span<const int32_t> ids) const {
    detail::Fnv64 f;
    f.add_value(fingerprint_);
    f.add(ids.data(), ids.size() * sizeof(int32_t));
    char buf[17];
    std::snprintf(buf, sizeof buf, "%016llx", static_cast<unsigned long long>(f.h));
    return buf;
  }

  size_t bytes() const {
    std::lock_guard<std::mutex> l(mu_);
    return bytes_;
  }
  size_t entries() const {
    std::lock_guard<std::mutex> l(mu_);
    return by_id_.size();
  }
  const PrefixCacheStats& stats() const { return stats_; }
  const PrefixCacheOptions& options() const { return opt_; }
  // Waits until every entry inserted so far is in the store (tests; a graceful stop).
  void flush() {
    std::unique_lock<std::mutex> l(wmu_);
    wdone_.wait(l, [&] { return queue_.empty() && !writing_; });
  }

  // An entry's record, and reading one back for `ids` (an Error names `name` and the problem).
  std::string encode(std::span<const int32_t> ids, const State& s) const {
    std::string b = "MMFP";
    auto put = [&](const void* p, size_t n) { b.append(static_cast<const char*>(p), n); };
    const uint32_t version = 1, n = uint32_t(ids.size());
    put(&version, 4), put(&n, 4), put(ids.data(), ids.size() * 4);
    b += state_bytes(model_, s, fingerprint_);
    detail::Fnv64 f;
    f.add(b.data(), b.size());
    put(&f.h, 8);
    return b;
  }
  State decode(const std::string& b, std::span<const int32_t> ids, const std::string& name) const {
    if (b.size() < 20 || b.compare(0, 4, "MMFP") != 0) fail(name, "not a prefix cache entry (bad magic)");
    detail::Fnv64 f;
    f.add(b.data(), b.size() - 8);
    uint64_t sum;
    std::memcpy(&sum, b.data() + b.size() - 8, 8);
    if (sum != f.h) fail(name, "is corrupted (checksum mismatch)");
    uint32_t version, n;
    std::memcpy(&version, b.data() + 4, 4), std::memcpy(&n, b.data() + 8, 4);
    if (version != 1) fail(name, "prefix entry version " + std::to_string(version) + " is not supported");
    if (n == 0) fail(name, "holds an empty prefix");
    if (size_t(n) != ids.size() || 12 + size_t(n) * 4 > b.size() - 8) fail(name, "holds another prefix (its length differs)");
    if (std::memcmp(b.data() + 12, ids.data(), ids.size() * 4) != 0) fail(name, "holds another prefix (its ids differ)");
    std::istringstream in(b.substr(12 + size_t(n) * 4, b.size() - 8 - 12 - size_t(n) * 4));
    State s = read_state(model_, in, name);
    if (s.position != int64_t(n)) fail(name, "holds a state whose position is not its prefix length");
    return s;
  }
  static std::vector<int32_t> record_ids(const std::string& b) {
    uint32_t n = 0;
    if (b.size() >= 12) std::memcpy(&n, b.data() + 8, 4);
    if (n == 0 || b.size() < 12 + size_t(n) * 4) return {};
    std::vector<int32_t> ids(n);
    std::memcpy(ids.data(), b.data() + 12, size_t(n) * 4);
    return ids;
  }

 private:
  struct Node;
  struct Entry {
    std::string id;
    std::vector<std::string> aliases;
    bool local = false;     // the state is in memory (else: in the shared store)
    std::vector<float> h;   // [layers * width]: one block per state
    std::list<Node*>::iterator lru;
  };
  struct Node {
    std::vector<int32_t> edge;  // ids from the parent to here
    Node* parent = nullptr;
    size_t depth = 0;  // ids from the root to here
    std::map<int32_t, std::unique_ptr<Node>> kids;  // by the first id of their edge
    std::unique_ptr<Entry> entry;
  };
  static constexpr size_t kNodeBytes = 160;  // a node and its map slot, roughly
  static constexpr size_t kAliasBytes = 128;  // an alias in alias_ and in its entry

  // Calls on_node for every node on the path of ids (root first); returns how many ids the tree
  // holds a path for (the point where ids part from every cached prefix).
  template <class F>
  size_t walk(std::span<const int32_t> ids, F&& on_node) {
    Node* n = &root_;
    size_t i = 0;
    for (;;) {
      on_node(n);
      if (i == ids.size()) return i;
      auto it = n->kids.find(ids[i]);
      if (it == n->kids.end()) return i;
      Node* c = it->second.get();
      size_t k = 0;
      while (k < c->edge.size() && i + k < ids.size() && c->edge[k] == ids[i + k]) ++k;
      if (k < c->edge.size()) return i + k;
      i += k;
      n = c;
    }
  }
  Node* find(std::span<const int32_t> ids) {
    Node* found = nullptr;
    walk(ids, [&](Node* n) {
      if (n->depth == ids.size()) found = n;
    });
    return found;
  }
  // The node at the end of ids, made (splitting an edge) if needed.
  Node* make(std::span<const int32_t> ids) {
    Node* n = &root_;
    size_t i = 0;
    while (i < ids.size()) {
      auto it = n->kids.find(ids[i]);
      if (it == n->kids.end()) {
        auto c = std::make_unique<Node>();
        c->edge.assign(ids.begin() + long(i), ids.end());
        c->parent = n;
        c->depth = ids.size();
        bytes_ += kNodeBytes + c->edge.size() * 4;
        Node* raw = c.get();
        n->kids[ids[i]] = std::move(c);
        return raw;
      }
      Node* c = it->second.get();
      size_t k = 0;
      while (k < c->edge.size() && i + k < ids.size() && c->edge[k] == ids[i + k]) ++k;
      if (k < c->edge.size()) {  // part the edge at k
        auto mid = std::make_unique<Node>();
        mid->edge.assign(c->edge.begin(), c->edge.begin() + long(k));
        mid->parent = n;
        mid->depth = n->depth + k;
        std::unique_ptr<Node> rest = std::move(it->second);
        rest->edge.erase(rest->edge.begin(), rest->edge.begin() + long(k));
        rest->parent = mid.get();
        const int32_t first = rest->edge[0];
        mid->kids[first] = std::move(rest);
        bytes_ += kNodeBytes;
        it->second = std::move(mid);
        c = it->second.get();
      }
      n = c;
      i += k;
    }
    return n;
  }
  // Removes n's entry, then every node left with neither an entry nor children.
  void drop(Node* n) {
    if (n->entry) {
      if (n->entry->local) bytes_ -= state_bytes_;
      lru_.erase(n->entry->lru);
      by_id_.erase(n->entry->id);
      for (const std::string& a : n->entry->aliases) {
        alias_.erase(a);
        bytes_ -= kAliasBytes;
      }
      n->entry.reset();
    }
    while (n != &root_ && !n->entry && n->kids.empty()) {
      Node* p = n->parent;
      bytes_ -= kNodeBytes + n->edge.size() * 4;
      const int32_t first = n->edge[0];
      p->kids.erase(first);
      n = p;
    }
  }
  void touch(Node* n) { lru_.splice(lru_.end(), lru_, n->entry->lru); }
  std::vector<int32_t> ids_of(const Node* node) const {
    std::vector<int32_t> ids(node->depth);
    for (const Node* n = node; n != &root_; n = n->parent)
      std::copy(n->edge.begin(), n->edge.end(), ids.begin() + long(n->depth - n->edge.size()));
    return ids;
  }

  void insert_locked(std::span<const int32_t> ids, const State& s, bool persist, const std::string& alias) {
    Node* n = make(ids);
    if (!alias.empty() && !alias_.count(alias)) {
      if (!n->entry) {
        n->entry = std::make_unique<Entry>();
        n->entry->id = id_of(ids);
        n->entry->lru = lru_.insert(lru_.end(), n);
        by_id_[n->entry->id] = n;
      }
      n->entry->aliases.push_back(alias);
      alias_[alias] = n->entry->id;
      bytes_ += kAliasBytes;
      if (persist && store_) enqueue({"alias", alias, n->entry->id, {}, {}});
    }
    if (n->entry && n->entry->local) return touch(n), evict(n);  // the same ids give the same state
    if (!n->entry) {
      n->entry = std::make_unique<Entry>();
      n->entry->id = id_of(ids);
      n->entry->lru = lru_.insert(lru_.end(), n);
      by_id_[n->entry->id] = n;
    } else {
      touch(n);
    }
    Entry& e = *n->entry;
    e.local = true;
    e.h.resize(state_floats_);
    size_t o = 0;
    for (const auto& v : s.h) std::copy(v.begin(), v.end(), e.h.begin() + long(o)), o += v.size();
    bytes_ += state_bytes_;
    ++stats_.inserted;
    // Encoded (checksums: ~1 ms for a 2.7B state) by the writer, never on the scheduler's thread.
    if (persist && store_) enqueue({"prefix", e.id, "", std::vector<int32_t>(ids.begin(), ids.end()), e.h});
    evict(n);
  }
  // Oldest first until under the cap (never `keep`, just inserted: a cap below one state keeps one).
  void evict(Node* keep) {
    while (bytes_ > opt_.max_bytes && !lru_.empty()) {
      Node* v = lru_.front();
      if (v == keep) {
        if (lru_.size() == 1) break;
        touch(v);
        continue;
      }
      if (store_ && !store_->shared()) {  // its files go too
        enqueue({"prefix", v->entry->id, "", {}, {}});
        for (const std::string& a : v->entry->aliases) enqueue({"alias", a, "", {}, {}});
      }
      drop(v);
      ++stats_.evicted;
    }
  }
  State unpack(const Entry& e, size_t position) const { return unpack_floats(e.h, position); }
  State unpack_floats(const std::vector<float>& h, size_t position) const {
    State s = model_.new_state();
    s.position = int64_t(position);
    size_t o = 0;
    for (auto& v : s.h) std::copy(h.begin() + long(o), h.begin() + long(o + v.size()), v.begin()), o += v.size();
    return s;
  }

  // A shared store: index what other replicas announced (their states stay there until used).
  void sync() {
    if (!store_ || !store_->shared()) return;
    std::vector<std::pair<std::string, std::string>> news;
    try {
      std::lock_guard<std::mutex> c(cursor_mu_);
      news = store_->announced_since("prefix", cursor_);
    } catch (const Error& e) {
      std::fprintf(stderr, "prefix cache: %s\n", e.what());
      return;
    }
    std::lock_guard<std::mutex> l(mu_);
    for (auto& [id, summary] : news) add_remote(id, summary);
  }
  // summary: u64 model fingerprint, i32 ids[].
  void add_remote(const std::string& id, const std::string& summary) {
    if (summary.size() < 8 || (summary.size() - 8) % 4 != 0) return;
    uint64_t fp;
    std::memcpy(&fp, summary.data(), 8);
    if (fp != fingerprint_) return;  // another model's
    std::vector<int32_t> ids((summary.size() - 8) / 4);
    std::memcpy(ids.data(), summary.data() + 8, ids.size() * 4);
    if (ids.empty() || id_of(ids) != id) return;
    Node* n = make(ids);
    if (!n->entry) {
      n->entry = std::make_unique<Entry>();
      n->entry->id = id;
      n->entry->lru = lru_.insert(lru_.end(), n);
      by_id_[id] = n;
    }
    evict(n);
  }
  std::string summary(const std::vector<int32_t>& ids) const {
    std::string s(8 + ids.size() * 4, '\0');
    std::memcpy(s.data(), &fingerprint_, 8);
    std::memcpy(s.data() + 8, ids.data(), ids.size() * 4);
    return s;
  }

  // At start: a directory's entries (newest first, up to the cap), each checked; a shared
  // store's announcements so far.
  void restore() {
    if (store_->shared()) {
      std::lock_guard<std::mutex> c(cursor_mu_);
      cursor_.clear();
      for (auto& [id, s] : store_->announced_since("prefix", cursor_)) {
        std::lock_guard<std::mutex> l(mu_);
        add_remote(id, s);
      }
      return;
    }
    for (const std::string& id : store_->list("prefix")) {
      const std::string name = "prefix entry " + id + " in " + store_->describe();
      try {
        auto bytes = store_->get("prefix", id);
        if (!bytes) continue;
        const std::vector<int32_t> ids = record_ids(*bytes);
        if (ids.empty() || id_of(ids) != id) fail(name, "holds another prefix than its name says");
        const State s = decode(*bytes, ids, name);
        std::lock_guard<std::mutex> l(mu_);
        const int64_t evicted = stats_.evicted;
        insert_locked(ids, s, /*persist=*/false, "");
        --stats_.inserted;
        if (stats_.evicted != evicted) store_->remove("prefix", id);
      } catch (const Error& e) {
        std::fprintf(stderr, "prefix cache: %s: removed\n", e.what());
        ++stats_.rejected;
        store_->remove("prefix", id);
      }
    }
    for (const std::string& a : store_->list("alias")) {  // those whose entry is held; the others go
      const auto id = store_->get("alias", a);
      std::lock_guard<std::mutex> l(mu_);
      auto it = id ? by_id_.find(*id) : by_id_.end();
      if (it == by_id_.end()) {
        store_->remove("alias", a);
        continue;
      }
      it->second->entry->aliases.push_back(a);
      alias_[a] = *id;
      bytes_ += kAliasBytes;
    }
  }

  struct Write {
    std::string kind, id, bytes;  // a prefix: its ids and state (h) are encoded by the writer;
    std::vector<int32_t> ids;     // else bytes, empty to remove
    std::vector<float> h;
    size_t size() const { return bytes.size() + h.size() * sizeof(float); }
  };
  void enqueue(Write w) {
    std::lock_guard<std::mutex> l(wmu_);
    if (pending_bytes_ + w.size() > opt_.max_bytes) {  // the store cannot keep up: skip it
      ++stats_.dropped_writes;
      return;
    }
    pending_bytes_ += w.size();
    queue_.push_back(std::move(w));
    wcv_.notify_all();
  }
  void write_loop() {
    std::unique_lock<std::mutex> l(wmu_);
    for (;;) {
      wcv_.wait(l, [&] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stopping, all written
      Write w = std::move(queue_.front());
      queue_.pop_front();
      writing_ = true;
      l.unlock();
      const size_t size = w.size();
      try {
        if (!w.h.empty()) {
          State st = unpack_floats(w.h, w.ids.size());
          store_->put("prefix", w.id, encode(w.ids, st));
          if (store_->shared()) store_->announce("prefix", w.id, summary(w.ids));
        } else if (w.bytes.empty()) {
          store_->remove(w.kind, w.id);
        } else {
          store_->put(w.kind, w.id, w.bytes);
          if (store_->shared() && w.kind == "prefix") store_->announce("prefix", w.id, summary(w.ids));
        }
      } catch (const Error& e) {
        ++stats_.write_failures;
        std::fprintf(stderr, "prefix cache: %s\n", e.what());
      }
      l.lock();
      pending_bytes_ -= size;
      writing_ = false;
      wdone_.notify_all();
    }
  }

  const Model& model_;
  PrefixCacheOptions opt_;
  StateStore* store_;
  const uint64_t fingerprint_;
  size_t state_floats_ = 0, state_bytes_ = 0;
  PrefixCacheStats stats_;

  mutable std::mutex mu_;  // the tree, the LRU list, bytes_
  Node root_;
  std::list<Node*> lru_;  // entries, least recently used first
  std::map<std::string, Node*> by_id_;
  std::map<std::string, std::string> alias_;  // a completion's id -> its entry's id
  size_t bytes_ = 0;

  std::mutex cursor_mu_;
  std::string cursor_;  // a shared store's announcements read so far

  std::mutex wmu_;  // the writer's queue
  std::condition_variable wcv_, wdone_;
  std::deque<Write> queue_;
  size_t pending_bytes_ = 0;
  bool writing_ = false, stop_ = false;
  std::thread writer_;
};

}  // namespace mmfree::serve
