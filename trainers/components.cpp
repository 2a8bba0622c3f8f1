#include "trainers/components.h"

#include <fmt/format.h>

#include <algorithm>
#include <thread>

#include "lib/io/weights.h"
#include "lib/util/allocator.h"
#include "trainers/checkpoint.h"
#include "trainers/lora.h"

namespace modalign {

void setup_runtime(const TrainConfig& train) {
  keep_freed_memory();  // no page faults for the step's buffers after the first step
  torch::set_num_threads(train.num_threads > 0 ? static_cast<int>(train.num_threads)
                                               : static_cast<int>(std::thread::hardware_concurrency()));
}

VisionLanguageModel build_model(const RunConfig& config) {
  torch::manual_seed(static_cast<uint64_t>(config.train.seed));
  VisionLanguageModel model = build_model(config.model);
  if (!config.model.weights.empty()) load_weights(*model, config.model.weights, /*strict=*/!config.model.moda_aligner);
  if (config.train.lora_rank > 0) apply_lora(*model, config.train);
  model->set_gradient_checkpointing(config.train.gradient_checkpointing);
  if (config.train.bf16) model->autocast_dtype = torch::kBFloat16;
  return model;
}

void load_checkpoint_weights(VisionLanguageModel& model, const std::string& checkpoint) {
  load_weights(*model, resolve_checkpoint(checkpoint) + "/model.safetensors", true);
}

ModelInterface model_interface(const ModelShapes& s) {
  if (s.is_qwen())
    return {0, 0, s.image_token_index, s.text.vocab_size, s.qwen_vision.patch_size, s.qwen_vision.spatial_merge_size,
            s.qwen_vision.temporal_patch_size};
  return {s.vision.image_size, s.vision.num_patches(), s.image_token_index, s.text.vocab_size};
}

std::shared_ptr<Processor> build_processor(const RunConfig& config, const ModelShapes& shapes) {
  return std::make_shared<Processor>(config.data, model_interface(shapes));
}

std::unique_ptr<LossComposer> build_loss_composer(const RunConfig& config, const ModelShapes& shapes) {
  return std::make_unique<LossComposer>(config.losses, shapes.text.num_hidden_layers);
}

std::unique_ptr<DataLoader> build_train_loader(const RunConfig& config, std::shared_ptr<const Processor> processor,
                                               const LossComposer& composer, int64_t rank, int64_t world_size,
                                               DataCursor start) {
  const DataConfig& d = config.data;
  if (d.train_files.empty()) throw ConfigError("data.train_files is empty: nothing to train on");
  std::vector<int64_t> sizes, lengths;
  auto examples = std::make_shared<std::vector<Example>>(load_datasets(d.train_files, sizes));
  for (size_t i = 0; i < composer.losses().size(); ++i) {
    if (!composer.losses()[i]->needs().region_target) continue;
    auto begin = examples->begin();
    for (size_t f = 0; f < sizes.size(); begin += sizes[f], ++f)
      if (std::none_of(begin, begin + sizes[f], [](const Example& e) { return !e.regions.empty(); }))
        throw ConfigError(fmt::format("losses.{} ({}) needs region targets, but {} (data.train_files) has no sample with "
                                      "\"regions\" (boxes [x0, y0, x1, y1] in image pixels)",
                                      i, config.losses[i].name, d.train_files[f]));
  }
  if (d.group_by_length)
    for (const auto& e : *examples) lengths.push_back(processor->length(e));
  const TrainConfig& t = config.train;
  Sampler sampler(SamplerOptions{sizes, d.mixing_weights, static_cast<uint64_t>(t.seed), t.per_device_train_batch_size,
                                 lengths, rank, world_size});
  return std::make_unique<DataLoader>(examples, std::move(processor), std::move(sampler),
                                      LoaderOptions{d.on_bad_sample, d.num_workers, d.prefetch_batches, start});
}

void convert_checkpoint(const RunConfig& config, const std::string& checkpoint, const std::string& out, bool merge) {
  VisionLanguageModel model = build_model(config);
  load_checkpoint_weights(model, checkpoint);
  bool has_lora = false;
  for (const auto& [name, t] : named_state(*model)) has_lora |= name.find(".lora_") != std::string::npos;
  if (has_lora && !merge)
    throw std::invalid_argument(checkpoint + " holds LoRA adapters: pass --merge-lora to fold them into the weights");
  merge_lora(*model);
  NamedTensors state = exported_state(*model);
  if (model->shapes.is_qwen())  // the Hub's names (Qwen2VLForConditionalGeneration loads them)
    for (auto& [name, t] : state) name = qwen_hub_name(name);
  save_safetensors(out, state, {{"format", "pt"}, {"source", checkpoint}});
}

std::unique_ptr<Evaluator> build_evaluator(const RunConfig& config, VisionLanguageModel model,
                                           std::shared_ptr<const Processor> processor) {
  return std::make_unique<Evaluator>(std::move(model), std::move(processor), config.generation,
                                     config.train.per_device_eval_batch_size);
}

}  // namespace modalign
