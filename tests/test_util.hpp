// Helpers shared by the tests: fixture paths, temporary files, agreement statistics.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/model.hpp"
#include "mmfree/model_file.hpp"

namespace mmfree::test {

// n ternary values, each -1, 0 or 1 (uniform).
inline std::vector<int8_t> random_ternary(std::mt19937& rng, size_t n) {
  std::vector<int8_t> t(n);
  std::uniform_int_distribution<int> d(-1, 1);
  for (auto& v : t) v = int8_t(d(rng));
  return t;
}

// Model options with `threads` (and forced kernels): GCC 12 warns under -Wextra about the fields
// a designated initializer leaves out.
inline ModelOptions options(int threads, const std::string& kernels = "") {
  ModelOptions o;
  o.threads = threads;
  o.kernels = kernels;
  return o;
}

// The message of the mmfree::Error that fn() throws; "" when it throws none.
template <class F>
std::string error_of(F fn) {
  try {
    fn();
  } catch (const ::mmfree::Error& e) {
    return e.what();
  }
  return "";
}

inline std::string data_dir() { return MMFREE_TEST_DATA; }
// The bundled default model: kjv-demo converted to GGUF (its goldens are in data_dir()/kjv-demo).
inline std::string bundled_model() { return MMFREE_TEST_DATA "/../../models/kjv-demo.gguf"; }
// The bundled model on 2 threads and its tokenizer, loaded once per test program.
inline const Model& bundled() {
  static const Model m = load_model(bundled_model(), options(2));
  return m;
}
inline const Tokenizer& bundled_tokenizer() {
  static const Tokenizer t = load_tokenizer(bundled_model());
  return t;
}
// The larger fixtures beside a clone (../shared/fixtures): only kjv-demo's Hugging Face weights
// (27 MB) are used from there, to check the conversion that made the bundled model.
inline std::string shared_dir() { return MMFREE_SHARED_FIXTURES; }
inline bool shared_available() { return std::filesystem::exists(shared_dir() + "/kjv-demo/model.safetensors"); }

#define MMFREE_REQUIRE_SHARED()                                                                      \
  do {                                                                                               \
    if (!::mmfree::test::shared_available())                                                         \
      GTEST_SKIP() << "shared fixtures not found at " << ::mmfree::test::shared_dir() << ", skipping"; \
  } while (0)

// A fresh temporary directory, removed at destruction.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static int counter = 0;
    path = std::filesystem::temp_directory_path() /
           ("mmfree-test-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path, ec);
  }
  std::string file(const std::string& name) const { return (path / name).string(); }
};

inline void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream o(path, std::ios::binary | std::ios::trunc);
  o.write(bytes.data(), std::streamsize(bytes.size()));
}
inline std::string read_file(const std::string& path) {
  std::ifstream i(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(i), {});
}

// log-softmax in double.
inline std::vector<double> log_softmax(const float* x, size_t n) {
  double mx = -INFINITY;
  for (size_t i = 0; i < n; ++i) mx = std::max(mx, double(x[i]));
  double z = 0;
  for (size_t i = 0; i < n; ++i) z += std::exp(double(x[i]) - mx);
  std::vector<double> out(n);
  for (size_t i = 0; i < n; ++i) out[i] = double(x[i]) - mx - std::log(z);
  return out;
}

// KL(softmax(ref) || softmax(ours)) for one position.
inline double kl_div(const float* ref, const float* ours, size_t n) {
  auto p = log_softmax(ref, n), q = log_softmax(ours, n);
  double kl = 0;
  for (size_t i = 0; i < n; ++i) kl += std::exp(p[i]) * (p[i] - q[i]);
  return std::max(kl, 0.0);
}

struct Agreement {
  double max_kl = 0, mean_kl = 0, max_rel = 0, top1 = 0;
};

// Agreement statistics of [T, V] logits, as docs/model.md defines them.
inline Agreement agreement(const std::vector<float>& ref, const std::vector<float>& ours, size_t T, size_t V) {
  Agreement a;
  size_t same = 0;
  for (size_t t = 0; t < T; ++t) {
    const float* r = ref.data() + t * V;
    const float* o = ours.data() + t * V;
    const double kl = kl_div(r, o, V);
    a.max_kl = std::max(a.max_kl, kl);
    a.mean_kl += kl / double(T);
    double mx = 0, err = 0;
    for (size_t i = 0; i < V; ++i) {
      mx = std::max(mx, std::fabs(double(r[i])));
      err = std::max(err, std::fabs(double(r[i]) - double(o[i])));
    }
    a.max_rel = std::max(a.max_rel, err / std::max(mx, 1e-30));
    same += std::max_element(r, r + V) == r ? (std::max_element(o, o + V) == o)
                                            : size_t(std::max_element(r, r + V) - r) == size_t(std::max_element(o, o + V) - o);
  }
  a.top1 = double(same) / double(T);
  return a;
}

}  // namespace mmfree::test
