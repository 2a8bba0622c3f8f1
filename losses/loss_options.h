// Typed options of each loss, as one entry of a YAML `losses:` list gives them. Header-only and free of
// LibTorch and YAML: every struct names its fields once in visit(), and the config reader, the resolved
// config dumper and `modalign config --defaults` all walk that one list.
#pragma once
#include <cstdint>
#include <limits>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <variant>

#include "losses/layer_spec.h"

namespace modalign {

// Allowed interval of a numeric option; open ends exclude the bound.
struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  double hi = std::numeric_limits<double>::infinity();
  bool lo_open = false;
  bool hi_open = false;
  static Range at_least(double lo) { return {lo, std::numeric_limits<double>::infinity(), false, false}; }
  static Range positive() { return {0.0, std::numeric_limits<double>::infinity(), true, false}; }
  static Range unit() { return {0.0, 1.0, false, false}; }           // [0, 1]
  static Range unit_open_lo() { return {0.0, 1.0, true, false}; }    // (0, 1]
  bool contains(double x) const {
    return (lo_open ? x > lo : x >= lo) && (hi_open ? x < hi : x <= hi);
  }
  // "in (0, 1]", ">= 0", "> 0" or "any number".
  std::string describe() const {
    const bool has_lo = lo > -std::numeric_limits<double>::infinity();
    const bool has_hi = hi < std::numeric_limits<double>::infinity();
    std::ostringstream out;
    if (has_lo && has_hi)
      out << "in " << (lo_open ? "(" : "[") << lo << ", " << hi << (hi_open ? ")" : "]");
    else if (has_lo)
      out << (lo_open ? "> " : ">= ") << lo;
    else if (has_hi)
      out << (hi_open ? "< " : "<= ") << hi;
    else
      out << "any number";
    return out.str();
  }
};

// Checks an options struct against the ranges its visit() declares, the same checks the YAML reader makes, so
// that options built in C++ obey them too. Throws std::invalid_argument naming the loss, the field and its range.
class RangeCheck {
 public:
  explicit RangeCheck(std::string loss) : loss_(std::move(loss)) {}
  template <class T>
  void field(const char* key, const T& value, const char* /*help*/, Range range = {}) {
    check(key, value, range);
  }
  template <class E, size_t N>
  void choice(const char*, const E&, const std::pair<const char*, E> (&)[N], const char*) {}
  template <size_t N>
  void one_of(const char*, const std::string&, const char* const (&)[N], const char*) {}
  template <class T>
  void optional(const char* key, const std::optional<T>& value, const char*, const char*, Range range = {}) {
    if (value) check(key, *value, range);
  }

 private:
  template <class T>
  void check(const char* key, const T& value, const Range& range) const {
    if constexpr (std::is_arithmetic_v<T> && !std::is_same_v<T, bool>) {
      if (!range.contains(static_cast<double>(value))) {
        std::ostringstream out;
        out << loss_ << "." << key << " must be " << range.describe() << ", got " << value;
        throw std::invalid_argument(out.str());
      }
    }
  }
  std::string loss_;
};

// `options` after RangeCheck: what each loss's constructor keeps.
template <class Options>
Options checked(Options options) {
  RangeCheck check(Options::kName);
  options.visit(check);
  return options;
}

// f(M) applied to a visual attention mass M in (0, 1] (dual_channel).
enum class MassForm { CappedLog, Log, Hinge };
inline constexpr std::pair<const char*, MassForm> kMassFormNames[] = {
    {"capped_log", MassForm::CappedLog}, {"log", MassForm::Log}, {"hinge", MassForm::Hinge}};

// Which key positions count as attention sinks (sink_suppression).
enum class SinkTokens { Bos, System };
inline constexpr std::pair<const char*, SinkTokens> kSinkTokensNames[] = {
    {"bos", SinkTokens::Bos}, {"system", SinkTokens::System}};

// MODA-style dual-channel alignment (arXiv 2507.04635), log-mass form from AVAR (arXiv 2603.03825).
struct DualChannelOptions {
  static constexpr const char* kName = "dual_channel";
  double inter_weight = 1.0;
  double intra_weight = 0.5;
  LayerSpec layers;
  MassForm form = MassForm::CappedLog;
  std::optional<double> target;  // nullopt = balanced: per query, the image share of its visible keys
  double target_scale = 1.0;
  double eps = 1e-6;

