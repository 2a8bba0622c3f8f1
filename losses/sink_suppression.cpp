#include "losses/sink_suppression.h"

namespace modalign {

SinkSuppressionLoss::SinkSuppressionLoss(const SinkSuppressionOptions& options, int64_t num_layers)
    : options_(checked(options)) {
  layers_ = resolve_layers(options.layers, num_layers);
}

torch::Tensor SinkSuppressionLoss::sink_keys(const AttentionStats& masks) const {
  torch::Tensor real = masks.attention_mask.to(torch::kBool);
  if (options_.sink == SinkTokens::System) {
    TORCH_CHECK(masks.visual_mask.defined() && masks.visual_mask.sizes() == real.sizes(),
                "sink_suppression with sink: system needs the (B, T) visual_mask");
    return real & (masks.visual_mask.to(torch::kBool).to(torch::kInt64).cumsum(1) == 0);  // before the image span
  }
  return real & (real.to(torch::kInt64).cumsum(1) == 1);  // first real token of each sample
}

LossTerm SinkSuppressionLoss::compute(const AttentionStats& stats) const {
  TORCH_CHECK(stats.sink_mass.size() == stats.layers.size(),
              "sink_suppression needs AttentionStats::sink_mass for every tapped layer");
  torch::Tensor rq = response_queries(stats.labels) & stats.attention_mask.to(torch::kBool);
  torch::Tensor per_sample;
  for (int64_t l : layers_) {
    torch::Tensor term = torch::log(query_mean(stats.sink_mass[stats.slot(l, "sink_suppression")], rq) + options_.eps);
    per_sample = per_sample.defined() ? per_sample + term : term;
  }
  per_sample = per_sample / static_cast<double>(layers_.size()) * rq.any(1).to(per_sample.scalar_type());
  return over_image_samples(per_sample, stats.visual_mask);
}

}  // namespace modalign
