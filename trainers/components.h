// The parts of a run, each built from a RunConfig only when asked (torchtitan-style builders): `train`,
// `eval`, `probe`, `generate` and `convert` call the ones they need; `convert` needs the model section
// only. The Trainer holds what these build and runs the loop.
#pragma once
#include <memory>
#include <string>
#include <vector>

#include "lib/config/run_config.h"
#include "lib/data/loader.h"
#include "lib/data/processor.h"
#include "lib/model/vision_language_model.h"
#include "losses/loss_composer.h"
#include "trainers/evaluator.h"

namespace modalign {

// LibTorch threads (train.num_threads, 0 = every core) and the heap setting for training steps.
void setup_runtime(const TrainConfig& train);

// The model: shapes (preset or model.hf_config), Hugging Face initialisation from train.seed, the
// MODA aligner, dtype and device, model.weights (a safetensors file, index, checkpoint folder, run folder
// or `latest` pointer; non-strict only for the aligner's own tensors), then LoRA adapters (train.lora_*).
VisionLanguageModel build_model(const RunConfig& config);

// Replaces the weights with those of a checkpoint (a step folder, a run folder or its `latest` pointer),
// strictly by name and shape.
void load_checkpoint_weights(VisionLanguageModel& model, const std::string& checkpoint);

// What the data side needs to know about a model.
ModelInterface model_interface(const ModelShapes& shapes);

// Tokenizer, chat template and image preprocessing for this model (data.*).
std::shared_ptr<Processor> build_processor(const RunConfig& config, const ModelShapes& shapes);

// Text CE and the configured alignment losses (losses:), resolved against the decoder depth.
std::unique_ptr<LossComposer> build_loss_composer(const RunConfig& config, const ModelShapes& shapes);

// The training data: data.train_files read and checked (a loss that needs region targets on a file
// without any "regions" is a ConfigError naming the loss and the file), lengths for
// data.group_by_length, the sampler of this rank and the background loader starting at `start`.
std::unique_ptr<DataLoader> build_train_loader(const RunConfig& config, std::shared_ptr<const Processor> processor,
                                               const LossComposer& composer, int64_t rank, int64_t world_size,
                                               DataCursor start);

// `modalign convert`: the model the config's model section (and train.lora_*) describes, with the
// checkpoint's weights, adapters merged when `merge` is set, written to `out` (safetensors, llava-hf names).
// Throws std::invalid_argument when the checkpoint holds adapters and `merge` is not set.
void convert_checkpoint(const RunConfig& config, const std::string& checkpoint, const std::string& out, bool merge);

// Generation (generation.*) and eval metrics, eval batches of train.per_device_eval_batch_size.
std::unique_ptr<Evaluator> build_evaluator(const RunConfig& config, VisionLanguageModel model,
                                           std::shared_ptr<const Processor> processor);

}  // namespace modalign
