// RMSNorm and rotary embedding as single-pass CPU kernels with hand-written backward (LibTorch runs each
// as five to ten elementwise operators forward and again backward: measured 3.7 ms per RMSNorm of a
// `demo` batch, about 50 ms of a 450 ms step). CPU float32/float64/bfloat16 (bf16 values are computed
// in float and rounded once; RMSNorm's statistics and RoPE's tables stay float); callers fall back to
// tensor operators elsewhere. Same formulas as the operator versions in lib/model/decoder.
#pragma once
#include <torch/torch.h>

namespace modalign {

// Whether the fused kernels handle x (CPU, float32, float64 or bfloat16).
bool fused_ops_supported(const torch::Tensor& x);

// x (..., D), weight (D) of x's dtype -> weight * x / sqrt(mean(x^2) + eps). Differentiable in x and weight.
torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps);

// x (B, T, h, d), cos and sin (B, T, 1, d) -> x cos + rotate_half(x) sin. Differentiable in x.
torch::Tensor fused_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin);

// x * sigmoid(alpha x) * u, elementwise (u of x's shape, or undefined for x * sigmoid(alpha x)):
// alpha 1 with u is SwiGLU's silu(gate) * up, alpha 1.702 without u is CLIP's quick_gelu. The sigmoid
// comes from LibTorch's vectorised kernel, the rest is one pass each way. Differentiable in x and u.
torch::Tensor fused_gated_silu(const torch::Tensor& x, const torch::Tensor& u, double alpha);

}  // namespace modalign
