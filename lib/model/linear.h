// Linear layer used throughout the model: `weight` (out, in) and optional `bias`, named as in
// torch::nn::Linear and Hugging Face checkpoints, plus an optional LoRA pair (Hu et al., arXiv
// 2106.09685): y = x W^T + b + (alpha / r) * dropout(x) A^T B^T, A (r, in) Kaiming-uniform, B (out, r) zero,
// so enabling LoRA leaves the output unchanged until B is trained. merge_lora() folds it into W and
// zeroes B (LibTorch 1.13 cannot unregister parameters); exports leave the lora_* tensors out.
// Weight and bias start at zero and draw nothing from the generator: the model initialises them
// (initialize_weights in lib/model/vision_language_model.h, Hugging Face style).
#pragma once
#include <torch/torch.h>

namespace modalign {

struct LinearImpl : torch::nn::Module {
  LinearImpl(int64_t in_features, int64_t out_features, bool with_bias = true);
  torch::Tensor forward(const torch::Tensor& x);  // (..., in) -> (..., out)

  void enable_lora(int64_t rank, double alpha, double dropout);
  bool has_lora() const { return lora_A.defined(); }
  // W += (alpha / r) B A; B = 0.
  void merge_lora();

  torch::Tensor weight, bias;
  torch::Tensor lora_A, lora_B;  // (r, in), (out, r) when enabled
  double lora_scale = 0, lora_dropout = 0;
};
TORCH_MODULE(Linear);

}  // namespace modalign
