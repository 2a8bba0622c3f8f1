#include "lib/config/config_loader.h"

#include "lib/config/config_text.h"
#include "lib/io/files.h"

#include <yaml-cpp/yaml.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <limits>
#include <map>
#include <set>
#include <sstream>

namespace modalign {
namespace fs = std::filesystem;
namespace {

using config_text::describe;
using config_text::join;
using config_text::name_list;

// Where a YAML document came from: a file (with line numbers) or a --set argument.
struct Origin {
  std::string name;
  fs::path base_dir;
  bool has_lines = true;
};

std::string where(const Origin& origin, const YAML::Node& node) {
  if (origin.has_lines && node.Mark().line >= 0) return fmt::format("{}:{}", origin.name, node.Mark().line + 1);
  return origin.name;
}

size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<size_t> row(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) row[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    size_t diag = row[0];
    row[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t up = row[j];
      row[j] = std::min({row[j] + 1, row[j - 1] + 1, diag + (a[i - 1] == b[j - 1] ? 0 : 1)});
      diag = up;
    }
  }
  return row[b.size()];
}

// The closest of `candidates` to `word`, or "" when none is plausibly a typo of it.
std::string nearest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_d = std::max<size_t>(2, word.size() / 3) + 1;
  for (const auto& c : candidates) {
    size_t d = edit_distance(word, c);
    if (d < best_d) best_d = d, best = c;
  }
  return best;
}

// Expands ${VAR} and ${VAR:-default}; an unset variable without default is an error.
std::string interpolate(const std::string& text, const std::string& context) {
  std::string out;
  size_t pos = 0;
  while (true) {
    size_t start = text.find("${", pos);
    if (start == std::string::npos) break;
    size_t end = text.find('}', start);
    if (end == std::string::npos) throw ConfigError(context + ": unterminated '${' in '" + text + "'");
    out += text.substr(pos, start - pos);
    std::string inner = text.substr(start + 2, end - start - 2);
    size_t dflt = inner.find(":-");
    std::string var = inner.substr(0, dflt);
    if (inner.find("${") != std::string::npos)  // `${A:-${B}}`: not supported, and its text would not reload
      throw ConfigError(context + ": nested '${' in '" + text + "' is not supported");
    const char* value = var.empty() ? nullptr : std::getenv(var.c_str());
    if (value) out += value;
    else if (dflt != std::string::npos) out += inner.substr(dflt + 2);
    else throw ConfigError(context + ": environment variable " + var + " is not set (write ${" + var +
                           ":-default} to give a default)");
    pos = end + 1;
  }
  return out + text.substr(pos);
}

// Every key path of a RunConfig, with each loss's options, to suggest a section for a misplaced key.
struct KeyCollector {
  std::string prefix;
  std::vector<std::string>* keys;
  void add(const char* key) { keys->push_back(prefix + key); }
  template <class T, class... R> void field(const char* k, T&, R&&...) { add(k); }
  template <class T, class N> void choice(const char* k, T&, const N&, const char*) { add(k); }
  template <class N> void one_of(const char* k, std::string&, const N&, const char*) { add(k); }
  template <class T, class... R> void optional(const char* k, T&, R&&...) { add(k); }
  void path(const char* k, std::string&, const char*) { add(k); }
  void paths(const char* k, std::vector<std::string>&, const char*) { add(k); }
  void alias(const char*, const char*) {}
  template <class S> void section(const char* k, S& s, const char*) {
    KeyCollector sub{prefix + k + ".", keys};
    s.visit(sub);
  }
  template <class S> void list(const char* k, std::vector<S>&, const char*) {
    for (const char* name : kAlignmentLossNames) {
      S entry;
      entry.name = name;
      KeyCollector sub{prefix + k + "[]." , keys};
      entry.visit(sub);
    }
  }
};

const std::vector<std::string>& all_key_paths() {
  static const std::vector<std::string> keys = [] {
    std::vector<std::string> out;
    RunConfig config;
    KeyCollector collector{"", &out};
    config.visit(collector);
    return out;
  }();
  return keys;
}

// Reads one YAML map onto a struct through its visit(); unknown keys are reported by finish().
class Reader {
 public:
  Reader(const YAML::Node& node, std::string prefix, const Origin& origin)
      : node_(node), prefix_(std::move(prefix)), origin_(origin) {
    if (node_ && !node_.IsNull() && !node_.IsMap())
      fail(node_, "expected a map of keys, got " + describe_node(node_));
  }

