#include "losses/attention_kl.h"

namespace modalign {

AttentionKlLoss::AttentionKlLoss(const AttentionKlOptions& options, int64_t num_layers) : options_(checked(options)) {
  layers_ = resolve_layers(options.layers, num_layers);
}

torch::Tensor AttentionKlLoss::applies(const AttentionStats& stats) const {
  TORCH_CHECK(stats.region_target.defined(), "attention_kl needs AttentionStats::region_target (B, Nv)");
  return has_image(stats.visual_mask) & (stats.region_target.sum(1) > 0);
}

torch::Tensor AttentionKlLoss::count(const AttentionStats& masks) const { return applies(masks).sum(); }

LossTerm AttentionKlLoss::compute(const AttentionStats& stats) const {
  TORCH_CHECK(stats.probs_to_visual.size() == stats.layers.size(),
              "attention_kl needs AttentionStats::probs_to_visual for every tapped layer");
  torch::Tensor rq = response_queries(stats.labels) & stats.attention_mask.to(torch::kBool);  // (B, T)
  if (stats.probs_rows.defined())  // probs_to_visual holds only these rows: (B, Q)
    rq = rq.gather(1, stats.probs_rows.clamp_min(0)) & (stats.probs_rows >= 0);
  torch::Tensor use = applies(stats);
  torch::Tensor per_sample;
  for (int64_t l : layers_) {
    torch::Tensor p = widen(stats.probs_to_visual[stats.slot(l, "attention_kl")]);  // (B, H, T, Nv)
    TORCH_CHECK(p.size(-1) == stats.region_target.size(1), "region_target has ", stats.region_target.size(1),
                " patches but the batch has ", p.size(-1), " image tokens per sample");
    TORCH_CHECK(p.size(2) == rq.size(1), "attention_kl: probs_to_visual has ", p.size(2), " query rows, expected ",
                rq.size(1), stats.probs_rows.defined() ? " (probs_rows)" : " (T)");
    torch::Tensor target = stats.region_target.to(p.scalar_type());
    target = (target / target.sum(1, true).clamp_min(options_.eps)).view({p.size(0), 1, 1, -1});  // (B, 1, 1, Nv)
    torch::Tensor q = options_.renormalise ? p / p.sum(-1, true).clamp_min(options_.eps) : p;
    torch::Tensor kl = (torch::xlogy(target, target) - target * torch::log(q.clamp_min(options_.eps))).sum(-1);  // (B, H, T)
    torch::Tensor term = query_mean(kl, rq);
    per_sample = per_sample.defined() ? per_sample + term : term;
  }
  per_sample = per_sample / static_cast<double>(layers_.size());
  return {(per_sample * use.to(per_sample.scalar_type())).sum(), use.sum()};
}

}  // namespace modalign
