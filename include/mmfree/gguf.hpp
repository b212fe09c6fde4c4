// mmfree: GGUF v3 files (the container CPU-inference users know): a validating reader
// over a memory-mapped file and a streaming writer.
//
// Layout (all little-endian): "GGUF", u32 version = 3, u64 tensor_count, u64 kv_count,
// kv pairs (string key, u32 type, value), tensor infos (string name, u32 n_dims,
// u64 dims[n_dims] innermost first, u32 type, u64 offset), padding to `general.alignment`
// (default 32), then the tensor data, each tensor at an aligned offset.
//
// Ternary tensors use ggml's own TQ2_0 / TQ1_0 blocks (every block scale 1.0) or I8, with the
// per-tensor scale in the F32 tensor "<name>.scale" (file_ternary.hpp); files from mmfree's
// first releases used two ids of its own, 1024 and 1025, which are still read.
#pragma once

#include <cstdint>
#include <cstdio>
#include <cstring>
#include <map>
#include <memory>
#include <string>
#include <variant>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/mapped_file.hpp"
#include "mmfree/file_ternary.hpp"

namespace mmfree::gguf {

enum ValueType : uint32_t {
  UINT8 = 0, INT8 = 1, UINT16 = 2, INT16 = 3, UINT32 = 4, INT32 = 5, FLOAT32 = 6, BOOL = 7,
  STRING = 8, ARRAY = 9, UINT64 = 10, INT64 = 11, FLOAT64 = 12,
};

// Tensor types: ggml's ids, and the two of mmfree's first releases (read only).
enum TensorType : uint32_t {
  F32 = 0, F16 = 1, I8 = 24, I32 = 26, BF16 = 30, TQ1_0 = 34, TQ2_0 = 35,
  MMFREE_TQ2 = 1024,  // file_ternary.hpp: rows of 64-byte blocks of 256 weights
  MMFREE_TQ1 = 1025,  // file_ternary.hpp: rows of 32-byte blocks of 160 weights
};

inline const char* type_name(uint32_t t) {
  switch (t) {
    case F32: return "F32";
    case F16: return "F16";
    case BF16: return "BF16";
    case I8: return "I8";
    case I32: return "I32";
    case TQ1_0: return "TQ1_0";
    case TQ2_0: return "TQ2_0";
    case MMFREE_TQ2: return "MMFREE_TQ2";
    case MMFREE_TQ1: return "MMFREE_TQ1";
  }
  return nullptr;
}

// Bytes of a tensor of `type` with dims (innermost first), or false if the type is unknown,
// cannot store rows of dims[0] (ggml's block types need whole 256-weight blocks) or the size
// overflows.
inline bool tensor_bytes(uint32_t type, const std::vector<uint64_t>& dims, uint64_t* out) {
  uint64_t rows = 1;
  for (size_t i = 1; i < dims.size(); ++i)
    if (__builtin_mul_overflow(rows, dims[i], &rows)) return false;
  const uint64_t cols = dims.empty() ? 1 : dims[0];
  uint64_t row_bytes;
  switch (type) {
    case F32: case I32: if (__builtin_mul_overflow(cols, uint64_t(4), &row_bytes)) return false; break;
    case F16: case BF16: if (__builtin_mul_overflow(cols, uint64_t(2), &row_bytes)) return false; break;
    case I8: row_bytes = cols; break;
    case TQ1_0: case TQ2_0: case MMFREE_TQ2: case MMFREE_TQ1: {
      if (cols > (uint64_t(1) << 40)) return false;
      const int64_t b = file_row_bytes(TernaryFileType(type), int64_t(cols));
      if (b < 0) return false;
      row_bytes = uint64_t(b);
      break;
    }
    default: return false;
  }
  return !__builtin_mul_overflow(rows, row_bytes, out);
}

struct Value;
using Array = std::vector<Value>;
struct Value {
  std::variant<uint64_t, int64_t, double, bool, std::string, Array> v;
  uint32_t type = UINT64;  // the stored type (for arrays: ARRAY)
};

struct TensorInfo {
  std::string name;
  std::vector<uint64_t> dims;  // innermost first
  uint32_t type = F32;
  uint64_t offset = 0;  // from the start of the data section
  uint64_t nbytes = 0;
  const uint8_t* data = nullptr;
};

class Reader {
 public:
  static constexpr uint64_t kMaxCount = uint64_t(1) << 24;

  explicit Reader(const std::string& path) : map_(std::make_shared<MappedFile>(path)) { parse(); }

