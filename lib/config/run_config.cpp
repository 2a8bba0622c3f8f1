#include "lib/config/run_config.h"

#include <fmt/format.h>

#include <regex>
#include <algorithm>
#include <set>

namespace modalign {

void validate(const RunConfig& c) {
  std::vector<std::string> errors;
  auto check = [&](bool ok, std::string msg) {
    if (!ok) errors.push_back(std::move(msg));
  };
  const TrainConfig& t = c.train;
  const DataConfig& d = c.data;

  check(!(t.warmup_ratio > 0 && t.warmup_steps > 0),
        "train.warmup_ratio and train.warmup_steps are both set; set one of them");
  check(t.max_steps < 0 || t.warmup_steps <= t.max_steps,
        fmt::format("train.warmup_steps ({}) exceeds train.max_steps ({})", t.warmup_steps, t.max_steps));
  check(t.max_steps != 0, "train.max_steps is 0: nothing would be trained (use -1 to train num_train_epochs)");
  check(t.eval_steps == 0 || !d.eval_files.empty(),
        fmt::format("train.eval_steps is {} but data.eval_files is empty", t.eval_steps));
  check(!(t.freeze_vision_tower && t.freeze_projector && t.freeze_language_model && t.lora_rank == 0 &&
          t.trainable_regex.empty()),
        "train: the vision tower, projector and language model are all frozen and neither lora_rank nor "
        "trainable_regex is set: nothing would be trained");
  for (const auto& [key, pattern] : {std::pair<const char*, const std::string&>{"train.freeze_regex", t.freeze_regex},
                                     {"train.trainable_regex", t.trainable_regex},
                                     {"train.lora_target", t.lora_target}}) {
    if (pattern.empty() || pattern == "all-linear") continue;
    try {
      std::regex re(pattern);
    } catch (const std::regex_error& e) {
      errors.push_back(fmt::format("{}: '{}' is not a valid regular expression ({})", key, pattern, e.what()));
    }
  }

  check(d.mixing_weights.empty() || d.mixing_weights.size() == d.train_files.size(),
        fmt::format("data.mixing_weights has {} values but data.train_files has {} files", d.mixing_weights.size(),
                    d.train_files.size()));
  double weight_sum = 0;
  for (double w : d.mixing_weights) {
    check(w >= 0, fmt::format("data.mixing_weights: weight {} is negative", w));
    weight_sum += w;
  }
  check(d.mixing_weights.empty() || weight_sum > 0, "data.mixing_weights are all zero");
  check(d.image_mean.size() == 3, fmt::format("data.image_mean needs 3 values (RGB), got {}", d.image_mean.size()));
  check(d.image_std.size() == 3, fmt::format("data.image_std needs 3 values (RGB), got {}", d.image_std.size()));
  for (double s : d.image_std) check(s > 0, fmt::format("data.image_std: {} is not positive", s));

  check(!t.bf16 || c.model.dtype == Dtype::Float32,
        "train.bf16 keeps float32 master weights and casts to bfloat16 per matmul: it needs model.dtype float32 "
        "(model.dtype bfloat16 alone makes weights and optimizer state bfloat16 too)");
  check(!(c.distributed.backend == Backend::Nccl && c.model.device != DeviceKind::Cuda),
        "distributed.backend nccl needs model.device cuda (use gloo on CPU)");

  std::set<std::string> names;
  check(!(std::any_of(c.losses.begin(), c.losses.end(), [](const LossEntry& e) { return e.name == "contrastive_tokens"; }) &&
          std::any_of(c.losses.begin(), c.losses.end(), [](const LossEntry& e) { return e.name == "text_prior_poe"; })),
        "losses: contrastive_tokens and text_prior_poe each replace text_ce as the loss of the answer tokens; use one");
  for (size_t i = 0; i < c.losses.size(); ++i) {
    const LossEntry& e = c.losses[i];
    check(names.insert(e.name).second,
          fmt::format("losses[{}]: '{}' is listed twice; merge the entries", i, e.name));
    if (e.name == "dual_channel") {
      const std::string why = e.get<DualChannelOptions>().conflict();
      check(why.empty(), fmt::format("losses[{}] (dual_channel): {}", i, why));
    }
  }

  if (errors.empty()) return;
  std::string msg = errors.size() == 1 ? "invalid config: " : "invalid config:";
  for (const auto& e : errors) msg += (errors.size() == 1 ? "" : "\n  - ") + e;
  throw ConfigError(msg);
}

}  // namespace modalign
