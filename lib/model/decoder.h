// LLaMA decoder (`language_model`) with eager attention that can report, for chosen layers, how much
// attention each query puts on image tokens, and with MODA's optional duplex aligner on visual keys.
//
// Letters: B batch, T tokens, D width, H query heads, G key/value heads, d head dim, V vocab, Nv image
// tokens per sample.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "lib/model/attention_core.h"
#include "lib/model/linear.h"
#include "lib/model/model_shapes.h"

namespace modalign {

// What the caller wants back from the attention layers; nothing extra is computed for other layers.
struct TapRequest {
  std::vector<int64_t> layers;   // decoder layers whose visual mass is returned
  bool probs_to_visual = false;  // also P restricted to each sample's image keys
  bool full_probs = false;       // also the whole P (probing and tests; T^2 memory)
  torch::Tensor key_masks{};     // optional (B, T, K): also the mass on each of K other key sets
};

// One tapped layer. Probabilities are float32 (or float64 for a float64 model).
struct LayerTap {
  int64_t layer = 0;
  torch::Tensor visual_mass;      // (B, H, T): sum of P over image keys
  torch::Tensor key_mass;         // (B, H, T, K): sum of P over each requested key set
  torch::Tensor probs_to_visual;  // (B, H, T, Nv) when requested; zeros for samples without an image
  torch::Tensor probs;            // (B, H, T, T) when requested
};

// Per-forward masks and tables shared by all layers (built once per forward).
struct DecoderContext {
  torch::Tensor cos, sin;         // (B, T, 1, d) RoPE tables at positions cumsum(mask)-1
  AttentionMask mask;             // (B, 1, T, T): causal and key not padding
  torch::Tensor visual_mask;      // (B, T) bool
  torch::Tensor text_mask;        // (B, T) bool: real, non-image tokens (the aligner's text keys)
  torch::Tensor visual_index;     // (B, Nv) int64 positions of image tokens (0 where a sample has none)
  torch::Tensor has_visual;       // (B) bool
};

struct RmsNormImpl : torch::nn::Module {
  RmsNormImpl(int64_t dim, double eps);
  torch::Tensor forward(const torch::Tensor& x);  // (..., D), normalised in float32 or wider
  double eps;
  torch::Tensor weight;
};
TORCH_MODULE(RmsNorm);

// MODA duplex aligner (arXiv 2507.04635; KwaiVGI/MODA), per sample and key/value head:
//   Kn = K / max(||K||, 1e-6) (rows), G = rownorm(Kn_text^T V_text) (d x d),
//   Kv' = Wf (Kv + gamma * (Kn_vis @ G)); gamma = 0 and Wf = I at init, so it starts as the identity.
struct DuplexAlignerImpl : torch::nn::Module {
  explicit DuplexAlignerImpl(int64_t head_dim);
  // k, v (B, G, T, d) after RoPE -> keys with image rows replaced by Kv'
  torch::Tensor forward(const torch::Tensor& k, const torch::Tensor& v, const DecoderContext& ctx);
  torch::Tensor gamma;          // (d)
  Linear wf{nullptr};  // d -> d, no bias
};
TORCH_MODULE(DuplexAligner);

struct LlamaAttentionImpl : torch::nn::Module {
  LlamaAttentionImpl(const TextShapes& s, bool aligner);
  // x (B, T, D) -> (B, T, D); fills `tap` when it is not null
  torch::Tensor forward(const torch::Tensor& x, const DecoderContext& ctx, LayerTap* tap, const TapRequest& request);
  int64_t heads, kv_heads, head_dim;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, o_proj{nullptr};
  DuplexAligner aligner{nullptr};
};
TORCH_MODULE(LlamaAttention);

struct LlamaMlpImpl : torch::nn::Module {
  explicit LlamaMlpImpl(const TextShapes& s);
  torch::Tensor forward(const torch::Tensor& x);  // down(silu(gate(x)) * up(x))
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};
};
TORCH_MODULE(LlamaMlp);

struct LlamaDecoderLayerImpl : torch::nn::Module {
  LlamaDecoderLayerImpl(const TextShapes& s, bool aligner);
  torch::Tensor forward(const torch::Tensor& x, const DecoderContext& ctx, LayerTap* tap, const TapRequest& request);
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

// `language_model`: `model.{embed_tokens, layers, norm}` and `lm_head` (absent when tied).
struct LanguageModelImpl : torch::nn::Module {
  LanguageModelImpl(const TextShapes& s, bool aligner);
  // embeds (B, T, D) -> final normalised hidden states (B, T, D); appends requested taps
  torch::Tensor forward(const torch::Tensor& embeds, const DecoderContext& ctx, const TapRequest& request,
                        std::vector<LayerTap>& taps);
  torch::Tensor logits(const torch::Tensor& hidden);  // (..., D) -> (..., V)
  const torch::Tensor& embedding_weight() const { return embed_tokens->weight; }
  TextShapes shapes;
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RmsNorm norm{nullptr};
  Linear lm_head{nullptr};  // null when tie_word_embeddings
};
TORCH_MODULE(LanguageModel);

// Builds the masks and RoPE tables for one forward. attention_mask, visual_mask (B, T) bool.
DecoderContext make_decoder_context(const TextShapes& s, const torch::Tensor& attention_mask,
                                    const torch::Tensor& visual_mask, torch::ScalarType dtype);

// Rotates x (B, T, h, d) by the RoPE tables (rotate_half convention of Hugging Face LLaMA).
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace modalign