  const std::string& path() const { return map_->path(); }
  std::shared_ptr<const MappedFile> file() const { return map_; }
  uint32_t version() const { return version_; }
  const std::map<std::string, Value>& metadata() const { return kv_; }
  const std::vector<TensorInfo>& tensors() const { return tensors_; }
  const TensorInfo* find(const std::string& name) const {
    auto it = index_.find(name);
    return it == index_.end() ? nullptr : &tensors_[it->second];
  }

  const Value* get(const std::string& key) const {
    auto it = kv_.find(key);
    return it == kv_.end() ? nullptr : &it->second;
  }
  bool has(const std::string& key) const { return kv_.count(key) > 0; }
  int64_t get_int(const std::string& key) const {
    const Value& v = need(key);
    if (auto* u = std::get_if<uint64_t>(&v.v)) {
      if (*u > uint64_t(INT64_MAX)) fail(path(), "metadata '" + key + "' is too large");
      return int64_t(*u);
    }
    if (auto* i = std::get_if<int64_t>(&v.v)) return *i;
    fail(path(), "metadata '" + key + "' is not an integer");
  }
  double get_float(const std::string& key) const {
    const Value& v = need(key);
    if (auto* d = std::get_if<double>(&v.v)) return *d;
    fail(path(), "metadata '" + key + "' is not a number");
  }
  bool get_bool(const std::string& key) const {
    const Value& v = need(key);
    if (auto* b = std::get_if<bool>(&v.v)) return *b;
    fail(path(), "metadata '" + key + "' is not a bool");
  }
  const std::string& get_string(const std::string& key) const {
    const Value& v = need(key);
    if (auto* s = std::get_if<std::string>(&v.v)) return *s;
    fail(path(), "metadata '" + key + "' is not a string");
  }

 private:
  const Value& need(const std::string& key) const {
    auto it = kv_.find(key);
    if (it == kv_.end()) fail(path(), "missing metadata key '" + key + "'");
    return it->second;
  }

  // Bounds-checked cursor over the mapped bytes.
  struct Cursor {
    const uint8_t* p;
    uint64_t n, pos = 0;
    const std::string* path;
    void need(uint64_t k, const char* what) {
      if (k > n - pos)
        fail(*path, std::string("truncated: ") + what + " at byte " + std::to_string(pos) + " runs past the end of the file");
    }
    template <class T>
    T read(const char* what) {
      need(sizeof(T), what);
      T v;
      std::memcpy(&v, p + pos, sizeof(T));
      pos += sizeof(T);
      return v;
    }
    std::string str(const char* what) {
      const uint64_t len = read<uint64_t>(what);
      need(len, what);
      std::string s(reinterpret_cast<const char*>(p + pos), size_t(len));
      pos += len;
      return s;
    }
  };

  Value read_value(Cursor& c, uint32_t type, const std::string& key, int depth) {
    Value v;
    v.type = type;
    switch (type) {
      case UINT8: v.v = uint64_t(c.read<uint8_t>("value")); break;
      case INT8: v.v = int64_t(c.read<int8_t>("value")); break;
      case UINT16: v.v = uint64_t(c.read<uint16_t>("value")); break;
      case INT16: v.v = int64_t(c.read<int16_t>("value")); break;
      case UINT32: v.v = uint64_t(c.read<uint32_t>("value")); break;
      case INT32: v.v = int64_t(c.read<int32_t>("value")); break;
      case UINT64: v.v = c.read<uint64_t>("value"); break;
      case INT64: v.v = c.read<int64_t>("value"); break;
      case FLOAT32: v.v = double(c.read<float>("value")); break;
      case FLOAT64: v.v = c.read<double>("value"); break;
      case BOOL: {
        const uint8_t b = c.read<uint8_t>("value");
        if (b > 1) fail(path(), "metadata '" + key + "': bool value " + std::to_string(b) + " is not 0 or 1");
        v.v = b == 1;
        break;
      }
      case STRING: v.v = c.str("string value"); break;
      case ARRAY: {
        if (depth > 0) fail(path(), "metadata '" + key + "': nested arrays are not supported");
        const uint32_t et = c.read<uint32_t>("array type");
        const uint64_t n = c.read<uint64_t>("array length");
        // Each element takes at least one byte: a count larger than the rest is a lie.
        if (n > c.n - c.pos) fail(path(), "metadata '" + key + "': array length " + std::to_string(n) + " exceeds the file");
        Array a;
        a.reserve(size_t(n));
        for (uint64_t i = 0; i < n; ++i) a.push_back(read_value(c, et, key, depth + 1));
        v.v = std::move(a);
        break;
      }
      default:
        fail(path(), "metadata '" + key + "' has unknown value type " + std::to_string(type));
    }
    return v;
  }

