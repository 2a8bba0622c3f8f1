// Anti-decay across depth ("More Thinking, Less Seeing?", arXiv 2505.21523, measures visual attention
// fading with depth): per sample, mean over selected layers l > ref of relu(M_X^ref - M_X^l), where M_X
// is the response->image attention mass of dual_channel. Only a fall below the reference layer costs;
// ref defaults to the first selected layer. {sum over samples with an image, their number}.
#pragma once
#include "losses/alignment_loss.h"

namespace modalign {

class LayerDecayLoss : public AlignmentLoss {
 public:
  LayerDecayLoss(const LayerDecayOptions& options, int64_t num_layers);
  std::string name() const override { return "layer_decay"; }
  LossTerm compute(const AttentionStats& stats) const override;
  int64_t ref() const { return ref_; }

 private:
  int64_t ref_;
  std::vector<int64_t> later_;  // selected layers after ref
};

}  // namespace modalign
