// RunConfig: every option of a modalign run, as typed structs, one per YAML section. Each struct names
// its fields once in visit() (key, member, one-line help, allowed range); lib/config/config_loader
// parses, dumps and documents them by walking that list, so a key exists in exactly one place.
#pragma once
#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "losses/loss_options.h"

namespace modalign {

// A bad config: the message names the file and line (or the --set argument), the full key path, what
// was expected and what was given.
struct ConfigError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Dtype { Float32, BFloat16, Float64 };
inline constexpr std::pair<const char*, Dtype> kDtypeNames[] = {
    {"float32", Dtype::Float32}, {"bfloat16", Dtype::BFloat16}, {"float64", Dtype::Float64}};

enum class DeviceKind { Cpu, Cuda };
inline constexpr std::pair<const char*, DeviceKind> kDeviceNames[] = {{"cpu", DeviceKind::Cpu},
                                                                      {"cuda", DeviceKind::Cuda}};

enum class AspectMode { Pad, Crop };
inline constexpr std::pair<const char*, AspectMode> kAspectNames[] = {{"pad", AspectMode::Pad},
                                                                      {"crop", AspectMode::Crop}};

enum class ChatTemplate { Plain, VicunaV1, Qwen2VL };
inline constexpr std::pair<const char*, ChatTemplate> kChatTemplateNames[] = {
    {"plain", ChatTemplate::Plain}, {"vicuna_v1", ChatTemplate::VicunaV1}, {"qwen2_vl", ChatTemplate::Qwen2VL}};

enum class BadSamplePolicy { Error, Skip };
inline constexpr std::pair<const char*, BadSamplePolicy> kBadSampleNames[] = {
    {"error", BadSamplePolicy::Error}, {"skip", BadSamplePolicy::Skip}};

enum class LrSchedule { Cosine, Linear, Constant };
inline constexpr std::pair<const char*, LrSchedule> kLrScheduleNames[] = {
    {"cosine", LrSchedule::Cosine}, {"linear", LrSchedule::Linear}, {"constant", LrSchedule::Constant}};

enum class ProgressMode { Auto, Bar, Plain };
inline constexpr std::pair<const char*, ProgressMode> kProgressNames[] = {
    {"auto", ProgressMode::Auto}, {"bar", ProgressMode::Bar}, {"plain", ProgressMode::Plain}};

enum class LogLevel { Debug, Info, Warn, Error };
inline constexpr std::pair<const char*, LogLevel> kLogLevelNames[] = {
    {"debug", LogLevel::Debug}, {"info", LogLevel::Info}, {"warn", LogLevel::Warn}, {"error", LogLevel::Error}};

enum class Backend { Gloo, Nccl };
inline constexpr std::pair<const char*, Backend> kBackendNames[] = {{"gloo", Backend::Gloo},
                                                                    {"nccl", Backend::Nccl}};

inline constexpr const char* kModelPresetNames[] = {
    "tiny", "demo", "small", "llava-1.5-7b", "qwen2_5_vl_tiny", "qwen2_vl_tiny", "qwen2_5_vl_demo", "qwen2_5_vl_3b",
    "qwen2_5_vl_7b"};

struct ModelConfig {
  std::string preset = "tiny";
  std::string hf_config;  // Hugging Face LLaVA config.json; overrides the preset's shapes
  std::string weights;    // safetensors file, sharded index or checkpoint folder to start from
  Dtype dtype = Dtype::Float32;
  DeviceKind device = DeviceKind::Cpu;
  bool moda_aligner = false;

  template <class V>
  void visit(V& v) {
    v.one_of("preset", preset, kModelPresetNames, "model shapes");
    v.path("hf_config", hf_config, "Hugging Face LLaVA config.json (overrides the preset); empty = none");
    v.path("weights", weights, "safetensors file, index or checkpoint folder to start from; empty = random");
    v.choice("dtype", dtype, kDtypeNames, "parameter and compute dtype");
    v.choice("device", device, kDeviceNames, "where the model runs (cuda needs a CUDA LibTorch build)");
    v.field("moda_aligner", moda_aligner, "add MODA's duplex aligner to every decoder attention");
  }
};

struct DataConfig {
  std::vector<std::string> train_files;
  std::vector<double> mixing_weights;  // one per train file; empty = proportional to size
  std::vector<std::string> eval_files;
  std::string image_folder;
  std::string tokenizer;
  ChatTemplate chat_template = ChatTemplate::VicunaV1;
  int64_t model_max_length = 512;
  AspectMode image_aspect_ratio = AspectMode::Pad;
  std::vector<double> image_mean{0.48145466, 0.4578275, 0.40821073};
  std::vector<double> image_std{0.26862954, 0.26130258, 0.27577711};
  int64_t image_min_pixels = 56 * 56;      // Qwen models: smart_resize bounds (preprocessor_config.json)
  int64_t image_max_pixels = 12845056;
  BadSamplePolicy on_bad_sample = BadSamplePolicy::Error;
  bool allow_paths_outside_image_folder = false;
  bool group_by_length = false;
  int64_t num_workers = 2;
  int64_t prefetch_batches = 4;

