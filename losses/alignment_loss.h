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

class AlignmentLoss {
 public:
  virtual ~AlignmentLoss() = default;
  virtual std::string name() const = 0;
  // {sum over the samples it applies to, their number}; differentiable through stats' tensors.
  virtual LossTerm compute(const AttentionStats& stats) const = 0;
  // Decoder layers this loss reads (already resolved against the model depth).
  const std::vector<int64_t>& layers() const { return layers_; }
  virtual bool needs_sink_mass() const { return false; }
  virtual bool needs_probs_to_visual() const { return false; }
  // The count compute() returns, from the masks alone (no attention needed), so a trainer can know
  // the global count of an accumulation window before its forwards. Default: samples with an image.
  virtual torch::Tensor count(const AttentionStats& masks) const { return has_image(masks.visual_mask).sum(); }

 protected:
  std::vector<int64_t> layers_;
};

}  // namespace modalign
