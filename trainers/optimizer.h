// AdamW with parameter groups as LLaVA fine-tuning uses them: no weight decay on norms, biases and
// embeddings; per-module learning rates (vision tower, projector, the rest). Learning-rate schedules
// (warmup, then cosine / linear / constant), freezing by module and regex, and optimizer state saved by
// parameter name so a checkpoint stays readable when the parameter order changes.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lib/config/run_config.h"
#include "lib/io/safetensors.h"

namespace modalign {

class DataParallel;

// Sets requires_grad on every parameter by the train.freeze_* options and regexes (with LoRA, the language
// model's base weights are frozen and every lora_* adapter trains); returns the names left trainable. Throws std::invalid_argument when nothing is trainable.
std::vector<std::string> apply_freezing(torch::nn::Module& model, const TrainConfig& config);

// Learning-rate multiplier for optimizer step `step` (0-based) of `total`: linear warmup from 0, then
// the schedule (Hugging Face's get_*_schedule_with_warmup).
double lr_multiplier(const TrainConfig& config, int64_t step, int64_t total);

class GroupedAdamW {
 public:
  GroupedAdamW(torch::nn::Module& model, const TrainConfig& config);
  // Sets each group's lr to its base lr times `multiplier`, then steps every parameter that has a
  // gradient, with the gradient multiplied by `grad_scale` (the clipping coefficient). One fused pass per
  // parameter on CPU float32/float64, LibTorch's AdamW otherwise; state stays in its layout either way.
  void step(double multiplier, double grad_scale = 1.0);
  void zero_grad();  // drops the gradients (undefined, not zero)
  // The global L2 norm of the trainable parameters' gradients (as clip_grad_norm_ computes it) and the
  // factor that clips it to max_norm (1 when max_norm is 0 or the norm is below it), for step().
  std::pair<double, double> grad_norm_and_clip(double max_norm) const;
  // The base learning rate of the first group (what progress lines show).
  double base_lr() const { return base_lrs_.front(); }
  const std::vector<std::pair<std::string, torch::Tensor>>& parameters() const { return params_; }

  // Moments and step counts keyed "<parameter>.exp_avg", ".exp_avg_sq", ".step".
  NamedTensors state() const;
  // Throws std::runtime_error naming state of the wrong shape or of parameters not trainable now.
  void load_state(const NamedTensors& tensors);

  // ZeRO-1 (distributed.shard_optimizer), before any step or load_state: the trainable parameters,
  // flattened in group order, are cut into `dp.world_size()` equal ranges; this rank keeps AdamW moments
  // only for its range, updates only it, and step() all-gathers the updated parameters over `dp` (in
  // bounded rounds). state() gathers and load_state() slices, so checkpoints keep the unsharded layout and
  // a run resumes sharded or not from either. AdamW is elementwise, so the values are bitwise those of the
  // unsharded optimizer. Throws when the trainable parameters differ in dtype or device.
  void shard(DataParallel& dp);

 private:
  // One rank's part of a parameter under ZeRO-1: elements [offset, offset + length) of its flat view.
  struct Slice {
    int64_t offset = 0, length = 0, step = 0;
    torch::Tensor exp_avg, exp_avg_sq;  // (length), allocated at the first step
  };
  void step_sharded(double grad_scale);
  // Makes every rank's range of each targets[i] (shaped as parameter i) equal to its owner's values.
  void all_gather_ranges(const std::vector<torch::Tensor>& targets) const;

  std::vector<std::pair<std::string, torch::Tensor>> params_;  // trainable, in group order
  std::vector<double> base_lrs_;
  std::unique_ptr<torch::optim::AdamW> adamw_;
  DataParallel* shard_over_ = nullptr;  // ZeRO-1 when set
  std::vector<int64_t> starts_;         // flat offset of each parameter
  int64_t chunk_ = 0, begin_ = 0, end_ = 0;  // elements per rank; this rank's flat range [begin_, end_)
  std::vector<Slice> slices_;           // per parameter
};

}  // namespace modalign
