// What the papers measure, as plain LibTorch functions: how a query set splits its attention between
// key groups (image / system / text), the visual attention ratio VR per layer (arXiv 2505.21523), and
// the text-dominance indices of arXiv 2508.10552: MDI (eq. 1) and AEI (eqs. 2-4, as the LangOverrule
// reproduction writes them). Used by `modalign probe`; any trainer can call them on its own taps.
//
// Letters: B batch, H heads, T tokens, K key groups.
#pragma once
#include <torch/torch.h>

namespace modalign {

// Per sample, over the selected queries: the mean (over heads and queries) of the attention mass on
// each key group, and the mean number of keys of each group the query can see (itself and earlier).
struct GroupAttention {
  torch::Tensor mass;   // (B, K) float32 or wider
  torch::Tensor keys;   // (B, K) same dtype
  torch::Tensor valid;  // (B) bool: the sample has at least one selected query
};

// key_mass (B, H, T, K): sum of P over each group's keys; queries (B, T) bool; key_masks (B, T, K) the
// groups (0/1, disjoint).
GroupAttention group_attention(const torch::Tensor& key_mass, const torch::Tensor& queries,
                               const torch::Tensor& key_masks);

// Indices of one query set, from the attention A and the visible key count N of the image tokens and
// of the text tokens (every other key):
//   MDI = (A_text / N_text) / (A_image / N_image)   > 1: a text token gets more attention than an image token
//   AEI_g = P_g / Q_g, P_g = A_g / (A_text + A_image), Q_g = N_g / (N_text + N_image)
// so AEI_text / AEI_image = MDI. Zero attention or zero keys give +inf / nan, as the ratios say.
struct DominanceIndices {
  double mdi = 0, aei_image = 0, aei_text = 0;
};
DominanceIndices dominance_indices(double a_image, double n_image, double a_text, double n_text);

}  // namespace modalign
