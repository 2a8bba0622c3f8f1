// Region-guided attention (KLAL, arXiv 2511.12738): when a sample carries a target distribution over
// its image patches (e.g. from a box), KL(target || attention over image keys, renormalised) at each
// response query, averaged over heads, queries and selected layers. With renormalise: false the
// attention is not renormalised, i.e. KL(target || attention over all keys) = the above - log(image
// mass): attention to text keys costs too. {sum over samples with an image and a target, their number};
// needs AttentionStats::probs_to_visual and ::region_target.
#pragma once
#include "losses/alignment_loss.h"

namespace modalign {

class AttentionKlLoss : public AlignmentLoss {
 public:
  AttentionKlLoss(const AttentionKlOptions& options, int64_t num_layers);
  std::string name() const override { return "attention_kl"; }
  LossTerm compute(const AttentionStats& stats) const override;
  LossNeeds needs() const override { return {layers_, true, true, false}; }
  torch::Tensor count(const AttentionStats& masks) const override;

 private:
  torch::Tensor applies(const AttentionStats& stats) const;  // (B) bool: image and a target
  AttentionKlOptions options_;
};

}  // namespace modalign
