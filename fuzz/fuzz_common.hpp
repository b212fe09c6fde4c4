// Shared by the fuzz targets: the file parsers take paths, so inputs go through a file
// in /dev/shm (memory-backed, one per process).
#pragma once

#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

inline std::string fuzz_file(const uint8_t* data, size_t size, const char* suffix) {
  static const std::string path = "/dev/shm/mmfree-fuzz-" + std::to_string(::getpid()) + suffix;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (size) std::fwrite(data, 1, size, f);
  std::fclose(f);
  return path;
}
