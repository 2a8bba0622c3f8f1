#include "lib/io/weights.h"

#include <fmt/format.h>
#include <fmt/ranges.h>
#include <spdlog/spdlog.h>

#include "lib/io/safetensors.h"

namespace modalign {
namespace {

bool never_stored(const std::string& name) {
  const std::string suffix = "rotary_emb.inv_freq";
  return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

bool starts(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

// A Qwen2-VL / Qwen2.5-VL Hub name -> the model's name: `model.visual.*` (newer transformers) ->
// `visual.*`; `model.language_model.*` (newer) and `model.*` (original) -> `language_model.model.*`;
// `lm_head.*` -> `language_model.lm_head.*`. Other names are returned unchanged.
std::string model_name(const std::string& name) {
  if (starts(name, "model.visual.")) return name.substr(6);
  if (starts(name, "model.language_model.")) return "language_model.model." + name.substr(21);
  if (starts(name, "model.")) return "language_model." + name;
  if (starts(name, "lm_head.")) return "language_model." + name;
  return name;
}

}  // namespace

std::string qwen_hub_name(const std::string& name) {
  if (starts(name, "language_model.model.") || starts(name, "language_model.lm_head.")) return name.substr(15);
  return name;
}

namespace {

std::string list(const std::vector<std::string>& names) {
  const size_t shown = 20;
  std::vector<std::string> head(names.begin(), names.begin() + std::min(names.size(), shown));
  return fmt::format("{}{}", fmt::join(head, ", "), names.size() > shown ? fmt::format(" (+{} more)", names.size() - shown) : "");
}

}  // namespace

std::vector<std::pair<std::string, torch::Tensor>> named_state(const torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> out;
  for (const auto& p : module.named_parameters(true)) out.emplace_back(p.key(), p.value().detach());
  for (const auto& b : module.named_buffers(true)) out.emplace_back(b.key(), b.value().detach());
  return out;
}

LoadReport load_weights(torch::nn::Module& module, const std::string& path, bool strict) {
  return load_weights(module, load_tensors(path), path, strict);
}

LoadReport load_weights(torch::nn::Module& module, const NamedTensors& tensors, const std::string& path, bool strict) {
  std::map<std::string, torch::Tensor> targets;
  for (const auto& [name, t] : named_state(module)) targets[name] = t;
  const bool tied = !targets.count("language_model.lm_head.weight") &&
                    targets.count("language_model.model.embed_tokens.weight");
  LoadReport report;
  std::map<std::string, bool> seen;
  std::vector<std::pair<torch::Tensor, torch::Tensor>> copies;  // (target, source), applied once all is checked
  for (const auto& [file_name, tensor] : tensors) {
    const std::string name = targets.count(file_name) ? file_name : model_name(file_name);
    if (never_stored(name) || (tied && name == "language_model.lm_head.weight")) continue;
    auto it = targets.find(name);
    if (it == targets.end()) {
      report.unexpected.push_back(file_name);
      continue;
    }
    seen[name] = true;
    if (it->second.sizes() != tensor.sizes()) {
      report.mismatched.push_back(fmt::format("{}: file [{}] vs model [{}]", name, fmt::join(tensor.sizes(), ", "),
                                              fmt::join(it->second.sizes(), ", ")));
      continue;
    }
    copies.emplace_back(it->second, tensor);
  }
  for (const auto& [name, t] : targets)
    if (!seen.count(name)) report.missing.push_back(name);
  const bool clean = report.missing.empty() && report.unexpected.empty() && report.mismatched.empty();
  if (clean || !strict) {
    torch::NoGradGuard no_grad;
    for (auto& [target, source] : copies) target.copy_(source.to(target.device(), target.scalar_type()));
    report.loaded = copies.size();
  }
  if (clean) return report;
  std::string msg = fmt::format("{}: {} tensors matched; missing {}: [{}]; unexpected {}: [{}]; shape mismatch {}: [{}]",
                                path, copies.size(), report.missing.size(), list(report.missing),
                                report.unexpected.size(), list(report.unexpected), report.mismatched.size(),
                                list(report.mismatched));
  if (strict) throw std::runtime_error("loading weights failed (strict): " + msg);
  spdlog::warn("loading weights (non-strict): {}", msg);
  return report;
}

void save_weights(const torch::nn::Module& module, const std::string& path,
                  const std::map<std::string, std::string>& metadata) {
  auto state = named_state(module);
  std::map<std::string, std::string> meta = metadata;
  meta.emplace("format", "pt");
  save_safetensors(path, state, meta);
}

}  // namespace modalign
