#include "lib/model/linear.h"

#include <cmath>

namespace modalign {
namespace F = torch::nn::functional;

LinearImpl::LinearImpl(int64_t in_features, int64_t out_features, bool with_bias) {
  weight = register_parameter("weight", torch::zeros({out_features, in_features}));
  if (with_bias) bias = register_parameter("bias", torch::zeros({out_features}));
}

torch::Tensor LinearImpl::forward(const torch::Tensor& x) {
  torch::Tensor y = F::linear(x, weight, bias);
  if (!lora_A.defined()) return y;
  torch::Tensor h = lora_dropout > 0 ? F::dropout(x, F::DropoutFuncOptions().p(lora_dropout).training(is_training())) : x;
  return y + lora_scale * F::linear(F::linear(h, lora_A), lora_B);
}

void LinearImpl::enable_lora(int64_t rank, double alpha, double dropout) {
  TORCH_CHECK(rank > 0, "LoRA rank must be positive, got ", rank);
  TORCH_CHECK(!has_lora(), "LoRA is already enabled on this layer");
  auto opts = weight.options().requires_grad(true);
  lora_A = register_parameter("lora_A", torch::empty({rank, weight.size(1)}, opts));
  {
    torch::NoGradGuard no_grad;
    torch::nn::init::kaiming_uniform_(lora_A, std::sqrt(5.0));
  }
  lora_B = register_parameter("lora_B", torch::zeros({weight.size(0), rank}, opts));
  lora_scale = alpha / static_cast<double>(rank);
  lora_dropout = dropout;
}

void LinearImpl::merge_lora() {
  if (!has_lora()) return;
  torch::NoGradGuard no_grad;
  weight.add_(lora_scale * torch::matmul(lora_B, lora_A));
  lora_B.zero_();  // the pair now adds nothing; exports leave lora_* tensors out
}

}  // namespace modalign
