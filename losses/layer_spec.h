// Which decoder layers a loss reads, as users write it: "all", "second_half", "first_half", a range
// "16-31", one index "3", or a comma list "0,2,5" (negative indices count from the end, as in Python).
// Free of LibTorch so the config reader can check the syntax before any model exists.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace modalign {

struct LayerSpec {
  std::string spec = "all";
  bool operator==(const LayerSpec& o) const { return spec == o.spec; }
};

// Empty when `spec` is well formed; otherwise what is wrong with it.
std::string layer_spec_error(const std::string& spec);

// The sorted, distinct layer indices in [0, num_layers) that `spec` names.
// Throws std::invalid_argument naming the spec when it is malformed or out of range.
std::vector<int64_t> resolve_layers(const LayerSpec& spec, int64_t num_layers);

}  // namespace modalign
