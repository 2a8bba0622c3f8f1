// Data loader throughput next to the trainer's consumption, on a run config (the demo's by default):
// the loader must never make the trainer wait (goal: >= 10x the samples/s a training step consumes).
//   build/bench/loader_bench configs/demo.yaml
#include <chrono>
#include <cstdio>
#include <filesystem>

#include "lib/config/config_loader.h"
#include "lib/data/loader.h"
#include "lib/util/logging.h"
#include "trainers/trainer.h"

namespace {

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

int main(int argc, char** argv) {
  using namespace modalign;
  std::string config_path = argc > 1 ? argv[1] : "configs/demo.yaml";
  RunConfig config = load_run_config({config_path}, {});
  setup_logging(LogLevel::Warn);
  ModelShapes shapes = shapes_from_config(config.model);
  auto processor = std::make_shared<Processor>(
      config.data, ModelInterface{shapes.vision.image_size, shapes.vision.num_patches(), shapes.image_token_index,
                                  shapes.text.vocab_size});
  auto examples = std::make_shared<std::vector<Example>>(load_dataset(config.data.train_files.at(0)));
  const int64_t batch = config.train.per_device_train_batch_size, batches = 60;
  std::printf("%-34s %12s\n", "", "samples/s");
  for (int64_t workers : {int64_t{0}, config.data.num_workers}) {
    Sampler sampler(SamplerOptions{{static_cast<int64_t>(examples->size())}, {}, 1, batch, {}, 0, 1});
    DataLoader loader(examples, processor, std::move(sampler), LoaderOptions{BadSamplePolicy::Error, workers, 8, {}});
    loader.next();  // warm-up
    auto t0 = std::chrono::steady_clock::now();
    int64_t samples = 0;
    for (int64_t i = 0; i < batches; ++i) samples += loader.next().size();
    std::printf("loader, %lld worker thread(s) %*s %12.1f\n", static_cast<long long>(workers), 8, "",
                samples / seconds_since(t0));
  }
  // The trainer's consumption: a short run of the same config, without eval or intermediate saves.
  RunConfig run = config;
  run.train.output_dir = (std::filesystem::temp_directory_path() / "modalign_loader_bench").string();
  std::filesystem::remove_all(run.train.output_dir);
  run.train.max_steps = 12;
  run.data.eval_files.clear();
  run.train.eval_steps = 0;
  run.checkpoint.save_steps = 0;
  run.logging.logging_steps = 1000;
  Trainer trainer(run);
  auto t0 = std::chrono::steady_clock::now();
  trainer.train();
  double trainer_rate = 12.0 * batch * run.train.gradient_accumulation_steps / seconds_since(t0);
  std::printf("trainer consumption (12 steps)     %12.1f\n", trainer_rate);
  std::filesystem::remove_all(run.train.output_dir);
  return 0;
}
