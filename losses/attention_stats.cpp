#include "losses/attention_stats.h"

#include <algorithm>

namespace modalign {

size_t AttentionStats::slot(int64_t layer, const char* loss) const {
  auto it = std::find(layers.begin(), layers.end(), layer);
  TORCH_CHECK(it != layers.end(), loss, " reads decoder layer ", layer, " but it was not tapped (tapped: ", layers, ")");
  return static_cast<size_t>(it - layers.begin());
}

torch::Tensor widen(const torch::Tensor& x) {
  return x.scalar_type() == torch::kFloat64 ? x : x.to(torch::kFloat32);
}

AttentionStats with_aligned_labels(const AttentionStats& stats) {
  if (!stats.labels_shifted) return stats;
  const torch::Tensor& shifted = stats.labels;
  TORCH_CHECK(shifted.dim() == 2 && shifted.size(1) > 0, "labels must be (B, T), got ", shifted.sizes());
  TORCH_CHECK((shifted.select(1, -1) == -100).all().item<bool>(),
              "labels_shifted = true, but the last column of labels holds a token: shifted labels say what each position "
              "predicts, and no token of the sequence follows the last one. Were they aligned with input_ids (then "
              "labels_shifted = false)?");
  AttentionStats out = stats;  // tensor handles only
  out.labels = torch::cat({torch::full({shifted.size(0), 1}, -100, shifted.options()), shifted.slice(1, 0, -1)}, 1);
  out.labels_shifted = false;
  return out;
}

torch::Tensor response_queries(const torch::Tensor& labels) {
  TORCH_CHECK(labels.dim() == 2, "labels must be (B, T), got ", labels.sizes());
  torch::Tensor q = torch::zeros(labels.sizes(), labels.options().dtype(torch::kBool));
  q.slice(1, 0, -1).copy_(labels.slice(1, 1) != -100);
  return q;
}

torch::Tensor image_queries(const torch::Tensor& visual_mask) {
  torch::Tensor v = visual_mask.to(torch::kBool);
  return v & (v.to(torch::kInt64).cumsum(1) > 1);
}

torch::Tensor has_image(const torch::Tensor& visual_mask) { return visual_mask.to(torch::kBool).any(1); }

LossTerm over_image_samples(const torch::Tensor& per_sample, const torch::Tensor& visual_mask) {
  torch::Tensor image = has_image(visual_mask);
  return {(per_sample * image.to(per_sample.scalar_type())).sum(), image.sum()};
}

torch::Tensor query_rows(const torch::Tensor& queries) {
  TORCH_CHECK(queries.dim() == 2, "query_rows expects queries (B, T), got ", queries.sizes());
  torch::Tensor q = queries.to(torch::kBool);
  torch::Tensor counts = q.sum(1);  // (B)
  const int64_t n = counts.numel() ? counts.max().item<int64_t>() : 0;
  // A stable descending sort puts each sample's selected positions first, in order.
  torch::Tensor order = std::get<1>(torch::sort(q.to(torch::kInt32), /*stable=*/true, 1, true)).slice(1, 0, n);
  torch::Tensor slots = torch::arange(n, counts.options()).unsqueeze(0) < counts.unsqueeze(1);  // (B, Q)
  return order.masked_fill(~slots, -1);
}

torch::Tensor query_mean(const torch::Tensor& mass, const torch::Tensor& queries) {
  TORCH_CHECK(mass.dim() == 3 && queries.dim() == 2 && mass.size(0) == queries.size(0) && mass.size(2) == queries.size(1),
              "query_mean expects mass (B, H, T) and queries (B, T), got ", mass.sizes(), " and ", queries.sizes());
  torch::Tensor m = widen(mass).mean(1);  // (B, T): mean over heads
  torch::Tensor q = queries.to(m.scalar_type());
  return (m * q).sum(1) / q.sum(1).clamp_min(1);  // (B)
}

torch::Tensor balanced_share(const torch::Tensor& queries, const torch::Tensor& attention_mask,
                             const torch::Tensor& visual_mask) {
  torch::Tensor real = attention_mask.to(torch::kFloat64);
  torch::Tensor image = (visual_mask.to(torch::kBool) & attention_mask.to(torch::kBool)).to(torch::kFloat64);
  torch::Tensor share = image.cumsum(1) / real.cumsum(1).clamp_min(1);  // (B, T)
  torch::Tensor q = queries.to(torch::kFloat64);
  return (share * q).sum(1) / q.sum(1).clamp_min(1);  // (B)
}

torch::Tensor boolean_mask(const torch::Tensor& mask, const char* name) {
  TORCH_CHECK(mask.defined(), name, " is undefined");
  if (mask.scalar_type() == torch::kBool) return mask;
  TORCH_CHECK(!(mask < 0).any().item<bool>(), name,
              " holds negative values: it looks like an additive mask (0 = attend, a large negative number = masked), "
              "as Hugging Face builds inside its models; pass the boolean mask (true = real token), e.g. (mask == 0)");
  TORCH_CHECK(((mask == 0) | (mask == 1)).all().item<bool>(), name,
              " must be boolean or hold only 0 and 1 (1 = real token / image token)");
  return mask.to(torch::kBool);
}

namespace {

// The cheap always-on checks of attention maps from another trainer (losses never see T x T maps otherwise).
void check_probabilities(const torch::Tensor& p, const torch::Tensor& real, size_t index) {
  torch::Tensor w = p.detach();
  TORCH_CHECK(!(w < 0).any().item<bool>(), "probs[", index,
              "] holds negative values: pass attention probabilities (softmax output), not log-probabilities or scores");
  // Rows of real queries sum to 1 (padded rows may hold anything).
  torch::Tensor sums = w.sum(-1);                                            // (B, H, T)
  torch::Tensor bad = ((sums - 1).abs() > 1e-3) & real.unsqueeze(1);        // (B, H, T)
  TORCH_CHECK(!bad.any().item<bool>(), "probs[", index, "]: rows of real queries must sum to 1 over the keys (the last "
              "dimension), one row sums to ", sums.masked_select(bad)[0].item<double>(),
              ": pass (B, H, queries, keys) softmax probabilities");
  // A causal decoder puts nothing on later keys: mass above the diagonal means the maps are transposed.
  const double above = w.triu(1).sum().item<double>(), all = sums.sum().item<double>();
  TORCH_CHECK(above <= 1e-3 * all, "probs[", index, "] puts ", above / std::max(all, 1e-30),
              " of its mass on later keys: a causal decoder's maps are (B, H, queries, keys); are they transposed?");
}

}  // namespace

AttentionStats batch_stats(const torch::Tensor& labels, const torch::Tensor& attention_mask,
                           const torch::Tensor& visual_mask) {
  TORCH_CHECK(labels.defined(), "labels are undefined");
  TORCH_CHECK(labels.dim() == 2 && labels.scalar_type() == torch::kInt64, "labels must be (B, T) int64, got ",
              labels.sizes(), " ", labels.scalar_type());
  AttentionStats stats;
  stats.labels = labels;
  stats.attention_mask = boolean_mask(attention_mask, "attention_mask");
  torch::Tensor image = boolean_mask(visual_mask, "visual_mask");
  TORCH_CHECK(stats.attention_mask.sizes() == labels.sizes() && image.sizes() == labels.sizes(),
              "attention_mask ", stats.attention_mask.sizes(), " and visual_mask ", image.sizes(),
              " must match labels ", labels.sizes());
  stats.visual_mask = image & stats.attention_mask;
  TORCH_CHECK(!image.any().item<bool>() || stats.visual_mask.any().item<bool>(),
              "every image token falls where attention_mask is false: is the mask inverted? modalign's masks say "
              "true (1) = real token, false (0) = padding");
  return stats;
}

AttentionStats stats_from_probs(const std::vector<int64_t>& layers, const std::vector<torch::Tensor>& probs,
                                const torch::Tensor& labels, const torch::Tensor& attention_mask,
                                const torch::Tensor& visual_mask, const torch::Tensor& sink_mask,
                                bool with_probs_to_visual) {
  TORCH_CHECK(layers.size() == probs.size(), "one probability map per layer expected, got ", probs.size(), " for ",
              layers.size(), " layers");
  TORCH_CHECK(std::is_sorted(layers.begin(), layers.end()) &&
                  std::adjacent_find(layers.begin(), layers.end()) == layers.end(),
              "layers must be ascending without repeats (LossComposer::needs().layers), got ", layers);
  AttentionStats stats = batch_stats(labels, attention_mask, visual_mask);
  stats.layers = layers;
  torch::Tensor positions = query_rows(stats.visual_mask);  // (B, Nv): each sample's image positions, -1 past them
  const int64_t nv = positions.size(1);
  torch::Tensor index = positions.clamp_min(0);
  for (const auto& p : probs) {
    TORCH_CHECK(p.dim() == 4 && p.size(0) == labels.size(0) && p.size(2) == labels.size(1) && p.size(3) == labels.size(1),
                "probs must be (B, H, T, T) matching labels ", labels.sizes(), ", got ", p.sizes());
    check_probabilities(p, stats.attention_mask, static_cast<size_t>(&p - probs.data()));
    torch::Tensor w = widen(p);
    stats.visual_mass.push_back((w * stats.visual_mask.to(w.scalar_type()).unsqueeze(1).unsqueeze(1)).sum(-1));
    if (sink_mask.defined())
      stats.sink_mass.push_back((w * sink_mask.to(w.scalar_type()).unsqueeze(1).unsqueeze(1)).sum(-1));
    if (with_probs_to_visual) {
      torch::Tensor idx = index.view({p.size(0), 1, 1, nv}).expand({p.size(0), p.size(1), p.size(2), nv});
      // Slots past a sample's own image count hold other keys' probabilities: zero them.
      torch::Tensor keep = (positions >= 0).to(w.scalar_type()).view({p.size(0), 1, 1, nv});
      stats.probs_to_visual.push_back(w.gather(-1, idx) * keep);
    }
  }
  return stats;
}

}  // namespace modalign
