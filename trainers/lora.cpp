#include "trainers/lora.h"

#include <regex>

#include "lib/io/safetensors.h"
#include "lib/io/weights.h"
#include "lib/model/linear.h"

namespace modalign {

std::vector<std::string> apply_lora(torch::nn::Module& model, const TrainConfig& c) {
  std::vector<std::string> names;
  const bool all_linear = c.lora_target == "all-linear";
  std::regex target(all_linear ? "$^" : c.lora_target);
  for (auto& item : model.named_modules("", /*include_self=*/false)) {
    auto* linear = item.value()->as<LinearImpl>();
    if (!linear) continue;
    const std::string& name = item.key();
    bool chosen = all_linear ? name.rfind("language_model.", 0) == 0 && name != "language_model.lm_head"
                             : std::regex_search(name, target);
    if (!chosen) continue;
    linear->enable_lora(c.lora_rank, c.lora_alpha, c.lora_dropout);
    names.push_back(name);
  }
  if (names.empty()) throw std::invalid_argument("train.lora_target '" + c.lora_target + "' selects no linear layer");
  return names;
}

void merge_lora(torch::nn::Module& model) {
  for (auto& item : model.named_modules("", false))
    if (auto* linear = item.value()->as<LinearImpl>()) linear->merge_lora();
}

std::vector<std::pair<std::string, torch::Tensor>> exported_state(const torch::nn::Module& model) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (auto& [name, t] : named_state(model))
    if (name.find(".lora_") == std::string::npos) out.emplace_back(name, t);
  return out;
}

}  // namespace modalign
