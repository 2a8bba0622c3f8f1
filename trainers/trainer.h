// Trainer: fine-tunes a VisionLanguageModel from a RunConfig. One obvious path:
//   train() -> train_step() -> forward_backward() -> optimizer step -> metrics, eval, checkpoint.
// The parts (model, processor, losses, evaluator) come from trainers/components. Losses are divided
// once by the global count of the accumulation window (LossTerm); each loss gets exactly what it
// declares it needs (LossNeeds: taps, per-key probabilities, sink keys, region targets). A non-finite
// loss or gradient skips the update (too many in a row abort with a checkpoint), SIGINT/SIGTERM finish
// the step and save, and resuming restores weights, optimizer and TrainerState (data cursor, counters,
// RNG), so a resumed run is bitwise the run that never stopped (CPU, fixed thread count).
#pragma once
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "lib/config/run_config.h"
#include "lib/data/loader.h"
#include "lib/model/vision_language_model.h"
#include "lib/util/metrics_sink.h"
#include "losses/loss_composer.h"
#include "trainers/checkpoint.h"
#include "trainers/distributed.h"
#include "trainers/evaluator.h"
#include "trainers/optimizer.h"
#include "trainers/step_stats.h"

namespace modalign {

struct TrainResult {
  int64_t steps = 0;
  std::string checkpoint;        // last checkpoint written
  std::vector<double> losses;    // total loss per optimizer step (this run and up to 1,000 of the resumed past)
  std::vector<double> step_seconds;  // wall time of each optimizer step of this run (data, forward, backward, update)
  std::vector<int64_t> step_tokens;  // real (unpadded) tokens of each step of this run, all processes
  int64_t skipped_samples = 0;
  int64_t nonfinite_steps = 0;
  bool interrupted = false;      // stopped by SIGINT/SIGTERM after saving
  std::vector<EvalResult> evals; // final evaluation
};

class Trainer {
 public:
  // With world.world_size > 1 this process is one data-parallel rank: it joins the rendezvous, trains
  // on its strided share of each global batch, and only rank 0 logs, evaluates and writes checkpoints.
  explicit Trainer(const RunConfig& config, const WorldInfo& world = {});
  ~Trainer();

  TrainResult train();
  std::vector<EvalResult> evaluate();  // data.eval_files

  // Test seam: optimizer steps (0-based) whose loss is replaced by NaN.
  void inject_nonfinite(std::set<int64_t> steps) { inject_ = std::move(steps); }
  VisionLanguageModel& model() { return model_; }
  const Processor& processor() const { return *processor_; }

 private:
  void prepare();  // optimizer, data, resume, rank-0 weights: everything train() needs before step 1
  StepStats train_step();
  StepStats forward_backward(const std::vector<Batch>& micro_batches);
  std::string save();  // "" when the weights are not finite (nothing is written then)
  void claim_output_dir(bool resuming);
  void resume(const CheckpointContents& checkpoint, const std::string& dir);
  void log_step(const StepStats& s, double seconds, double elapsed, int64_t first_step, bool bar);
  int64_t total_steps() const;
  bool leader() const { return !dp_ || dp_->rank() == 0; }
  int64_t global_batch() const;

  RunConfig config_;
  VisionLanguageModel model_{nullptr};
  torch::Device device_{torch::kCPU};
  std::shared_ptr<Processor> processor_;
  std::unique_ptr<LossComposer> composer_;
  std::unique_ptr<Evaluator> evaluator_;
  std::vector<EvalSplit> eval_splits_;  // data.eval_files, read (and so checked) before step 1
  std::unique_ptr<DataParallel> dp_;  // null in a single process
  std::unique_ptr<GroupedAdamW> optimizer_;
  std::unique_ptr<DataLoader> loader_;
  std::unique_ptr<MetricsSink> metrics_;
  std::unique_ptr<OutputDirLock> lock_;  // rank 0: this run owns output_dir
  TrainerState state_;
  std::string last_checkpoint_;    // the newest checkpoint written (its weights were checked finite)
  std::string before_streak_;      // the newest one written before the current non-finite streak: never pruned
  int64_t skipped_before_ = 0;  // bad samples skipped before this process started (resume)
  std::set<int64_t> inject_;
};

}  // namespace modalign
