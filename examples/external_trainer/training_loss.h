// The README's "Use the losses in your own trainer" code as a function the example calls: text CE plus
// dual_channel from attention probabilities a trainer computed itself.
#pragma once
#include <torch/torch.h>

#include <vector>

torch::Tensor training_loss(const torch::Tensor& logits, const std::vector<torch::Tensor>& probs_of_layer,
                            const torch::Tensor& labels, const torch::Tensor& attention_mask,
                            const torch::Tensor& visual_mask, int64_t num_decoder_layers);