  template <class T>
  void field(const char* key, T& value, const char* /*help*/, Range range = {}) {
    if (YAML::Node n = find(key)) {
      parse(n, value, key);
      check_range(n, key, value, range);
    }
  }

  template <class E, size_t N>
  void choice(const char* key, E& value, const std::pair<const char*, E> (&names)[N], const char*) {
    if (YAML::Node n = find(key)) {
      std::string s = scalar(n, key);
      for (const auto& [name, e] : names)
        if (s == name) return void(value = e);
      fail_choice(n, key, s, name_list(names));
    }
  }

  template <size_t N>
  void one_of(const char* key, std::string& value, const char* const (&names)[N], const char*) {
    YAML::Node n = find(key);
    if (!n) {
      if (value.empty()) fail(node_, "missing required key '" + path(key) + "' (one of: " + join(name_list(names)) + ")");
      return;
    }
    std::string s = scalar(n, key);
    if (std::find(std::begin(names), std::end(names), s) == std::end(names)) fail_choice(n, key, s, name_list(names));
    value = s;
  }

  template <class T>
  void optional(const char* key, std::optional<T>& value, const char* keyword, const char*, Range range = {}) {
    YAML::Node n = find(key);
    if (!n) return;
    if (n.IsNull() || (n.IsScalar() && n.Scalar() == keyword)) return void(value.reset());
    T v{};
    parse(n, v, key);
    check_range(n, key, v, range);
    value = v;
  }

  void path(const char* key, std::string& value, const char*) {
    if (YAML::Node n = find(key)) value = resolve(scalar(n, key));
  }

  void paths(const char* key, std::vector<std::string>& value, const char*) {
    if (YAML::Node n = find(key)) {
      parse(n, value, key);
      for (auto& p : value) p = resolve(p);
    }
  }

  void alias(const char* alias_key, const char* key) { aliases_[key] = alias_key; }

  template <class S>
  void section(const char* key, S& s, const char*) {
    if (YAML::Node n = find(key)) {
      Reader sub(n, path(key) + ".", origin_);
      s.visit(sub);
      sub.finish();
    }
  }

  // A sequence replaces the list; a map with integer keys (from --set losses.0.weight=...) edits entries.
  template <class S>
  void list(const char* key, std::vector<S>& items, const char*) {
    YAML::Node n = find(key);
    if (!n) return;
    if (n.IsNull()) return items.clear();
    if (n.IsSequence()) {
      std::vector<S> fresh(n.size());
      for (size_t i = 0; i < n.size(); ++i) read_entry(n[i], fmt::format("{}[{}].", path(key), i), fresh[i]);
      items = std::move(fresh);
      return;
    }
    if (!n.IsMap()) fail(n, path(key) + ": expected a list of entries, got " + describe_node(n));
    for (const auto& kv : n) {
      std::string index = kv.first.Scalar();
      int64_t i = -1;
      if (!parse_int(index, i) || i < 0 || i >= static_cast<int64_t>(items.size()))
        fail(kv.first, fmt::format("{}.{}: no such entry (the list has {} entries; index them from 0)",
                                   path(key), index, items.size()));
      read_entry(kv.second, fmt::format("{}[{}].", path(key), i), items[i]);
    }
  }

  // Throws on the first key of the map that no field claimed.
  void finish() const {
    if (!node_ || !node_.IsMap()) return;
    for (const auto& kv : node_) {
      std::string key = kv.first.Scalar();
      if (std::find(seen_.begin(), seen_.end(), key) != seen_.end()) continue;
      std::string msg = "unknown key '" + path(key) + "'";
      std::string near = nearest(key, seen_);
      if (!near.empty()) {
        msg += "; did you mean '" + path(near) + "'?";
      } else {
        std::vector<std::string> elsewhere;
        for (const auto& k : all_key_paths()) {
          size_t dot = k.rfind('.');
          if ((dot == std::string::npos ? k : k.substr(dot + 1)) == key) elsewhere.push_back(k);
        }
        if (!elsewhere.empty()) msg += "; did you mean '" + elsewhere.front() + "'?";
        else msg += " (known keys here: " + join(seen_) + ")";
      }
      fail(kv.first, msg);
    }
  }

