// AlignmentTaps: modalign's blockwise attention (attention_core: never a T x T map) for a trainer of one's
// own, which returns into AttentionStats what a LossComposer's losses read of each tapped layer. Installed as
// modalign::attention (LibTorch, OpenMP and a BLAS: what a CPU LibTorch runs on).
//
//   AttentionStats stats = batch_stats(labels, attention_mask, visual_mask);  // + region_target for attention_kl
//   AlignmentTaps taps(composer, stats);          // once per forward
//   torch::Tensor out = taps.attend(l, q, k, v);  // in decoder layer l: causal attention over real keys
//   auto terms = composer.compute(logits, stats);
//
// Letters: B batch, T tokens, H query heads, G key/value heads, d head dim.
#pragma once
#include <torch/torch.h>

#include "lib/model/attention_core.h"
#include "losses/loss_composer.h"

namespace modalign {

class AlignmentTaps {
 public:
  // `stats` holds the batch (checked as batch_stats checks it; region_target when a loss reads it) and must outlive
  // the taps. Sets stats.layers to the composer's layers (and stats.probs_rows for attention_kl). Losses that read
  // text-only logits (contrastive_tokens, text_prior_poe) need a second forward the taps cannot give.
  AlignmentTaps(const LossComposer& composer, AttentionStats& stats);

  // q (B, T, H, d) with positions applied, k and v (B, T, G, d) -> (B, T, H, d): softmax(q k^T / sqrt(d)) v,
  // causal, keys outside attention_mask excluded. When `layer` is one of the composer's, its taps (visual_mass,
  // key_mass for sink keys, probs_to_visual for attention_kl) are appended to the stats: call it once per layer
  // and forward, layers in ascending order. Differentiable in q, k and v, taps included.
  torch::Tensor attend(int64_t layer, const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v);

 private:
  AttentionStats& stats_;
  AttentionMask mask_;   // causal, real keys
  torch::Tensor sets_;   // (B, T, 1 + K) bool: image keys, then the composer's key_masks
  AttentionProbe probe_; // response rows x image keys, when a loss reads probs_to_visual
  size_t next_ = 0;      // the entry of stats_.layers the next tapped layer fills
};

}  // namespace modalign
