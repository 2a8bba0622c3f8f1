// Crash-safe checkpoints: output_dir/step-000200/{model,optimizer}.safetensors, trainer_state.json and
// config.yaml are written into step-000200.tmp, fsynced, and the folder renamed; then the `latest`
// pointer file is replaced atomically. A half-written checkpoint is never picked up.
#pragma once
#include <nlohmann/json.hpp>

#include <optional>
#include <string>
#include <vector>

#include "lib/io/safetensors.h"

namespace modalign {

struct CheckpointContents {
  NamedTensors model;
  NamedTensors optimizer;
  nlohmann::json trainer_state;
  std::string config_yaml;
};

// Writes output_dir/step-<step>/ and points `latest` at it; keeps the newest `keep` checkpoints
// (0 = all). Returns the folder written.
std::string save_checkpoint(const std::string& output_dir, int64_t step, const CheckpointContents& contents, int64_t keep);

// True when `dir` holds all four files, readable safetensors and a trainer_state.json with a step.
bool checkpoint_complete(const std::string& dir);

// The newest complete checkpoint in output_dir: the one `latest` names if complete, else the complete
// step-* folder with the highest step. nullopt when there is none.
std::optional<std::string> find_latest_checkpoint(const std::string& output_dir);

// Reads a checkpoint folder; throws std::runtime_error naming the folder and the broken file.
CheckpointContents load_checkpoint(const std::string& dir);

}  // namespace modalign
