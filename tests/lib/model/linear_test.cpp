// lib/model/linear: the layer equals torch::nn::Linear's math, LoRA starts as the identity, computes
// W x + b + (alpha/r) B A x, and merging keeps outputs.
#include "lib/model/linear.h"

#include <gtest/gtest.h>

namespace modalign {
namespace {

TEST(Linear, LoraFormulaInitAndMerge) {
  torch::manual_seed(0);
  Linear layer(6, 4);
  layer->to(torch::kFloat64);
  EXPECT_EQ(layer->weight.abs().sum().item<double>(), 0.0);  // the model initialises weights, not the layer
  {
    torch::NoGradGuard no_grad;
    layer->weight.normal_();
    layer->bias.normal_();
  }
  torch::Tensor x = torch::randn({3, 6}, torch::kFloat64);
  torch::Tensor base = layer(x);
  EXPECT_TRUE(torch::allclose(base, torch::matmul(x, layer->weight.t()) + layer->bias, 0, 1e-12));
  layer->enable_lora(2, 8.0, 0.0);
  EXPECT_TRUE(torch::equal(layer(x), base));  // B = 0 at init
  {
    torch::NoGradGuard no_grad;
    layer->lora_B.copy_(torch::randn({4, 2}, torch::kFloat64));
  }
  torch::Tensor expected = base + 4.0 * torch::matmul(torch::matmul(x, layer->lora_A.t()), layer->lora_B.t());
  torch::Tensor with_lora = layer(x);
  EXPECT_TRUE(torch::allclose(with_lora, expected, 0, 1e-12));
  auto names = layer->named_parameters();
  EXPECT_TRUE(names.contains("lora_A") && names.contains("lora_B") && names.contains("weight"));
  layer->merge_lora();
  EXPECT_TRUE(torch::allclose(layer(x), with_lora, 0, 1e-12));
  EXPECT_EQ(layer->lora_B.abs().sum().item<double>(), 0.0);
}

}  // namespace
}  // namespace modalign
