#include "losses/loss_composer.h"

#include <algorithm>
#include <map>
#include <mutex>

#include "losses/attention_kl.h"
#include "losses/dual_channel.h"
#include "losses/layer_decay.h"
#include "losses/sink_suppression.h"
#include "losses/text_ce.h"

namespace modalign {
namespace {

std::map<std::string, LossFactory>& registry() {
  static std::map<std::string, LossFactory> factories = {
      {"dual_channel", [](const LossEntry& e, int64_t n) { return std::make_unique<DualChannelLoss>(e.dual_channel, n); }},
      {"layer_decay", [](const LossEntry& e, int64_t n) { return std::make_unique<LayerDecayLoss>(e.layer_decay, n); }},
      {"sink_suppression",
       [](const LossEntry& e, int64_t n) { return std::make_unique<SinkSuppressionLoss>(e.sink_suppression, n); }},
      {"attention_kl", [](const LossEntry& e, int64_t n) { return std::make_unique<AttentionKlLoss>(e.attention_kl, n); }},
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
    losses_.push_back(make_loss(e, num_layers));
    weights_.push_back(e.weight);
  }
}

std::vector<int64_t> LossComposer::tap_layers() const {
  std::vector<int64_t> layers;
  for (const auto& loss : losses_) layers.insert(layers.end(), loss->layers().begin(), loss->layers().end());
  std::sort(layers.begin(), layers.end());
  layers.erase(std::unique(layers.begin(), layers.end()), layers.end());
  return layers;
}

bool LossComposer::needs_sink_mass() const {
  return std::any_of(losses_.begin(), losses_.end(), [](const auto& l) { return l->needs_sink_mass(); });
}

bool LossComposer::needs_probs_to_visual() const {
  return std::any_of(losses_.begin(), losses_.end(), [](const auto& l) { return l->needs_probs_to_visual(); });
}

std::vector<WeightedTerm> LossComposer::compute(const torch::Tensor& logits, const AttentionStats& stats) const {
  std::vector<WeightedTerm> terms{{"text_ce", 1.0, text_ce(logits, stats.labels)}};
  for (size_t i = 0; i < losses_.size(); ++i) terms.push_back({losses_[i]->name(), weights_[i], losses_[i]->compute(stats)});
  return terms;
}

std::vector<torch::Tensor> LossComposer::counts(const AttentionStats& masks) const {
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
