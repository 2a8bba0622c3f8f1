// The interface every alignment loss implements. A loss reads AttentionStats only (LibTorch tensors), so other trainers can use it without modalign's
// model, data or trainer.
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "losses/attention_stats.h"
#include "losses/loss_options.h"
#include "losses/loss_term.h"

namespace modalign {

// What a loss reads besides the masks and visual_mass, so that a trainer computes exactly that.
struct LossNeeds {
  std::vector<int64_t> layers;   // decoder layers to tap (resolved against the model depth), ascending
  bool probs_to_visual = false;  // AttentionStats::probs_to_visual (per-image-key probabilities)
  bool region_target = false;    // AttentionStats::region_target (from the data's "regions")
  bool sink_mass = false;        // AttentionStats::sink_mass over the keys sink_keys() marks
  bool text_only_logits = false; // AttentionStats::logits and ::text_only_logits (one more forward, no gradient)
  bool replaces_text_ce = false; // the term is the supervised tokens' loss: text_ce is logged with weight 0
};

class AlignmentLoss {
 public:
  virtual ~AlignmentLoss() = default;
  virtual std::string name() const = 0;
  // {sum over the samples it applies to, their number}; differentiable through stats' tensors.
  virtual LossTerm compute(const AttentionStats& stats) const = 0;
  // Decoder layers this loss reads (already resolved against the model depth).
  const std::vector<int64_t>& layers() const { return layers_; }
  virtual LossNeeds needs() const { return {layers_}; }
  // When needs().sink_mass: (B, T) bool, the keys whose attention mass the loss reads as sink_mass,
  // from the batch masks (labels, attention_mask, visual_mask).
  virtual torch::Tensor sink_keys(const AttentionStats& masks) const {
    TORCH_CHECK(false, name(), " reads no sink keys");
    return masks.attention_mask;
  }
  // The count compute() returns, from the masks alone (no attention needed), so a trainer can know
  // the global count of an accumulation window before its forwards. Default: samples with an image.
  virtual torch::Tensor count(const AttentionStats& masks) const { return has_image(masks.visual_mask).sum(); }

 protected:
  std::vector<int64_t> layers_;
};

}  // namespace modalign
