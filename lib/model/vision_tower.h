// CLIP ViT vision tower as LLaVA uses it: patch conv (no bias), class token, learned positions,
// pre-LN encoder layers with quick-GELU MLPs. Features come from `vision_feature_layer` (only the layers
// up to it run) with the class token dropped. Module names equal the llava-hf parameter names under
// `vision_tower.vision_model`.
#pragma once
#include <torch/torch.h>

#include "lib/model/linear.h"
#include "lib/model/model_shapes.h"

namespace modalign {

struct ClipAttentionImpl : torch::nn::Module {
  explicit ClipAttentionImpl(const VisionShapes& s);
  torch::Tensor forward(const torch::Tensor& x);  // (N, P+1, D) -> (N, P+1, D)
  int64_t heads;
  Linear q_proj{nullptr}, k_proj{nullptr}, v_proj{nullptr}, out_proj{nullptr};
};
TORCH_MODULE(ClipAttention);

struct ClipMlpImpl : torch::nn::Module {
  explicit ClipMlpImpl(const VisionShapes& s);
  torch::Tensor forward(const torch::Tensor& x);  // fc2(quick_gelu(fc1(x)))
  Linear fc1{nullptr}, fc2{nullptr};
};
TORCH_MODULE(ClipMlp);

struct ClipEncoderLayerImpl : torch::nn::Module {
  explicit ClipEncoderLayerImpl(const VisionShapes& s);
  torch::Tensor forward(const torch::Tensor& x);  // pre-LN residual block, (N, P+1, D)
  torch::nn::LayerNorm layer_norm1{nullptr}, layer_norm2{nullptr};
  ClipAttention self_attn{nullptr};
  ClipMlp mlp{nullptr};
};
TORCH_MODULE(ClipEncoderLayer);

struct ClipEmbeddingsImpl : torch::nn::Module {
  explicit ClipEmbeddingsImpl(const VisionShapes& s);
  torch::Tensor forward(const torch::Tensor& pixel_values);  // (N, C, S, S) -> (N, P+1, D)
  torch::nn::Conv2d patch_embedding{nullptr};
  torch::Tensor class_embedding;  // (D)
  torch::nn::Embedding position_embedding{nullptr};  // (P+1, D)
};
TORCH_MODULE(ClipEmbeddings);

// `vision_model`: embeddings, pre_layrnorm, encoder.layers, post_layernorm (loaded, unused by LLaVA).
struct ClipVisionModelImpl : torch::nn::Module {
  explicit ClipVisionModelImpl(const VisionShapes& s);
  ClipEmbeddings embeddings{nullptr};
  torch::nn::LayerNorm pre_layrnorm{nullptr}, post_layernorm{nullptr};
  torch::nn::ModuleList layers{nullptr};  // registered under `encoder.layers`
};
TORCH_MODULE(ClipVisionModel);

struct VisionTowerImpl : torch::nn::Module {
  VisionTowerImpl(const VisionShapes& s, int64_t layers_used);
  // pixel_values (N, C, S, S) -> patch features (N, P, D) of hidden_states[layers_used], class token dropped
  torch::Tensor forward(const torch::Tensor& pixel_values);
  VisionShapes shapes;
  int64_t layers_used;
  ClipVisionModel vision_model{nullptr};
  bool gradient_checkpointing = false;  // training forwards keep only each layer's input (lib/model/recompute)
};
TORCH_MODULE(VisionTower);

}  // namespace modalign
