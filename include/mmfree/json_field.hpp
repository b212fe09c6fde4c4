// mmfree: reading fields out of JSON (files, request bodies, state metadata), checked in one place.
//
// nlohmann::json converts without asking: get<int64_t>() of 4.5 is 4, of 1e300 is undefined
// behaviour (found by fuzzing a tokenizer.json whose added token had that id), and an unsigned
// 2^63 wraps to a negative number. Every number the library reads from JSON goes through these
// functions instead. They refuse a float where an integer belongs, a value outside its range and
// the wrong type, and say which source, which field and which value:
//   "tokenizer.json: 'added_tokens[0].id' must be an integer, got 4.5"
#pragma once

#include <cmath>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>

#include "mmfree/error.hpp"

namespace mmfree::json_field {

// The value as it appears in the file, shortened (a field may hold megabytes).
inline std::string shown(const nlohmann::json& v) {
  std::string s = v.dump();
  return s.size() > 64 ? s.substr(0, 61) + "..." : s;
}

[[noreturn]] inline void bad(const std::string& where, const std::string& field, const std::string& problem,
                             const nlohmann::json& v) {
  fail(where, "'" + field + "' " + problem + ", got " + shown(v));
}

// An integer in [lo, hi]. Floats (4.5, 1e300, even 5.0), strings, booleans and null are refused.
inline int64_t integer(const nlohmann::json& v, const std::string& where, const std::string& field, int64_t lo, int64_t hi) {
  if (!v.is_number_integer()) bad(where, field, "must be an integer", v);
  const std::string range = " [" + std::to_string(lo) + ", " + std::to_string(hi) + "]";
  if (v.is_number_unsigned()) {  // may exceed int64: compare before converting
    const uint64_t u = v.get<uint64_t>();
    if (hi < 0 || u > uint64_t(hi) || (lo > 0 && u < uint64_t(lo))) bad(where, field, "is out of range" + range, v);
    return int64_t(u);
  }
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi) bad(where, field, "is out of range" + range, v);
  return x;
}

// A finite number (integer or float) in [lo, hi].
inline double number(const nlohmann::json& v, const std::string& where, const std::string& field, double lo, double hi) {
  if (!v.is_number()) bad(where, field, "must be a number", v);
  const double x = v.get<double>();
  if (!std::isfinite(x) || x < lo || x > hi)
    bad(where, field, "is out of range [" + nlohmann::json(lo).dump() + ", " + nlohmann::json(hi).dump() + "]", v);
  return x;
}

inline bool boolean(const nlohmann::json& v, const std::string& where, const std::string& field) {
  if (!v.is_boolean()) bad(where, field, "must be true or false", v);
  return v.get<bool>();
}

inline std::string string(const nlohmann::json& v, const std::string& where, const std::string& field) {
  if (!v.is_string()) bad(where, field, "must be a string", v);
  return v.get<std::string>();
}

// Optional members of an object `o`: `def` when the key is absent or null. `prefix` is the
// object's own path ("" at the top, "model." inside "model"), for messages.
inline bool has(const nlohmann::json& o, const char* key) { return o.is_object() && o.contains(key) && !o[key].is_null(); }
inline int64_t integer_or(const nlohmann::json& o, const char* key, int64_t def, const std::string& where, int64_t lo,
                          int64_t hi, const std::string& prefix = "") {
  return has(o, key) ? integer(o[key], where, prefix + key, lo, hi) : def;
}
inline double number_or(const nlohmann::json& o, const char* key, double def, const std::string& where, double lo,
                        double hi, const std::string& prefix = "") {
  return has(o, key) ? number(o[key], where, prefix + key, lo, hi) : def;
}
inline bool boolean_or(const nlohmann::json& o, const char* key, bool def, const std::string& where,
                       const std::string& prefix = "") {
  return has(o, key) ? boolean(o[key], where, prefix + key) : def;
}
inline std::string string_or(const nlohmann::json& o, const char* key, const std::string& def, const std::string& where,
                             const std::string& prefix = "") {
  return has(o, key) ? string(o[key], where, prefix + key) : def;
}

}  // namespace mmfree::json_field
