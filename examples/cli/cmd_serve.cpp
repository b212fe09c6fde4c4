// mmfree-cli serve: an OpenAI-compatible HTTP server (cpp-httplib) over one continuous-batching
// Scheduler. Request parsing and validation live in mmfree/server_api.hpp (fuzzed without
// sockets); this file binds them to HTTP: routes, streaming, limits, keys, metrics.
#include <hiredis/hiredis.h>
#include <httplib.h>
#include <malloc.h>
#include <signal.h>
#include <sys/prctl.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <chrono>
#include <condition_variable>
#include <deque>
#include <filesystem>
#include <map>
#include <functional>
#include <mutex>
#include <thread>
#include <set>
#include <sstream>

#include "commands.hpp"
#include "mmfree/scheduler.hpp"
#include "mmfree/server_api.hpp"

namespace cli {

namespace {

using nlohmann::json;
using namespace std::chrono_literals;

// One completion request between the HTTP thread that serves it and the scheduler thread that
// produces its tokens. The scheduler's callbacks only append here and notify.
struct Job {
  std::mutex mu;
  std::condition_variable cv;
  struct Piece {
    std::string text;
    std::vector<int32_t> tokens;
  };
  std::deque<Piece> pieces;   // produced, not yet sent (streaming)
  std::string text;           // everything released so far
  std::vector<int32_t> tokens;
  bool done = false;
  mmfree::State final_state;  // sessions: the state after every token returned
  std::optional<mmfree::State> snapshot;  // sessions, --persist-every: a mid-stream state to persist
  mmfree::Finish finish = mmfree::Finish::Length;
  std::string error;
  // Weak: the sequence's callbacks hold the Job, so a strong pointer back would be a cycle that
  // leaked both (~30 KB a request on kjv-demo, a state and a row of logits each).
  std::weak_ptr<mmfree::Sequence> seq;
  void cancel() {
    if (auto s = seq.lock()) s->cancelled = true;
  }
};

// Constant-time comparison of a presented key with the configured one.
bool same_key(const std::string& a, const std::string& b) {
  unsigned char diff = a.size() == b.size() ? 0 : 1;
  const size_t n = std::max(a.size(), b.size());
  for (size_t i = 0; i < n; ++i)
    diff |= static_cast<unsigned char>((i < a.size() ? a[i] : 0) ^ (i < b.size() ? b[i] : 0));
  return diff == 0;
}

// Session states shared by several servers (replicas behind a load balancer) through Redis:
// "mmfree:session:ID" holds the state file's bytes, "mmfree:lock:ID" marks the session busy (SET
// NX with an expiry, so a crashed replica's lock runs out), released only by its owner.
class RedisStore {
 public:
  explicit RedisStore(const std::string& url) : url_(url) {
    const std::string scheme = "redis://";
    if (!url.starts_with(scheme)) fail("--session-store " + url, "expected redis://HOST:PORT");
    const std::string hp = url.substr(scheme.size());
    const size_t colon = hp.rfind(':');
    const std::string host = colon == std::string::npos ? hp : hp.substr(0, colon);
    const int port = colon == std::string::npos ? 6379 : int(mmfree::parse_int(hp.substr(colon + 1), "--session-store port", 1, 65535));
    const timeval tv{5, 0};
    c_ = redisConnectWithTimeout(host.c_str(), port, tv);
    if (!c_ || c_->err) fail("--session-store " + url, std::string("cannot connect: ") + (c_ ? c_->errstr : "out of memory"));
    redisSetTimeout(c_, tv);
    token_ = std::to_string(::getpid()) + "-" + std::to_string(std::chrono::steady_clock::now().time_since_epoch().count());
  }
  ~RedisStore() {
    if (c_) redisFree(c_);
  }
  std::optional<std::string> get(const std::string& id) {
    Reply r = command({"GET", "mmfree:session:" + id});
    if (r->type == REDIS_REPLY_NIL) return std::nullopt;
    if (r->type != REDIS_REPLY_STRING) fail(url_, "unexpected reply to GET");
    return std::string(r->str, r->len);
  }
  void set(const std::string& id, const std::string& bytes) { check(command({"SET", "mmfree:session:" + id, bytes}), "SET"); }
  bool lock(const std::string& id, int64_t ttl_ms) {
    Reply r = command({"SET", "mmfree:lock:" + id, token_, "NX", "PX", std::to_string(ttl_ms)});
    return r->type == REDIS_REPLY_STATUS;  // OK; nil when another holds it
  }
  void unlock(const std::string& id) {  // only our own lock
    command({"EVAL", "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) else return 0 end", "1",
             "mmfree:lock:" + id, token_});
  }

