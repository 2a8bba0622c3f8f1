// modalign's side of the step benchmark (bench/compare.py runs it next to bench/pytorch_reference.py):
//   step_bench gemm  [--threads N]                     fp32 GEMM rate of this machine (GFLOP/s)
//   step_bench loader CONFIG                            data loader samples/s (0 and data.num_workers threads)
//   step_bench export CONFIG --steps N --out DIR            what the PyTorch peer needs for the same work
//   step_bench train CONFIG --losses ce|config --warmup W --steps N [--set KEY=VALUE ...]
//   step_bench generate CONFIG --split FILE [--checkpoint DIR] [--rounds R]
//                                                       eval answers/s with the KV cache and with full re-forwards
// `export` writes the Trainer's initial weights, the first N batches it will consume and spec.json
// (shapes, optimizer, losses, threads). `train` runs the real Trainer for W + N steps and prints one JSON
// line: per-step ms and tokens of the N timed steps, the first and last losses, peak RSS.
#include <sys/resource.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <nlohmann/json.hpp>

#include <torch/csrc/autograd/profiler_legacy.h>

#include "lib/config/config_loader.h"
#include "lib/data/loader.h"
#include "lib/io/safetensors.h"
#include "lib/io/weights.h"
#include "lib/util/logging.h"
#include "losses/loss_composer.h"
#include "trainers/components.h"
#include "trainers/trainer.h"

