// Fused causal grouped-query attention for CPU float32/float64: one autograd function whose forward
// and backward run one GEMM per (sample, key/value head) block and product (the block's query heads
// stacked, keys and values read in place from the projections' (B, T, G, d) layout, never repeated), the
// blocks in parallel with single-threaded BLAS, and which also returns the attention mass on caller-given
// key sets (the alignment taps) with its gradient. LibTorch 1.13's batched matmul runs such small
// products one after another, each split over all threads; this does the same arithmetic (masked softmax
// of q k^T / sqrt(d), times v) in about half the time. bfloat16 q, k, v (mixed precision) take batched
// bf16 GEMMs through LibTorch (oneDNN) instead, with the softmax, P and the taps in float32.
//
// Letters: B batch, T tokens, H query heads, G key/value heads (H % G == 0), d head dim, S key sets.
#pragma once
#include <torch/torch.h>

namespace modalign {

// Which keys each query may read, in the two forms the kernel uses; built once per forward and shared
// by all layers. Default-constructed = every query reads every key (the vision tower).
struct AttentionMask {
  torch::Tensor allowed;    // (B, 1, T, T) bool
  torch::Tensor bias;       // (B, 1, T, T) float64 for float64, else float32: 0 where allowed, the lowest finite value elsewhere
  bool empty_rows = false;  // some query has no allowed key (it then attends uniformly)
};
AttentionMask make_attention_mask(const torch::Tensor& allowed, torch::ScalarType dtype);

struct AttentionCoreOutput {
  torch::Tensor out;   // (B, T, H, d): softmax(q k^T / sqrt(d), masked) v
  torch::Tensor mass;  // (B, H, T, S): sum of P over each key set; S = 0 without sets (float32 for bf16 q)
};

// Whether attention_core handles these tensors (CPU, float32, float64 or bfloat16); otherwise use eager attention.
bool attention_core_supported(const torch::Tensor& q);

// q (B, T, H, d), k and v (B, T, G, d); mask from make_attention_mask in q's dtype (a row with no
// allowed key attends uniformly, as a lowest-value masked softmax does); sets (B, T, S) or undefined.
// Query head h reads key/value head h / (H / G). Differentiable in q, k and v.
AttentionCoreOutput attention_core(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const AttentionMask& mask = {}, const torch::Tensor& sets = {});

}  // namespace modalign
