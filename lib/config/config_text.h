// Text helpers shared by the config reader (config_loader.cpp) and writer (config_writer.cpp):
// joining names, listing an enum's names, and describing a numeric range in messages and help.
#pragma once
#include <fmt/format.h>

#include <limits>
#include <string>
#include <type_traits>
#include <vector>

#include "losses/loss_options.h"

namespace modalign::config_text {

inline std::string join(const std::vector<std::string>& items, const char* sep = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? sep : "") + items[i];
  return out;
}

template <class Names>
std::vector<std::string> name_list(const Names& names) {
  std::vector<std::string> out;
  for (const auto& n : names) {
    if constexpr (std::is_convertible_v<decltype(n), const char*>) out.push_back(n);
    else out.push_back(n.first);
  }
  return out;
}

inline std::string describe(const Range& r) { return r.describe(); }

}  // namespace modalign::config_text
