// LLaMA decoder (`language_model`) whose attention runs blockwise (attention_core: no T x T) and can report, for chosen layers, how much
// attention each query puts on image tokens, and with MODA's optional duplex aligner on visual keys.
//
// Letters: B batch, T tokens, D width, H query heads, G key/value heads, d head dim, V vocab, Nv image
// tokens of the sample that holds most (samples may hold different numbers).
#pragma once
#include <torch/torch.h>

#include <utility>
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
  torch::Tensor probs_rows{};    // optional (B, Q) int64, -1 = none: probs_to_visual for these query rows only,
                                 // computed blockwise (no T x T); undefined = every row, through eager attention
};

// Keys and values of what a generation has seen, for decoding one token at a time: prefill stores every
// layer's keys (after RoPE and the aligner) and values of the prompt, each decode step appends one token
// per sample. Prompts are right padded: `valid` masks the padding, so every sample's new token sits in
// the same column while its RoPE position continues its own real tokens.
struct LayerCache {
  torch::Tensor k, v;  // (B, L, G, d)
};
struct KvCache {
  std::vector<LayerCache> layers;
  torch::Tensor valid;          // (B, L) bool: real prompt tokens and generated tokens
  torch::Tensor next_position;  // (B) int64: RoPE position of each sample's next token
};

// One tapped layer. Probabilities are float32 (or float64 for a float64 model).
struct LayerTap {
  int64_t layer = 0;
  torch::Tensor visual_mass;      // (B, H, T): sum of P over image keys
  torch::Tensor key_mass;         // (B, H, T, K): sum of P over each requested key set
  torch::Tensor probs_to_visual;  // (B, H, T, Nv) when requested, (B, H, Q, Nv) with probs_rows; zero past a
                                  // sample's image tokens and at padding rows
  torch::Tensor probs;            // (B, H, T, T) when requested
};

// Per-forward masks and tables shared by all layers (built once per forward).
struct DecoderContext {
  torch::Tensor cos, sin;         // (B, T, 1, d) RoPE tables at positions cumsum(mask)-1
  AttentionMask mask;             // causal, padding keys excluded (O(T): key_valid (B, T))
  torch::Tensor visual_mask;      // (B, T) bool
  torch::Tensor text_mask;        // (B, T) bool: the aligner's text keys: real, non-image prompt tokens
  torch::Tensor visual_index;     // (B, Nv) int64 positions of image tokens (0 past a sample's count)
  torch::Tensor visual_slots;     // (B, Nv) bool: which columns of visual_index are image tokens
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
// Unlike MODA's code, whose text keys are every text token (answers included, so image keys carry the
// answer in training and cannot at generation time), the text keys are the prompt only
// (DecoderContext::text_mask): the model stays causal with respect to every supervised token.
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
  // x (B, T, D) -> (B, T, D); fills `tap` when it is not null, and `cache` with k, v when it is not null
  torch::Tensor forward(const torch::Tensor& x, const DecoderContext& ctx, LayerTap* tap, const TapRequest& request,
                        LayerCache* cache = nullptr);
  // One new token per sample: x (B, 1, D), RoPE tables (B, 1, 1, d), valid (B, L+1) keys including it ->
  // (B, 1, D); its key and value are appended to `cache`.
  torch::Tensor decode(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                       const torch::Tensor& valid, LayerCache& cache);
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
  torch::Tensor forward(const torch::Tensor& x, const DecoderContext& ctx, LayerTap* tap, const TapRequest& request,
                        LayerCache* cache = nullptr);
  torch::Tensor decode(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                       const torch::Tensor& valid, LayerCache& cache);  // (B, 1, D) -> (B, 1, D)
  RmsNorm input_layernorm{nullptr}, post_attention_layernorm{nullptr};
  LlamaAttention self_attn{nullptr};
  LlamaMlp mlp{nullptr};
};
TORCH_MODULE(LlamaDecoderLayer);

// `language_model`: `model.{embed_tokens, layers, norm}` and `lm_head` (absent when tied).
struct LanguageModelImpl : torch::nn::Module {
  LanguageModelImpl(const TextShapes& s, bool aligner);
  // embeds (B, T, D) -> final normalised hidden states (B, T, D); appends requested taps; fills `cache`'s
  // layers when it is not null (prefill)
  torch::Tensor forward(const torch::Tensor& embeds, const DecoderContext& ctx, const TapRequest& request,
                        std::vector<LayerTap>& taps, KvCache* cache = nullptr);
  // One token per sample, embeds (B, 1, D) -> final hidden states (B, 1, D); extends `cache`.
  torch::Tensor decode(const torch::Tensor& embeds, KvCache& cache);
  torch::Tensor logits(const torch::Tensor& hidden);  // (..., D) -> (..., V)
  const torch::Tensor& embedding_weight() const { return embed_tokens->weight; }
  TextShapes shapes;
  torch::nn::Embedding embed_tokens{nullptr};
  torch::nn::ModuleList layers{nullptr};
  RmsNorm norm{nullptr};
  Linear lm_head{nullptr};  // null when tie_word_embeddings
  bool gradient_checkpointing = false;  // training forwards keep only each layer's input (lib/model/recompute)
};
TORCH_MODULE(LanguageModel);

// Builds the masks and RoPE tables for one forward. attention_mask, visual_mask (B, T) bool; prompt_mask
// (B, T) bool or undefined (= every real token is prompt); position_ids (3, B, T) for M-RoPE (Qwen), or
// undefined (= the running count of real tokens).
DecoderContext make_decoder_context(const TextShapes& s, const torch::Tensor& attention_mask,
                                    const torch::Tensor& visual_mask, torch::ScalarType dtype,
                                    const torch::Tensor& prompt_mask = {}, const torch::Tensor& position_ids = {});

// RoPE tables cos, sin (B, T, 1, d) at integer positions (B, T), or at M-RoPE positions (3, B, T) split
// by s.mrope_section, computed in float64 and cast to float32 (float64 for a float64 model).
std::pair<torch::Tensor, torch::Tensor> rope_tables(const TextShapes& s, const torch::Tensor& positions,
                                                    torch::ScalarType dtype);

// Rotates x (B, T, h, d) by the RoPE tables (rotate_half convention of Hugging Face LLaMA).
torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace modalign