 private:
  template <class S>
  void read_entry(const YAML::Node& n, const std::string& prefix, S& entry) const {
    Reader sub(n, prefix, origin_);
    entry.visit(sub);
    sub.finish();
  }

  std::string path(const std::string& key) const { return prefix_ + key; }

  [[noreturn]] void fail(const YAML::Node& n, const std::string& msg) const {
    throw ConfigError(where(origin_, n) + ": " + msg);
  }

  void fail_choice(const YAML::Node& n, const char* key, const std::string& got,
                   const std::vector<std::string>& names) const {
    std::string near = nearest(got, names);
    fail(n, fmt::format("{}: '{}' is not one of: {}{}", path(key), got, join(names),
                        near.empty() ? "" : "; did you mean '" + near + "'?"));
  }

  static std::string describe_node(const YAML::Node& n) {
    if (n.IsMap()) return "a map";
    if (n.IsSequence()) return "a list";
    if (n.IsNull()) return "nothing";
    return "'" + n.Scalar() + "'";
  }

  // The node for `key` (or its alias); records the key as known.
  YAML::Node find(const char* key) {
    seen_.push_back(key);
    YAML::Node n = lookup(key);
    auto alias = aliases_.find(key);
    if (alias != aliases_.end()) {
      seen_.push_back(alias->second);
      YAML::Node a = lookup(alias->second);
      if (a && n) fail(a, "both '" + path(alias->second) + "' and its alias target '" + path(key) + "' are set");
      if (a) return a;
    }
    return n;
  }

  // Looks up through a const node: yaml-cpp's non-const operator[] would add the missing key.
  YAML::Node lookup(const std::string& key) const {
    const YAML::Node& map = node_;
    return map && map.IsMap() ? map[key] : YAML::Node();
  }

  std::string scalar(const YAML::Node& n, const char* key) const {
    if (n.IsNull()) return "";
    if (!n.IsScalar()) fail(n, path(key) + ": expected a single value, got " + describe_node(n));
    return interpolate(n.Scalar(), where(origin_, n) + ": " + path(key));
  }

  std::string resolve(const std::string& p) const {
    if (p.empty() || fs::path(p).is_absolute() || origin_.base_dir.empty()) return p;
    return (origin_.base_dir / p).lexically_normal().string();
  }

  static bool parse_int(const std::string& s, int64_t& out) {
    if (s.empty()) return false;
    char* end = nullptr;
    errno = 0;
    long long v = std::strtoll(s.c_str(), &end, 10);
    if (errno || *end != '\0') return false;
    out = v;
    return true;
  }

  void parse(const YAML::Node& n, bool& out, const char* key) const {
    std::string s = scalar(n, key);
    std::string l = s;
    std::transform(l.begin(), l.end(), l.begin(), ::tolower);
    if (l == "true" || l == "yes" || l == "on") out = true;
    else if (l == "false" || l == "no" || l == "off") out = false;
    else fail(n, path(key) + ": expected true or false, got '" + s + "'");
  }

  void parse(const YAML::Node& n, int64_t& out, const char* key) const {
    std::string s = scalar(n, key);
    if (!parse_int(s, out)) fail(n, path(key) + ": expected an integer, got '" + s + "'");
  }

  void parse(const YAML::Node& n, double& out, const char* key) const {
    std::string s = scalar(n, key);
    char* end = nullptr;
    errno = 0;
    double v = s.empty() ? 0 : std::strtod(s.c_str(), &end);
    if (s.empty() || errno || *end != '\0' || !std::isfinite(v))
      fail(n, path(key) + ": expected a number, got '" + s + "'");
    out = v;
  }

  void parse(const YAML::Node& n, std::string& out, const char* key) const { out = scalar(n, key); }

  void parse(const YAML::Node& n, LayerSpec& out, const char* key) const {
    std::string spec;
    if (n.IsSequence()) {
      std::vector<std::string> items;
      for (const auto& item : n) items.push_back(scalar(item, key));
      spec = join(items, ",");
    } else {
      spec = scalar(n, key);
    }
    std::string err = layer_spec_error(spec);
    if (!err.empty()) fail(n, path(key) + ": " + err);
    out.spec = spec;
  }

