// mmfree serving: where recurrent states outlive a request. Sessions and the prefix cache keep
// their states in memory and, through one StateStore, in a directory (surviving a restart, even
// kill -9) or in a store that several server processes share (Redis: cli/serve/redis_store.hpp).
//
// A store holds byte strings under (kind, id): kind is "session", "prefix" or "alias", an id is 1 to 128
// of [A-Za-z0-9._-] not starting with '.'. What the bytes mean (a state file, a cache entry with
// its checksum) is the caller's: a store only keeps them.
#pragma once

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/state_file.hpp"

namespace mmfree::serve {

class StateStore {
 public:
  virtual ~StateStore() = default;
  // Names the store in messages ("directory /var/lib/mmfree", "redis://127.0.0.1:6379").
  virtual std::string describe() const = 0;
  virtual std::optional<std::string> get(std::string_view kind, const std::string& id) = 0;
  virtual void put(std::string_view kind, const std::string& id, const std::string& bytes) = 0;
  virtual void remove(std::string_view kind, const std::string& id) = 0;
  // Every id of `kind` held now (a restarted server rebuilds its prefix cache from them).
  virtual std::vector<std::string> list(std::string_view kind) = 0;
  // Other processes read and write it too (replicas): a local copy may be stale, a session's
  // lock must be the store's, and additions are announced to the others.
  virtual bool shared() const { return false; }
  // A session held by one request at a time across every process sharing the store; the lock
  // runs out after ttl_ms should its holder die. Unshared stores lock within the process.
  virtual bool try_lock(const std::string& id, int64_t ttl_ms) {
    (void)ttl_ms;
    std::lock_guard<std::mutex> l(lock_mu_);
    return locked_.insert(id).second;
  }
  virtual void unlock(const std::string& id) {
    std::lock_guard<std::mutex> l(lock_mu_);
    locked_.erase(id);
  }
  // Shared stores: tell the other processes an entry was added, with a summary they can index
  // it by (the prefix cache's token ids), and read what others announced since `cursor`
  // (updated; "" = from now on, returning nothing).
  virtual void announce(std::string_view kind, const std::string& id, const std::string& summary) {
    (void)kind, (void)id, (void)summary;
  }
  virtual std::vector<std::pair<std::string, std::string>> announced_since(std::string_view kind, std::string& cursor) {
    (void)kind, (void)cursor;
    return {};
  }

 protected:
  static void check_id(std::string_view kind, const std::string& id) {
    bool ok = !id.empty() && id.size() <= 128 && id[0] != '.';
    for (char c : id)
      ok = ok && ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' || c == '.');
    if (!ok) fail(std::string(kind) + " id '" + id + "'", "must be 1 to 128 of letters, digits, '-', '_', '.'");
  }

 private:
  std::mutex lock_mu_;
  std::set<std::string> locked_;
};

// In this process only: what a server without --state-dir or --session-store keeps.
class MemoryStore : public StateStore {
 public:
  std::string describe() const override { return "memory"; }
  std::optional<std::string> get(std::string_view kind, const std::string& id) override {
    std::lock_guard<std::mutex> l(mu_);
    auto it = data_.find(key(kind, id));
    if (it == data_.end()) return std::nullopt;
    return it->second;
  }
  void put(std::string_view kind, const std::string& id, const std::string& bytes) override {
    check_id(kind, id);
    std::lock_guard<std::mutex> l(mu_);
    data_[key(kind, id)] = bytes;
  }
  void remove(std::string_view kind, const std::string& id) override {
    std::lock_guard<std::mutex> l(mu_);
    data_.erase(key(kind, id));
  }
  std::vector<std::string> list(std::string_view kind) override {
    std::lock_guard<std::mutex> l(mu_);
    std::vector<std::string> ids;
    const std::string k = std::string(kind) + "/";
    for (auto it = data_.lower_bound(k); it != data_.end() && it->first.starts_with(k); ++it) ids.push_back(it->first.substr(k.size()));
    return ids;
  }

 private:
  static std::string key(std::string_view kind, const std::string& id) { return std::string(kind) + "/" + id; }
  std::mutex mu_;
  std::map<std::string, std::string> data_;
};

// Files in a directory, each written atomically (write_file_atomically): a session is DIR/ID.state
// (a state file, docs/state-files.md), any other kind DIR/KIND/ID.KIND (a prefix cache entry
// DIR/prefix/ID.prefix, a completion's alias DIR/alias/ID.alias). A process killed
// while writing leaves a temporary ".NAME.tmp.PID" beside the intact old file: removed at start.
class DirectoryStore : public StateStore {
 public:
  explicit DirectoryStore(std::string dir) : dir_(std::move(dir)) {
    std::error_code ec;
    for (const char* sub : {"", "prefix", "alias"}) {
      const std::filesystem::path d = std::filesystem::path(dir_) / sub;
      std::filesystem::create_directories(d, ec);
      if (ec) fail("--state-dir " + dir_, "cannot create " + d.string() + " (" + ec.message() + ")");
      for (const auto& e : std::filesystem::directory_iterator(d, ec)) {
        const std::string f = e.path().filename().string();
        if (f.starts_with(".") && f.find(".tmp.") != std::string::npos) std::filesystem::remove(e.path(), ec);
      }
    }
  }
  std::string describe() const override { return "directory " + dir_; }
  std::optional<std::string> get(std::string_view kind, const std::string& id) override {
    check_id(kind, id);
    std::ifstream in(path(kind, id), std::ios::binary);
    if (!in) return std::nullopt;
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
  }
  void put(std::string_view kind, const std::string& id, const std::string& bytes) override {
    check_id(kind, id);
    if (kind != "session") {
      std::error_code ec;
      std::filesystem::create_directories(std::filesystem::path(path(kind, id)).parent_path(), ec);
    }
    write_file_atomically(path(kind, id), bytes);
  }
  void remove(std::string_view kind, const std::string& id) override {
    check_id(kind, id);
    std::error_code ec;
    std::filesystem::remove(path(kind, id), ec);
  }
  std::vector<std::string> list(std::string_view kind) override {
    std::vector<std::string> ids;
    const std::string ext = kind == "session" ? ".state" : "." + std::string(kind);
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator(std::filesystem::path(path(kind, "x")).parent_path(), ec)) {
      const std::string f = e.path().filename().string();
      if (!f.starts_with(".") && f.ends_with(ext)) ids.push_back(f.substr(0, f.size() - ext.size()));
    }
    return ids;
  }
  // Where an entry lives (tests corrupt files on purpose).
  std::string path(std::string_view kind, const std::string& id) const {
    if (kind == "session") return dir_ + "/" + id + ".state";
    return dir_ + "/" + std::string(kind) + "/" + id + "." + std::string(kind);
  }

 private:
  std::string dir_;
};

}  // namespace mmfree::serve
