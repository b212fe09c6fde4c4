// mmfree: strict parsing of numbers and id lists from user text (CLI flags, files).
// A value is accepted only if the whole string is a number in range.
#pragma once

#include <charconv>
#include <cmath>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "mmfree/error.hpp"

namespace mmfree {

inline int64_t parse_int(std::string_view s, const std::string& what, int64_t lo, int64_t hi) {
  int64_t v = 0;
  const char* b = s.data();
  const char* e = s.data() + s.size();
  if (!s.empty() && *b == '+') ++b;
  auto r = std::from_chars(b, e, v);
  if (s.empty() || r.ec == std::errc::invalid_argument || r.ptr != e)
    fail(what, "'" + std::string(s) + "' is not an integer");
  if (r.ec == std::errc::result_out_of_range || v < lo || v > hi)
    fail(what, "'" + std::string(s) + "' is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}

inline double parse_double(std::string_view s, const std::string& what, double lo, double hi) {
  // from_chars for double is in libstdc++ 11+; strtod would accept leading spaces and hex.
  double v = 0;
  auto r = std::from_chars(s.data(), s.data() + s.size(), v);
  if (s.empty() || r.ec == std::errc::invalid_argument || r.ptr != s.data() + s.size() || std::isnan(v))
    fail(what, "'" + std::string(s) + "' is not a number");
  if (r.ec == std::errc::result_out_of_range || v < lo || v > hi)
    fail(what, "'" + std::string(s) + "' is out of range [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
  return v;
}

// "1,5,9" or "1 5 9" (commas and/or white space) to ids in [0, hi].
inline std::vector<int32_t> parse_id_list(std::string_view s, const std::string& what, int64_t hi = INT32_MAX) {
  std::vector<int32_t> ids;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && (s[i] == ',' || s[i] == ' ' || s[i] == '\t' || s[i] == '\n')) ++i;
    size_t j = i;
    while (j < s.size() && !(s[j] == ',' || s[j] == ' ' || s[j] == '\t' || s[j] == '\n')) ++j;
    if (j > i) ids.push_back(int32_t(parse_int(s.substr(i, j - i), what, 0, hi)));
    i = j;
  }
  return ids;
}

}  // namespace mmfree
