// mmfree-cli serve: connections. cpp-httplib serves them; what it has no hook for is here: a
// thread per connection up to a cap, a listen backlog wide enough for a burst, and a warden that
// bounds connections per client address and the time to send a whole request.
#pragma once

#include <arpa/inet.h>
#include <httplib.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <filesystem>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

namespace cli {

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
inline void widen_listen_backlog(int port) {
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

}  // namespace cli
