// Text cross-entropy over supervised tokens, Hugging Face convention: labels are aligned with input_ids,
// so logits[t] are scored against labels[t+1]; -100 is ignored.
#pragma once
#include <torch/torch.h>

#include "losses/loss_term.h"

namespace modalign {

// logits (B, T, V), labels (B, T) -> {sum of token CE in float32 or wider, number of supervised tokens}.
// Only supervised positions go through log-softmax. logits may also be (N, V): already taken at the N
// positions t with labels[t+1] != -100, in row-major order (a model that computes only those rows).
LossTerm text_ce(const torch::Tensor& logits, const torch::Tensor& labels);

}  // namespace modalign
