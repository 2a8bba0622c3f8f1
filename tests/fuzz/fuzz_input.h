// Fuzz helpers: the readers under test take file paths (they check the file before reading it), so each
// input is written to one scratch file per process first.
#pragma once
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <string>

namespace modalign::fuzz {

// Writes the input to a per-process file under /tmp and returns its path (same path every call).
inline const std::string& write_input(const uint8_t* data, size_t size, const char* suffix) {
  static const std::string path = "/tmp/modalign-fuzz-" + std::to_string(getpid()) + suffix;
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f) {
    if (size) std::fwrite(data, 1, size, f);
    std::fclose(f);
  }
  return path;
}

}  // namespace modalign::fuzz