  void parse() {
    const std::string& p = map_->path();
    Cursor c{map_->data(), map_->size(), 0, &p};
    if (map_->size() < 4 || std::memcmp(map_->data(), "GGUF", 4) != 0) fail(p, "not a GGUF file (bad magic)");
    c.pos = 4;
    version_ = c.read<uint32_t>("version");
    if (version_ != 3 && version_ != 2) fail(p, "GGUF version " + std::to_string(version_) + " is not supported (expected 2 or 3)");
    const uint64_t n_tensors = c.read<uint64_t>("tensor count");
    const uint64_t n_kv = c.read<uint64_t>("metadata count");
    if (n_tensors > kMaxCount) fail(p, "tensor count " + std::to_string(n_tensors) + " is implausible");
    if (n_kv > kMaxCount) fail(p, "metadata count " + std::to_string(n_kv) + " is implausible");
    for (uint64_t i = 0; i < n_kv; ++i) {
      std::string key = c.str("metadata key");
      const uint32_t type = c.read<uint32_t>("metadata type");
      Value v = read_value(c, type, key, 0);
      if (!kv_.emplace(key, std::move(v)).second) fail(p, "duplicate metadata key '" + key + "'");
    }
    uint64_t align = 32;
    if (has("general.alignment")) {
      const int64_t a = get_int("general.alignment");
      if (a < 1 || a > (1 << 20) || (a & (a - 1))) fail(p, "general.alignment " + std::to_string(a) + " is not a power of two");
      align = uint64_t(a);
    }
    for (uint64_t i = 0; i < n_tensors; ++i) {
      TensorInfo t;
      t.name = c.str("tensor name");
      const uint32_t nd = c.read<uint32_t>("tensor dims");
      if (nd == 0 || nd > 4) fail(p, "tensor '" + t.name + "' has " + std::to_string(nd) + " dimensions (1 to 4 allowed)");
      for (uint32_t d = 0; d < nd; ++d) t.dims.push_back(c.read<uint64_t>("tensor dim"));
      t.type = c.read<uint32_t>("tensor type");
      t.offset = c.read<uint64_t>("tensor offset");
      if (!type_name(t.type)) fail(p, "tensor '" + t.name + "' has unknown type " + std::to_string(t.type));
      for (uint64_t d : t.dims)
        if (d > (uint64_t(1) << 40)) fail(p, "tensor '" + t.name + "' has an implausible dimension " + std::to_string(d));
      if (!tensor_bytes(t.type, t.dims, &t.nbytes))
        fail(p, "tensor '" + t.name + "': type " + type_name(t.type) + " cannot hold dims " + shape_str(t.dims) +
                    " (the size overflows, or rows are not whole blocks of the type)");
      if (t.offset % align) fail(p, "tensor '" + t.name + "': offset " + std::to_string(t.offset) + " is not aligned to " + std::to_string(align));
      if (index_.count(t.name)) fail(p, "duplicate tensor '" + t.name + "'");
      index_[t.name] = tensors_.size();
      tensors_.push_back(std::move(t));
    }
    const uint64_t data_start = (c.pos + align - 1) / align * align;
    if (data_start > map_->size()) fail(p, "truncated: no room for the tensor data");
    const uint64_t data_len = map_->size() - data_start;
    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (auto& t : tensors_) {
      if (t.offset > data_len || t.nbytes > data_len - t.offset)
        fail(p, "tensor '" + t.name + "': data [" + std::to_string(t.offset) + ", +" + std::to_string(t.nbytes) +
                    ") runs past the end of the file (truncated?)");
      t.data = map_->data() + data_start + t.offset;
      if (t.nbytes) ranges.push_back({t.offset, t.offset + t.nbytes});
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second) fail(p, "tensor data overlap at offset " + std::to_string(ranges[i].first));
  }

  std::shared_ptr<MappedFile> map_;
  uint32_t version_ = 0;
  std::map<std::string, Value> kv_;
  std::vector<TensorInfo> tensors_;
  std::map<std::string, size_t> index_;
};

// Streaming writer: declare metadata and tensors (name, dims, type) first, then write
// each tensor's bytes in the declared order. Nothing but the header is held in memory.
class Writer {
 public:
  explicit Writer(std::string path, uint64_t alignment = 32) : path_(std::move(path)), align_(alignment) {}