 private:
  struct Free {
    void operator()(redisReply* r) const { freeReplyObject(r); }
  };
  using Reply = std::unique_ptr<redisReply, Free>;
  Reply command(const std::vector<std::string>& args) {
    std::vector<const char*> argv;
    std::vector<size_t> lens;
    for (auto& a : args) argv.push_back(a.data()), lens.push_back(a.size());
    std::lock_guard<std::mutex> l(mu_);  // one connection, one command at a time
    auto* r = static_cast<redisReply*>(redisCommandArgv(c_, int(argv.size()), argv.data(), lens.data()));
    if (!r) fail(url_, std::string("connection lost: ") + c_->errstr);
    if (r->type == REDIS_REPLY_ERROR) {
      const std::string e(r->str, r->len);
      freeReplyObject(r);
      fail(url_, e);
    }
    return Reply(r);
  }
  void check(const Reply& r, const char* what) {
    if (r->type != REDIS_REPLY_STATUS) fail(url_, std::string("unexpected reply to ") + what);
  }
  std::string url_, token_;
  redisContext* c_ = nullptr;
  std::mutex mu_;
};

// Sessions (the "session" extension): a conversation's state, kept between requests, in memory
// and, with --state-dir, on disk (written atomically when each request ends), so a session
// survives a restart or kill -9 at its last completed request.
class Sessions {
 public:
  // cap_bytes: states kept in memory at most (0: no cap); beyond it the least recently used are
  // dropped from memory (they are on disk: a cap needs a directory) and read back on use.
  Sessions(const mmfree::Model& m, std::string dir, size_t cap_bytes, const std::string& store, int64_t lock_ms)
      : model_(m), dir_(std::move(dir)), cap_(cap_bytes), lock_ms_(lock_ms) {
    if (!store.empty()) {
      if (!dir_.empty() || cap_) fail("--session-store", "replaces --state-dir and --sessions-memory: give one or the other");
      redis_ = std::make_unique<RedisStore>(store);
    }
    if (cap_ && dir_.empty()) fail("--sessions-memory", "needs --state-dir (sessions beyond the cap wait on disk)");
    if (!dir_.empty()) {
      std::filesystem::create_directories(dir_);
      // A process killed while writing leaves its temporary file (".ID.state.tmp.PID"); the state
      // it was replacing is intact. Remove them.
      for (const auto& e : std::filesystem::directory_iterator(dir_)) {
        const std::string f = e.path().filename().string();
        if (f.starts_with(".") && f.find(".state.tmp.") != std::string::npos) std::filesystem::remove(e.path());
      }
    }
    state_bytes_ = size_t(m.config().num_hidden_layers * m.config().input_dim()) * sizeof(float) + 256;
  }
  // Takes the session for one request: its state (new if unknown), or nullopt when another
  // request holds it.
  std::optional<mmfree::State> acquire(const std::string& id) {
    if (redis_) {  // shared by replicas: the state is always Redis's, never a local copy
      if (!redis_->lock(id, lock_ms_)) return std::nullopt;
      try {
        const auto bytes = redis_->get(id);
        if (!bytes) return model_.new_state();
        std::istringstream in(*bytes);
        return mmfree::read_state(model_, in, "session '" + id + "' in Redis");
      } catch (...) {
        redis_->unlock(id);
        throw;
      }
    }
    std::lock_guard<std::mutex> l(mu_);
    if (busy_.count(id)) return std::nullopt;
    mmfree::State s;
    if (auto it = states_.find(id); it != states_.end()) s = unkeep(it->second);
    else if (!dir_.empty() && std::filesystem::exists(file(id))) s = mmfree::load_state(model_, file(id));
    else s = model_.new_state();
    busy_.insert(id);
    return s;
  }
  // Persists a state of a session still held by a request (a mid-stream snapshot).
  void persist(const std::string& id, const mmfree::State& s) {
    if (redis_) {
      std::ostringstream out;
      mmfree::write_state(model_, s, out);
      redis_->set(id, out.str());
      return;
    }
    if (!dir_.empty()) mmfree::save_state(model_, s, file(id));
    std::lock_guard<std::mutex> l(mu_);  // memory and disk agree, whatever happens next
    states_[id] = keep(s);
  }
  // Ends the request's hold; with a state, the session continues from it from now on.
  void release(const std::string& id, const mmfree::State* s) {
    if (redis_) {
      struct Unlock {
        RedisStore* r;
        const std::string& id;
        ~Unlock() {
          try {
            r->unlock(id);
          } catch (...) {  // the lock expires by itself
          }
        }
      } unlock{redis_.get(), id};
      if (s) {
        std::ostringstream out;
        mmfree::write_state(model_, *s, out);
        redis_->set(id, out.str());
      }
      return;
    }
    if (s && !dir_.empty()) mmfree::save_state(model_, *s, file(id));
    std::lock_guard<std::mutex> l(mu_);
    if (s) states_[id] = keep(*s);
    busy_.erase(id);
    if (cap_)  // evict the least recently used (not busy) until under the cap
      while (states_.size() * state_bytes_ > cap_) {
        auto victim = states_.end();
        for (auto it = states_.begin(); it != states_.end(); ++it)
          if (!busy_.count(it->first) && (victim == states_.end() || it->second.used < victim->second.used)) victim = it;
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
  std::string file(const std::string& id) const { return dir_ + "/" + id + ".state"; }
  const mmfree::Model& model_;
  std::string dir_;
  std::mutex mu_;
  // A kept state in one block (a 2.7B state: 328 KB, one mmap'd allocation returned whole when
  // dropped) rather than a vector per layer, which would scatter over the threads' malloc arenas
  // and hold ~3x its size in resident memory across thousands of sessions.
  struct Kept {
    std::vector<float> h;  // [layers * width]
    int64_t position = 0;
    uint64_t used = 0;  // release order: the smallest is the least recently used
  };
  Kept keep(const mmfree::State& s) {
    Kept k;
    k.position = s.position;
    k.h.reserve(s.h.size() * (s.h.empty() ? 0 : s.h[0].size()));
    for (const auto& v : s.h) k.h.insert(k.h.end(), v.begin(), v.end());
    k.used = ++clock_;
    return k;
  }
  mmfree::State unkeep(const Kept& k) const {
    mmfree::State s = model_.new_state();
    s.position = k.position;
    size_t o = 0;
    for (auto& v : s.h) std::copy(k.h.begin() + long(o), k.h.begin() + long(o + v.size()), v.begin()), o += v.size();
    return s;
  }
  size_t cap_ = 0, state_bytes_ = 0, evicted_ = 0;
  int64_t lock_ms_ = 0;
  std::unique_ptr<RedisStore> redis_;
  uint64_t clock_ = 0;
  std::map<std::string, Kept> states_;
  std::set<std::string> busy_;
};

// Connections each get a thread of their own, up to `cap` at once (beyond it, new connections
// wait in the listen backlog until one closes). A fixed pool let 300 clients that send a partial
// request and wait hold every thread, and a good client's GET /health waited 8.9 s behind them;
// an idle connection now holds only its own thread (a stack reserved, a few KB resident) until
// its read timeout, never a good client's.
class ConnectionThreads : public httplib::TaskQueue {
 public:
  explicit ConnectionThreads(size_t cap) : cap_(cap) {}
  void enqueue(std::function<void()> fn) override {
    std::unique_lock<std::mutex> l(mu_);
    room_.wait(l, [&] { return running_ < cap_; });
    ++running_;
    l.unlock();
    std::thread([this, fn = std::move(fn)] {
      fn();
      std::lock_guard<std::mutex> g(mu_);
      --running_;
      room_.notify_all();
    }).detach();
  }
  // The server is stopping: every connection's thread finishes (as the fixed pool joined its own).
  void shutdown() override {
    std::unique_lock<std::mutex> l(mu_);
    room_.wait(l, [&] { return running_ == 0; });
  }
  size_t open() {
    std::lock_guard<std::mutex> g(mu_);
    return running_;
  }

 private:
  const size_t cap_;
  std::mutex mu_;
  std::condition_variable room_;
  size_t running_ = 0;
};

// cpp-httplib 0.11 listens with a backlog of 5: a burst of connections (a few hundred clients
// arriving together) overflows it, and the kernel drops their SYNs, so even a good client's
// connection waits a second or more for the retry. The listening socket on `port` is found among
// this process's descriptors and its backlog widened (listen() again changes it on Linux).
void widen_listen_backlog(int port) {
  for (int fd = 0; fd < 4096; ++fd) {
    int listening = 0;
    socklen_t len = sizeof listening;
    if (getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) != 0 || !listening) continue;
    sockaddr_storage ss{};
    socklen_t sl = sizeof ss;
    if (getsockname(fd, reinterpret_cast<sockaddr*>(&ss), &sl) != 0) continue;
    const int p = ss.ss_family == AF_INET6 ? ntohs(reinterpret_cast<sockaddr_in6*>(&ss)->sin6_port)
                                           : ntohs(reinterpret_cast<sockaddr_in*>(&ss)->sin_port);
    if (p == port) ::listen(fd, SOMAXCONN);
  }
}

// Limits cpp-httplib has no hook for, kept by a thread that looks at this process's sockets a few
// times a second: connections per client address (beyond the limit, the newest that are not in
// the middle of a request are shut down), and the time a connection may take to send a whole
// request (a client trickling a byte every few seconds never hits the 10 s silence limit). The
// HTTP handlers report which connections are inside a request (begin/end, keyed by peer address
// and port); a connection waiting for its request longer than request_seconds is shut down, so
// its thread's read fails and it closes.
class ConnectionWarden {
 public:
  ConnectionWarden(int port, size_t per_address, double request_seconds)
      : port_(port), per_address_(per_address), request_seconds_(request_seconds), th_([this] { run(); }) {}
  ~ConnectionWarden() {
    stop_ = true;
    th_.join();
  }
  void begin(const std::string& addr, int port) {
    std::lock_guard<std::mutex> g(mu_);
    busy_.insert(addr + " " + std::to_string(port));
  }
  void end(const std::string& addr, int port) {
    const std::string k = addr + " " + std::to_string(port);
    std::lock_guard<std::mutex> g(mu_);
    busy_.erase(k);
    done_[k] = std::chrono::steady_clock::now();
  }
  size_t shut_down() const { return shut_; }