  template <class V>
  void visit(V& v) {
    v.paths("train_files", train_files, "LLaVA-format JSON or JSONL files to train on");
    v.field("mixing_weights", mixing_weights, "sampling weight per train file; empty = by size");
    v.paths("eval_files", eval_files, "LLaVA-format files evaluated every eval_steps");
    v.path("image_folder", image_folder, "folder that sample image paths are relative to");
    v.path("tokenizer", tokenizer, "SentencePiece .model, Hugging Face tokenizer.json, or a folder holding one");
    v.choice("chat_template", chat_template, kChatTemplateNames, "plain (LLaVA stage 1), vicuna_v1 (LLaVA stage 2) or qwen2_vl (ChatML, Qwen2-VL / Qwen2.5-VL)");
    v.alias("max_length", "model_max_length");
    v.field("model_max_length", model_max_length, "longest tokenised sample, image span included",
            Range::at_least(8));
    v.choice("image_aspect_ratio", image_aspect_ratio, kAspectNames, "pad to square with the mean colour, or crop");
    v.field("image_mean", image_mean, "per-channel normalisation mean (RGB)");
    v.field("image_std", image_std, "per-channel normalisation std (RGB)");
    v.field("image_min_pixels", image_min_pixels, "Qwen models: images are resized to at least this many pixels",
            Range::at_least(1));
    v.field("image_max_pixels", image_max_pixels, "Qwen models: ... and at most this many (bounds memory per image)",
            Range::at_least(1));
    v.choice("on_bad_sample", on_bad_sample, kBadSampleNames, "a bad sample stops the run, or is skipped and counted");
    v.field("allow_paths_outside_image_folder", allow_paths_outside_image_folder,
            "let image paths (../ or absolute) lead outside image_folder");
    v.field("group_by_length", group_by_length, "batch samples of similar length together");
    v.field("num_workers", num_workers, "background loader threads", Range::at_least(0));
    v.field("prefetch_batches", prefetch_batches, "batches the loader may prepare ahead", Range::at_least(1));
  }
};

struct TrainConfig {
  std::string output_dir = "runs/modalign";
  bool overwrite_output_dir = false;
  int64_t seed = 42;
  int64_t num_threads = 0;  // 0 = all cores
  double learning_rate = 2e-5;
  std::optional<double> vision_lr;     // nullopt = learning_rate
  std::optional<double> projector_lr;  // nullopt = learning_rate
  LrSchedule lr_scheduler_type = LrSchedule::Cosine;
  double warmup_ratio = 0.0;
  int64_t warmup_steps = 0;
  double weight_decay = 0.0;
  double adam_beta1 = 0.9;
  double adam_beta2 = 0.999;
  double adam_epsilon = 1e-8;
  int64_t per_device_train_batch_size = 4;
  int64_t per_device_eval_batch_size = 8;
  int64_t gradient_accumulation_steps = 1;
  int64_t max_steps = -1;  // -1 = from num_train_epochs
  double num_train_epochs = 1.0;
  double max_grad_norm = 1.0;
  int64_t eval_steps = 0;  // 0 = only at the end
  int64_t max_nonfinite_steps = 5;
  bool freeze_vision_tower = true;
  bool freeze_projector = false;
  bool freeze_language_model = false;
  std::string freeze_regex;
  std::string trainable_regex;
  int64_t lora_rank = 0;  // 0 = no LoRA
  double lora_alpha = 16.0;
  double lora_dropout = 0.0;
  std::string lora_target = "all-linear";
  bool gradient_checkpointing = false;  // recompute each decoder layer and vision block in the backward pass
  bool bf16 = false;                    // mixed precision: bf16 matmuls, float32 weights and optimizer state

