#include "lib/model/vision_tower.h"

#include "lib/model/attention_core.h"
#include "lib/model/fused_ops.h"
#include "lib/model/recompute.h"

namespace modalign {
namespace nn = torch::nn;

ClipAttentionImpl::ClipAttentionImpl(const VisionShapes& s)
    : heads(s.num_attention_heads),
      q_proj(register_module("q_proj", Linear(s.hidden_size, s.hidden_size))),
      k_proj(register_module("k_proj", Linear(s.hidden_size, s.hidden_size))),
      v_proj(register_module("v_proj", Linear(s.hidden_size, s.hidden_size))),
      out_proj(register_module("out_proj", Linear(s.hidden_size, s.hidden_size))) {}

torch::Tensor ClipAttentionImpl::forward(const torch::Tensor& x) {
  TORCH_CHECK(x.dim() == 3, "ClipAttention expects (N, P+1, D), got ", x.sizes());
  const int64_t n = x.size(0), t = x.size(1), d = x.size(2), hd = d / heads;
  torch::Tensor q = q_proj(x).view({n, t, heads, hd}), k = k_proj(x).view({n, t, heads, hd}),
                v = v_proj(x).view({n, t, heads, hd});  // (N, T, h, hd)
  if (attention_core_supported(q)) return out_proj(attention_core(q, k, v).out.view({n, t, d}));
  q = q.transpose(1, 2), k = k.transpose(1, 2), v = v.transpose(1, 2);  // (N, h, T, hd)
  torch::Tensor p = torch::softmax(torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(hd)), -1);
  torch::Tensor out = torch::matmul(p, v).transpose(1, 2).reshape({n, t, d});  // (N, T, D)
  return out_proj(out);
}

ClipMlpImpl::ClipMlpImpl(const VisionShapes& s)
    : fc1(register_module("fc1", Linear(s.hidden_size, s.intermediate_size))),
      fc2(register_module("fc2", Linear(s.intermediate_size, s.hidden_size))) {}

torch::Tensor ClipMlpImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = fc1(x);
  return fc2(fused_ops_supported(h) ? fused_gated_silu(h, {}, 1.702) : h * torch::sigmoid(1.702 * h));  // quick_gelu
}

ClipEncoderLayerImpl::ClipEncoderLayerImpl(const VisionShapes& s)
    : layer_norm1(register_module("layer_norm1",
                                  nn::LayerNorm(nn::LayerNormOptions({s.hidden_size}).eps(s.layer_norm_eps)))),
      layer_norm2(register_module("layer_norm2",
                                  nn::LayerNorm(nn::LayerNormOptions({s.hidden_size}).eps(s.layer_norm_eps)))),
      self_attn(register_module("self_attn", ClipAttention(s))),
      mlp(register_module("mlp", ClipMlp(s))) {}

torch::Tensor ClipEncoderLayerImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = x + self_attn(layer_norm1(x));
  return h + mlp(layer_norm2(h));
}

ClipEmbeddingsImpl::ClipEmbeddingsImpl(const VisionShapes& s)
    : patch_embedding(register_module(
          "patch_embedding",
          nn::Conv2d(nn::Conv2dOptions(s.num_channels, s.hidden_size, s.patch_size).stride(s.patch_size).bias(false)))),
      class_embedding(register_parameter("class_embedding", torch::randn({s.hidden_size}))),
      position_embedding(register_module("position_embedding", nn::Embedding(s.num_patches() + 1, s.hidden_size))) {}

torch::Tensor ClipEmbeddingsImpl::forward(const torch::Tensor& pixel_values) {
  // The stride-p, p x p convolution as one GEMM over the image's p x p patches (the convolution kernel
  // LibTorch picks for this shape reaches ~10 GFLOP/s; a GEMM ~200).
  const torch::Tensor& w = patch_embedding->weight;  // (D, C, p, p)
  const int64_t n = pixel_values.size(0), c = w.size(1), p = w.size(2), g = pixel_values.size(2) / p;
  torch::Tensor cells = pixel_values.to(w.dtype())
                            .view({n, c, g, p, g, p})
                            .permute({0, 2, 4, 1, 3, 5})
                            .reshape({n, g * g, c * p * p});                  // (N, P, C p p), row-major patches
  torch::Tensor patches = torch::matmul(cells, w.view({w.size(0), -1}).t());  // (N, P, D)
  torch::Tensor cls = class_embedding.view({1, 1, -1}).expand({patches.size(0), 1, -1});       // (N, 1, D)
  return torch::cat({cls, patches}, 1) + position_embedding->weight.unsqueeze(0);              // (N, P+1, D)
}

ClipVisionModelImpl::ClipVisionModelImpl(const VisionShapes& s)
    : embeddings(register_module("embeddings", ClipEmbeddings(s))),
      pre_layrnorm(register_module("pre_layrnorm",
                                   nn::LayerNorm(nn::LayerNormOptions({s.hidden_size}).eps(s.layer_norm_eps)))),
      post_layernorm(register_module("post_layernorm",
                                     nn::LayerNorm(nn::LayerNormOptions({s.hidden_size}).eps(s.layer_norm_eps)))) {
  auto encoder = register_module("encoder", std::make_shared<nn::Module>());
  layers = encoder->register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < s.num_hidden_layers; ++i) layers->push_back(ClipEncoderLayer(s));
}

VisionTowerImpl::VisionTowerImpl(const VisionShapes& s, int64_t layers_used_)
    : shapes(s), layers_used(layers_used_), vision_model(register_module("vision_model", ClipVisionModel(s))) {}

torch::Tensor VisionTowerImpl::forward(const torch::Tensor& pixel_values) {
  TORCH_CHECK(pixel_values.dim() == 4 && pixel_values.size(1) == shapes.num_channels &&
                  pixel_values.size(2) == shapes.image_size && pixel_values.size(3) == shapes.image_size,
              "VisionTower expects pixel_values (N, ", shapes.num_channels, ", ", shapes.image_size, ", ",
              shapes.image_size, "), got ", pixel_values.sizes());
  torch::Tensor h = vision_model->pre_layrnorm(vision_model->embeddings(pixel_values));  // hidden_states[0]
  for (int64_t i = 0; i < layers_used; ++i) {
    std::shared_ptr<torch::nn::Module> layer = vision_model->layers[i];
    h = run_block(gradient_checkpointing, [layer](const torch::Tensor& x) { return layer->as<ClipEncoderLayerImpl>()->forward(x); },
                  h, *layer);
  }
  return h.slice(1, 1);  // (N, P, D): class token dropped
}

}  // namespace modalign
