// `modalign pretrain-tower`: the built-in benchmark's vision-tower pre-stage. A LLaVA model starts from a
// CLIP tower that already sees; the benchmark's tower starts random and, trained only through the decoder,
// does not learn to tell shapes apart in any affordable number of steps (docs/efficacy.md). Here the CLIP
// tower alone learns, from the synthetic data's dense labels, which colour and which shape covers each of
// its patches: a per-patch classification (two linear heads on the features the projector reads), the way
// segmentation-supervised towers are pretrained. The VLM's stage 1 then starts from this tower, frozen,
// as LLaVA's does from CLIP.
#pragma once
#include <torch/torch.h>

#include <string>
#include <vector>

#include "lib/config/run_config.h"
#include "lib/data/synth.h"

namespace modalign {

// Per-patch targets of one image: colour + 1 and shape + 1 of the object covering the most of the patch
// when it covers at least a quarter of it, else 0 (background). (P) int64 each, patches row-major.
struct PatchLabels {
  torch::Tensor colour, shape;
};
// `objects` in the coordinates of the size x size image the tower sees.
PatchLabels patch_labels(const std::vector<SynthObject>& objects, int size, int patch);

// Held-out accuracy over patches an object covers, and per object (the majority vote of its patches).
struct TowerAccuracy {
  double patch_colour = 0, patch_shape = 0, object_colour = 0, object_shape = 0;
  int64_t objects = 0;
};

struct TowerPretrainResult {
  int64_t steps = 0;
  double seconds = 0;
  std::vector<double> losses;  // per step
  TowerAccuracy accuracy;      // on the held-out samples, after the last step
};

// Trains the vision tower of config's model (LLaVA family) on data.train_files[0], a `synth`
// captions.json whose samples carry "objects", with train.{learning_rate (or vision_lr), warmup,
// lr_scheduler_type, weight_decay, per_device_train_batch_size, max_steps, seed, num_threads} and
// logging.logging_steps; the last `holdout` samples are held out and evaluated every train.eval_steps and
// at the end. Writes the whole model (tower trained, the rest as initialised from train.seed) to `out` as
// safetensors, the file a stage-1 config names as model.weights. Errors name the file and the sample.
TowerPretrainResult pretrain_tower(const RunConfig& config, const std::string& out, int64_t holdout = 500);

}  // namespace modalign
