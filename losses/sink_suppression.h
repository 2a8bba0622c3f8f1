// Attention-sink suppression, AVAR's L_sup (arXiv 2603.03825): per sample, mean over selected layers of
// log(S + eps), S = mean over heads and response queries of the attention mass on sink keys (the first
// token, or the system prompt: every real token before the image span). Minimising it frees attention
// that sinks absorb. {sum over samples with an image, their number}; needs AttentionStats::sink_mass,
// computed with the mask from sink_keys().
#pragma once
#include "losses/alignment_loss.h"

namespace modalign {

class SinkSuppressionLoss : public AlignmentLoss {
 public:
  SinkSuppressionLoss(const SinkSuppressionOptions& options, int64_t num_layers);
  std::string name() const override { return "sink_suppression"; }
  LossTerm compute(const AttentionStats& stats) const override;
  LossNeeds needs() const override { return {layers_, false, false, true}; }
  // (B, T) bool: the first real token (bos), or the real tokens before the first image token (system).
  torch::Tensor sink_keys(const AttentionStats& masks) const override;

 private:
  SinkSuppressionOptions options_;
};

}  // namespace modalign
