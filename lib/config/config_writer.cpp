#include "lib/config/config_loader.h"

#include <yaml-cpp/yaml.h>

#include <map>
#include <sstream>

#include "lib/config/config_text.h"

namespace modalign {
namespace {

using config_text::describe;
using config_text::join;
using config_text::name_list;

// Emits a struct as YAML; with help, each key carries its help line as a comment.
class Writer {
 public:
  Writer(YAML::Emitter& out, bool with_help) : out_(out), help_(with_help) {}

  template <class T>
  void field(const char* key, const T& value, const char* help, Range range = {}) {
    key_value(key, help, range_note(range), [&] { emit(value); });
  }
  template <class E, size_t N>
  void choice(const char* key, const E& value, const std::pair<const char*, E> (&names)[N], const char* help) {
    const char* name = "";
    for (const auto& [n, e] : names)
      if (e == value) name = n;
    key_value(key, help, "one of: " + join(name_list(names)), [&] { out_ << name; });
  }
  template <size_t N>
  void one_of(const char* key, const std::string& value, const char* const (&names)[N], const char* help) {
    key_value(key, help, "one of: " + join(name_list(names)), [&] { out_ << value; });
  }
  template <class T>
  void optional(const char* key, const std::optional<T>& value, const char* keyword, const char* help,
                Range range = {}) {
    key_value(key, help, range_note(range), [&] {
      if (value) emit(*value);
      else if (std::string(keyword) == "null") out_ << YAML::Null;
      else out_ << keyword;
    });
  }
  void path(const char* key, const std::string& value, const char* help) { field(key, value, help); }
  void paths(const char* key, const std::vector<std::string>& value, const char* help) { field(key, value, help); }
  void alias(const char* alias_key, const char* key) { aliases_[key] = alias_key; }
  template <class S>
  void section(const char* key, S& s, const char* help) {
    if (help_) out_ << YAML::Newline << YAML::Comment(help);
    out_ << YAML::Key << key << YAML::Value << YAML::BeginMap;
    s.visit(*this);
    out_ << YAML::EndMap;
  }
  template <class S>
  void list(const char* key, std::vector<S>& items, const char* help) {
    if (help_) out_ << YAML::Newline << YAML::Comment(help);
    out_ << YAML::Key << key << YAML::Value << YAML::BeginSeq;
    for (auto& item : items) {
      out_ << YAML::BeginMap;
      item.visit(*this);
      out_ << YAML::EndMap;
    }
    out_ << YAML::EndSeq;
  }

 private:
  static std::string range_note(const Range& r) {
    std::string d = describe(r);
    return d == "any number" ? "" : d;
  }
  template <class Emit>
  void key_value(const char* key, const char* help, const std::string& note, Emit emit_value) {
    out_ << YAML::Key << key << YAML::Value;
    emit_value();
    if (!help_) return;
    std::string notes = note;
    auto alias = aliases_.find(key);
    if (alias != aliases_.end()) notes += (notes.empty() ? "" : "; ") + ("alias: " + alias->second);
    out_ << YAML::Comment(notes.empty() ? std::string(help) : std::string(help) + " (" + notes + ")");
  }
  void emit(bool v) { out_ << (v ? "true" : "false"); }
  void emit(int64_t v) { out_ << v; }
  void emit(double v) { out_ << fmt::format("{}", v); }  // shortest text that reads back to the same double
  void emit(const std::string& v) { out_ << YAML::DoubleQuoted << v; }
  void emit(const LayerSpec& v) { out_ << YAML::DoubleQuoted << v.spec; }
  template <class T>
  void emit(const std::vector<T>& v) {
    out_ << YAML::Flow << YAML::BeginSeq;
    for (const auto& x : v) emit(x);
    out_ << YAML::EndSeq;
  }

  YAML::Emitter& out_;
  bool help_;
  std::map<std::string, std::string> aliases_;  // key -> its alias
};

}  // namespace

std::string dump_config(const RunConfig& config) {
  YAML::Emitter out;
  Writer writer(out, false);
  out << YAML::BeginMap;
  RunConfig copy = config;  // visit() is non-const because the reader shares it
  copy.visit(writer);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

std::vector<std::string> config_changes(const std::string& saved_yaml, const std::string& origin, const RunConfig& config) {
  RunConfig saved;
  apply_yaml(saved, saved_yaml, origin, "");
  std::istringstream a(dump_config(saved)), b(dump_config(config));
  std::vector<std::string> out;
  for (std::string x, y; std::getline(a, x) && std::getline(b, y);)
    if (x != y) out.push_back("'" + x + "' -> '" + y + "'");
  return out;
}

std::string describe_defaults() {
  RunConfig config;
  for (const char* name : kAlignmentLossNames) {
    LossEntry entry;
    entry.name = name;
    config.losses.push_back(entry);
  }
  YAML::Emitter out;
  Writer writer(out, true);
  out << YAML::Comment("modalign config keys with their defaults. `losses` is empty by default; its entries "
                       "below show every registered loss with its options.")
      << YAML::BeginMap;
  config.visit(writer);
  out << YAML::EndMap;
  return std::string(out.c_str()) + "\n";
}

}  // namespace modalign
