// Blockwise grouped-query attention that never stores T x T: one autograd function that processes each
// (sample, key/value head) in blocks of query rows against the keys those rows may see, keeps only the
// output and one log-sum-exp per (query, head), and recomputes each block's probabilities in the backward
// pass. It also returns the attention mass on caller-given key sets (the alignment taps) with their
// gradient: a tap is a sum of probabilities over a set of keys, exact inside each block. Which keys a
// query may read is described in O(T) (causality, each key's validity, segment ids for packed samples or
// windows) and evaluated inside the blocks. Blocks run in parallel on CPU (each single-threaded), one after
// another on other devices: the same LibTorch operations serve every device and float dtype. bfloat16
// q, k, v (mixed precision) take bf16 products with the scores, softmax statistics and taps in float32.
//
// Letters: B batch, T tokens, H query heads, G key/value heads (H % G == 0), d head dim, S key sets.
#pragma once
#include <torch/torch.h>

namespace modalign {

// Which keys each query may read, in O(T). Default = every query reads every key (a vision tower).
// Query i reads key j when (not causal or j <= i), key_valid[b][j], and segments[b][i] == segments[b][j].
struct AttentionMask {
  bool causal = false;
  torch::Tensor key_valid;  // (B, T) bool, or undefined = every key
  torch::Tensor segments;   // (B, T) int64, or undefined = one segment per sample

  // (B, 1, T, T) bool: the same rule as a dense mask, for eager reference paths that need one.
  torch::Tensor dense(int64_t batch, int64_t tokens, torch::Device device) const;
};

// Per-key probabilities for a few query rows (attention_kl's response queries over image keys), produced
// inside the blocks: never more than Q x Nv per sample and head.
struct AttentionProbe {
  torch::Tensor rows;        // (B, Q) int64 query positions, -1 = none (padding)
  torch::Tensor keys;        // (B, Nv) int64 key positions
  torch::Tensor keys_valid;  // (B, Nv) bool: which columns of keys are keys
};

struct AttentionCoreOutput {
  torch::Tensor out;    // (B, T, H, d): softmax(q k^T / sqrt(d), masked) v; 0 for a query with no allowed key
  torch::Tensor mass;   // (B, H, T, S): sum of P over each key set; S = 0 without sets (float32 for bf16 q)
  torch::Tensor probs;  // (B, H, Q, Nv) with a probe: P at its rows and keys (0 at padding); else undefined
};

// Whether attention_core handles these tensors (float32, float64 or bfloat16, any device).
bool attention_core_supported(const torch::Tensor& q);

// Query rows per block for r query heads per key/value head over t keys: all rows when r t t is small,
// else as many as keep one block's scores near 2^20 values (at least 16). Exposed for tests and planning.
int64_t attention_query_block(int64_t r, int64_t t);

// q (B, T, H, d), k and v (B, T, G, d); sets (B, T, S) or undefined. Query head h reads key/value head
// h / (H / G). Differentiable in q, k and v (through out, mass and probs). Memory beyond the inputs and
// outputs: O(B H T) for the log-sum-exp plus one block's scores per thread. `query_block` (rows per block,
// 0 = attention_query_block) changes only the summation order.
AttentionCoreOutput attention_core(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const AttentionMask& mask = {}, const torch::Tensor& sets = {},
                                   int64_t query_block = 0, const AttentionProbe& probe = {});

}  // namespace modalign
