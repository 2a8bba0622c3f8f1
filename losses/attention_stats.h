// AttentionStats: what the alignment losses read from a forward pass, as plain LibTorch tensors so that
// any trainer can fill it. Per tapped decoder layer: the attention mass each query puts on image keys,
// and optionally on sink keys and on each image key; plus the batch masks that select queries.
//
// Letters: B batch, H heads, T tokens, Nv image tokens per sample.
// Query conventions (ARCHITECTURE.md): response queries are the positions t whose output predicts a
// supervised token (labels[t+1] != -100, labels aligned with input_ids); image queries are image
// positions after the first of their sample. Samples without image tokens take part in no alignment loss.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "losses/loss_term.h"

namespace modalign {

struct AttentionStats {
  std::vector<int64_t> layers;               // tapped decoder layer indices, ascending
  std::vector<torch::Tensor> visual_mass;    // per layer (B, H, T): sum of P over image keys
  std::vector<torch::Tensor> sink_mass;      // optional, per layer (B, H, T): sum of P over sink keys
  std::vector<torch::Tensor> key_mass;       // optional, per layer (B, H, T, K): LossComposer::key_masks' sets
  std::vector<torch::Tensor> probs_to_visual;  // optional, per layer (B, H, T, Nv), or (B, H, Q, Nv) with probs_rows
  torch::Tensor probs_rows;      // optional (B, Q) int64: the query positions probs_to_visual's rows are, -1 = none
  torch::Tensor labels;          // (B, T) int64, -100 = not supervised
  // false: labels aligned with input_ids (Hugging Face's models: position t predicts labels[t+1]); true:
  // labels already shifted (position t predicts labels[t], as trainers that shift in the collator store them).
  // Read by LossComposer and AlignmentTaps, which shift aligned labels themselves.
  bool labels_shifted = false;
  torch::Tensor attention_mask;  // (B, T) bool, false = padding
  torch::Tensor visual_mask;     // (B, T) bool, image-token positions
  torch::Tensor region_target;   // optional (B, Nv): target distribution over image patches, 0-rows = none
  // For the modality-contrast terms only: logits (B, T, V), or (N, V) at the N response queries in
  // row-major order, as text_ce takes them; text_only_logits the same rows from a forward of the same
  // model with the image removed (no gradient).
  torch::Tensor logits;
  torch::Tensor text_only_logits;

  // Position of `layer` in `layers`; throws naming the loss when it was not tapped.
  size_t slot(int64_t layer, const char* loss) const;
};

// A mask as bool: bool, or 0/1 of any type (1 = real / image token). Refuses Hugging Face's additive masks
// (0 / large negative) and other values, naming `name` and how to convert.
torch::Tensor boolean_mask(const torch::Tensor& mask, const char* name);
// The batch's masks, checked (errors name the argument and the fix): labels (B, T) int64; masks of the same shape,
// boolean or 0/1, not additive; image tokens not all outside attention_mask (an inverted mask). visual_mask comes
// back restricted to real tokens; no layer is tapped yet.
AttentionStats batch_stats(const torch::Tensor& labels, const torch::Tensor& attention_mask,
                           const torch::Tensor& visual_mask);
// For trainers that keep full attention maps: stats from probs[l] (B, H, T, T) of the given layers.
// Checked on every call: the masks as batch_stats checks them; layers ascending and one map per layer;
// probabilities non-negative, rows of real queries summing to 1, nothing above the diagonal (causal maps, not
// transposed).
// `sink_mask` (B, T), when defined, fills sink_mass; probs_to_visual is filled when `with_probs_to_visual`.
AttentionStats stats_from_probs(const std::vector<int64_t>& layers, const std::vector<torch::Tensor>& probs,
                                const torch::Tensor& labels, const torch::Tensor& attention_mask,
                                const torch::Tensor& visual_mask, const torch::Tensor& sink_mask = {},
                                bool with_probs_to_visual = false);

// `stats` with labels aligned with input_ids: when labels_shifted, a column of -100 in front and the last column
// dropped (it must be -100: no token of the sequence follows the last position), labels_shifted false.
AttentionStats with_aligned_labels(const AttentionStats& stats);
// (B, T) bool: t with labels[t+1] != -100.
torch::Tensor response_queries(const torch::Tensor& labels);
// (B, Q) int64: each sample's selected positions in order, -1 past its count; Q = the largest count.
// queries (B, T) bool. What TapRequest::probs_rows and AttentionStats::probs_rows take.
torch::Tensor query_rows(const torch::Tensor& queries);
// (B, T) bool: image positions after the first image position of each sample.
torch::Tensor image_queries(const torch::Tensor& visual_mask);
// (B) bool: samples holding at least one image token.
torch::Tensor has_image(const torch::Tensor& visual_mask);
// Per sample, the mean over heads and selected queries: mass (B, H, T), queries (B, T) -> (B) in float32
// or wider; 0 for a sample with no selected query.
torch::Tensor query_mean(const torch::Tensor& mass, const torch::Tensor& queries);
// Per sample and query, the share of its visible keys (itself and earlier, unpadded) that are image
// tokens, averaged over the selected queries: (B). What equal attention per token would put on images.
torch::Tensor balanced_share(const torch::Tensor& queries, const torch::Tensor& attention_mask,
                             const torch::Tensor& visual_mask);
// {sum of per_sample (B) over samples holding image tokens, their number}: how every alignment loss
// reports itself, so that samples without an image never count.
LossTerm over_image_samples(const torch::Tensor& per_sample, const torch::Tensor& visual_mask);
// x in float32, or float64 if it already is (losses never compute in bf16/fp16).
torch::Tensor widen(const torch::Tensor& x);

}  // namespace modalign
