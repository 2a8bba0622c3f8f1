#include "losses/text_ce.h"

#include "losses/attention_stats.h"

namespace modalign {

LossTerm text_ce(const torch::Tensor& logits, const torch::Tensor& labels) {
  TORCH_CHECK(labels.dim() == 2 && (logits.dim() == 2 || (logits.dim() == 3 && logits.size(0) == labels.size(0) &&
                                                          logits.size(1) == labels.size(1))),
              "text_ce expects logits (B, T, V) or (N, V) and labels (B, T), got ", logits.sizes(), " and ",
              labels.sizes());
  torch::Tensor targets = labels.slice(1, 1);                               // (B, T-1)
  torch::Tensor keep = targets != -100;                                     // (B, T-1)
  torch::Tensor picked = logits.dim() == 3 ? logits.slice(1, 0, -1).index({keep}) : logits;  // (N, V)
  torch::Tensor wanted = targets.index({keep});                             // (N)
  TORCH_CHECK(picked.size(0) == wanted.size(0), "text_ce: ", picked.size(0), " logit rows for ", wanted.size(0),
              " supervised tokens");
  torch::Tensor sum = torch::nn::functional::cross_entropy(
      widen(picked), wanted, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  return {sum, keep.sum()};
}

}  // namespace modalign