  template <class V>
  void visit(V& v) {
    v.path("output_dir", output_dir, "where checkpoints, logs and metrics go");
    v.field("overwrite_output_dir", overwrite_output_dir,
            "a fresh run may replace the checkpoints and metrics another run left in output_dir");
    v.field("seed", seed, "seed of weights, data order and dropout");
    v.field("num_threads", num_threads, "LibTorch intra-op threads; 0 = all cores", Range::at_least(0));
    v.field("learning_rate", learning_rate, "peak learning rate", Range::positive());
    v.optional("vision_lr", vision_lr, "null", "learning rate of the vision tower; null = learning_rate",
               Range::positive());
    v.optional("projector_lr", projector_lr, "null", "learning rate of the projector; null = learning_rate",
               Range::positive());
    v.choice("lr_scheduler_type", lr_scheduler_type, kLrScheduleNames, "decay after warmup");
    v.field("warmup_ratio", warmup_ratio, "warmup as a share of max_steps", Range{0.0, 1.0, false, true});
    v.field("warmup_steps", warmup_steps, "warmup steps (overrides warmup_ratio)", Range::at_least(0));
    v.field("weight_decay", weight_decay, "AdamW decoupled weight decay (not on norms, biases, embeddings)",
            Range::at_least(0));
    v.field("adam_beta1", adam_beta1, "AdamW beta1", Range{0.0, 1.0, false, true});
    v.field("adam_beta2", adam_beta2, "AdamW beta2", Range{0.0, 1.0, false, true});
    v.field("adam_epsilon", adam_epsilon, "AdamW epsilon", Range::positive());
    v.field("per_device_train_batch_size", per_device_train_batch_size, "samples per micro-batch per process",
            Range::at_least(1));
    v.field("per_device_eval_batch_size", per_device_eval_batch_size, "samples per eval batch", Range::at_least(1));
    v.field("gradient_accumulation_steps", gradient_accumulation_steps, "micro-batches per optimizer step",
            Range::at_least(1));
    v.field("max_steps", max_steps, "optimizer steps; -1 = num_train_epochs worth", Range::at_least(-1));
    v.field("num_train_epochs", num_train_epochs, "epochs when max_steps is -1", Range::positive());
    v.field("max_grad_norm", max_grad_norm, "gradient clipping norm; 0 = off", Range::at_least(0));
    v.field("eval_steps", eval_steps, "evaluate every N steps; 0 = at the end only", Range::at_least(0));
    v.field("max_nonfinite_steps", max_nonfinite_steps, "abort after this many non-finite steps in a row",
            Range::at_least(1));
    v.field("freeze_vision_tower", freeze_vision_tower, "keep the vision tower fixed (Qwen: `visual` but its merger)");
    v.field("freeze_projector", freeze_projector, "keep the projector fixed (Qwen: `visual.merger`)");
    v.field("freeze_language_model", freeze_language_model, "keep the decoder LLM fixed");
    v.field("freeze_regex", freeze_regex, "also freeze parameters whose name matches; empty = none");
    v.field("trainable_regex", trainable_regex, "unfreeze parameters whose name matches; empty = none");
    v.field("lora_rank", lora_rank, "LoRA rank; 0 = full fine-tuning", Range::at_least(0));
    v.field("lora_alpha", lora_alpha, "LoRA scale numerator (scale = alpha / rank)", Range::positive());
    v.field("lora_dropout", lora_dropout, "dropout on the LoRA input", Range{0.0, 1.0, false, true});
    v.field("lora_target", lora_target, "regex over linear layer names, or all-linear");
    v.field("gradient_checkpointing", gradient_checkpointing,
            "keep only each decoder layer's (and trained vision block's) input and recompute it in the backward pass "
            "(less memory, about one more forward)");
    v.field("bf16", bf16,
            "mixed precision: matrix products in bfloat16 (autocast), float32 master weights, optimizer state, norms, "
            "softmax statistics, losses and taps; needs model.dtype float32");
  }
};

struct CheckpointConfig {
  int64_t save_steps = 500;  // 0 = only at the end
  int64_t save_total_limit = 0;  // 0 = keep all
  std::string resume_from_checkpoint;  // "", "auto" or a folder
  bool save_final = true;  // false: a throwaway run (smoke tests, benchmarks) writes no final checkpoint

