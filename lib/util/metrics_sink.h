// metrics.jsonl writer: one JSON object per record, one record per line, flushed as written, so a
// crashed run keeps every record it logged and plots can be drawn while it trains.
#pragma once
#include <cstdint>
#include <fstream>
#include <string>
#include <utility>
#include <vector>

namespace modalign {

class MetricsSink {
 public:
  // Appends to `path` (creating folders); a resumed run continues the same file. An empty path makes a
  // sink that writes nothing (data-parallel ranks other than 0).
  explicit MetricsSink(const std::string& path);

  // Writes {"kind": kind, "step": step, name: value, ...}; non-finite values are written as null.
  void write(const std::string& kind, int64_t step, const std::vector<std::pair<std::string, double>>& values);

  const std::string& path() const { return path_; }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace modalign