  // A list, or a single value taken as a one-item list.
  template <class T>
  void parse(const YAML::Node& n, std::vector<T>& out, const char* key) const {
    std::vector<T> items;
    if (n.IsSequence()) {
      for (const auto& item : n) {
        T v{};
        parse(item, v, key);
        items.push_back(v);
      }
    } else if (!n.IsNull()) {
      T v{};
      parse(n, v, key);
      items.push_back(v);
    }
    out = std::move(items);
  }

  template <class T>
  void check_range(const YAML::Node& n, const char* key, const T& value, const Range& range) const {
    if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
      if (!range.contains(static_cast<double>(value)))
        fail(n, fmt::format("{}: must be {}, got {}", path(key), describe(range), value));
    }
  }

  YAML::Node node_;
  std::string prefix_;
  const Origin& origin_;
  std::vector<std::string> seen_;
  std::map<std::string, std::string> aliases_;  // key -> its alias
};

void apply_node(RunConfig& config, const YAML::Node& node, const Origin& origin) {
  Reader reader(node, "", origin);
  config.visit(reader);
  reader.finish();
}

// "--set a.b.c=value" -> {a: {b: {c: value}}}, the value read as YAML (so lists and numbers work).
YAML::Node override_node(const std::string& assignment) {
  size_t eq = assignment.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ConfigError("--set " + assignment + ": expected section.key=value");
  std::string key = assignment.substr(0, eq), text = assignment.substr(eq + 1);
  YAML::Node value;
  try {
    value = YAML::Load(text);
  } catch (const YAML::Exception&) {
    value = YAML::Node(text);
  }
  std::vector<std::string> parts;
  std::stringstream ss(key);
  for (std::string part; std::getline(ss, part, '.');) {
    if (part.empty()) throw ConfigError("--set " + assignment + ": empty component in key '" + key + "'");
    parts.push_back(part);
  }
  for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
    YAML::Node map(YAML::NodeType::Map);
    map[*it] = value;
    value = map;
  }
  return value;
}

// A key given twice in one map (YAML keeps both, a lookup silently takes one): an error naming both lines.
void reject_duplicate_keys(const YAML::Node& node, const std::string& origin, const std::string& path) {
  if (node.IsSequence()) {
    for (size_t i = 0; i < node.size(); ++i) reject_duplicate_keys(node[i], origin, path + "." + std::to_string(i));
    return;
  }
  if (!node.IsMap()) return;
  std::map<std::string, int> first_line;
  for (const auto& kv : node) {
    if (!kv.first.IsScalar()) continue;
    const std::string key = kv.first.Scalar(), full = path.empty() ? key : path + "." + key;
    const int line = kv.first.Mark().line + 1;
    auto [it, inserted] = first_line.emplace(key, line);
    if (!inserted)
      throw ConfigError(fmt::format("{}:{}: duplicate key '{}' (also at line {}); give each key once", origin, line, full,
                                    it->second));
    reject_duplicate_keys(kv.second, origin, full);
  }
}

}  // namespace

void apply_yaml(RunConfig& config, const std::string& yaml_text, const std::string& origin,
                const std::string& base_dir) {
  YAML::Node node;
  try {
    node = YAML::Load(yaml_text);
  } catch (const YAML::Exception& e) {
    throw ConfigError(fmt::format("{}:{}: YAML syntax error: {}", origin, e.mark.line + 1, e.msg));
  }
  if (node.IsNull()) return;
  reject_duplicate_keys(node, origin, "");
  Origin o{origin, base_dir, true};
  if (!node.IsMap()) throw ConfigError(where(o, node) + ": expected a map of sections (model, data, train, ...)");
  apply_node(config, node, o);
}

RunConfig load_run_config(const std::vector<std::string>& files, const std::vector<std::string>& overrides) {
  RunConfig config;
  for (const auto& file : files) {
    apply_yaml(config, read_regular_file<ConfigError>(file, 16 * kMiB, "cannot read config file"), file,
               fs::path(file).parent_path().string());
  }
  for (const auto& assignment : overrides) {
    Origin origin{"--set " + assignment, "", false};
    apply_node(config, override_node(assignment), origin);
  }
  validate(config);
  return config;
}

}  // namespace modalign
