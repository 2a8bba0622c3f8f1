// The README's second "own trainer" block (tapped_loss.cpp): all four attention losses from a model whose
// attention layers run modalign's blockwise attention with alignment taps.
#pragma once
#include <torch/torch.h>

#include <functional>

#include "lib/model/alignment_taps.h"
#include "losses/loss_composer.h"

modalign::LossComposer four_losses(int64_t num_decoder_layers);

torch::Tensor tapped_training_loss(const modalign::LossComposer& composer,
                                   const std::function<torch::Tensor(modalign::AlignmentTaps&)>& forward,
                                   const torch::Tensor& labels, const torch::Tensor& attention_mask,
                                   const torch::Tensor& visual_mask, const torch::Tensor& region_target,
                                   std::vector<modalign::WeightedTerm>* terms = nullptr);
