// Per-rank memory of a training run from its config alone (no weights read, so it works for 7B shapes on
// a laptop): weights, gradients, AdamW state, the bf16 weight copies of mixed precision (train.bf16: the
// float32 weights are the master copy, autocast casts them per forward) and an activation estimate with and
// without activation checkpointing. Attention is blockwise (one log-sum-exp per query and head, linear in T);
// the decoder layers attention_kl taps keep their response queries' probabilities on image keys (B x heads x
// text tokens x image tokens each), shown apart. What
// `modalign plan` prints. Freezing is modelled by the module flags and LoRA
// by `all-linear` adapters; freeze_regex / trainable_regex are not (the plan says so).
#pragma once
#include <cstdint>
#include <string>

#include "lib/config/run_config.h"
#include "lib/model/model_shapes.h"

namespace modalign {

struct MemoryPlan {
  ParameterCounts counts;
  int64_t lora = 0;       // adapter parameters
  int64_t trainable = 0;  // parameters that get gradients and optimizer state
  int64_t batch = 0, seq_len = 0, image_tokens = 0, vision_tokens = 0;  // per sample; vision: the tower's tokens
  // Bytes per rank.
  double weights = 0, gradients = 0, optimizer = 0, weight_casts = 0, activations = 0, activations_checkpointed = 0;
  double attention_probs = 0;  // the part of `activations` that is attention probabilities (attention_kl's layers)
  double collectives = 0;      // data parallel: the gradient buckets in flight (and ZeRO-1's gather rounds)
  double process = 0;          // LibTorch, BLAS and loader buffers: a constant measured on this project's builds
  double total(bool checkpointing) const {
    return weights + gradients + optimizer + weight_casts + collectives + process +
           (checkpointing ? activations_checkpointed : activations);
  }
};

// seq_len: tokens per sample (image span included), 0 = data.model_max_length; image_tokens: image tokens
// per sample in the decoder, 0 = the model's (LLaVA: num_patches; Qwen: what image_max_pixels allows).
// nproc: data-parallel ranks (distributed.shard_optimizer divides the AdamW moments by it).
MemoryPlan plan_memory(const RunConfig& config, const ModelShapes& shapes, int64_t seq_len = 0, int64_t image_tokens = 0,
                       int64_t nproc = 1);

// The plan as a table for `nproc` ranks, and whether it fits `memory_gib` per rank (0 = no check).
std::string format_plan(const MemoryPlan& plan, const RunConfig& config, int64_t nproc, double memory_gib);

}  // namespace modalign