  template <class V>
  void visit(V& v) {
    v.field("inter_weight", inter_weight, "weight of the response->image channel M_X", Range::at_least(0));
    v.field("intra_weight", intra_weight, "weight of the image->image channel M_I", Range::at_least(0));
    v.field("layers", layers, "tapped decoder layers: all, first_half, second_half, 16-31 or a list");
    v.choice("form", form, kMassFormNames,
             "f(M): capped_log = -log(min(M/target,1)+eps), log = -log(M+eps), hinge = relu(target-M)^2");
    v.optional("target", target, "balanced",
               "target mass in (0,1], or balanced = the image share of each query's visible keys",
               Range::unit_open_lo());
    v.field("target_scale", target_scale, "multiplies the target (balanced or fixed)", Range::positive());
    v.field("eps", eps, "added inside the logarithms", Range::positive());
  }
  // Why these options make no loss although each field is in range; empty when they do.
  std::string conflict() const {
    return inter_weight == 0 && intra_weight == 0 ? "inter_weight and intra_weight are both 0 (the loss would be 0)" : "";
  }
};

// Anti-decay across depth: mean_{l > ref} relu(M_X^ref - M_X^l).
struct LayerDecayOptions {
  static constexpr const char* kName = "layer_decay";
  LayerSpec layers;
  std::optional<int64_t> ref;  // nullopt = the first selected layer

  template <class V>
  void visit(V& v) {
    v.field("layers", layers, "decoder layers compared with the reference layer");
    v.optional("ref", ref, "first", "reference layer index, or first = the first selected layer",
               Range::at_least(0));
  }
};

// AVAR's L_sup (arXiv 2603.03825): log of the attention mass response queries put on sink tokens.
struct SinkSuppressionOptions {
  static constexpr const char* kName = "sink_suppression";
  LayerSpec layers;
  SinkTokens sink = SinkTokens::Bos;
  double eps = 1e-6;

  template <class V>
  void visit(V& v) {
    v.field("layers", layers, "decoder layers whose sink mass is suppressed");
    v.choice("sink", sink, kSinkTokensNames, "sink keys: bos = the first token, system = the system prompt");
    v.field("eps", eps, "added inside the logarithm", Range::positive());
  }
};

// KLAL-style (arXiv 2511.12738): KL(target || attention over image tokens) at response queries.
struct AttentionKlOptions {
  static constexpr const char* kName = "attention_kl";
  LayerSpec layers;
  bool renormalise = true;  // false: the target is over all keys, so attention off the region costs too
  double eps = 1e-8;

  template <class V>
  void visit(V& v) {
    v.field("layers", layers, "decoder layers whose attention over image tokens is matched");
    v.field("renormalise", renormalise,
            "true: match the attention renormalised over image tokens (KLAL); false: match the attention over all "
            "keys (adds -log of the image mass: text keys, the hint included, cost too)");
    v.field("eps", eps, "floor inside the logarithms", Range::positive());
  }
};

// CAL (arXiv 2405.17871): each supervised token's CE weighted by how much the image raises its logit,
// w = clamp(z(y | image, text) - z(y | text alone), min_weight, max_weight), no gradient through w.
struct ContrastiveTokensOptions {
  static constexpr const char* kName = "contrastive_tokens";
  double min_weight = 1.0;
  double max_weight = 5.0;

  template <class V>
  void visit(V& v) {
    v.field("min_weight", min_weight, "lower clamp of the logit difference (the paper's alpha)", Range::at_least(0));
    v.field("max_weight", max_weight, "upper clamp of the logit difference (the paper's beta)", Range::positive());
  }
};

// Product of experts with a text-only prior (Clark et al., EMNLP 2019): the CE of
// log_softmax(log p(y | image, text) + prior_scale * log p(y | text alone)), the prior without gradient.
struct TextPriorPoeOptions {
  static constexpr const char* kName = "text_prior_poe";
  double prior_scale = 1.0;

  template <class V>
  void visit(V& v) {
    v.field("prior_scale", prior_scale, "multiplies the text-only log-probabilities (1 = product of experts)",
            Range::positive());
  }
};

