#include "lib/model/alignment_taps.h"

#include <algorithm>

namespace modalign {

AlignmentTaps::AlignmentTaps(const LossComposer& composer, AttentionStats& stats) : stats_(stats) {
  const AttentionStats checked = batch_stats(stats.labels, stats.attention_mask, stats.visual_mask);
  stats.attention_mask = checked.attention_mask;
  stats.visual_mask = checked.visual_mask;
  const LossNeeds needs = composer.needs();
  TORCH_CHECK(!needs.text_only_logits, "AlignmentTaps: a loss of this composer reads text-only logits (a second "
              "forward without the image), which the taps cannot give; fill stats.text_only_logits yourself");
  TORCH_CHECK(!needs.region_target || stats.region_target.defined(),
              "AlignmentTaps: attention_kl reads stats.region_target, (B, image tokens): each sample's target "
              "distribution over its image tokens in their order (a row of zeros = none); it is undefined");
  stats.layers = needs.layers;
  stats.visual_mass.clear(), stats.key_mass.clear(), stats.probs_to_visual.clear();
  mask_ = {true, stats.attention_mask, {}};
  sets_ = stats.visual_mask.unsqueeze(-1);  // (B, T, 1)
  const torch::Tensor keys = composer.key_masks(stats);
  if (keys.defined()) sets_ = torch::cat({sets_, keys.to(torch::kBool)}, -1);  // (B, T, 1 + K)
  if (needs.probs_to_visual) {
    const torch::Tensor image = query_rows(stats.visual_mask);  // (B, Nv) image positions, -1 past a sample's
    stats.probs_rows = query_rows(response_queries(with_aligned_labels(stats).labels));  // (B, Q)
    probe_ = {stats.probs_rows, image.clamp_min(0), image >= 0};
  }
}

torch::Tensor AlignmentTaps::attend(int64_t layer, const torch::Tensor& q, const torch::Tensor& k,
                                    const torch::Tensor& v) {
  TORCH_CHECK(attention_core_supported(q), "AlignmentTaps::attend takes float32, float64 or bfloat16 q, k and v, "
              "got ", q.scalar_type());
  const auto& layers = stats_.layers;
  const bool tapped = next_ < layers.size() && layers[next_] == layer;
  if (!tapped) {
    TORCH_CHECK(std::find(layers.begin(), layers.end(), layer) == layers.end(), "AlignmentTaps::attend: layer ",
                layer, " is tapped but comes out of order or twice (tapped layers ", layers, ", next expected ",
                next_ < layers.size() ? layers[next_] : -1, ")");
    return attention_core(q, k, v, mask_).out;
  }
  AttentionCoreOutput core = attention_core(q, k, v, mask_, sets_, 0, probe_);
  stats_.visual_mass.push_back(core.mass.select(-1, 0));                       // (B, H, T)
  if (sets_.size(-1) > 1) stats_.key_mass.push_back(core.mass.slice(-1, 1));   // (B, H, T, K)
  if (probe_.rows.defined()) stats_.probs_to_visual.push_back(core.probs);     // (B, H, Q, Nv)
  ++next_;
  return core.out;
}

}  // namespace modalign