 private:
  struct Conn {
    ino_t ino = 0;
    std::string addr, key;
    std::chrono::steady_clock::time_point seen;
  };
  static std::string address_of(const sockaddr_storage& ss, int* port) {
    char buf[INET6_ADDRSTRLEN] = "";
    if (ss.ss_family == AF_INET6) {
      auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
      inet_ntop(AF_INET6, &a->sin6_addr, buf, sizeof buf);
      *port = ntohs(a->sin6_port);
    } else {
      auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
      inet_ntop(AF_INET, &a->sin_addr, buf, sizeof buf);
      *port = ntohs(a->sin_port);
    }
    return buf;
  }
  void run() {
    while (!stop_) {
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
      scan();
    }
  }
  void scan() {
    const auto now = std::chrono::steady_clock::now();
    std::map<int, Conn> seen;
    std::error_code ec;
    for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd", ec)) {
      int fd = 0;
      try {
        fd = std::stoi(e.path().filename().string());
      } catch (...) {
        continue;
      }
      struct stat st {};
      if (fstat(fd, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
      sockaddr_storage local{}, peer{};
      socklen_t ll = sizeof local, pl = sizeof peer;
      if (getsockname(fd, reinterpret_cast<sockaddr*>(&local), &ll) != 0) continue;
      int lport = 0, pport = 0;
      address_of(local, &lport);
      if (lport != port_ || getpeername(fd, reinterpret_cast<sockaddr*>(&peer), &pl) != 0) continue;  // ours, connected
      Conn c;
      c.ino = st.st_ino;
      c.addr = address_of(peer, &pport);
      c.key = c.addr + " " + std::to_string(pport);
      auto old = conns_.find(fd);
      c.seen = old != conns_.end() && old->second.ino == c.ino ? old->second.seen : now;
      seen[fd] = c;
    }
    conns_ = seen;
    std::lock_guard<std::mutex> g(mu_);
    std::map<std::string, std::vector<std::pair<std::chrono::steady_clock::time_point, int>>> idle_by_addr;
    std::map<std::string, size_t> count;
    for (auto& [fd, c] : conns_) {
      ++count[c.addr];
      if (busy_.count(c.key)) continue;
      auto d = done_.find(c.key);
      const auto since = d != done_.end() && d->second > c.seen ? d->second : c.seen;
      if (std::chrono::duration<double>(now - since).count() > request_seconds_) {
        ::shutdown(fd, SHUT_RDWR);
        ++shut_;
        continue;
      }
      idle_by_addr[c.addr].push_back({c.seen, fd});
    }
    for (auto& [addr, v] : idle_by_addr) {
      if (count[addr] <= per_address_) continue;
      std::sort(v.begin(), v.end());  // the newest last
      for (size_t k = 0; k < count[addr] - per_address_ && k < v.size(); ++k) {
        ::shutdown(v[v.size() - 1 - k].second, SHUT_RDWR);
        ++shut_;
      }
    }
    // Forget what no open connection refers to.
    std::set<std::string> live;
    for (auto& [fd, c] : conns_) live.insert(c.key);
    for (auto it = done_.begin(); it != done_.end();) it = live.count(it->first) ? std::next(it) : done_.erase(it);
  }

  const int port_;
  const size_t per_address_;
  const double request_seconds_;
  std::atomic<bool> stop_{false};
  std::atomic<size_t> shut_{0};
  std::mutex mu_;
  std::set<std::string> busy_;
  std::map<std::string, std::chrono::steady_clock::time_point> done_;
  std::map<int, Conn> conns_;  // the scanning thread's own
  std::thread th_;
};

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

}  // namespace

int cmd_serve(const Args& a) {
  a.allow({"host", "port", "parallel", "queue", "api-key", "api-key-file", "allow-public", "max-body", "state-dir", "sessions-memory",
           "session-store", "persist-every",
           "max-prompt-tokens", "max-tokens", "timeout", "exit-with-parent", "name", "max-connections",
           "max-connections-per-address", "request-time"});
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

  const std::string path = model_path(a);
  const mmfree::Model model = load(a);
  const mmfree::Tokenizer tok = mmfree::load_tokenizer(path);
  if (tok.vocab_size() > model.vocab_size()) fail(tok.source(), "has more tokens than the model's vocabulary");
  const std::string name = a.has("name") ? a.str("name") : std::filesystem::path(path).filename().string();
  const int32_t eos = int32_t(model.config().eos_token_id);
  const int64_t persist_every = a.has("persist-every") ? mmfree::parse_int(a.str("persist-every"), "--persist-every", 1, 1 << 20) : 0;
  const size_t sessions_cap =
      a.has("sessions-memory") ? size_t(mmfree::parse_int(a.str("sessions-memory"), "--sessions-memory", 1, 1 << 24)) << 20 : 0;
  Sessions sessions(model, a.has("state-dir") ? a.str("state-dir") : "", sessions_cap,
                    a.has("session-store") ? a.str("session-store") : "", int64_t((timeout + 60) * 1000));
  mmfree::Scheduler sched(model, so);
  std::atomic<int64_t> requests{0}, rejected{0}, errors{0};
  const auto started = std::chrono::steady_clock::now();

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
      ++rejected;
      send_error(res, e.status, e.type, e.what());
    }
  };
  svr.Post("/tokenize", [&](const httplib::Request& req, httplib::Response& res) {
    api_call(res, [&] { return mmfree::api::tokenize(req.body, tok); });
  });
  svr.Post("/detokenize", [&](const httplib::Request& req, httplib::Response& res) {
    api_call(res, [&] { return mmfree::api::detokenize(req.body, tok); });
  });
  svr.Get("/metrics", [&](const httplib::Request&, httplib::Response& res) {
    const auto& st = sched.stats();
    const double busy = st.busy_seconds.load(), up = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    std::string m;
    auto metric = [&](const char* n, const char* type, const char* help, double v) {
      char line[256];
      std::snprintf(line, sizeof line, "# HELP %s %s\n# TYPE %s %s\n%s %.17g\n", n, help, n, type, n, v);
      m += line;
    };
    metric("mmfree_http_requests_total", "counter", "HTTP requests received", double(requests.load()));
    metric("mmfree_http_requests_rejected_total", "counter", "requests refused as invalid (4xx)", double(rejected.load()));
    metric("mmfree_sequences_total", "counter", "completions started", double(st.sequences.load()));
    metric("mmfree_prompt_tokens_total", "counter", "prompt tokens read", double(st.prompt_tokens.load()));
    metric("mmfree_generated_tokens_total", "counter", "tokens generated", double(st.generated_tokens.load()));
    metric("mmfree_decode_steps_total", "counter", "batched decode steps", double(st.steps.load()));
    metric("mmfree_decode_batch_tokens_total", "counter", "tokens decoded in batched steps", double(st.batched_tokens.load()));
    metric("mmfree_busy_seconds_total", "counter", "seconds spent in forward passes", busy);
    metric("mmfree_generated_tokens_per_second", "gauge", "tokens generated per second of forward passes",
           busy > 0 ? double(st.generated_tokens.load()) / busy : 0);
    metric("mmfree_active_sequences", "gauge", "sequences decoding now", double(st.active.load()));
    metric("mmfree_queued_sequences", "gauge", "sequences waiting for a place", double(st.queued.load()));
    metric("mmfree_uptime_seconds", "gauge", "seconds since the server started", up);
    metric("mmfree_sessions_in_memory", "gauge", "session states held in memory", double(sessions.in_memory()));
    metric("mmfree_sessions_evicted_total", "counter", "session states dropped from memory (kept on disk)", double(sessions.evicted()));
    res.set_content(m, "text/plain; version=0.0.4");
  });

