// mmfree: saving and restoring a sequence's State. The whole context of a MatMul-free model is
// one vector per layer (328 KB for 2.7B), so a conversation can be saved, moved and continued
// without reading it again.
//
// File format, version 1 (little-endian; docs/state-files.md):
//   0  "MMFS"                    magic
//   4  u32 version = 1
//   8  u64 model fingerprint     model_fingerprint(): the config and every float parameter
//                                that is not a packed weight (scales, norms, lower bounds)
//  16  i64 position              tokens consumed
//  24  u32 layers, u32 width     must equal the model's (num_hidden_layers, input_dim)
//  32  f32 h[layers][width]      the recurrent state, layer by layer
//  ..  u64 checksum              FNV-1a 64 of every byte before it
// A file of another model, a truncated or corrupted file, non-finite values or a newer version
// are refused with an Error naming the file and the problem. save_state writes atomically: a
// temporary file in the same directory, fsync, rename, fsync of the directory.
#pragma once

#include <fcntl.h>
#include <unistd.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <istream>
#include <ostream>
#include <sstream>
#include <optional>
#include <string>

#include "mmfree/model.hpp"

namespace mmfree {

inline constexpr char kStateMagic[4] = {'M', 'M', 'F', 'S'};
inline constexpr uint32_t kStateVersion = 1;

namespace detail {
struct Fnv64 {
  uint64_t h = 0xcbf29ce484222325ull;
  void add(const void* p, size_t n) {
    const auto* b = static_cast<const uint8_t*>(p);
    for (size_t i = 0; i < n; ++i) h = (h ^ b[i]) * 0x100000001b3ull;
  }
  template <class T>
  void add_value(T v) {
    add(&v, sizeof v);
  }
  void add_floats(const std::vector<float>& v) { add(v.data(), v.size() * sizeof(float)); }
};
}  // namespace detail

// Which model a state belongs to. The packed weights are left out (they may be held in TQ1 or
// TQ2, and hashing hundreds of MB would cost more than loading), but every BitLinear's scale is
// in: ternarisation makes a checkpoint's scales practically unique to it.
inline uint64_t model_fingerprint(const Model& m) {
  detail::Fnv64 f;
  const Config& c = m.config();
  for (int64_t v : {c.vocab_size, c.hidden_size, c.num_hidden_layers, c.input_dim(), c.intermediate_size, c.num_heads})
    f.add_value(v);
  f.add_value(c.rms_norm_eps);
  // Per block its vectors (and lower bound), then its BitLinears; then the model-level ones.
  const ModelWeights& w = m.weights();
  const auto list = tensor_list(c, &w);
  auto bitlinear = [&](const BitLinear& b) {
    f.add_value(b.weights().scale);
    f.add_value(b.in_features());
    f.add_value(b.out_features());
    f.add_floats(b.norm());
  };
  for (size_t l = 0; l < w.blocks.size(); ++l) {
    for (auto& t : list)
      if (t.layer == int64_t(l) && t.kind == TensorKind::Vector) f.add_floats(*t.vector);
    f.add_floats(w.blocks[l].attn.lower_bound);
    for (auto& t : list)
      if (t.layer == int64_t(l) && t.kind == TensorKind::BitLinear) bitlinear(*t.bitlinear);
  }
  for (auto& t : list)
    if (t.layer < 0 && t.kind == TensorKind::Vector) f.add_floats(*t.vector);
  for (auto& t : list)
    if (t.layer < 0 && t.kind == TensorKind::BitLinear) bitlinear(*t.bitlinear);
  return f.h;
}

// fingerprint: model_fingerprint(m), when the caller keeps it (writing many states).
inline void write_state(const Model& m, const State& s, std::ostream& out, std::optional<uint64_t> fingerprint = std::nullopt) {
  const Config& c = m.config();
  if (s.h.size() != size_t(c.num_hidden_layers)) fail("State", "does not belong to this model (wrong number of layers)");
  std::string buf;
  auto put = [&](const void* p, size_t n) { buf.append(static_cast<const char*>(p), n); };
  const uint64_t fp = fingerprint ? *fingerprint : model_fingerprint(m);
  const int64_t pos = s.position;
  const uint32_t layers = uint32_t(c.num_hidden_layers), width = uint32_t(c.input_dim());
  put(kStateMagic, 4), put(&kStateVersion, 4), put(&fp, 8), put(&pos, 8), put(&layers, 4), put(&width, 4);
  for (const auto& h : s.h) {
    if (h.size() != width) fail("State", "does not belong to this model (wrong width)");
    put(h.data(), h.size() * sizeof(float));
  }
  detail::Fnv64 sum;
  sum.add(buf.data(), buf.size());
  put(&sum.h, 8);
  out.write(buf.data(), std::streamsize(buf.size()));
  if (!out) fail("state", "write failed");
}

// Reads a state written by write_state for this model; `name` names the source in errors.
inline State read_state(const Model& m, std::istream& in, const std::string& name) {
  const Config& c = m.config();
  const size_t width = size_t(c.input_dim()), layers = size_t(c.num_hidden_layers);
  const size_t expect = 32 + layers * width * sizeof(float) + 8;
  std::string buf(expect + 1, '\0');
  in.read(buf.data(), std::streamsize(buf.size()));
  const size_t got = size_t(in.gcount());
  buf.resize(got);
  if (got < 8 || std::memcmp(buf.data(), kStateMagic, 4) != 0) fail(name, "not an mmfree state file (bad magic)");
  uint32_t version;
  std::memcpy(&version, buf.data() + 4, 4);
  if (version > kStateVersion)
    fail(name, "state file version " + std::to_string(version) + " is newer than this mmfree reads (" +
                   std::to_string(kStateVersion) + ")");
  if (version != kStateVersion) fail(name, "state file version " + std::to_string(version) + " is not supported");
  if (got < 32) fail(name, "truncated (" + std::to_string(got) + " bytes, header needs 32)");
  uint64_t fp;
  int64_t pos;
  uint32_t file_layers, file_width;
  std::memcpy(&fp, buf.data() + 8, 8), std::memcpy(&pos, buf.data() + 16, 8);
  std::memcpy(&file_layers, buf.data() + 24, 4), std::memcpy(&file_width, buf.data() + 28, 4);
  if (file_layers != layers || file_width != width)
    fail(name, "is a state of a model with " + std::to_string(file_layers) + " layers of width " + std::to_string(file_width) +
                   ", this model has " + std::to_string(layers) + " of width " + std::to_string(width));
  if (fp != model_fingerprint(m)) fail(name, "is the state of another model (fingerprint differs)");
  if (got < expect) fail(name, "truncated (" + std::to_string(got) + " bytes of " + std::to_string(expect) + ")");
  if (got > expect) fail(name, "has bytes after the checksum (" + std::to_string(expect) + " expected)");
  detail::Fnv64 sum;
  sum.add(buf.data(), expect - 8);
  uint64_t stored;
  std::memcpy(&stored, buf.data() + expect - 8, 8);
  if (stored != sum.h) fail(name, "is corrupted (checksum mismatch)");
  if (pos < 0) fail(name, "has a negative position");
  State s = m.new_state();
  s.position = pos;
  const char* p = buf.data() + 32;
  for (auto& h : s.h) {
    std::memcpy(h.data(), p, width * sizeof(float));
    p += width * sizeof(float);
    for (float v : h)
      if (!std::isfinite(v)) fail(name, "holds a non-finite value");
  }
  return s;
}

// Writes `bytes` to `path` atomically: readers see the old file or the new one, never half of
// one, even after a crash or power loss (a temporary file in the same directory, fsync, rename,
// fsync of the directory). A killed writer leaves only its temporary ".NAME.tmp.PID".
inline void write_file_atomically(const std::string& path, const std::string& bytes) {
  const std::filesystem::path target(path);
  const std::filesystem::path dir = target.has_parent_path() ? target.parent_path() : std::filesystem::path(".");
  const std::string tmp = (dir / ("." + target.filename().string() + ".tmp." + std::to_string(::getpid()))).string();
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(path, std::string("cannot write (") + std::strerror(errno) + ")");
  size_t done = 0;
  while (done < bytes.size()) {
    const ssize_t n = ::write(fd, bytes.data() + done, bytes.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      const int e = errno;
      ::close(fd), ::unlink(tmp.c_str());
      fail(path, std::string("write failed (") + std::strerror(e) + ")");
    }
    done += size_t(n);
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    fail(path, "could not be flushed to disk");
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const int e = errno;
    ::unlink(tmp.c_str());
    fail(path, std::string("rename failed (") + std::strerror(e) + ")");
  }
  const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) ::fsync(dfd), ::close(dfd);  // the rename itself survives a crash
}

inline std::string state_bytes(const Model& m, const State& s, std::optional<uint64_t> fingerprint = std::nullopt) {
  std::ostringstream out;
  write_state(m, s, out, fingerprint);
  return out.str();
}

// Writes atomically (write_file_atomically).
inline void save_state(const Model& m, const State& s, const std::string& path) {
  write_file_atomically(path, state_bytes(m, s));
}

inline State load_state(const Model& m, const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) fail(path, "cannot open");
  return read_state(m, in, path);
}

}  // namespace mmfree
