// LoRA fine-tuning by config (train.lora_rank, lora_alpha, lora_dropout, lora_target) and its export:
// `all-linear` puts adapters on every linear layer of the language model except lm_head (as PEFT does);
// any other value is a regex over linear layer names. merge_lora folds the adapters into the weights
// (`modalign convert --merge-lora`, trainers/components).
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "lib/config/run_config.h"

namespace modalign {

// Enables LoRA on the selected linear layers; returns their names. Throws std::invalid_argument when
// lora_target selects none.
std::vector<std::string> apply_lora(torch::nn::Module& model, const TrainConfig& config);

// Folds every adapter into its layer's weight (outputs unchanged).
void merge_lora(torch::nn::Module& model);

// Parameters and buffers without the lora_* tensors, for export after merge_lora.
std::vector<std::pair<std::string, torch::Tensor>> exported_state(const torch::nn::Module& model);


}  // namespace modalign
