#include "losses/text_ce.h"

#include "losses/attention_stats.h"

namespace modalign {

LossTerm text_ce(const torch::Tensor& logits, const torch::Tensor& labels) {
  TORCH_CHECK(logits.dim() == 3 && labels.dim() == 2 && logits.size(0) == labels.size(0) &&
                  logits.size(1) == labels.size(1),
              "text_ce expects logits (B, T, V) and labels (B, T), got ", logits.sizes(), " and ", labels.sizes());
  torch::Tensor targets = labels.slice(1, 1);                               // (B, T-1)
  torch::Tensor keep = targets != -100;                                     // (B, T-1)
  torch::Tensor picked = widen(logits.slice(1, 0, -1).index({keep}));       // (N, V)
  torch::Tensor sum = torch::nn::functional::cross_entropy(
      picked, targets.index({keep}), torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  return {sum, keep.sum()};
}

}  // namespace modalign
