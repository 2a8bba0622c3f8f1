#include "losses/layer_decay.h"

#include <algorithm>

namespace modalign {

LayerDecayLoss::LayerDecayLoss(const LayerDecayOptions& unchecked, int64_t num_layers) {
  const LayerDecayOptions options = checked(unchecked);
  std::vector<int64_t> selected = resolve_layers(options.layers, num_layers);
  ref_ = options.ref ? *options.ref : selected.front();
  TORCH_CHECK(ref_ >= 0 && ref_ < num_layers, "layer_decay: ref ", ref_, " is outside the ", num_layers, " decoder layers");
  for (int64_t l : selected)
    if (l > ref_) later_.push_back(l);
  TORCH_CHECK(!later_.empty(), "layer_decay: no selected layer comes after the reference layer ", ref_,
              " (layers '", options.layers.spec, "')");
  layers_ = later_;
  layers_.insert(layers_.begin(), ref_);
}

LossTerm LayerDecayLoss::compute(const AttentionStats& stats) const {
  torch::Tensor rq = response_queries(stats.labels) & stats.attention_mask.to(torch::kBool);
  torch::Tensor ref = query_mean(stats.visual_mass[stats.slot(ref_, "layer_decay")], rq);  // (B)
  torch::Tensor drops = torch::zeros_like(ref);
  for (int64_t l : later_) drops = drops + torch::relu(ref - query_mean(stats.visual_mass[stats.slot(l, "layer_decay")], rq));
  torch::Tensor per_sample = drops / static_cast<double>(later_.size());
  return over_image_samples(per_sample, stats.visual_mask);
}

}  // namespace modalign
