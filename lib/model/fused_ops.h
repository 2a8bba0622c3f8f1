// RMSNorm and rotary embedding as single-pass CPU kernels with hand-written backward (LibTorch runs each
// as five to ten elementwise operators forward and again backward: measured 3.7 ms per RMSNorm of a
// `demo` batch, about 50 ms of a 450 ms step). CPU float32/float64; callers fall back to tensor
// operators elsewhere. Same formulas as the operator versions in lib/model/decoder.
#pragma once
#include <torch/torch.h>

namespace modalign {

// Whether the fused kernels handle x (CPU, float32 or float64).
bool fused_ops_supported(const torch::Tensor& x);

// x (..., D), weight (D) of x's dtype -> weight * x / sqrt(mean(x^2) + eps). Differentiable in x and weight.
torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// x (B, T, h, d), cos and sin (B, T, 1, d) of x's dtype -> x cos + rotate_half(x) sin. Differentiable in x.
torch::Tensor fused_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

}  // namespace modalign
