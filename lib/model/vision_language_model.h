// VisionLanguageModel, one interface for both families: image features written into the embedded token
// sequence where `input_ids` hold the image token, then the decoder.
//   LLaVA: CLIP vision tower -> projector -> LLaMA decoder; parameter names equal llava-hf's.
//   Qwen2-VL / Qwen2.5-VL: `visual` (lib/model/qwen_vision) -> Qwen2 decoder (q/k/v bias, M-RoPE with
//   positions from qwen_position_ids); the Hub names `model.*`, `lm_head.weight` (and newer
//   transformers' `model.language_model.*`, `model.visual.*`) load through lib/io/weights.
//
// Inputs are already expanded: each LLaVA image occupies Nv = (image_size / patch_size)^2 consecutive
// image-token positions (expand_image_tokens turns Hugging Face's single placeholder into that span);
// each Qwen image t * h * w / 4 positions of its grid, so samples may hold different numbers.
#pragma once
#include <torch/torch.h>

#include <vector>

#include "lib/config/run_config.h"
#include "lib/model/decoder.h"
#include "lib/model/linear.h"
#include "lib/model/model_shapes.h"
#include "lib/model/qwen_vision.h"
#include "lib/model/vision_tower.h"

namespace modalign {

struct ModelOutput {
  torch::Tensor logits;          // (B, T, V), or (N, V) at the requested positions
  torch::Tensor visual_mask;     // (B, T) bool: positions holding image features
  std::vector<LayerTap> taps;    // one per requested layer, in layer order
};

struct ProjectorImpl : torch::nn::Module {
  ProjectorImpl(ProjectorKind kind, int64_t vision_dim, int64_t text_dim);
  torch::Tensor forward(const torch::Tensor& x);  // (N, P, Dv) -> (N, P, D): linear_2(gelu(linear_1(x)))
  Linear linear_1{nullptr}, linear_2{nullptr};  // linear_2 null for `linear`
};
TORCH_MODULE(Projector);

struct VisionLanguageModelImpl : torch::nn::Module {
  // Initialised as Hugging Face does (initialize_weights with shapes.initializer_range), from LibTorch's
  // default generator.
  explicit VisionLanguageModelImpl(const ModelShapes& shapes);

  // input_ids, attention_mask (B, T) with expanded image spans; pixel_values (N, C, S, S): one image per
  // sample that holds image tokens, in batch order (N may be 0). logit_positions (B, T) bool, when given:
  // logits only at those positions, (N, V) in row-major order (training needs them only where a token
  // is supervised: the LM head and its softmax then cost a few rows instead of B x T). prompt_mask (B, T)
  // bool: the prompt, the only text the MODA aligner reads (prompt_mask_from_labels in training);
  // undefined = every real token (generation, where all the model is given is prompt).
  // Qwen: pixel_values (patches, C * temporal_patch_size * patch^2) of all images in batch order, and
  // image_grid_thw (images, 3).
  ModelOutput forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                      const torch::Tensor& pixel_values, const TapRequest& taps = {},
                      const torch::Tensor& logit_positions = {}, const torch::Tensor& prompt_mask = {},
                      const torch::Tensor& image_grid_thw = {});

  // Generation with a KV cache. prefill: prompts as forward() takes them (right padded; every real token
  // is prompt) -> logits (B, V) at each sample's last real position, `cache` filled. decode: one token id
  // per sample (B) -> logits (B, V) for the token after it, `cache` extended. Greedy decoding this way
  // gives the tokens of full re-forwards whose prompt_mask is the original prompt.
  torch::Tensor prefill(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                        const torch::Tensor& pixel_values, KvCache& cache, const torch::Tensor& image_grid_thw = {});
  torch::Tensor decode(const torch::Tensor& next_ids, KvCache& cache);

  // Token embeddings with image features written at image-token positions: (B, T, D)
  torch::Tensor embed(const torch::Tensor& input_ids, const torch::Tensor& visual_mask,
                      const torch::Tensor& pixel_values, const torch::Tensor& image_grid_thw = {});

  // Activation checkpointing of every decoder layer and vision block (train.gradient_checkpointing).
  void set_gradient_checkpointing(bool on);

  ModelShapes shapes;
  // Mixed precision (train.bf16): forward, prefill and decode run under autocast in this dtype, float32
  // weights cast per forward; kFloat32 = the model opens no autocast scope (a caller's own still applies).
  // Logits and taps are float32 either way.
  torch::ScalarType autocast_dtype = torch::kFloat32;
  VisionTower vision_tower{nullptr};          // LLaVA
  Projector multi_modal_projector{nullptr};  // LLaVA
  QwenVisionModel visual{nullptr};           // Qwen
  LanguageModel language_model{nullptr};
};
TORCH_MODULE(VisionLanguageModel);

// Qwen's M-RoPE position ids (3, B, T) = (t, h, w), as Hugging Face's get_rope_index: text counts up;
// an image span (its t * h/2 * w/2 tokens, grids from image_grid_thw in batch order) gets its merged
// grid's (frame, row, col) plus the position where it starts (Qwen2.5-VL: frame 0 for images); text
// after it resumes one past the largest position so far. Padding holds 1.
torch::Tensor qwen_position_ids(const ModelShapes& shapes, const torch::Tensor& input_ids,
                                const torch::Tensor& attention_mask, const torch::Tensor& image_grid_thw);

// (B, T) bool: the positions before each sample's first supervised token (labels != -100, aligned with
// input_ids): what the model has when it starts to answer. All true for a sample without labels.
torch::Tensor prompt_mask_from_labels(const torch::Tensor& labels);

// The same batch with its images removed, for a forward of the text alone (the modality-contrast losses):
// image tokens become padding inside the sequence, so no query sees them and the RoPE (or M-RoPE)
// positions of later tokens close the gap, exactly as if the image tokens were absent; pass no pixels.
// Positions and labels keep their columns, so logits at the same logit_positions line up row for row.
struct TextOnlyInputs {
  torch::Tensor input_ids;       // (B, T): image tokens replaced by id 0
  torch::Tensor attention_mask;  // (B, T) bool: real and not an image token
};
TextOnlyInputs without_image(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                             int64_t image_token_index);

// Hugging Face style inputs (one image token per image, right padded) -> expanded inputs (B, T') where
// each sample's real tokens come first with its image token replaced by `num_patches` copies, then
// right padding; T' is the longest expanded sample. Labels at image positions become -100.
struct ExpandedInputs {
  torch::Tensor input_ids, attention_mask, labels;  // (B, T')
};
ExpandedInputs expand_image_tokens(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                   const torch::Tensor& labels, int64_t image_token_index, int64_t num_patches,
                                   int64_t pad_token_id = 0);

// Hugging Face's _init_weights: every linear, convolution and embedding weight and CLIP's class embedding
// drawn from normal(0, std), biases 0, norms weight 1 and bias 0; the MODA aligner keeps its identity
// start and draws nothing (so a model with and without it starts from the same weights). Draws follow
// the order of `model`'s submodules, so the same generator state gives the same weights.
void initialize_weights(torch::nn::Module& model, double std);

// The model a config asks for: preset or Hugging Face config.json, MODA aligner flag, dtype, device.
ModelShapes shapes_from_config(const ModelConfig& config);
VisionLanguageModel build_model(const ModelConfig& config);

}  // namespace modalign
