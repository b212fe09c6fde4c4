// mmfree-cli serve: the StateStore that replicas share, in Redis (hiredis, its official C client).
//
//   mmfree:session:ID          a session's state file
//   mmfree:lock:ID             a session held by a request (SET NX with an expiry, so a crashed
//                              replica's lock runs out); released only by its owner
//   mmfree:prefix:ID           a prefix cache entry (its record, with its checksum), set with an
//                              expiry (--prefix-ttl): with Redis's maxmemory-policy volatile-lru,
//                              prefixes give way under memory pressure and sessions never do
//   mmfree:alias:ID            a completion id naming a prefix entry (the same expiry)
//   mmfree:announce:prefix     a stream of the entries added (fields id, s: the ids they follow),
//                              which each replica reads to index the others' entries; capped
#pragma once

#include <hiredis/hiredis.h>
#include <unistd.h>

#include <chrono>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/parse.hpp"
#include "mmfree/serve/state_store.hpp"

namespace cli {

class RedisStore : public mmfree::serve::StateStore {
 public:
  // url: redis://HOST[:PORT]. prefix_ttl_ms: how long a prefix entry lives in Redis (0: no expiry).
  RedisStore(const std::string& url, int64_t prefix_ttl_ms) : url_(url), prefix_ttl_ms_(prefix_ttl_ms) {
    const std::string scheme = "redis://";
    if (!url.starts_with(scheme)) mmfree::fail("--session-store " + url, "expected redis://HOST:PORT");
    const std::string hp = url.substr(scheme.size());
    const size_t colon = hp.rfind(':');
    const std::string host = colon == std::string::npos ? hp : hp.substr(0, colon);
    const int port = colon == std::string::npos ? 6379 : int(mmfree::parse_int(hp.substr(colon + 1), "--session-store port", 1, 65535));
    const timeval tv{5, 0};
    c_ = redisConnectWithTimeout(host.c_str(), port, tv);
    if (!c_ || c_->err) mmfree::fail("--session-store " + url, std::string("cannot connect: ") + (c_ ? c_->errstr : "out of memory"));
    redisSetTimeout(c_, tv);
    token_ = std::to_string(::getpid()) + "-" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  ~RedisStore() override {
    if (c_) redisFree(c_);
  }
  RedisStore(const RedisStore&) = delete;
  RedisStore& operator=(const RedisStore&) = delete;

  std::string describe() const override { return url_; }
  bool shared() const override { return true; }

  std::optional<std::string> get(std::string_view kind, const std::string& id) override {
    check_id(kind, id);
    Reply r = command({"GET", key(kind, id)});
    if (r->type == REDIS_REPLY_NIL) return std::nullopt;
    if (r->type != REDIS_REPLY_STRING) mmfree::fail(url_, "unexpected reply to GET");
    return std::string(r->str, r->len);
  }
  void put(std::string_view kind, const std::string& id, const std::string& bytes) override {
    check_id(kind, id);
    std::vector<std::string> args{"SET", key(kind, id), bytes};
    if (kind != "session" && prefix_ttl_ms_ > 0) args.insert(args.end(), {"PX", std::to_string(prefix_ttl_ms_)});
    Reply r = command(args);
    if (r->type != REDIS_REPLY_STATUS) mmfree::fail(url_, "unexpected reply to SET");
  }
  void remove(std::string_view kind, const std::string& id) override {
    check_id(kind, id);
    command({"DEL", key(kind, id)});
  }
  std::vector<std::string> list(std::string_view kind) override {
    std::vector<std::string> ids;
    const std::string pre = "mmfree:" + std::string(kind) + ":";
    std::string cursor = "0";
    do {
      Reply r = command({"SCAN", cursor, "MATCH", pre + "*", "COUNT", "1000"});
      if (r->type != REDIS_REPLY_ARRAY || r->elements != 2) mmfree::fail(url_, "unexpected reply to SCAN");
      cursor.assign(r->element[0]->str, r->element[0]->len);
      for (size_t i = 0; i < r->element[1]->elements; ++i)
        ids.emplace_back(r->element[1]->element[i]->str + pre.size(), r->element[1]->element[i]->len - pre.size());
    } while (cursor != "0");
    return ids;
  }
  bool try_lock(const std::string& id, int64_t ttl_ms) override {
    Reply r = command({"SET", "mmfree:lock:" + id, token_, "NX", "PX", std::to_string(ttl_ms)});
    return r->type == REDIS_REPLY_STATUS;  // OK; nil when another holds it
  }
  void unlock(const std::string& id) override {  // only our own lock
    command({"EVAL", "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end", "1",
             "mmfree:lock:" + id, token_});
  }
  void announce(std::string_view kind, const std::string& id, const std::string& summary) override {
    command({"XADD", "mmfree:announce:" + std::string(kind), "MAXLEN", "~", "20000", "*", "id", id, "s", summary});
  }
  // cursor "": from the first announcement the stream still holds.
  std::vector<std::pair<std::string, std::string>> announced_since(std::string_view kind, std::string& cursor) override {
    std::vector<std::pair<std::string, std::string>> out;
    for (;;) {
      Reply r = command({"XRANGE", "mmfree:announce:" + std::string(kind), cursor.empty() ? "-" : "(" + cursor, "+", "COUNT", "1000"});
      if (r->type != REDIS_REPLY_ARRAY) mmfree::fail(url_, "unexpected reply to XRANGE");
      for (size_t i = 0; i < r->elements; ++i) {
        const redisReply* e = r->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements != 2) continue;
        cursor.assign(e->element[0]->str, e->element[0]->len);
        const redisReply* f = e->element[1];
        std::string id, s;
        for (size_t k = 0; k + 1 < f->elements; k += 2) {
          const std::string name(f->element[k]->str, f->element[k]->len);
          if (name == "id") id.assign(f->element[k + 1]->str, f->element[k + 1]->len);
          if (name == "s") s.assign(f->element[k + 1]->str, f->element[k + 1]->len);
        }
        if (!id.empty()) out.emplace_back(std::move(id), std::move(s));
      }
      if (r->elements < 1000) return out;
    }
  }

 private:
  struct Free {
    void operator()(redisReply* r) const { freeReplyObject(r); }
  };
  using Reply = std::unique_ptr<redisReply, Free>;
  static std::string key(std::string_view kind, const std::string& id) { return "mmfree:" + std::string(kind) + ":" + id; }
  Reply command(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (auto& a : args) argv.push_back(a.data()), lens.push_back(a.size());
    std::lock_guard<std::mutex> l(mu_);  // one connection, one command at a time
    auto* r = static_cast<redisReply*>(redisCommandArgv(c_, int(argv.size()), argv.data(), lens.data()));
    if (!r && redisReconnect(c_) == REDIS_OK)  // Redis restarted, or the connection timed out: once more
      r = static_cast<redisReply*>(redisCommandArgv(c_, int(argv.size()), argv.data(), lens.data()));
    if (!r) mmfree::fail(url_, std::string("connection lost: ") + c_->errstr);
    if (r->type == REDIS_REPLY_ERROR) {
      const std::string e(r->str, r->len);
      freeReplyObject(r);
      mmfree::fail(url_, e);
    }
    return Reply(r);
  }

  std::string url_, token_;
  int64_t prefix_ttl_ms_ = 0;
  redisContext* c_ = nullptr;
  std::mutex mu_;
};

}  // namespace cli
