// LossComposer: text CE plus the configured alignment losses, each returned as a weighted LossTerm for
// logging, and their total. The registry maps config names to loss factories.
//
// total = sum_i weight_i * sum_i / count_i (text_ce has weight 1, or 0 when a modality-contrast term
// replaces it). Pass the global counts (all micro-batches of an accumulation window, all processes) to
// divide once by the right number.
#pragma once
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "losses/alignment_loss.h"

namespace modalign {

using LossFactory = std::function<std::unique_ptr<AlignmentLoss>(const LossEntry&, int64_t num_layers)>;

// Adds or replaces a named loss (the built-ins are registered on first use).
void register_loss(const std::string& name, LossFactory factory);
std::vector<std::string> registered_losses();
// Throws std::invalid_argument listing the registered names when entry.name is unknown.
std::unique_ptr<AlignmentLoss> make_loss(const LossEntry& entry, int64_t num_layers);

struct WeightedTerm {
  std::string name;
  double weight = 1.0;
  LossTerm term;
};

class LossComposer {
 public:
  LossComposer(const std::vector<LossEntry>& entries, int64_t num_layers);

  // What all losses together read: the union of their layers, any flag one of them sets.
  LossNeeds needs() const;
  // (B, T, K) bool: one key set per loss that reads sink_mass (in loss order), from the batch masks;
  // undefined when none does. A trainer returns the attention mass on each as AttentionStats::key_mass.
  torch::Tensor key_masks(const AttentionStats& masks) const;
  const std::vector<std::unique_ptr<AlignmentLoss>>& losses() const { return losses_; }
  const std::vector<double>& weights() const { return weights_; }

  // text_ce first, then each alignment loss in config order. stats.key_mass (per layer (B, H, T, K), for
  // key_masks()) becomes each sink-reading loss's sink_mass; `logits` becomes the contrast terms'
  // stats.logits (stats.text_only_logits is the caller's, when needs().text_only_logits).
  std::vector<WeightedTerm> compute(const torch::Tensor& logits, const AttentionStats& stats) const;
  // The counts compute() would return, from the batch masks alone (text_ce first).
  std::vector<torch::Tensor> counts(const AttentionStats& masks) const;

  // sum_i w_i * sum_i / max(count_i, 1), with `global_counts` (same order) replacing the local counts.
  static torch::Tensor total(const std::vector<WeightedTerm>& terms, const std::vector<torch::Tensor>& global_counts = {});

 private:
  std::vector<std::unique_ptr<AlignmentLoss>> losses_;
  std::vector<double> weights_;
};

}  // namespace modalign
