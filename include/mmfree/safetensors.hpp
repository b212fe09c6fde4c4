// mmfree: safetensors reader (single file and sharded) and a small writer.
//
// Format: u64 little-endian header length N, N bytes of JSON
// {name: {dtype, shape, data_offsets: [begin, end]}, "__metadata__": {...}}, then the data
// buffer that the offsets index. Every field is validated before any byte is read through
// it, because checkpoints come from the internet.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "mmfree/error.hpp"
#include "mmfree/json_field.hpp"
#include "mmfree/half.hpp"
#include "mmfree/mapped_file.hpp"
#include "mmfree/tensor.hpp"

namespace mmfree {

class SafetensorsFile {
 public:
  // Header JSON larger than this is refused (the format's own limit is 100 MB).
  static constexpr uint64_t kMaxHeader = 100u << 20;

  explicit SafetensorsFile(const std::string& path) : map_(path) { parse(); }

  const std::string& path() const { return map_.path(); }
  const std::map<std::string, TensorView>& tensors() const { return tensors_; }
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  const TensorView* find(const std::string& name) const {
    auto it = tensors_.find(name);
    return it == tensors_.end() ? nullptr : &it->second;
  }

 private:
  void parse() {
    const std::string& p = map_.path();
    if (map_.size() < 8) fail(p, "truncated: file is " + std::to_string(map_.size()) +
                                     " bytes, too short for the 8-byte header length");
    uint64_t n = 0;
    std::memcpy(&n, map_.data(), 8);  // little-endian hosts only (x86, ARM)
    if (n > kMaxHeader) fail(p, "header length " + std::to_string(n) + " exceeds the 100 MB limit");
    if (n > map_.size() - 8)
      fail(p, "truncated: header length " + std::to_string(n) + " runs past the end of the file (" +
                  std::to_string(map_.size()) + " bytes)");
    const char* hb = reinterpret_cast<const char*>(map_.data() + 8);
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(hb, hb + n);
    } catch (const nlohmann::json::exception& e) {
      fail(p, std::string("header is not valid JSON: ") + e.what());
    }
    if (!j.is_object()) fail(p, "header JSON is not an object");
    const uint8_t* base = map_.data() + 8 + n;
    const uint64_t data_len = map_.size() - 8 - n;

    std::vector<std::pair<uint64_t, uint64_t>> ranges;
    for (auto& [name, v] : j.items()) {
      if (name == "__metadata__") {
        if (!v.is_object()) fail(p, "__metadata__ is not an object");
        for (auto& [k, s] : v.items())
          if (s.is_string()) metadata_[k] = s.get<std::string>();
        continue;
      }
      const std::string where = p + ": tensor '" + name + "'";
      if (!v.is_object()) fail(where, "entry is not an object");
      if (!v.contains("dtype")) fail(where, "missing dtype");
      if (!v.contains("shape") || !v["shape"].is_array()) fail(where, "missing or non-array shape");
      if (!v.contains("data_offsets") || !v["data_offsets"].is_array() || v["data_offsets"].size() != 2)
        fail(where, "data_offsets must be an array of two integers");
      TensorView t;
      t.name = name;
      t.file = p;
      const std::string ds = json_field::string(v["dtype"], where, "dtype");
      if (!parse_dtype(ds, &t.dtype)) fail(where, "unknown dtype '" + ds + "'");
      if (v["shape"].size() > 8) fail(where, "too many dimensions");
      for (size_t i = 0; i < v["shape"].size(); ++i)
        t.shape.push_back(json_field::integer(v["shape"][i], where, "shape[" + std::to_string(i) + "]", 0, int64_t(1) << 40));
      auto& off = v["data_offsets"];
      const uint64_t b = uint64_t(json_field::integer(off[0], where, "data_offsets[0]", 0, INT64_MAX));
      const uint64_t e = uint64_t(json_field::integer(off[1], where, "data_offsets[1]", 0, INT64_MAX));
      if (b > e) fail(where, "data_offsets begin " + std::to_string(b) + " > end " + std::to_string(e));
      if (e > data_len)
        fail(where, "data_offsets end " + std::to_string(e) + " is past the end of the data (" +
                        std::to_string(data_len) + " bytes; file truncated?)");
      uint64_t numel = 0, bytes = 0;
      if (!checked_numel(t.shape, UINT64_MAX, &numel) ||
          __builtin_mul_overflow(numel, uint64_t(dtype_size(t.dtype)), &bytes))
        fail(where, "shape " + shape_str(t.shape) + " overflows");
      if (bytes != e - b)
        fail(where, "shape " + shape_str(t.shape) + " of " + ds + " needs " + std::to_string(bytes) +
                        " bytes but data_offsets span " + std::to_string(e - b));
      t.data = base + b;
      t.nbytes = size_t(bytes);
      ranges.push_back({b, e});
      tensors_.emplace(name, std::move(t));
    }
    std::sort(ranges.begin(), ranges.end());
    for (size_t i = 1; i < ranges.size(); ++i)
      if (ranges[i].first < ranges[i - 1].second)
        fail(p, "tensors overlap: data_offsets [" + std::to_string(ranges[i].first) + ", " +
                    std::to_string(ranges[i].second) + ") and [" + std::to_string(ranges[i - 1].first) +
                    ", " + std::to_string(ranges[i - 1].second) + ")");
  }

  MappedFile map_;
  std::map<std::string, TensorView> tensors_;
  std::map<std::string, std::string> metadata_;
};

