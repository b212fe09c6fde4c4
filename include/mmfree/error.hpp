// mmfree: one exception type for every bad input.
//
// Messages always name the input (a file, a tensor, a flag) and the problem, so a
// user who hands us a broken checkpoint learns which file to fix without a debugger.
#pragma once

#include <stdexcept>
#include <string>
#include <vector>

namespace mmfree {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// "<what>: <problem>", the shape every message in the library takes.
[[noreturn]] inline void fail(const std::string& what, const std::string& problem) {
  throw Error(what + ": " + problem);
}

// "[2, 3]": a shape or a list of dims, for messages.
template <class T>
std::string shape_str(const std::vector<T>& dims) {
  std::string s = "[";
  for (size_t i = 0; i < dims.size(); ++i) s += (i ? ", " : "") + std::to_string(dims[i]);
  return s + "]";
}

}  // namespace mmfree
