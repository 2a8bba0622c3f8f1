// Activation checkpointing: run a block without keeping its intermediates and run it again in the
// backward pass (with the random state it first ran with), back-propagating through the recomputation.
// Memory per block falls to its input; time rises by one more forward of the block.
#pragma once
#include <torch/torch.h>

#include <functional>
#include <vector>

namespace modalign {

// x -> the block's outputs (undefined entries allowed: taps nobody asked for).
using BlockFn = std::function<std::vector<torch::Tensor>(const torch::Tensor& x)>;

// fn(x), computed without a graph; its outputs carry one autograd node that, in backward, recomputes fn
// from x and returns the gradients of x and of `params` (the block's parameters; those that do not require
// grad get none). When neither x nor any of `params` requires grad, or grad mode is off, this is fn(x).
// The CPU generator's state and the autocast state are restored for the recomputation, so dropout draws
// the same masks and bf16 mixed precision computes the same values.
std::vector<torch::Tensor> recompute_in_backward(const BlockFn& fn, const torch::Tensor& x,
                                                 const std::vector<torch::Tensor>& params);

// A block with one output, `module`'s parameters: fn(x), through recompute_in_backward when `recompute`.
torch::Tensor run_block(bool recompute, const std::function<torch::Tensor(const torch::Tensor&)>& fn,
                        const torch::Tensor& x, const torch::nn::Module& module);

}  // namespace modalign
