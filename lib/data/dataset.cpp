#include "lib/data/dataset.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>
#include <sstream>

#include "lib/io/files.h"

namespace modalign {
namespace {

size_t count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t pos = text.find(what); pos != std::string::npos; pos = text.find(what, pos + what.size())) ++n;
  return n;
}

std::string trim(const std::string& s) {
  size_t a = s.find_first_not_of(" \t\n\r"), b = s.find_last_not_of(" \t\n\r");
  return a == std::string::npos ? "" : s.substr(a, b - a + 1);
}

}  // namespace

std::string describe(const Example& e) { return e.where + (e.id.empty() ? "" : " (id " + e.id + ")"); }

namespace {

Example parse_record(const nlohmann::json& j, const std::string& where) {
  Example e;
  e.where = where;
  auto fail = [&](const std::string& msg) -> DataError { return DataError(fmt::format("{}: {}", describe(e), msg)); };
  if (!j.is_object()) throw fail("a sample must be a JSON object");
  if (j.contains("id")) e.id = j["id"].is_string() ? j["id"].get<std::string>() : j["id"].dump();
  if (j.contains("hint") && !j["hint"].is_null()) {
    if (!j["hint"].is_string()) throw fail("\"hint\" must be a string");
    e.hint = j["hint"].get<std::string>();
  }
  if (j.contains("type") && !j["type"].is_null()) {
    if (!j["type"].is_string()) throw fail("\"type\" must be a string");
    e.type = j["type"].get<std::string>();
  }
  const bool has_image = j.contains("image") && !j["image"].is_null(), has_images = j.contains("images") && !j["images"].is_null();
  if (has_image && has_images) throw fail("give either \"image\" or \"images\", not both");
  const char* key = has_image ? "image" : "images";
  if ((has_image || has_images) && j[key] != "") {  // "" = text only, as before
    const nlohmann::json& v = j[key];
    for (const auto& path : v.is_array() ? v : nlohmann::json::array({v})) {
      if (!path.is_string() || path.get<std::string>().empty())
        throw fail(fmt::format("\"{}\" must be a path or a list of paths, got {}", key, path.dump()));
      e.images.push_back(path.get<std::string>());
    }
  }
  if (j.contains("regions") && !j["regions"].is_null()) {
    if (e.images.empty()) throw fail("\"regions\" given but the sample has no \"image\"");
    if (e.images.size() > 1)
      throw fail(fmt::format("\"regions\" given for a sample with {} images (regions are supported for one image)", e.images.size()));
    if (!j["regions"].is_array()) throw fail("\"regions\" must be a list of [x0, y0, x1, y1] boxes");
    for (const auto& box : j["regions"]) {
      if (!box.is_array() || box.size() != 4 || !std::all_of(box.begin(), box.end(), [](const auto& v) { return v.is_number(); }))
        throw fail("each region must be [x0, y0, x1, y1] (numbers, image pixels), got " + box.dump());
      std::array<double, 4> b{box[0].get<double>(), box[1].get<double>(), box[2].get<double>(), box[3].get<double>()};
      if (!std::all_of(b.begin(), b.end(), [](double v) { return std::isfinite(v); }) || b[0] >= b[2] || b[1] >= b[3])
        throw fail("region " + box.dump() + " is empty or not finite (need x0 < x1 and y0 < y1)");
      e.regions.push_back(b);
    }
  }
  if (!j.contains("conversations") || !j["conversations"].is_array()) throw fail("missing \"conversations\" list");
  bool any_gpt = false;
  for (const auto& turn : j["conversations"]) {
    if (!turn.is_object() || !turn.contains("from") || !turn.contains("value") || !turn["from"].is_string() ||
        !turn["value"].is_string())
      throw fail("each turn needs string \"from\" and \"value\"");
    std::string from = turn["from"].get<std::string>();
    bool human = from == "human" || from == "user";
    if (!human && from != "gpt" && from != "assistant") throw fail("turn from '" + from + "' (expected human or gpt)");
    if (human != (e.turns.size() % 2 == 0))
      throw fail(fmt::format("turn {} is from {}; turns must alternate human, gpt, starting with human", e.turns.size(), from));
    any_gpt |= !human;
    e.turns.push_back({human, turn["value"].get<std::string>()});
  }
  if (!any_gpt) throw fail("the conversation has no assistant (gpt) turn");
  size_t placeholders = 0;
  const bool several = e.images.size() > 1;
  for (size_t i = 0; i < e.turns.size(); ++i) {
    size_t n = count(e.turns[i].value, kImagePlaceholder);
    if (n && (several ? !e.turns[i].from_human : i != 0))
      throw fail(fmt::format("<image> appears in turn {}; only {} may hold it", i, several ? "human turns" : "the first human turn"));
    placeholders += n;
  }
  if (several) {
    if (placeholders != e.images.size())
      throw fail(fmt::format("the sample has {} images but its text holds {} <image> placeholders (one per image, in order)",
                             e.images.size(), placeholders));
    return e;
  }
  if (placeholders > 1) throw fail("<image> appears more than once");
  if (placeholders && e.images.empty()) throw fail("the text holds <image> but the sample has no \"image\"");
  if (!e.images.empty()) {  // LLaVA: the placeholder moves to the start of the first turn
    std::string& v = e.turns[0].value;
    size_t pos = v.find(kImagePlaceholder);
    if (pos != std::string::npos) v.erase(pos, std::string(kImagePlaceholder).size());
    v = std::string(kImagePlaceholder) + "\n" + trim(v);
  }
  return e;
}

}  // namespace

std::vector<Example> load_dataset(const std::string& path) {
  const std::string text = read_regular_file<DataError>(path, 4096 * kMiB, "cannot open dataset file");
  std::vector<Example> out;
  size_t first = text.find_first_not_of(" \t\r\n");
  if (first == std::string::npos) throw DataError(path + ": empty dataset file");
  if (text[first] == '[') {
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(text);
    } catch (const nlohmann::json::parse_error& e) {
      size_t line = 1 + std::count(text.begin(), text.begin() + std::min(e.byte, text.size()), '\n');
      throw DataError(fmt::format("{}:{}: invalid JSON: {}", path, line, e.what()));
    } catch (const nlohmann::json::exception& e) {  // a number out of range (found by tests/fuzz/dataset_fuzz)
      throw DataError(fmt::format("{}: invalid JSON: {}", path, e.what()));
    }
    for (size_t i = 0; i < j.size(); ++i) out.push_back(parse_record(j[i], fmt::format("{}[{}]", path, i)));
  } else {
    std::stringstream lines(text);
    size_t number = 0;
    for (std::string line; std::getline(lines, line);) {
      ++number;
      if (trim(line).empty()) continue;
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {  // a syntax error or a number out of range
        throw DataError(fmt::format("{}:{}: invalid JSON: {}", path, number, e.what()));
      }
      out.push_back(parse_record(j, fmt::format("{}:{}", path, number)));
    }
  }
  if (out.empty()) throw DataError(path + ": the dataset holds no samples");
  return out;
}

std::vector<Example> load_datasets(const std::vector<std::string>& paths, std::vector<int64_t>& sizes) {
  std::vector<Example> all;
  for (const auto& path : paths) {
    auto part = load_dataset(path);
    sizes.push_back(static_cast<int64_t>(part.size()));
    all.insert(all.end(), std::make_move_iterator(part.begin()), std::make_move_iterator(part.end()));
  }
  return all;
}

}  // namespace modalign
