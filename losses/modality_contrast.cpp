#include "losses/modality_contrast.h"

namespace modalign {
namespace {

struct Rows {
  torch::Tensor logits, text_only;  // (N, V) in float32 or wider
  torch::Tensor targets;            // (N) int64
  torch::Tensor with_image;         // (N) bool: the row's sample holds image tokens
};

// The supervised rows of stats.logits and stats.text_only_logits, their targets and samples.
Rows supervised_rows(const AttentionStats& stats, const char* loss) {
  TORCH_CHECK(stats.logits.defined() && stats.text_only_logits.defined(), loss,
              " needs AttentionStats::logits and ::text_only_logits (a forward with the image removed)");
  TORCH_CHECK(stats.labels.dim() == 2, loss, ": labels must be (B, T), got ", stats.labels.sizes());
  torch::Tensor keep = stats.labels.slice(1, 1) != -100;  // (B, T-1)
  auto rows = [&](const torch::Tensor& x, const char* what) {
    TORCH_CHECK(x.dim() == 2 || (x.dim() == 3 && x.size(0) == keep.size(0) && x.size(1) == keep.size(1) + 1), loss,
                ": ", what, " must be (B, T, V) like labels (B, T) or (N, V), got ", x.sizes());
    return widen(x.dim() == 3 ? x.slice(1, 0, -1).index({keep}) : x);
  };
  Rows r{rows(stats.logits, "logits"), rows(stats.text_only_logits, "text_only_logits").detach(),
         stats.labels.slice(1, 1).index({keep}), {}};
  TORCH_CHECK(r.logits.size(0) == r.targets.size(0) && r.text_only.sizes() == r.logits.sizes(), loss, ": ",
              r.logits.size(0), " logit rows and ", r.text_only.size(0), " text-only rows for ", r.targets.size(0),
              " supervised tokens");
  torch::Tensor sample = keep.nonzero().select(1, 0);  // (N): the sample of each row, row-major
  r.with_image = has_image(stats.visual_mask).index({sample});
  return r;
}

}  // namespace

LossNeeds ModalityContrastLoss::needs() const {
  LossNeeds n;
  n.text_only_logits = n.replaces_text_ce = true;
  return n;
}

torch::Tensor ModalityContrastLoss::count(const AttentionStats& masks) const {
  return (masks.labels.slice(1, 1) != -100).sum();
}

ContrastiveTokensLoss::ContrastiveTokensLoss(const ContrastiveTokensOptions& options)
    : options_(checked(options)) {
  TORCH_CHECK(options.min_weight <= options.max_weight, "contrastive_tokens: min_weight ", options.min_weight,
              " is above max_weight ", options.max_weight);
}

torch::Tensor ContrastiveTokensLoss::token_weights(const AttentionStats& stats) const {
  Rows r = supervised_rows(stats, "contrastive_tokens");
  torch::Tensor y = r.targets.unsqueeze(1);
  torch::Tensor delta = (r.logits.detach().gather(1, y) - r.text_only.gather(1, y)).squeeze(1);  // (N)
  // A sample without an image has no contrast: its tokens keep weight 1, as in text CE.
  return torch::where(r.with_image, delta.clamp(options_.min_weight, options_.max_weight), torch::ones_like(delta));
}

LossTerm ContrastiveTokensLoss::compute(const AttentionStats& stats) const {
  Rows r = supervised_rows(stats, "contrastive_tokens");
  torch::Tensor ce = torch::nn::functional::cross_entropy(
      r.logits, r.targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kNone));  // (N)
  return {(token_weights(stats).to(ce.scalar_type()) * ce).sum(), count(stats)};
}

TextPriorPoeLoss::TextPriorPoeLoss(const TextPriorPoeOptions& options) : options_(checked(options)) {}

LossTerm TextPriorPoeLoss::compute(const AttentionStats& stats) const {
  Rows r = supervised_rows(stats, "text_prior_poe");
  torch::Tensor prior = torch::log_softmax(r.text_only, 1) * options_.prior_scale;  // (N, V), no gradient
  prior = prior * r.with_image.unsqueeze(1).to(prior.scalar_type());               // none without an image
  torch::Tensor mixed = torch::log_softmax(r.logits, 1) + prior;                    // renormalised by the CE
  torch::Tensor sum = torch::nn::functional::cross_entropy(
      mixed, r.targets, torch::nn::functional::CrossEntropyFuncOptions().reduction(torch::kSum));
  return {sum, count(stats)};
}

}  // namespace modalign
