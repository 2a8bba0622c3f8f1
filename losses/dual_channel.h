// Dual-channel attention alignment (MODA, arXiv 2507.04635: inter-modal and intra-modal channels;
// log-mass form from AVAR, arXiv 2603.03825; balanced target = modality dominance index 1, arXiv 2508.10552).
//
// For sample b and tapped layer l: M_X = mean over heads and response queries of the attention mass on
// image keys; M_I = the same over image queries. Per sample
//   L_b = inter_weight * mean_l f(M_X) + intra_weight * mean_l f(M_I),
// f = capped_log: -log(min(M / target, 1) + eps) | log: -log(M + eps) | hinge: relu(target - M)^2.
// target = a number, or `balanced`: per query the image share of its visible keys, averaged like M;
// times target_scale. Uncapped `log` drives M to 1 (the answer stops reading the text); the cap stops
// the push once the image gets its fair share. Returned as {sum over samples with an image, their number}.
#pragma once
#include "losses/alignment_loss.h"

namespace modalign {

class DualChannelLoss : public AlignmentLoss {
 public:
  DualChannelLoss(const DualChannelOptions& options, int64_t num_layers);
  std::string name() const override { return "dual_channel"; }
  LossTerm compute(const AttentionStats& stats) const override;

  struct Masses {
    torch::Tensor inter, intra;  // (L, B): M_X and M_I per layer of this loss and sample
    torch::Tensor inter_target, intra_target;  // (B): balanced or fixed target, scaled
    torch::Tensor has_inter, has_intra;        // (B) bool: the sample has response / image queries
  };
  Masses masses(const AttentionStats& stats) const;

 private:
  torch::Tensor f(const torch::Tensor& m, const torch::Tensor& target) const;  // (L, B), (B) -> (L, B)
  DualChannelOptions options_;
};

}  // namespace modalign
