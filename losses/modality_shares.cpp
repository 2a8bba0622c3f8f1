#include "losses/modality_shares.h"

#include "losses/attention_stats.h"

namespace modalign {

GroupAttention group_attention(const torch::Tensor& key_mass, const torch::Tensor& queries,
                               const torch::Tensor& key_masks) {
  TORCH_CHECK(key_mass.dim() == 4 && queries.dim() == 2 && key_masks.dim() == 3, "group_attention expects key_mass "
              "(B, H, T, K), queries (B, T), key_masks (B, T, K), got ", key_mass.sizes(), ", ", queries.sizes(), ", ",
              key_masks.sizes());
  TORCH_CHECK(key_mass.size(0) == queries.size(0) && key_mass.size(2) == queries.size(1) &&
                  key_masks.size(0) == queries.size(0) && key_masks.size(1) == queries.size(1) &&
                  key_masks.size(2) == key_mass.size(3),
              "group_attention: shapes disagree: key_mass ", key_mass.sizes(), ", queries ", queries.sizes(),
              ", key_masks ", key_masks.sizes());
  torch::Tensor m = widen(key_mass).mean(1);                       // (B, T, K): mean over heads
  torch::Tensor seen = key_masks.to(m.scalar_type()).cumsum(1);    // (B, T, K): keys of each group at <= t
  torch::Tensor q = queries.to(m.scalar_type()).unsqueeze(-1);     // (B, T, 1)
  torch::Tensor n = q.sum(1);                                      // (B, 1)
  return {(m * q).sum(1) / n.clamp_min(1), (seen * q).sum(1) / n.clamp_min(1), n.squeeze(-1) > 0};
}

DominanceIndices dominance_indices(double a_image, double n_image, double a_text, double n_text) {
  DominanceIndices d;
  d.mdi = (a_text / n_text) / (a_image / n_image);
  const double a = a_text + a_image, n = n_text + n_image;
  d.aei_image = (a_image / a) / (n_image / n);
  d.aei_text = (a_text / a) / (n_text / n);
  return d;
}

}  // namespace modalign
