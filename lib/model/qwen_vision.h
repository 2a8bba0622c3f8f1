// The Qwen2-VL / Qwen2.5-VL vision tower (`visual`): images of any size as rows of flattened patches,
// a patch embedding, 2-D rotary positions, blocks that attend within each image (Qwen2.5-VL: within
// windows of merged tokens, except the `fullatt_block_indexes`), and the PatchMerger that turns each
// 2x2 block of patches into one decoder token. Module names equal the Hub checkpoints' (`visual.*`).
//
// Letters: N patches of all images, C tower width, h heads, d head dim, M = N / 4 merged tokens,
// K = C * temporal_patch_size * patch^2 values per patch row.
// Patch rows come in the image processor's order: per image, frame, then the 2x2 merge blocks in
// row-major order, then the patches of a block in row-major order (tests/golden/QWEN.md).
#pragma once
#include <torch/torch.h>

#include <vector>

#include "lib/model/linear.h"
#include "lib/model/model_shapes.h"

namespace modalign {

// Where each patch and merged token goes, from image_grid_thw (I, 3) = (t, h, w) patches per image.
struct VisionLayout {
  torch::Tensor rot_pos_ids;                  // (N, 2): (row, col) of each patch in processor order
  std::vector<int64_t> cu_seqlens;            // patch offsets of each frame of each image: full attention
  torch::Tensor window_index;                 // (M): merged tokens in window-major order (identity without windows)
  std::vector<int64_t> cu_window_seqlens;     // patch offsets of the windows, in that order
};
VisionLayout vision_layout(const QwenVisionShapes& s, const torch::Tensor& image_grid_thw);

// Merged tokens per image: t * h * w / merge_unit, from image_grid_thw (I, 3).
std::vector<int64_t> merged_tokens_per_image(const QwenVisionShapes& s, const torch::Tensor& image_grid_thw);

// Norms: RMSNorm (Qwen2.5-VL) or LayerNorm with bias (Qwen2-VL), eps 1e-6, by the module's family.
struct QwenVisionNormImpl : torch::nn::Module {
  QwenVisionNormImpl(int64_t dim, bool layer_norm);
  torch::Tensor forward(const torch::Tensor& x);  // (..., C), normalised in float32 or wider
  bool layer_norm;
  torch::Tensor weight, bias;  // bias only for LayerNorm
};
TORCH_MODULE(QwenVisionNorm);

struct QwenVisionBlockImpl : torch::nn::Module {
  QwenVisionBlockImpl(const QwenVisionShapes& s, bool qwen2);
  // x (N, C), cos/sin (N, d), segments: patch offsets of the attention groups -> (N, C)
  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                        const std::vector<int64_t>& segments);
  int64_t heads;
  bool qwen2;
  QwenVisionNorm norm1{nullptr}, norm2{nullptr};
  Linear qkv{nullptr}, proj{nullptr};                                // `attn.qkv`, `attn.proj`
  Linear gate_proj{nullptr}, up_proj{nullptr}, down_proj{nullptr};  // Qwen2.5-VL `mlp.*`
  Linear fc1{nullptr}, fc2{nullptr};                                 // Qwen2-VL `mlp.*`
};
TORCH_MODULE(QwenVisionBlock);

struct QwenVisionModelImpl : torch::nn::Module {
  QwenVisionModelImpl(const QwenVisionShapes& s, ModelFamily family);
  // pixel_values (N, K), image_grid_thw (I, 3) -> merged features (M, out_hidden_size), per image in
  // raster order of its merged grid, images one after another: merge(encode(...)).
  torch::Tensor forward(const torch::Tensor& pixel_values, const torch::Tensor& image_grid_thw);
  // The tower without the merger: block outputs (N, C) with the merged tokens in window order, `order`
  // (M) that order (VisionLayout::window_index). Split so a frozen tower runs without autograd.
  torch::Tensor encode(const torch::Tensor& pixel_values, const torch::Tensor& image_grid_thw, torch::Tensor& order);
  // The PatchMerger: encode's output (N, C) and order -> (M, out_hidden_size) in raster order.
  torch::Tensor merge(const torch::Tensor& hidden, const torch::Tensor& order);
  torch::Tensor embed_patches(const torch::Tensor& pixel_values);  // (N, K) -> (N, C)
  QwenVisionShapes shapes;
  ModelFamily family;
  torch::nn::Conv3d patch_embed_proj{nullptr};  // `patch_embed.proj` (C, channels, t, p, p), run as a GEMM
  torch::nn::ModuleList blocks{nullptr};
  QwenVisionNorm merger_ln_q{nullptr};                     // `merger.ln_q`
  Linear merger_fc1{nullptr}, merger_fc2{nullptr};         // `merger.mlp.0`, `merger.mlp.2`
  bool gradient_checkpointing = false;  // training forwards keep only each block's input (lib/model/recompute)
};
TORCH_MODULE(QwenVisionModel);

}  // namespace modalign
