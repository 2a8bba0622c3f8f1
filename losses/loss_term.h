// LossTerm: a summed loss and the number of items it sums (Marian's RationalLoss). Gradient accumulation
// and data parallelism add sums and counts across micro-batches and processes, then divide once.
#pragma once
#include <torch/torch.h>

namespace modalign {

struct LossTerm {
  torch::Tensor sum;    // scalar, differentiable
  torch::Tensor count;  // scalar, no gradient: tokens or samples summed over

  // sum / count, or 0 where count is 0 (an empty selection is not an error and never NaN).
  torch::Tensor mean() const { return sum / count.clamp_min(1); }
};

}  // namespace modalign
