#include "losses/dual_channel.h"

namespace modalign {

DualChannelLoss::DualChannelLoss(const DualChannelOptions& options, int64_t num_layers) : options_(checked(options)) {
  if (const std::string why = options.conflict(); !why.empty()) throw std::invalid_argument("dual_channel: " + why);
  layers_ = resolve_layers(options.layers, num_layers);
}

DualChannelLoss::Masses DualChannelLoss::masses(const AttentionStats& stats) const {
  torch::Tensor real = stats.attention_mask.to(torch::kBool);
  torch::Tensor rq = response_queries(stats.labels) & real;  // (B, T)
  torch::Tensor iq = image_queries(stats.visual_mask) & real;
  std::vector<torch::Tensor> inter, intra;
  for (int64_t l : layers_) {
    const torch::Tensor& mass = stats.visual_mass[stats.slot(l, "dual_channel")];  // (B, H, T)
    inter.push_back(query_mean(mass, rq));
    intra.push_back(query_mean(mass, iq));
  }
  Masses m{torch::stack(inter), torch::stack(intra), {}, {}, rq.any(1), iq.any(1)};
  auto dtype = m.inter.scalar_type();
  if (options_.target) {
    m.inter_target = torch::full({m.inter.size(1)}, *options_.target * options_.target_scale, m.inter.options());
    m.intra_target = m.inter_target;
  } else {
    m.inter_target = (balanced_share(rq, real, stats.visual_mask) * options_.target_scale).to(dtype);
    m.intra_target = (balanced_share(iq, real, stats.visual_mask) * options_.target_scale).to(dtype);
  }
  return m;
}

torch::Tensor DualChannelLoss::f(const torch::Tensor& m, const torch::Tensor& target) const {
  switch (options_.form) {
    case MassForm::CappedLog:
      return -torch::log(torch::clamp_max(m / target.clamp_min(options_.eps), 1.0) + options_.eps);
    case MassForm::Log:
      return -torch::log(m + options_.eps);
    case MassForm::Hinge:
      return torch::relu(target - m).pow(2);
  }
  TORCH_CHECK(false, "dual_channel: unknown form");
}

LossTerm DualChannelLoss::compute(const AttentionStats& stats) const {
  Masses m = masses(stats);
  auto dtype = m.inter.scalar_type();
  // A channel with no query in a sample (no supervised token, or a single image token) adds nothing.
  torch::Tensor has_x = m.has_inter.to(dtype), has_i = m.has_intra.to(dtype);  // (B)
  torch::Tensor per_sample = options_.inter_weight * f(m.inter, m.inter_target).mean(0) * has_x +
                             options_.intra_weight * f(m.intra, m.intra_target).mean(0) * has_i;  // (B)
  return over_image_samples(per_sample, stats.visual_mask);
}

}  // namespace modalign
