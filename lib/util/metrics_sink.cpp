#include "lib/util/metrics_sink.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <stdexcept>

namespace modalign {

MetricsSink::MetricsSink(const std::string& path) : path_(path) {
  if (path.empty()) return;
  std::filesystem::path parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  out_.open(path, std::ios::app);
  if (!out_) throw std::runtime_error(path + ": cannot open metrics file for writing (" + std::strerror(errno) + ")");
}

void MetricsSink::write(const std::string& kind, int64_t step, const std::vector<std::pair<std::string, double>>& values) {
  if (path_.empty()) return;
  nlohmann::ordered_json record;
  record["kind"] = kind;
  record["step"] = step;
  for (const auto& [name, value] : values) {
    if (std::isfinite(value)) record[name] = value;
    else record[name] = nullptr;
  }
  out_ << record.dump() << '\n';
  out_.flush();
  if (!out_) throw std::runtime_error(path_ + ": writing metrics failed");
}

}  // namespace modalign
