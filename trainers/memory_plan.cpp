#include "trainers/memory_plan.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "losses/layer_spec.h"

namespace modalign {
namespace {

int64_t bytes_of(Dtype d) { return d == Dtype::Float64 ? 8 : d == Dtype::BFloat16 ? 2 : 4; }

// Bytes a block keeps for its backward pass, per token (what the fused kernels and linear layers save): the
// input and the residual (2 D, in the residual stream's dtype), both norms' outputs, q, k, v, the attention
// output, and the gated MLP's gate, up, gate activation and product (4 D + 2 kv + 4 I, in the matmuls' dtype:
// bf16 under train.bf16). Attention's own (a log-sum-exp per head, or probabilities) come on top.
double saved_per_token(int64_t width, int64_t kv_width, int64_t intermediate, double residual, double matmul) {
  return residual * static_cast<double>(2 * width) + matmul * static_cast<double>(4 * width + 2 * kv_width + 4 * intermediate);
}

std::string gib(double bytes) { return fmt::format("{:.2f} GiB", bytes / (1024.0 * 1024.0 * 1024.0)); }

}  // namespace

MemoryPlan plan_memory(const RunConfig& config, const ModelShapes& s, int64_t seq_len, int64_t image_tokens,
                       int64_t nproc) {
  const TrainConfig& t = config.train;
  MemoryPlan p;
  p.counts = parameter_counts(s);
  const auto& x = s.text;
  const int64_t d = x.hidden_size, kv = x.num_key_value_heads * x.head_dim(), inter = x.intermediate_size;
  if (t.lora_rank > 0)  // all-linear: q, k, v, o, gate, up, down of every layer, r x (in + out) each
    p.lora = x.num_hidden_layers * t.lora_rank * (2 * d + 2 * (d + kv) + 2 * d + 3 * (d + inter));
  const bool lm_trains = !t.freeze_language_model && t.lora_rank == 0;
  p.trainable = (t.freeze_vision_tower ? 0 : p.counts.vision_tower) + (t.freeze_projector ? 0 : p.counts.projector) +
                (lm_trains ? p.counts.language_model : 0) + p.lora;
  const double value = static_cast<double>(bytes_of(config.model.dtype));
  p.weights = value * static_cast<double>(p.counts.total() + p.lora);
  p.gradients = value * static_cast<double>(p.trainable);
  p.optimizer = 2 * value * static_cast<double>(p.trainable);  // AdamW moments in the parameters' dtype
  const bool sharded = config.distributed.shard_optimizer && nproc > 1;
  if (sharded) p.optimizer /= static_cast<double>(nproc);  // ZeRO-1
  // Data parallel all-reduces the gradients through flat copies of 25 MB buckets, 4 in flight (one of them
  // may be the largest trained tensor, the embedding or LM head); ZeRO-1 adds its all-gather round (nproc + 1
  // buffers of 16 MB).
  const double bucket = 25 << 20;
  const double largest_tensor = lm_trains ? value * static_cast<double>(x.vocab_size * x.hidden_size) : bucket;
  if (nproc > 1)
    p.collectives = std::min(p.gradients, 3 * bucket + std::max(bucket, largest_tensor)) +
                    (sharded ? static_cast<double>(nproc + 1) * (16 << 20) : 0);
  p.weight_casts = t.bf16 ? 2.0 * static_cast<double>(p.counts.total() + p.lora) : 0;  // autocast's cache
  const double matmul = t.bf16 ? 2.0 : value;  // bytes of what the matmuls produce and save
  const double prob = config.model.dtype == Dtype::Float64 ? 8.0 : 4.0;  // softmax statistics: float32 for bf16 too
  p.process = 200.0 * 1024 * 1024;

  // Tokens: decoder positions per sample, and the tower's tokens per image (one image per sample).
  const int64_t merge = s.qwen_vision.merge_unit();
  p.image_tokens = image_tokens > 0 ? image_tokens
                   : s.is_qwen()
                       ? config.data.image_max_pixels / (s.qwen_vision.patch_size * s.qwen_vision.patch_size * merge)
                       : s.vision.num_patches();
  p.seq_len = seq_len > 0 ? seq_len : config.data.model_max_length;
  p.image_tokens = std::min(p.image_tokens, p.seq_len);
  p.vision_tokens = s.is_qwen() ? p.image_tokens * merge : s.vision.num_patches() + 1;
  p.batch = t.per_device_train_batch_size;
  const double tokens = static_cast<double>(p.batch * p.seq_len), vision_tokens = static_cast<double>(p.batch * p.vision_tokens);

  // Decoder (whatever trains lies before or in it, so gradients always cross it): every layer's saved
  // values, or with checkpointing every layer's input; the embeddings and the final norm's input once each.
  // A frozen decoder keeps a little less (its linear inputs); not modelled. Attention keeps one log-sum-exp
  // per (query, head) (attention_core, blockwise); the layers attention_kl reads also keep the
  // probabilities of the response queries on the image keys: B x H x (T - image tokens, at most) x image tokens.
  int64_t prob_layers = 0;
  for (const auto& e : config.losses)
    if (e.name == "attention_kl")
      prob_layers = std::max<int64_t>(prob_layers, static_cast<int64_t>(resolve_layers(e.get<AttentionKlOptions>().layers, x.num_hidden_layers).size()));
  const double probs = prob * static_cast<double>(p.batch * x.num_attention_heads) *
                       static_cast<double>((p.seq_len - p.image_tokens) * p.image_tokens);
  const double lse = prob * static_cast<double>(x.num_attention_heads);  // per token
  const double layer_values = tokens * (saved_per_token(d, kv, inter, value, matmul) + lse);
  const double layer = layer_values + (prob_layers > 0 ? probs : 0);  // the largest: a tapped one
  const double layers = static_cast<double>(x.num_hidden_layers);
  p.attention_probs = static_cast<double>(prob_layers) * probs;
  double text = value * tokens * 2 * d + layers * layer_values + p.attention_probs;
  double text_ckpt = value * tokens * (2 * d + layers * d);
  // Vision tower, when it trains: the same with its own widths and its attention blockwise too (a frozen
  // tower runs without autograd).
  double vision = 0, vision_ckpt = 0, vision_layer = 0;
  if (!t.freeze_vision_tower) {
    const int64_t vd = s.is_qwen() ? s.qwen_vision.hidden_size : s.vision.hidden_size;
    const int64_t vi = s.is_qwen() ? s.qwen_vision.intermediate_size : s.vision.intermediate_size;
    const int64_t heads = s.is_qwen() ? s.qwen_vision.num_heads : s.vision.num_attention_heads;
    const double vl = s.is_qwen() ? static_cast<double>(s.qwen_vision.depth) : static_cast<double>(s.vision_layers_used());
    vision_layer = vision_tokens * (saved_per_token(vd, vd, vi, value, matmul) + prob * static_cast<double>(heads));
    vision = vl * vision_layer;
    vision_ckpt = value * vision_tokens * vl * static_cast<double>(vd);
  }
  // The backward pass's working set, one block at a time: the gradients flowing through the largest block
  // (about two of its saved sets), and with checkpointing that block recomputed as well.
  const double largest = std::max(layer, vision_layer);
  text += 2 * largest;
  text_ckpt += 3 * largest;
  p.activations = text + vision;
  p.activations_checkpointed = text_ckpt + vision_ckpt;
  return p;
}

std::string format_plan(const MemoryPlan& p, const RunConfig& config, int64_t nproc, double memory_gib) {
  const TrainConfig& t = config.train;
  std::string out = fmt::format(
      "parameters: {} (vision tower {}, projector {}, language model {}{}); trainable: {}\n"
      "per rank ({}): batch {} x {} tokens ({} image tokens per sample)\n",
      p.counts.total() + p.lora, p.counts.vision_tower, p.counts.projector, p.counts.language_model,
      p.lora ? fmt::format(", LoRA {}", p.lora) : "", p.trainable,
      nproc == 1                                  ? std::string("1 rank")
      : config.distributed.shard_optimizer ? fmt::format("{} ranks, AdamW moments sharded over them", nproc)
                                           : fmt::format("{} ranks, data parallel keeps a full copy on each", nproc),
      p.batch,
      p.seq_len, p.image_tokens);
  out += fmt::format("  {:<34}{:>12}\n", "weights", gib(p.weights));
  out += fmt::format("  {:<34}{:>12}\n", "gradients", gib(p.gradients));
  out += fmt::format("  {:<34}{:>12}\n", "optimizer state (AdamW moments)", gib(p.optimizer));
  if (t.bf16) out += fmt::format("  {:<34}{:>12}\n", "bf16 weight copies (train.bf16)", gib(p.weight_casts));
  if (nproc > 1) out += fmt::format("  {:<34}{:>12}\n", "data-parallel buffers", gib(p.collectives));
  out += fmt::format("  {:<34}{:>12}\n", "activations", gib(p.activations));
  if (p.attention_probs > 0)  // attention is blockwise elsewhere: no T x T
    out += fmt::format("  {:<34}{:>12}\n", "  of which probabilities (attention_kl)", gib(p.attention_probs));
  out += fmt::format("  {:<34}{:>12}\n", "  with gradient_checkpointing", gib(p.activations_checkpointed));
  out += fmt::format("  {:<34}{:>12}\n", "LibTorch, BLAS, loader", gib(p.process));
  out += fmt::format("  {:<34}{:>12}   ({} with checkpointing)\n", "total", gib(p.total(false)), gib(p.total(true)));
  if (memory_gib > 0) {
    const double limit = memory_gib * 1024 * 1024 * 1024;
    const bool as_configured = p.total(t.gradient_checkpointing) <= limit;
    out += fmt::format("fits in {} GiB per rank as configured (gradient_checkpointing: {}): {}{}\n", memory_gib,
                       t.gradient_checkpointing ? "true" : "false", as_configured ? "yes" : "no",
                       !as_configured && !t.gradient_checkpointing && p.total(true) <= limit
                           ? "; with gradient_checkpointing: true it would"
                           : "");
  }
  if (!t.freeze_regex.empty() || !t.trainable_regex.empty())
    out += "note: freeze_regex / trainable_regex are not modelled; trainable counts follow the freeze_* flags only\n";
  if (t.lora_rank > 0 && t.lora_target != "all-linear")
    out += "note: LoRA is counted as all-linear; lora_target selects fewer layers\n";
  return out;
}

}  // namespace modalign