  svr.Post("/v1/completions", [&](const httplib::Request& req, httplib::Response& res) {
    mmfree::api::CompletionRequest r;
    try {
      r = mmfree::api::parse_completion(req.body, tok, model.vocab_size(), lim, eos);
    } catch (const mmfree::api::ApiError& e) {
      ++rejected;
      return send_error(res, e.status, e.type, e.what());
    }
    auto job = std::make_shared<Job>();
    auto seq = std::make_shared<mmfree::Sequence>();
    // A session: continue its state (409 while another request holds it); a text prompt that
    // continues one is encoded without BOS.
    std::shared_ptr<std::string> session;
    if (!r.session.empty()) {
      std::optional<mmfree::State> st;
      try {
        st = sessions.acquire(r.session);
      } catch (const mmfree::Error& e) {
        return send_error(res, 500, "server_error", std::string("session '") + r.session + "': " + e.what());
      }
      if (!st) return send_error(res, 409, "conflict", "session '" + r.session + "' is in use by another request");
      session = std::shared_ptr<std::string>(new std::string(r.session), [&sessions](std::string* id) {
        if (!id->empty()) sessions.release(*id, nullptr);  // without a state: the session stays where it was
        delete id;
      });
      if (st->position > 0 && r.prompt_was_text) {
        r.prompt = tok.encode(r.prompt_text, /*add_special=*/false);
        if (r.prompt.empty()) return send_error(res, 400, "invalid_request_error", "request: 'prompt' encodes to no tokens");
      }
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
    }
    seq->prompt = r.prompt;
    seq->gen = r.gen;
    seq->deadline = std::chrono::steady_clock::now() + std::chrono::duration_cast<std::chrono::steady_clock::duration>(
                                                          std::chrono::duration<double>(timeout));
    // Decoder and stop strings run on the scheduler thread; only their output crosses over.
    auto dec = std::make_shared<mmfree::IncrementalDecoder>(tok);
    if (r.prompt_was_text)
      for (int32_t id : r.prompt) dec->push(id);  // continue the prompt's spacing
    auto stop = std::make_shared<mmfree::api::StopText>(r.stop);
    seq->on_token = [job, dec, stop](int32_t id) {
      const std::string out = stop->push(dec->push(id));
      std::lock_guard<std::mutex> l(job->mu);
      job->tokens.push_back(id);
      job->text += out;
      job->pieces.push_back({out, {id}});
      job->cv.notify_all();
      return !stop->stopped();
    };
    mmfree::Sequence* raw_seq = seq.get();  // alive while the scheduler calls on_done
    seq->on_done = [job, dec, stop, raw_seq](mmfree::Finish f, const std::string& msg) {
      const std::string tail = f == mmfree::Finish::Stop || f == mmfree::Finish::Length ? stop->push(dec->finish()) + stop->finish() : "";
      std::lock_guard<std::mutex> l(job->mu);
      if (!tail.empty()) job->text += tail, job->pieces.push_back({tail, {}});
      if (raw_seq->keep_state && (f == mmfree::Finish::Length || f == mmfree::Finish::Stop))
        job->final_state = std::move(raw_seq->state);  // the sequence has ended: its state moves out
      job->done = true;
      job->finish = f;
      job->error = msg;
      job->cv.notify_all();
    };
    job->seq = seq;
    try {
      if (!sched.submit(seq)) {
        ++rejected;
        res.set_header("Retry-After", "1");
        return send_error(res, 503, "server_busy", "the queue is full (" + std::to_string(so.max_queued) + " waiting): retry later");
      }
    } catch (const mmfree::Error& e) {
      ++rejected;
      return send_error(res, 400, "invalid_request_error", std::string("request: ") + e.what());
    }
    const std::string id = "cmpl-" + std::to_string(std::chrono::system_clock::now().time_since_epoch().count());
    const int64_t created = std::chrono::duration_cast<std::chrono::seconds>(std::chrono::system_clock::now().time_since_epoch()).count();
    const int64_t prompt_tokens = int64_t(r.prompt.size());

    if (!r.stream) {
      std::unique_lock<std::mutex> l(job->mu);
      job->cv.wait(l, [&] { return job->done; });
      int64_t position = -1;
      if (session && (job->finish == mmfree::Finish::Length || job->finish == mmfree::Finish::Stop)) {
        sessions.release(*session, &job->final_state);
        *session = "";  // released
        position = job->final_state.position;
      }
      if (job->finish == mmfree::Finish::Timeout) return send_error(res, 504, "timeout", "request timed out (--timeout)");
      if (job->finish == mmfree::Finish::Error) return send_error(res, 500, "server_error", job->error);
      json body = {{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", name},
                   {"choices", {mmfree::api::completion_choice(job->text, mmfree::finish_reason(job->finish))}},
                   {"usage", mmfree::api::usage(prompt_tokens, int64_t(job->tokens.size()))}};
      if (r.return_tokens) body["tokens"] = job->tokens;
      if (position >= 0) body["session_position"] = position;
      return send_json(res, 200, body);
    }

    // Server-sent events: one chunk per token, then the finish reason, usage if asked, [DONE].
    res.set_header("Cache-Control", "no-cache");
    res.set_chunked_content_provider(
        "text/event-stream",
        [job, r, id, created, name, prompt_tokens, session, &sessions](size_t, httplib::DataSink& sink) {
          auto event = [&](const json& j) {
            const std::string s = "data: " + mmfree::api::to_wire(j) + "\n\n";
            return sink.write(s.data(), s.size());
          };
          auto chunk = [&](const std::string& text, const char* reason) {
            return json{{"id", id}, {"object", "text_completion"}, {"created", created}, {"model", name},
                        {"choices", {mmfree::api::completion_choice(text, reason)}}};
          };
          std::unique_lock<std::mutex> l(job->mu);
          for (;;) {
            job->cv.wait_for(l, 200ms, [&] { return job->done || !job->pieces.empty(); });
            if (job->snapshot && session && !session->empty()) {
              const mmfree::State st = std::move(*job->snapshot);
              job->snapshot.reset();
              l.unlock();
              sessions.persist(*session, st);
              l.lock();
            }
            while (!job->pieces.empty()) {
              Job::Piece p = std::move(job->pieces.front());
              job->pieces.pop_front();
              json c = chunk(p.text, nullptr);
              if (r.return_tokens) c["tokens"] = p.tokens;
              l.unlock();
              const bool ok = event(c);
              l.lock();
              if (!ok) return job->cancel(), false;  // the client went away
            }
            if (job->done) break;
            if (!sink.is_writable()) return job->cancel(), false;
          }
          const mmfree::Finish f = job->finish;
          const int64_t n = int64_t(job->tokens.size());
          l.unlock();
          int64_t position = -1;
          if (session && !session->empty() && (f == mmfree::Finish::Length || f == mmfree::Finish::Stop)) {
            sessions.release(*session, &job->final_state);  // persisted before the client hears "done"
            *session = "";
            position = job->final_state.position;
          }
          if (f == mmfree::Finish::Timeout || f == mmfree::Finish::Error)
            event(mmfree::api::error_body(f == mmfree::Finish::Timeout ? 504 : 500, f == mmfree::Finish::Timeout ? "timeout" : "server_error",
                                          f == mmfree::Finish::Timeout ? "request timed out (--timeout)" : "generation failed"));
          else {
            json c = chunk("", mmfree::finish_reason(f));
            if (position >= 0) c["session_position"] = position;
            event(c);
          }
          if (r.include_usage) {
            json u = chunk("", nullptr);
            u["choices"] = json::array();
            u["usage"] = mmfree::api::usage(prompt_tokens, n);
            event(u);
          }
          const std::string done = "data: [DONE]\n\n";
          sink.write(done.data(), done.size());
          sink.done();
          return true;
        },
        [job](bool) { job->cancel(); });  // ended either way: a cancelled sequence stops
  });

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
  std::fprintf(stderr, "listening on port %d\n", bound);
  std::fflush(stderr);
  svr.listen_after_bind();
  g_server = nullptr;
  return 0;
}

}  // namespace cli