  void add(const std::string& key, uint32_t type, uint64_t u) { kv(key, type, [&](std::string& s) { put_scalar(s, type, u); }); }
  void add_u32(const std::string& key, uint32_t v) { add(key, UINT32, v); }
  void add_i64(const std::string& key, int64_t v) { add(key, INT64, uint64_t(v)); }
  void add_bool(const std::string& key, bool v) { add(key, BOOL, v ? 1 : 0); }
  void add_f64(const std::string& key, double v) {
    kv(key, FLOAT64, [&](std::string& s) { put(s, v); });
  }
  void add_string(const std::string& key, const std::string& v) {
    kv(key, STRING, [&](std::string& s) { put_str(s, v); });
  }
  void add_strings(const std::string& key, const std::vector<std::string>& v) {
    kv(key, ARRAY, [&](std::string& s) {
      put(s, uint32_t(STRING));
      put(s, uint64_t(v.size()));
      for (auto& x : v) put_str(s, x);
    });
  }
  void add_i32s(const std::string& key, const std::vector<int32_t>& v) {
    kv(key, ARRAY, [&](std::string& s) {
      put(s, uint32_t(INT32));
      put(s, uint64_t(v.size()));
      for (auto x : v) put(s, x);
    });
  }

  void declare(const std::string& name, std::vector<uint64_t> dims, uint32_t type) {
    TensorInfo t;
    t.name = name;
    t.dims = std::move(dims);
    t.type = type;
    if (!tensor_bytes(type, t.dims, &t.nbytes)) fail(path_, "tensor '" + name + "': bad type or size");
    t.offset = data_size_;
    data_size_ += (t.nbytes + align_ - 1) / align_ * align_;
    tensors_.push_back(std::move(t));
  }

  // Writes the header; then call write_tensor for every declared tensor, in order.
  void begin() {
    out_ = std::fopen(path_.c_str(), "wb");
    if (!out_) fail(path_, "cannot open for writing");
    std::string h = "GGUF";
    put(h, uint32_t(3));
    put(h, uint64_t(tensors_.size()));
    put(h, uint64_t(n_kv_));
    h += kv_bytes_;
    for (auto& t : tensors_) {
      put_str(h, t.name);
      put(h, uint32_t(t.dims.size()));
      for (auto d : t.dims) put(h, d);
      put(h, t.type);
      put(h, t.offset);
    }
    h.resize((h.size() + align_ - 1) / align_ * align_, '\0');
    raw(h.data(), h.size());
  }
  void write_tensor(const void* data, size_t n) {
    begin_tensor();
    append(data, n);
    end_tensor();
  }
  // Streams one tensor in pieces: open it, then append exactly its bytes.
  void begin_tensor() {
    if (next_ >= tensors_.size()) fail(path_, "more tensors written than declared");
    partial_ = 0;
  }
  void append(const void* data, size_t n) {
    raw(data, n);
    partial_ += n;
  }
  void end_tensor() {
    const TensorInfo& t = tensors_[next_++];
    if (partial_ != t.nbytes) fail(path_, "tensor '" + t.name + "': wrote " + std::to_string(partial_) + " bytes, declared " + std::to_string(t.nbytes));
    static const char zeros[64] = {};
    for (uint64_t pad = (align_ - partial_ % align_) % align_; pad > 0;) {
      const uint64_t k = std::min<uint64_t>(pad, sizeof zeros);
      raw(zeros, k);
      pad -= k;
    }
  }
  void finish() {
    if (next_ != tensors_.size()) fail(path_, "not every declared tensor was written");
    if (std::fclose(out_) != 0) fail(path_, "write failed (disk full?)");
    out_ = nullptr;
  }
  ~Writer() {
    if (out_) std::fclose(out_);
  }
  const std::vector<TensorInfo>& declared() const { return tensors_; }

 private:
  template <class T>
  static void put(std::string& s, T v) {
    s.append(reinterpret_cast<const char*>(&v), sizeof v);
  }
  static void put_str(std::string& s, const std::string& v) {
    put(s, uint64_t(v.size()));
    s += v;
  }
  static void put_scalar(std::string& s, uint32_t type, uint64_t u) {
    switch (type) {
      case UINT8: case INT8: case BOOL: put(s, uint8_t(u)); break;
      case UINT16: case INT16: put(s, uint16_t(u)); break;
      case UINT32: case INT32: put(s, uint32_t(u)); break;
      default: put(s, u);
    }
  }
  template <class F>
  void kv(const std::string& key, uint32_t type, F body) {
    put_str(kv_bytes_, key);
    put(kv_bytes_, type);
    body(kv_bytes_);
    ++n_kv_;
  }
  void raw(const void* p, size_t n) {
    if (n && std::fwrite(p, 1, n, out_) != n) fail(path_, "write failed (disk full?)");
  }

  std::string path_;
  uint64_t align_;
  std::string kv_bytes_;
  uint64_t n_kv_ = 0;
  std::vector<TensorInfo> tensors_;
  uint64_t data_size_ = 0;
  size_t next_ = 0;
  uint64_t partial_ = 0;
  FILE* out_ = nullptr;
};

}  // namespace mmfree::gguf
