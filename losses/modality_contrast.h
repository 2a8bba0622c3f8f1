// Modality-contrast terms: they compare the model's logits with those of the same model with the image
// removed (AttentionStats::text_only_logits, computed without gradient), and replace text CE as the loss
// of the supervised tokens (LossNeeds::replaces_text_ce). Both are {sum over supervised tokens, their
// number}; on a sample without an image both equal its text CE.
//
//   contrastive_tokens (CAL, arXiv 2405.17871): sum_i w_i * CE_i with
//     w_i = clamp(z_i(y_i | image, text) - z_i(y_i | text alone), min_weight, max_weight)  (raw logits, detached):
//     tokens the image makes more likely weigh more, tokens the text alone predicts weigh min_weight.
//   text_prior_poe (learned-mixin / product of experts, Clark et al., EMNLP 2019, without the learned gate):
//     sum_i -log softmax(log p(. | image, text) + prior_scale * log p(. | text alone))[y_i], the text-only
//     term detached: what the text alone already explains earns the model no credit, so the gradient goes
//     to what only the image tells. Evaluation and generation use the model alone.
//
// Labels follow text_ce's convention (aligned with input_ids: logits[t] scored against labels[t+1]).
#pragma once
#include "losses/alignment_loss.h"

namespace modalign {

// What both terms share: they read the text-only logits, replace text_ce, and count supervised tokens.
class ModalityContrastLoss : public AlignmentLoss {
 public:
  LossNeeds needs() const override;
  torch::Tensor count(const AttentionStats& masks) const override;
};

class ContrastiveTokensLoss : public ModalityContrastLoss {
 public:
  explicit ContrastiveTokensLoss(const ContrastiveTokensOptions& options);
  std::string name() const override { return "contrastive_tokens"; }
  LossTerm compute(const AttentionStats& stats) const override;
  // (N): the per-token weights w_i of compute(), for logging and tests.
  torch::Tensor token_weights(const AttentionStats& stats) const;

 private:
  ContrastiveTokensOptions options_;
};

class TextPriorPoeLoss : public ModalityContrastLoss {
 public:
  explicit TextPriorPoeLoss(const TextPriorPoeOptions& options);
  std::string name() const override { return "text_prior_poe"; }
  LossTerm compute(const AttentionStats& stats) const override;

 private:
  TextPriorPoeOptions options_;
};

}  // namespace modalign
