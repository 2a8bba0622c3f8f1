#include "trainers/step_stats.h"

#include <fmt/format.h>

#include <algorithm>

namespace modalign {

std::vector<double> StepStats::pack() const {
  std::vector<double> v{loss, tokens, stop};
  for (const auto* part : {&term_sums, &share_sums, &share_samples}) v.insert(v.end(), part->begin(), part->end());
  return v;
}

void StepStats::unpack(const std::vector<double>& v) {
  loss = v.at(0), tokens = v.at(1), stop = v.at(2);
  auto it = v.begin() + 3;
  for (auto* part : {&term_sums, &share_sums, &share_samples}) {
    std::copy(it, it + static_cast<std::ptrdiff_t>(part->size()), part->begin());
    it += static_cast<std::ptrdiff_t>(part->size());
  }
}

std::vector<std::pair<std::string, double>> StepStats::means() const {
  std::vector<std::pair<std::string, double>> out;
  for (size_t i = 0; i < names.size(); ++i) out.emplace_back(names[i], term_sums[i] / std::max(1.0, term_counts[i]));
  for (size_t i = 0; i < layers.size(); ++i)
    out.emplace_back(fmt::format("visual_share.l{}", layers[i]), share_sums[i] / std::max(1.0, share_samples[i]));
  return out;
}

}  // namespace modalign