// Names the loss registry knows, in the order `--defaults` lists them.
inline constexpr const char* kAlignmentLossNames[] = {"dual_channel",   "layer_decay",        "sink_suppression",
                                                      "attention_kl",   "contrastive_tokens", "text_prior_poe"};

// The modality-contrast terms: they replace text_ce as the loss of the supervised tokens (text_ce is still
// logged, with weight 0), so their weight defaults to 1.
inline bool replaces_text_ce(const std::string& name) {
  return name == "contrastive_tokens" || name == "text_prior_poe";
}

// The options of one loss: a built-in's own struct, or none (std::monostate) for a loss registered by a user.
using LossOptions = std::variant<std::monostate, DualChannelOptions, LayerDecayOptions, SinkSuppressionOptions,
                                 AttentionKlOptions, ContrastiveTokensOptions, TextPriorPoeOptions>;

// One entry of `losses:`: a loss's name, its weight and its options. A built-in loss is made from its options
// type, which sets the name, so options cannot land on another loss:
//   LossEntry(DualChannelOptions{...}, 0.3)   // weighted 0.3; LossEntry(AttentionKlOptions{}) takes the default
struct LossEntry {
  std::string name;              // the registry key: the options' kName, or a user loss's registered name
  std::optional<double> weight;  // nullopt = default_weight()
  LossOptions options;

  LossEntry() = default;
  template <class Options, class = std::enable_if_t<!std::is_same_v<std::decay_t<Options>, std::string>>>
  explicit LossEntry(Options o, std::optional<double> w = std::nullopt)
      : name(std::decay_t<Options>::kName), weight(w), options(std::move(o)) {}
  // A loss registered under `registered_name` (register_loss), with no built-in options.
  explicit LossEntry(std::string registered_name, std::optional<double> w = std::nullopt)
      : name(std::move(registered_name)), weight(w) {}

  // Weight of the term in the total loss when none is given: 1 for the terms that replace text_ce, 0.5 for the
  // attention losses (added to text_ce).
  double default_weight() const { return replaces_text_ce(name) ? 1.0 : 0.5; }
  double weight_value() const { return weight.value_or(default_weight()); }

  // The options as `Options`. An entry that gives only a built-in's name (as `- name: dual_channel` in YAML)
  // holds its defaults. Throws std::invalid_argument when the entry is another loss's.
  template <class Options>
  const Options& get() const {
    if (const Options* o = std::get_if<Options>(&options)) return *o;
    if (std::holds_alternative<std::monostate>(options) && name == Options::kName) {
      static const Options defaults{};
      return defaults;
    }
    throw std::invalid_argument("loss entry '" + name + "' holds no " + Options::kName + " options");
  }
  template <class Options>
  Options& get() {
    if (std::holds_alternative<std::monostate>(options) && name == Options::kName) options = Options{};
    if (Options* o = std::get_if<Options>(&options)) return *o;
    throw std::invalid_argument("loss entry '" + name + "' holds no " + Options::kName + " options");
  }

  template <class V>
  void visit(V& v) {
    v.one_of("name", name, kAlignmentLossNames, "which alignment loss (registered names)");
    v.optional("weight", weight, "default",
               "weight of this term in the total loss; default = 1 for contrastive_tokens and text_prior_poe (they "
               "replace text_ce), 0.5 for the others",
               Range::at_least(0));
    select_options();
    std::visit([&](auto& o) {
      if constexpr (!std::is_same_v<std::decay_t<decltype(o)>, std::monostate>) o.visit(v);
    }, options);
  }

 private:
  // Makes `options` the struct of the loss `name` names (its defaults when it held another's).
  void select_options() {
    select<DualChannelOptions, LayerDecayOptions, SinkSuppressionOptions, AttentionKlOptions,
           ContrastiveTokensOptions, TextPriorPoeOptions>();
  }
  template <class First, class... Rest>
  void select() {
    if (name == First::kName) {
      if (!std::holds_alternative<First>(options)) options = First{};
      return;
    }
    if constexpr (sizeof...(Rest) > 0) select<Rest...>();
  }
};

}  // namespace modalign
