// Crash-safe checkpoints: output_dir/step-000200/{model,optimizer}.safetensors, trainer_state.json and
// config.yaml are written into step-000200.tmp, fsynced, and the folder renamed; then the `latest`
// pointer file is replaced atomically. A half-written checkpoint is never picked up. A run owns its
// output_dir (OutputDirLock) and only ever prunes its own checkpoints (TrainerState::run_id).
#pragma once
#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "lib/data/sampler.h"
#include "lib/io/safetensors.h"

namespace modalign {

// Where a run is, besides its weights and optimizer: what trainer_state.json holds.
struct TrainerState {
  int64_t step = 0;
  DataCursor cursor;  // the next batch
  int64_t skipped_samples = 0, nonfinite_total = 0, nonfinite_streak = 0;
  std::vector<double> losses;  // total loss of the last kLossHistory optimizer steps (all of them: metrics.jsonl)
  int64_t seed = 0;
  int64_t global_batch = 0;  // samples per optimizer step, all processes (a resume must keep it)
  std::vector<uint8_t> cpu_rng_state;  // LibTorch's default CPU generator (dropout)
  std::string run_id;  // made at a fresh start, kept by resumes: which checkpoints a run may prune

  static constexpr size_t kLossHistory = 1000;  // trainer_state.json stays small however long the run

  // Appends one step's loss, dropping the oldest beyond kLossHistory.
  void record_loss(double loss);
  nlohmann::json to_json() const;
  // Throws std::runtime_error naming `where` (the file) and the missing or malformed key.
  static TrainerState from_json(const nlohmann::json& j, const std::string& where);
};

// LibTorch's default CPU generator (dropout, LoRA dropout), saved with checkpoints so resume is exact.
std::vector<uint8_t> cpu_rng_state();
void set_cpu_rng_state(const std::vector<uint8_t>& bytes);

struct CheckpointContents {
  NamedTensors model;
  NamedTensors optimizer;
  TrainerState trainer_state;
  std::string config_yaml;
};

// A new run id: time, process and a random part.
std::string new_run_id();

// Writes output_dir/step-<step>/ and points `latest` at it; then keeps the newest `keep` checkpoints of
// this run (0 = all): only folders whose trainer_state.json carries contents.trainer_state.run_id are
// pruned, never the one just written nor `protect` (a folder path). Returns the folder written.
std::string save_checkpoint(const std::string& output_dir, int64_t step, const CheckpointContents& contents, int64_t keep,
                            const std::string& protect = "");

// The step-* checkpoint folders (complete or not) and step-*.tmp leftovers of output_dir, by step.
std::vector<std::string> checkpoint_folders(const std::string& output_dir);

// Holds output_dir/.modalign.lock (this process's PID) for its lifetime, so two runs never write one
// folder. A lock whose process is gone is stale and taken over; one held by a live process is an error
// naming the PID.
class OutputDirLock {
 public:
  explicit OutputDirLock(const std::string& output_dir);
  ~OutputDirLock();
  OutputDirLock(const OutputDirLock&) = delete;
  OutputDirLock& operator=(const OutputDirLock&) = delete;

 private:
  std::string path_;
};

// "" when `dir` holds all four files, readable safetensors and a trainer_state.json with a step; else
// what is missing or broken ("lacks optimizer.safetensors", "<file>: truncated: ...").
std::string checkpoint_problem(const std::string& dir);
bool checkpoint_complete(const std::string& dir);

// The newest complete checkpoint in output_dir: the one `latest` names if complete, else the complete
// step-* folder with the highest step. nullopt when there is none.
std::optional<std::string> find_latest_checkpoint(const std::string& output_dir);

// A checkpoint folder named directly, or through a run folder or its `latest` pointer file: the folder
// `latest` names. Throws std::runtime_error naming `path` when it is none of these or is incomplete.
std::string resolve_checkpoint(const std::string& path);

// Reads a checkpoint folder; throws std::runtime_error naming the folder and the broken file.
CheckpointContents load_checkpoint(const std::string& dir);

}  // namespace modalign
