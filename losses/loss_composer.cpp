#include "losses/loss_composer.h"

#include <algorithm>
#include <map>
#include <mutex>

#include "losses/attention_kl.h"
#include "losses/dual_channel.h"
#include "losses/layer_decay.h"
#include "losses/modality_contrast.h"
#include "losses/sink_suppression.h"
#include "losses/text_ce.h"

namespace modalign {
namespace {

std::map<std::string, LossFactory>& registry() {
  static std::map<std::string, LossFactory> factories = {
      {"dual_channel", [](const LossEntry& e, int64_t n) { return std::make_unique<DualChannelLoss>(e.get<DualChannelOptions>(), n); }},
      {"layer_decay", [](const LossEntry& e, int64_t n) { return std::make_unique<LayerDecayLoss>(e.get<LayerDecayOptions>(), n); }},
      {"sink_suppression",
       [](const LossEntry& e, int64_t n) { return std::make_unique<SinkSuppressionLoss>(e.get<SinkSuppressionOptions>(), n); }},
      {"attention_kl", [](const LossEntry& e, int64_t n) { return std::make_unique<AttentionKlLoss>(e.get<AttentionKlOptions>(), n); }},
      {"contrastive_tokens",
       [](const LossEntry& e, int64_t) { return std::make_unique<ContrastiveTokensLoss>(e.get<ContrastiveTokensOptions>()); }},
      {"text_prior_poe", [](const LossEntry& e, int64_t) { return std::make_unique<TextPriorPoeLoss>(e.get<TextPriorPoeOptions>()); }},
  };
  return factories;
}

std::mutex registry_mutex;

}  // namespace

void register_loss(const std::string& name, LossFactory factory) {
  std::lock_guard<std::mutex> lock(registry_mutex);
  registry()[name] = std::move(factory);
}

std::vector<std::string> registered_losses() {
  std::lock_guard<std::mutex> lock(registry_mutex);
  std::vector<std::string> names;
  for (const auto& kv : registry()) names.push_back(kv.first);
  return names;
}

std::unique_ptr<AlignmentLoss> make_loss(const LossEntry& entry, int64_t num_layers) {
  LossFactory factory;
  {
    std::lock_guard<std::mutex> lock(registry_mutex);
    auto it = registry().find(entry.name);
    if (it != registry().end()) factory = it->second;
  }
  if (!factory) {
    std::string known;
    for (const auto& name : registered_losses()) known += (known.empty() ? "" : ", ") + name;
    throw std::invalid_argument("unknown loss '" + entry.name + "' (registered: " + known + ")");
  }
  return factory(entry, num_layers);
}

LossComposer::LossComposer(const std::vector<LossEntry>& entries, int64_t num_layers) {
  for (const auto& e : entries) {
    LossEntry ranges = e;  // the weight's and the options' ranges, as the YAML reader declares them
    RangeCheck check(e.name);
    ranges.visit(check);
    losses_.push_back(make_loss(e, num_layers));
    weights_.push_back(e.weight_value());
  }
  int replacing = 0;
  for (const auto& loss : losses_) replacing += loss->needs().replaces_text_ce;
  if (replacing > 1)
    throw std::invalid_argument("contrastive_tokens and text_prior_poe each replace text_ce; use one of them");
}

LossNeeds LossComposer::needs() const {
  LossNeeds all;
  for (const auto& loss : losses_) {
    LossNeeds n = loss->needs();
    all.layers.insert(all.layers.end(), n.layers.begin(), n.layers.end());
    all.probs_to_visual |= n.probs_to_visual;
    all.region_target |= n.region_target;
    all.sink_mass |= n.sink_mass;
    all.text_only_logits |= n.text_only_logits;
    all.replaces_text_ce |= n.replaces_text_ce;
  }
  std::sort(all.layers.begin(), all.layers.end());
  all.layers.erase(std::unique(all.layers.begin(), all.layers.end()), all.layers.end());
  return all;
}

torch::Tensor LossComposer::key_masks(const AttentionStats& batch) const {
  const AttentionStats masks = with_aligned_labels(batch);
  std::vector<torch::Tensor> sets;
  for (const auto& loss : losses_)
    if (loss->needs().sink_mass) sets.push_back(loss->sink_keys(masks));
  return sets.empty() ? torch::Tensor() : torch::stack(sets, -1);  // (B, T, K)
}

std::vector<WeightedTerm> LossComposer::compute(const torch::Tensor& logits, const AttentionStats& given) const {
  const AttentionStats stats = with_aligned_labels(given);
  const LossNeeds all = needs();
  std::vector<WeightedTerm> terms{{"text_ce", all.replaces_text_ce ? 0.0 : 1.0, text_ce(logits, stats.labels)}};
  int64_t key_set = 0;
  for (size_t i = 0; i < losses_.size(); ++i) {
    if (losses_[i]->needs().text_only_logits) {
      AttentionStats own = stats;  // tensor handles only
      own.logits = logits;
      terms.push_back({losses_[i]->name(), weights_[i], losses_[i]->compute(own)});
      continue;
    }
    if (!losses_[i]->needs().sink_mass) {
      terms.push_back({losses_[i]->name(), weights_[i], losses_[i]->compute(stats)});
      continue;
    }
    AttentionStats own = stats;  // tensor handles only
    if (!stats.key_mass.empty()) {
      own.sink_mass.clear();
      for (const auto& mass : stats.key_mass) own.sink_mass.push_back(mass.select(-1, key_set));
    }
    ++key_set;
    terms.push_back({losses_[i]->name(), weights_[i], losses_[i]->compute(own)});
  }
  return terms;
}

std::vector<torch::Tensor> LossComposer::counts(const AttentionStats& batch) const {
  const AttentionStats masks = with_aligned_labels(batch);
  std::vector<torch::Tensor> out{(masks.labels.slice(1, 1) != -100).sum()};
  for (const auto& loss : losses_) out.push_back(loss->count(masks));
  return out;
}

torch::Tensor LossComposer::total(const std::vector<WeightedTerm>& terms, const std::vector<torch::Tensor>& global_counts) {
  TORCH_CHECK(global_counts.empty() || global_counts.size() == terms.size(), "total: ", global_counts.size(),
              " global counts for ", terms.size(), " terms");
  torch::Tensor total;
  for (size_t i = 0; i < terms.size(); ++i) {
    const torch::Tensor& count = global_counts.empty() ? terms[i].term.count : global_counts[i];
    torch::Tensor part = terms[i].weight * terms[i].term.sum / count.to(terms[i].term.sum.scalar_type()).clamp_min(1);
    total = total.defined() ? total + part : part;
  }
  return total;
}

}  // namespace modalign