// All tensors of a checkpoint directory: model.safetensors, or the shards listed by
// model.safetensors.index.json.
class TensorStore {
 public:
  explicit TensorStore(const std::string& dir) {
    namespace fs = std::filesystem;
    const fs::path d(dir);
    const fs::path single = d / "model.safetensors";
    const fs::path index = d / "model.safetensors.index.json";
    if (fs::exists(index)) {
      load_index(index.string(), d);
    } else if (fs::exists(single)) {
      files_.push_back(std::make_unique<SafetensorsFile>(single.string()));
      for (auto& [name, t] : files_.back()->tensors()) by_name_[name] = &t;
    } else {
      fail(dir, "no model.safetensors or model.safetensors.index.json");
    }
  }
  explicit TensorStore(std::vector<std::string> files) {
    for (auto& f : files) {
      files_.push_back(std::make_unique<SafetensorsFile>(f));
      for (auto& [name, t] : files_.back()->tensors()) by_name_[name] = &t;
    }
  }

  const TensorView* find(const std::string& name) const {
    auto it = by_name_.find(name);
    return it == by_name_.end() ? nullptr : it->second;
  }
  const std::map<std::string, const TensorView*>& all() const { return by_name_; }

 private:
  void load_index(const std::string& index_path, const std::filesystem::path& dir) {
    nlohmann::json j;
    {
      std::ifstream in(index_path, std::ios::binary);
      if (!in) fail(index_path, "cannot open");
      try {
        j = nlohmann::json::parse(in);
      } catch (const nlohmann::json::exception& e) {
        fail(index_path, std::string("not valid JSON: ") + e.what());
      }
    }
    if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
      fail(index_path, "missing 'weight_map' object");
    std::map<std::string, SafetensorsFile*> shard_by_file;
    std::map<std::string, std::string> wanted;
    for (auto& [name, f] : j["weight_map"].items()) {
      const std::string fn = json_field::string(f, index_path, "weight_map[" + nlohmann::json(name).dump() + "]");
      // A shard name is a plain file name next to the index: no path tricks.
      if (fn.empty() || fn.find('/') != std::string::npos || fn.find('\\') != std::string::npos ||
          fn == "." || fn == "..")
        fail(index_path, "weight_map entry '" + name + "' names an invalid shard file '" + fn + "'");
      if (!shard_by_file.count(fn)) {
        files_.push_back(std::make_unique<SafetensorsFile>((dir / fn).string()));
        shard_by_file[fn] = files_.back().get();
      }
      wanted[name] = fn;
    }
    for (auto& [name, fn] : wanted) {
      const TensorView* t = shard_by_file[fn]->find(name);
      if (!t) fail(shard_by_file[fn]->path(), "tensor '" + name + "' listed in the index is missing");
      by_name_[name] = t;
    }
  }

  std::vector<std::unique_ptr<SafetensorsFile>> files_;
  std::map<std::string, const TensorView*> by_name_;
};

// A tensor to write: raw little-endian bytes of `dtype` with `shape`.
struct TensorBlob {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::vector<uint8_t> bytes;
};

template <class T>
TensorBlob make_blob(std::string name, DType dtype, std::vector<int64_t> shape, const std::vector<T>& v) {
  TensorBlob b{std::move(name), dtype, std::move(shape), {}};
  b.bytes.resize(v.size() * sizeof(T));
  if (!v.empty()) std::memcpy(b.bytes.data(), v.data(), b.bytes.size());
  return b;
}

// Writes a safetensors file tensor by tensor: declare every tensor (name, dtype, shape) up
// front, then append exactly their bytes in that order. Memory stays at what one append holds.
class SafetensorsWriter {
 public:
  struct Decl {
    std::string name;
    DType dtype;
    std::vector<int64_t> shape;
  };
  SafetensorsWriter(const std::string& path, const std::vector<Decl>& tensors) : path_(path) {
    nlohmann::ordered_json h = nlohmann::ordered_json::object();
    for (auto& t : tensors) {
      uint64_t n = dtype_size(t.dtype);
      for (int64_t d : t.shape) n *= uint64_t(d);
      h[t.name] = {{"dtype", dtype_name(t.dtype)}, {"shape", t.shape}, {"data_offsets", {total_, total_ + n}}};
      total_ += n;
    }
    std::string hs = h.dump();
    while ((hs.size() + 8) % 8) hs.push_back(' ');  // keep the data buffer 8-byte aligned
    out_.open(path, std::ios::binary | std::ios::trunc);
    if (!out_) fail(path, "cannot open for writing");
    const uint64_t n = hs.size();
    append_raw(&n, 8);
    append_raw(hs.data(), hs.size());
  }
  void append(const void* p, size_t n) {
    if (written_ + n > total_) fail(path_, "more bytes written than declared");
    written_ += n;
    append_raw(p, n);
  }
  void finish() {
    if (written_ != total_) fail(path_, "wrote " + std::to_string(written_) + " of " + std::to_string(total_) + " declared bytes");
    out_.close();
    if (!out_) fail(path_, "write failed (disk full?)");
  }

 private:
  void append_raw(const void* p, size_t n) {
    out_.write(static_cast<const char*>(p), std::streamsize(n));
    if (!out_) fail(path_, "write failed (disk full?)");
  }
  std::string path_;
  std::ofstream out_;
  uint64_t total_ = 0, written_ = 0;
};

inline void write_safetensors(const std::string& path, const std::vector<TensorBlob>& tensors) {
  std::vector<SafetensorsWriter::Decl> decls;
  for (auto& t : tensors) decls.push_back({t.name, t.dtype, t.shape});
  SafetensorsWriter w(path, decls);
  for (auto& t : tensors) {
    if (t.bytes.size() != dtype_size(t.dtype) * [&] { size_t n = 1; for (int64_t d : t.shape) n *= size_t(d); return n; }())
      fail(path, "tensor '" + t.name + "': byte count does not match its shape");
    w.append(t.bytes.data(), t.bytes.size());
  }
  w.finish();
}

}  // namespace mmfree
