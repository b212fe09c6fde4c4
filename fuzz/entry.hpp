// The fuzz targets of targets.hpp, compiled once (entry.cpp) and linked into every libFuzzer
// binary: the targets share the model and parser code, and compiling it instrumented once instead
// of once per binary takes the fuzz build from ~570 to ~140 CPU seconds.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

namespace mmfree::fuzz {

// The target named as its corpus folder (fuzz/corpus/<name>); throws std::out_of_range otherwise.
const std::function<int(const uint8_t*, size_t)>& target(const std::string& name);

}  // namespace mmfree::fuzz
