#include "losses/layer_spec.h"

#include <algorithm>
#include <cctype>
#include <stdexcept>

namespace modalign {
namespace {

bool parse_int(const std::string& s, int64_t& out) {
  if (s.empty()) return false;
  size_t i = (s[0] == '-') ? 1 : 0;
  if (i == s.size()) return false;
  for (size_t j = i; j < s.size(); ++j)
    if (!std::isdigit(static_cast<unsigned char>(s[j]))) return false;
  out = std::stoll(s);
  return true;
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t"), b = s.find_last_not_of(" \t");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

// Splits "a,b-c" into items; each item is an index or an inclusive range of non-negative indices.
// Calls add(lo, hi) for each; returns an error text or "".
template <class Add>
std::string for_each_item(const std::string& spec, Add add) {
  size_t start = 0;
  while (start <= spec.size()) {
    size_t comma = spec.find(',', start);
    std::string item = trim(spec.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    int64_t lo = 0, hi = 0;
    size_t dash = item.find('-', 1);
    if (dash != std::string::npos) {
      if (!parse_int(item.substr(0, dash), lo) || !parse_int(item.substr(dash + 1), hi) || lo < 0 || hi < lo)
        return "'" + item + "' is not a range 'first-last' of layer indices with first <= last";
    } else if (parse_int(item, lo)) {
      hi = lo;
    } else {
      return "'" + item + "' is not a layer index";
    }
    std::string err = add(lo, hi);
    if (!err.empty()) return err;
    if (comma == std::string::npos) break;
    start = comma + 1;
  }
  return "";
}

bool is_keyword(const std::string& s) { return s == "all" || s == "first_half" || s == "second_half"; }

}  // namespace

std::string layer_spec_error(const std::string& spec) {
  if (is_keyword(spec)) return "";
  if (trim(spec).empty()) return "empty layer selection (use all, first_half, second_half, 16-31 or 0,2,5)";
  std::string err = for_each_item(spec, [](int64_t, int64_t) { return std::string(); });
  return err.empty() ? "" : err + " (use all, first_half, second_half, 16-31 or 0,2,5)";
}

std::vector<int64_t> resolve_layers(const LayerSpec& layers, int64_t num_layers) {
  const std::string& spec = layers.spec;
  std::vector<int64_t> out;
  if (spec == "all" || spec == "first_half" || spec == "second_half") {
    int64_t half = num_layers / 2;
    int64_t lo = spec == "second_half" ? half : 0;
    int64_t hi = spec == "first_half" ? std::max<int64_t>(half, 1) : num_layers;
    for (int64_t l = lo; l < hi; ++l) out.push_back(l);
    return out;
  }
  std::string err = layer_spec_error(spec);
  if (err.empty())
    err = for_each_item(spec, [&](int64_t lo, int64_t hi) -> std::string {
      if (lo < 0) lo += num_layers, hi += num_layers;
      if (lo < 0 || hi >= num_layers)
        return "layers '" + spec + "' name an index outside 0.." + std::to_string(num_layers - 1);
      for (int64_t l = lo; l <= hi; ++l) out.push_back(l);
      return "";
    });
  if (!err.empty()) throw std::invalid_argument("layer selection: " + err);
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

}  // namespace modalign