namespace {
using namespace modalign;
using json = nlohmann::json;
namespace fs = std::filesystem;

double seconds_since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

double peak_rss_mb() {
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  return usage.ru_maxrss / 1024.0;
}

// Median of `reps` timed (n x n) @ (n x n) products after one warm-up.
double gemm_gflops(int64_t n, int reps) {
  torch::Tensor a = torch::randn({n, n}), b = torch::randn({n, n}), c = torch::empty({n, n});
  torch::mm_out(c, a, b);
  std::vector<double> rates;
  for (int i = 0; i < reps; ++i) {
    auto t0 = std::chrono::steady_clock::now();
    torch::mm_out(c, a, b);
    rates.push_back(2.0 * n * n * n / seconds_since(t0) / 1e9);
  }
  std::sort(rates.begin(), rates.end());
  return rates[rates.size() / 2];
}

json shapes_json(const ModelShapes& s) {
  const auto& v = s.vision;
  const auto& t = s.text;
  const auto& q = s.qwen_vision;
  if (s.family == ModelFamily::Qwen2VL) throw std::invalid_argument("step_bench: the PyTorch peer implements Qwen2.5-VL, not Qwen2-VL");
  return {{"family", s.is_qwen() ? "qwen2_5_vl" : "llava"},
          {"qwen_vision",
           {{"depth", q.depth}, {"hidden_size", q.hidden_size}, {"intermediate_size", q.intermediate_size},
            {"num_heads", q.num_heads}, {"in_channels", q.in_channels}, {"patch_size", q.patch_size},
            {"temporal_patch_size", q.temporal_patch_size}, {"spatial_merge_size", q.spatial_merge_size},
            {"window_size", q.window_size}, {"fullatt_block_indexes", q.fullatt_block_indexes},
            {"out_hidden_size", q.out_hidden_size}}},
          {"vision",
           {{"hidden_size", v.hidden_size}, {"intermediate_size", v.intermediate_size},
            {"num_hidden_layers", v.num_hidden_layers}, {"num_attention_heads", v.num_attention_heads},
            {"image_size", v.image_size}, {"patch_size", v.patch_size}, {"num_channels", v.num_channels},
            {"layer_norm_eps", v.layer_norm_eps}}},
          {"text",
           {{"vocab_size", t.vocab_size}, {"hidden_size", t.hidden_size}, {"intermediate_size", t.intermediate_size},
            {"num_hidden_layers", t.num_hidden_layers}, {"num_attention_heads", t.num_attention_heads},
            {"num_key_value_heads", t.num_key_value_heads}, {"rms_norm_eps", t.rms_norm_eps},
            {"rope_theta", t.rope_theta}, {"tie_word_embeddings", t.tie_word_embeddings},
            {"attention_bias", t.attention_bias}, {"mrope_section", t.mrope_section}}},
          {"projector", s.projector == ProjectorKind::Mlp2xGelu ? "mlp2x_gelu" : "linear"},
          {"vision_feature_layer", s.vision_feature_layer},
          {"image_token_index", s.image_token_index}};
}

// spec.json: everything the PyTorch peer must match that is not in the weights or the batches.
json spec_json(const RunConfig& c, const ModelShapes& shapes, int64_t steps) {
  const auto& t = c.train;
  if (t.lr_scheduler_type != LrSchedule::Constant || t.warmup_steps != 0 || t.gradient_accumulation_steps != 1 ||
      t.lora_rank > 0 || t.vision_lr || t.projector_lr || !t.freeze_regex.empty() || !t.trainable_regex.empty())
    throw std::invalid_argument("step_bench: the PyTorch peer supports a constant learning rate without warm-up, "
                                "no accumulation, LoRA, per-module learning rates or freeze regexes");
  json losses = json::array();
  LossComposer composer(c.losses, shapes.text.num_hidden_layers);
  for (size_t i = 0; i < c.losses.size(); ++i) {
    const LossEntry& e = c.losses[i];
    if (e.name != "dual_channel") throw std::invalid_argument("step_bench: the PyTorch peer implements dual_channel only");
    const DualChannelOptions& d = e.get<DualChannelOptions>();
    if (d.form != MassForm::CappedLog) throw std::invalid_argument("step_bench: the PyTorch peer implements capped_log only");
    losses.push_back({{"name", e.name}, {"weight", e.weight_value()}, {"inter_weight", d.inter_weight},
                      {"intra_weight", d.intra_weight}, {"layers", composer.losses()[i]->layers()},
                      {"target", d.target ? json(*d.target) : json("balanced")}, {"target_scale", d.target_scale},
                      {"eps", d.eps}});
  }
  return {{"shapes", shapes_json(shapes)},
          {"threads", torch::get_num_threads()},
          {"steps", steps},
          {"optimizer",
           {{"lr", t.learning_rate}, {"betas", {t.adam_beta1, t.adam_beta2}}, {"eps", t.adam_epsilon},
            {"weight_decay", t.weight_decay}, {"max_grad_norm", t.max_grad_norm}}},
          {"freeze", {{"vision_tower", t.freeze_vision_tower}, {"projector", t.freeze_projector},
                      {"language_model", t.freeze_language_model}}},
          {"losses", losses}};
}

std::shared_ptr<Processor> make_processor(const RunConfig& config) {
  return build_processor(config, shapes_from_config(config.model));
}

// The first `steps` batches the Trainer will draw: its own loader builder (sampler, seed, grouping, processor).
NamedTensors trainer_batches(const RunConfig& c, int64_t steps) {
  const ModelShapes shapes = shapes_from_config(c.model);
  std::unique_ptr<DataLoader> loader =
      build_train_loader(c, build_processor(c, shapes), *build_loss_composer(c, shapes), 0, 1, DataCursor{});
  NamedTensors out;
  for (int64_t i = 0; i < steps; ++i) {
    Batch b = loader->next();
    for (auto [name, t] : {std::pair{"input_ids", b.input_ids}, {"attention_mask", b.attention_mask},
                           {"labels", b.labels}, {"pixel_values", b.pixel_values}, {"image_grid_thw", b.image_grid_thw}})
      if (t.defined()) out.emplace_back(std::to_string(i) + "." + name, t.contiguous());
  }
  return out;
}

// The config as the benchmark runs it: W + N steps, no evaluation, no checkpoint, `ce` = no alignment loss.
RunConfig bench_config(const std::string& config_path, const std::string& losses, int64_t total_steps,
                       const std::vector<std::string>& overrides = {}) {
  RunConfig config = load_run_config({config_path}, overrides);
  if (losses == "ce") config.losses.clear();
  else if (losses != "config") throw std::invalid_argument("--losses must be ce or config, got " + losses);
  config.train.max_steps = total_steps;
  config.data.eval_files.clear();
  config.train.eval_steps = 0;
  config.checkpoint.save_steps = 0;
  config.checkpoint.save_final = false;
  return config;
}

int run_export(const std::string& config_path, const std::string& losses, int64_t steps, const std::string& dir) {
  RunConfig config = bench_config(config_path, losses, steps);
  Trainer trainer(config);  // the model exactly as the Trainer initialises it (seed, weights file)
  fs::create_directories(dir);
  save_weights(*trainer.model(), (fs::path(dir) / "weights.safetensors").string());
  save_safetensors((fs::path(dir) / "batches.safetensors").string(), trainer_batches(config, steps));
  write_file_atomic((fs::path(dir) / "spec.json").string(), spec_json(config, trainer.model()->shapes, steps).dump(2));
  return 0;
}

int run_train(const std::string& config_path, const std::string& losses, int64_t warmup, int64_t steps,
              const std::string& profile, const std::vector<std::string>& overrides) {
  RunConfig config = bench_config(config_path, losses, warmup + steps, overrides);
  fs::remove_all(config.train.output_dir);
  Trainer trainer(config);
  TrainResult r;
  if (profile.empty()) {
    r = trainer.train();
  } else {  // LibTorch's profiler: a Chrome trace of every operator (bench/profile_summary.py sums it)
    torch::autograd::profiler::RecordProfile guard(profile);
    r = trainer.train();
  }
  json out = {{"side", "modalign"},
              {"losses", losses},
              {"threads", torch::get_num_threads()},
              {"first_loss", r.losses.front()},
              {"last_loss", r.losses.back()},
              {"step_ms", json::array()},
              {"step_tokens", json::array()},
              {"peak_rss_mb", peak_rss_mb()}};
  for (int64_t i = warmup; i < static_cast<int64_t>(r.step_seconds.size()); ++i) {
    out["step_ms"].push_back(r.step_seconds[i] * 1e3);
    out["step_tokens"].push_back(r.step_tokens[i]);
  }
  std::printf("%s\n", out.dump().c_str());
  fs::remove_all(config.train.output_dir);
  return 0;
}

int run_loader(const std::string& config_path) {
  RunConfig config = load_run_config({config_path}, {});
  auto processor = make_processor(config);
  auto examples = std::make_shared<std::vector<Example>>(load_dataset(config.data.train_files.at(0)));
  const int64_t batch = config.train.per_device_train_batch_size, batches = 40;
  json out = {{"side", "loader"}, {"samples_per_s", json::object()}};
  for (int64_t workers : {int64_t{0}, config.data.num_workers}) {
    Sampler sampler(SamplerOptions{{static_cast<int64_t>(examples->size())}, {}, 1, batch, {}, 0, 1});
    DataLoader loader(examples, processor, std::move(sampler), LoaderOptions{BadSamplePolicy::Error, workers, 8, {}});
    loader.next();  // warm-up
    auto t0 = std::chrono::steady_clock::now();
    int64_t samples = 0;
    for (int64_t i = 0; i < batches; ++i) samples += loader.next().size();
    out["samples_per_s"][std::to_string(workers)] = samples / seconds_since(t0);
  }
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

// Answers per second of the evaluator on a split, alternating the KV-cached path and full re-forwards
// (rounds x both, after one untimed batch each), with the same prompts; the answers must agree.
int run_generate(const std::string& config_path, const std::string& split, const std::string& checkpoint, int rounds) {
  RunConfig config = load_run_config({config_path}, {});
  setup_runtime(config.train);
  VisionLanguageModel model = build_model(config);
  if (!checkpoint.empty()) load_checkpoint_weights(model, checkpoint);
  auto processor = build_processor(config, model->shapes);
  Evaluator evaluator(model, processor, config.generation, config.train.per_device_eval_batch_size);
  std::vector<Batch> batches;
  const std::vector<Example> examples = load_dataset(split);
  for (size_t start = 0; start < examples.size(); start += static_cast<size_t>(config.train.per_device_eval_batch_size)) {
    std::vector<Sample> prompts;
    for (size_t i = start; i < std::min(examples.size(), start + static_cast<size_t>(config.train.per_device_eval_batch_size)); ++i)
      prompts.push_back(processor->prompt(examples[i]));
    batches.push_back(processor->collate(prompts));
  }
  evaluator.generate(batches.front()), evaluator.generate_uncached(batches.front());  // warm-up
  json out = {{"side", "generate"}, {"samples", examples.size()}, {"threads", torch::get_num_threads()},
              {"cached_samples_per_s", json::array()}, {"uncached_samples_per_s", json::array()}};
  int64_t tokens = 0;
  for (int r = 0; r < rounds; ++r) {
    std::vector<std::vector<int64_t>> a, b;
    auto t0 = std::chrono::steady_clock::now();
    for (const auto& batch : batches)
      for (auto& answer : evaluator.generate(batch)) a.push_back(std::move(answer));
    out["cached_samples_per_s"].push_back(examples.size() / seconds_since(t0));
    t0 = std::chrono::steady_clock::now();
    for (const auto& batch : batches)
      for (auto& answer : evaluator.generate_uncached(batch)) b.push_back(std::move(answer));
    out["uncached_samples_per_s"].push_back(examples.size() / seconds_since(t0));
    if (a != b) throw std::runtime_error("the cached and the uncached answers differ");
    tokens = 0;
    for (const auto& answer : a) tokens += static_cast<int64_t>(answer.size());
  }
  out["mean_answer_tokens"] = static_cast<double>(tokens) / static_cast<double>(examples.size());
  std::printf("%s\n", out.dump().c_str());
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"modalign step benchmark (bench/compare.py drives it)"};
  app.require_subcommand(1);
  int threads = 2;
  CLI::App* gemm = app.add_subcommand("gemm", "fp32 GEMM rate, median of 10 products of 2048 x 2048 matrices");
  gemm->add_option("--threads", threads, "intra-op threads");
  std::string config, losses = "config", out;
  int64_t warmup = 2, steps = 5;
  CLI::App* train = app.add_subcommand("train", "time the Trainer's steps on a config");
  train->add_option("config", config, "run config")->required()->check(CLI::ExistingFile);
  train->add_option("--losses", losses, "ce = text CE only, config = the config's losses");
  train->add_option("--warmup", warmup, "untimed steps first");
  train->add_option("--steps", steps, "timed steps");
  train->add_option("--profile", out, "write a LibTorch profiler trace (Chrome JSON) of all steps here");
  std::vector<std::string> overrides;
  train->add_option("--set", overrides, "config override KEY=VALUE (repeatable), as `modalign train --set`");
  CLI::App* exp = app.add_subcommand("export", "initial weights, batches and spec.json for the PyTorch peer");
  exp->add_option("config", config, "run config")->required()->check(CLI::ExistingFile);
  exp->add_option("--losses", losses, "ce = text CE only, config = the config's losses");
  exp->add_option("--steps", steps, "batches to write (warm-up + timed steps)");
  exp->add_option("--out", out, "folder")->required();
  CLI::App* loader = app.add_subcommand("loader", "data loader samples/s on a config");
  loader->add_option("config", config, "run config")->required()->check(CLI::ExistingFile);
  std::string split, checkpoint;
  int rounds = 3;
  CLI::App* generate = app.add_subcommand("generate", "eval answers/s with the KV cache and with full re-forwards");
  generate->add_option("config", config, "run config")->required()->check(CLI::ExistingFile);
  generate->add_option("--split", split, "LLaVA JSON split whose prompts are answered")->required();
  generate->add_option("--checkpoint", checkpoint, "weights to answer with (default: the config's initial model)");
  generate->add_option("--rounds", rounds, "timed rounds of both paths");
  CLI11_PARSE(app, argc, argv);
  modalign::setup_logging(modalign::LogLevel::Warn);
  try {
    if (gemm->parsed()) {
      torch::set_num_threads(threads);
      std::printf("%s\n", json{{"side", "gemm"}, {"threads", threads}, {"gflops", gemm_gflops(2048, 10)}}.dump().c_str());
      return 0;
    }
    if (loader->parsed()) return run_loader(config);
    if (generate->parsed()) return run_generate(config, split, checkpoint, rounds);
    if (exp->parsed()) return run_export(config, losses, steps, out);
    return run_train(config, losses, warmup, steps, out, overrides);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "step_bench: %s\n", e.what());
    return 1;
  }
}