  template <class V>
  void visit(V& v) {
    v.field("save_steps", save_steps, "save every N steps; 0 = at the end only", Range::at_least(0));
    v.field("save_final", save_final, "save when training ends; false only for throwaway runs and benchmarks");
    v.field("save_total_limit", save_total_limit, "keep the newest N checkpoints; 0 = all", Range::at_least(0));
    v.field("resume_from_checkpoint", resume_from_checkpoint,
            "empty = fresh start, auto = newest complete checkpoint in output_dir, or a folder");
  }
};

struct LoggingConfig {
  int64_t logging_steps = 10;
  LogLevel level = LogLevel::Info;
  ProgressMode progress = ProgressMode::Auto;

  template <class V>
  void visit(V& v) {
    v.field("logging_steps", logging_steps, "write metrics every N steps", Range::at_least(1));
    v.choice("level", level, kLogLevelNames, "console and train.log verbosity");
    v.choice("progress", progress, kProgressNames, "auto = a bar on a terminal, plain lines otherwise");
  }
};

// How answers are generated (eval, `modalign generate`).
struct GenerationConfig {
  int64_t max_new_tokens = 8;
  bool do_sample = false;  // false = greedy
  double temperature = 1.0;
  double top_p = 1.0;
  int64_t seed = 0;
  std::vector<int64_t> stop_token_ids;  // besides the tokenizer's EOS

  template <class V>
  void visit(V& v) {
    v.field("max_new_tokens", max_new_tokens, "longest answer in tokens", Range::at_least(1));
    v.field("do_sample", do_sample, "sample the next token (temperature, top_p, seed) instead of the argmax");
    v.field("temperature", temperature, "divides the logits before sampling", Range::positive());
    v.field("top_p", top_p, "sample from the smallest set of tokens whose probability reaches top_p",
            Range::unit_open_lo());
    v.field("seed", seed, "seed of the sampling generator (the same seed gives the same answers)");
    v.field("stop_token_ids", stop_token_ids, "token ids that end an answer, besides EOS");
  }
};

struct DistributedConfig {
  Backend backend = Backend::Gloo;
  int64_t nproc = 1;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  double timeout_s = 300.0;
  bool shard_optimizer = false;  // ZeRO-1: each rank keeps and updates AdamW state for 1/nproc of the parameters

  template <class V>
  void visit(V& v) {
    v.choice("backend", backend, kBackendNames, "c10d backend: gloo (CPU) or nccl (CUDA builds)");
    v.field("nproc", nproc, "local worker processes", Range::at_least(1));
    v.field("master_addr", master_addr, "rendezvous host (MASTER_ADDR overrides)");
    v.field("master_port", master_port, "rendezvous port (MASTER_PORT overrides)", Range{1, 65535});
    v.field("timeout_s", timeout_s, "collective and rendezvous timeout in seconds", Range::positive());
    v.field("shard_optimizer", shard_optimizer,
            "ZeRO-1: each rank keeps AdamW moments for its 1/nproc of the parameters, updates that part and "
            "all-gathers the result (same values; checkpoints keep the unsharded layout)");
  }
};

struct RunConfig {
  ModelConfig model;
  DataConfig data;
  TrainConfig train;
  std::vector<LossEntry> losses;  // alignment terms added to text CE
  CheckpointConfig checkpoint;
  LoggingConfig logging;
  GenerationConfig generation;
  DistributedConfig distributed;

  template <class V>
  void visit(V& v) {
    v.section("model", model, "vision-language model");
    v.section("data", data, "datasets, images, tokenizer, chat template");
    v.section("train", train, "optimizer, schedule, batch sizes, freezing, LoRA");
    v.list("losses", losses, "alignment losses added to text cross-entropy: [{name, weight, ...}]");
    v.section("checkpoint", checkpoint, "saving and resuming");
    v.section("logging", logging, "console, train.log and metrics.jsonl");
    v.section("generation", generation, "answer generation in eval and `modalign generate`");
    v.section("distributed", distributed, "data-parallel training");
  }
};

// Cross-field rules, checked once after all files and overrides are merged. Throws ConfigError listing
// every problem, each with its key path.
void validate(const RunConfig& config);

}  // namespace modalign
