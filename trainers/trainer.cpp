#include "trainers/trainer.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <map>
#include <numeric>
#include <optional>

#include "lib/config/config_loader.h"
#include "lib/io/weights.h"
#include "lib/util/cpu_features.h"
#include "trainers/components.h"
#include "trainers/stop_signal.h"

namespace modalign {
namespace fs = std::filesystem;
namespace {

std::string duration(double seconds) {
  int s = static_cast<int>(seconds);
  return s >= 3600 ? fmt::format("{}h{:02d}m", s / 3600, s / 60 % 60) : fmt::format("{}m{:02d}s", s / 60, s % 60);
}

// What the losses read of a batch before any forward: its masks and region targets.
AttentionStats batch_masks(const Batch& b) {
  AttentionStats masks;
  masks.labels = b.labels;
  masks.attention_mask = b.attention_mask;
  masks.visual_mask = b.visual_mask;
  masks.region_target = b.region_target;
  return masks;
}

}  // namespace

Trainer::Trainer(const RunConfig& config, const WorldInfo& world) : config_(config) {
  setup_runtime(config_.train);
  model_ = build_model(config_);
  device_ = model_->parameters().front().device();
  processor_ = build_processor(config_, model_->shapes);
  composer_ = build_loss_composer(config_, model_->shapes);
  evaluator_ = build_evaluator(config_, model_, processor_);
  eval_splits_ = load_eval_splits(config_.data.eval_files);
  if (world.distributed()) dp_ = std::make_unique<DataParallel>(config_.distributed, world);
}

Trainer::~Trainer() = default;

int64_t Trainer::global_batch() const {
  return config_.train.per_device_train_batch_size * config_.train.gradient_accumulation_steps *
         (dp_ ? dp_->world_size() : 1);
}

int64_t Trainer::total_steps() const {
  if (config_.train.max_steps > 0) return config_.train.max_steps;
  const double batches = config_.train.num_train_epochs * static_cast<double>(loader_->sampler().batches_per_epoch());
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(batches / config_.train.gradient_accumulation_steps)));
}

std::vector<EvalResult> Trainer::evaluate() {
  std::vector<EvalResult> results = evaluator_->evaluate(eval_splits_);
  model_->train();
  return results;
}

StepStats Trainer::forward_backward(const std::vector<Batch>& micro_batches) {
  StepStats stats;
  const bool log_step = (state_.step + 1) % config_.logging.logging_steps == 0;
  // Global counts of the whole window, from the masks alone, so each micro-batch divides by them.
  std::vector<torch::Tensor> counts;
  for (const auto& b : micro_batches) {
    auto c = composer_->counts(batch_masks(b));
    if (counts.empty()) counts = c;
    else for (size_t i = 0; i < c.size(); ++i) counts[i] = counts[i] + c[i];
  }
  torch::Tensor packed_counts = torch::stack(counts).to(torch::kFloat64);  // (terms)
  if (dp_) dp_->all_reduce_sum({packed_counts});  // every rank divides by the counts of the whole global batch
  for (size_t i = 0; i < counts.size(); ++i) counts[i] = packed_counts[static_cast<int64_t>(i)].to(counts[i].scalar_type());

  const LossNeeds needs = composer_->needs();
  torch::Tensor window;  // (2 + terms) float64 on the device: loss, tokens, each term's sum; read once per step
  std::map<int64_t, std::pair<torch::Tensor, torch::Tensor>> share;  // layer -> (sum of M_X, image samples)
  for (const auto& batch : micro_batches) {
    AttentionStats s = batch_masks(batch);
    TapRequest request{needs.layers, needs.probs_to_visual, false, composer_->key_masks(s)};
    if (needs.probs_to_visual) request.probs_rows = s.probs_rows = query_rows(response_queries(batch.labels));
    if (log_step) {  // the visual share of every layer on logging steps (one mat-vec per layer)
      request.layers.resize(static_cast<size_t>(model_->shapes.text.num_hidden_layers));
      std::iota(request.layers.begin(), request.layers.end(), 0);
    }
    // Logits only where a token is supervised (text_ce reads nothing else).
    ModelOutput out = model_->forward(batch.input_ids, batch.attention_mask, batch.pixel_values, request,
                                      response_queries(batch.labels), prompt_mask_from_labels(batch.labels),
                                      batch.image_grid_thw);
    s.layers = request.layers;
    s.visual_mask = out.visual_mask;
    if (needs.text_only_logits) {  // the same rows from the text alone, for the modality-contrast terms
      torch::NoGradGuard no_grad;
      TextOnlyInputs text = without_image(batch.input_ids, batch.attention_mask, model_->shapes.image_token_index);
      s.text_only_logits = model_->forward(text.input_ids, text.attention_mask, {}, {}, response_queries(batch.labels),
                                           prompt_mask_from_labels(batch.labels)).logits;
    }
    for (const auto& tap : out.taps) {
      s.visual_mass.push_back(tap.visual_mass);
      if (tap.key_mass.defined()) s.key_mass.push_back(tap.key_mass);
      if (tap.probs_to_visual.defined()) s.probs_to_visual.push_back(tap.probs_to_visual);
    }
    auto terms = composer_->compute(out.logits, s);
    torch::Tensor loss = LossComposer::total(terms, counts);
    if (inject_.count(state_.step)) loss = loss * std::numeric_limits<double>::quiet_NaN();
    loss.backward();
    std::vector<torch::Tensor> parts{loss.detach(), batch.attention_mask.sum()};
    for (const auto& t : terms) parts.push_back(t.term.sum.detach());
    for (auto& part : parts) part = part.to(torch::kFloat64);
    window = window.defined() ? window + torch::stack(parts) : torch::stack(parts);
    if (stats.names.empty())
      for (const auto& t : terms) stats.names.push_back(t.name);
    if (log_step) {
      torch::Tensor rq = response_queries(batch.labels) & batch.attention_mask;
      torch::Tensor img = has_image(out.visual_mask);
      for (const auto& tap : out.taps) {
        auto& [sum, n] = share[tap.layer];
        torch::Tensor add = (query_mean(tap.visual_mass, rq) * img).sum().to(torch::kFloat64);
        sum = sum.defined() ? sum + add : add;
        n = n.defined() ? n + img.sum() : img.sum();
      }
    }
  }
  // Every sum this step reports in one vector; data parallel sums it over ranks, so that all ranks log,
  // skip and stop alike.
  torch::Tensor host = window.cpu();  // the step's one host sync (besides logging steps)
  torch::Tensor count_host = packed_counts.cpu();
  stats.loss = host[0].item<double>();
  stats.tokens = host[1].item<double>();
  stats.stop = stop_requested() ? 1.0 : 0.0;
  for (size_t i = 0; i < stats.names.size(); ++i) {
    stats.term_sums.push_back(host[static_cast<int64_t>(2 + i)].item<double>());
    stats.term_counts.push_back(count_host[static_cast<int64_t>(i)].item<double>());
  }
  for (const auto& [layer, v] : share) {
    stats.layers.push_back(layer);
    stats.share_sums.push_back(v.first.item<double>());
    stats.share_samples.push_back(v.second.item<double>());
  }
  if (dp_) {
    torch::Tensor t = torch::tensor(stats.pack(), torch::kFloat64);
    dp_->all_reduce_sum({t});
    stats.unpack(std::vector<double>(t.data_ptr<double>(), t.data_ptr<double>() + t.numel()));
  }
  return stats;
}

StepStats Trainer::train_step() {
  std::vector<Batch> micro;
  for (int64_t i = 0; i < config_.train.gradient_accumulation_steps; ++i) micro.push_back(loader_->next().to(device_));
  optimizer_->zero_grad();
  StepStats stats = forward_backward(micro);
  if (dp_) {  // the gradient of the global loss: every rank's share, summed
    std::vector<torch::Tensor> params;
    for (const auto& [name, p] : optimizer_->parameters()) params.push_back(p);
    dp_->all_reduce_grads(params);
  }
  double clip = 1;  // applied inside the update
  std::tie(stats.grad_norm, clip) = optimizer_->grad_norm_and_clip(config_.train.max_grad_norm);
  stats.finite = std::isfinite(stats.loss) && std::isfinite(stats.grad_norm);
  if (stats.finite) {
    optimizer_->step(lr_multiplier(config_.train, state_.step, total_steps()), clip);
    state_.nonfinite_streak = 0;
  } else {
    optimizer_->zero_grad();
    ++state_.nonfinite_total;
    ++state_.nonfinite_streak;
    spdlog::warn("step {}: non-finite loss ({}) or gradient norm ({}); update skipped ({} in a row)", state_.step + 1,
                 stats.loss, stats.grad_norm, state_.nonfinite_streak);
  }
  return stats;
}

std::string Trainer::save() {
  bool finite = true;
  for (const auto& p : model_->parameters()) finite = finite && torch::isfinite(p).all().item<bool>();
  if (!finite) {
    spdlog::error("step {}: the weights are not finite; no checkpoint written (the last one is {})", state_.step,
                  last_checkpoint_.empty() ? "none" : last_checkpoint_);
    return "";
  }
  CheckpointContents c;
  c.model = named_state(*model_);
  c.optimizer = optimizer_->state();
  c.trainer_state = state_;
  c.trainer_state.cursor = loader_->cursor();
  c.trainer_state.skipped_samples = skipped_before_ + loader_->skipped();
  c.trainer_state.cpu_rng_state = cpu_rng_state();
  c.config_yaml = dump_config(config_);
  // During a non-finite streak the last checkpoint before it is never pruned.
  const std::string protect = state_.nonfinite_streak > 0 ? before_streak_ : "";
  auto write = [&] {
    return save_checkpoint(config_.train.output_dir, state_.step, c, config_.checkpoint.save_total_limit, protect);
  };
  std::string dir;
  if (dp_) dp_->barrier();  // rank 0 writes; the others wait until the checkpoint is complete
  if (leader()) dir = write();
  if (dp_) dp_->barrier();
  last_checkpoint_ = dir;
  if (state_.nonfinite_streak == 0) before_streak_ = dir;
  return dir;
}

void Trainer::claim_output_dir(bool resuming) {
  const std::string& out = config_.train.output_dir;
  if (!leader()) return;
  lock_ = std::make_unique<OutputDirLock>(out);
  if (resuming) return;
  std::vector<std::string> others;  // complete checkpoints another run left here
  for (const auto& dir : checkpoint_folders(out))
    if (checkpoint_complete(dir)) others.push_back(fs::path(dir).filename().string());
  if (others.empty()) return;
  if (!config_.train.overwrite_output_dir)
    throw ConfigError(fmt::format("train.output_dir {} holds checkpoints of another run ({}{}); resume it with "
                                  "checkpoint.resume_from_checkpoint: auto, pick another output_dir, or set "
                                  "train.overwrite_output_dir: true to replace them",
                                  out, others.back(), others.size() > 1 ? fmt::format(" and {} more", others.size() - 1) : ""));
  spdlog::warn("train.overwrite_output_dir: removing {} checkpoints and the metrics of the earlier run in {}", others.size(), out);
  for (const auto& dir : checkpoint_folders(out)) fs::remove_all(dir);
  for (const char* file : {"latest", "metrics.jsonl"}) fs::remove(fs::path(out) / file);
}

void Trainer::resume(const CheckpointContents& c, const std::string& dir) {
  try {
    load_weights(*model_, c.model, dir + "/model.safetensors", /*strict=*/true);
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(fmt::format("{}: the checkpoint's model does not match this config's model (shapes or "
                                         "trainable set changed since it was saved): {}", dir, e.what()));
  }
  optimizer_->load_state(c.optimizer);
  const TrainerState& s = c.trainer_state;
  if (s.global_batch != global_batch())
    throw std::runtime_error(fmt::format(
        "{}: the checkpoint was trained with a global batch of {} samples, this run's is {} (per_device_train_batch_size "
        "x gradient_accumulation_steps x processes); keep the global batch to resume, e.g. per_device_train_batch_size {}",
        dir, s.global_batch, global_batch(),
        s.global_batch / (config_.train.gradient_accumulation_steps * (dp_ ? dp_->world_size() : 1))));
  const std::string run_id = state_.run_id;
  state_ = s;
  if (state_.run_id.empty()) state_.run_id = run_id;  // a checkpoint of an earlier version
  skipped_before_ = s.skipped_samples;
  last_checkpoint_ = dir;
  if (s.nonfinite_streak == 0) before_streak_ = dir;
  set_cpu_rng_state(s.cpu_rng_state);
  for (const auto& change : config_changes(c.config_yaml, dir + "/config.yaml", config_))
    spdlog::info("resume: config changed since the checkpoint: {}", change);
  spdlog::info("resumed from {} at step {}", dir, state_.step);
}

void Trainer::prepare() {
  const auto& t = config_.train;
  std::vector<std::string> trainable = apply_freezing(*model_, t);
  optimizer_ = std::make_unique<GroupedAdamW>(*model_, t);
  if (dp_ && config_.distributed.shard_optimizer) {
    optimizer_->shard(*dp_);
    if (leader()) spdlog::info("AdamW moments sharded over {} ranks (ZeRO-1)", dp_->world_size());
  }
  model_->train();
  std::string resume_dir = config_.checkpoint.resume_from_checkpoint;
  if (resume_dir == "auto") resume_dir = find_latest_checkpoint(t.output_dir).value_or("");
  std::optional<CheckpointContents> checkpoint;
  if (!resume_dir.empty()) checkpoint = load_checkpoint(resume_dir = resolve_checkpoint(resume_dir));
  claim_output_dir(checkpoint.has_value());
  loader_ = build_train_loader(config_, processor_, *composer_, dp_ ? dp_->rank() : 0, dp_ ? dp_->world_size() : 1,
                               checkpoint ? checkpoint->trainer_state.cursor : DataCursor{});
  state_ = TrainerState{};
  state_.seed = t.seed;
  state_.global_batch = global_batch();
  state_.run_id = new_run_id();
  if (checkpoint) resume(*checkpoint, resume_dir);
  if (dp_) {  // every rank starts from rank 0's weights
    std::vector<torch::Tensor> params;
    for (auto& [name, tensor] : named_state(*model_)) params.push_back(tensor);
    dp_->broadcast(params);
  }
  fs::create_directories(t.output_dir);
  metrics_ = std::make_unique<MetricsSink>(leader() ? (fs::path(t.output_dir) / "metrics.jsonl").string() : "");
  spdlog::info("training {} of {} parameter tensors for {} steps (batch {} x {} accumulation x {} processes), {} threads",
               trainable.size(), model_->named_parameters().size(), total_steps(), t.per_device_train_batch_size,
               t.gradient_accumulation_steps, dp_ ? dp_->world_size() : 1, torch::get_num_threads());
  if (t.bf16 && config_.model.device == DeviceKind::Cpu && leader()) {  // before step 1, not 20x slower in silence
    const Bf16Check bf16 = check_cpu_bf16();
    if (!bf16.native) spdlog::warn("{}", bf16.message);
  }
}

void Trainer::log_step(const StepStats& s, double seconds, double elapsed, int64_t first_step, bool bar) {
  const int64_t total = total_steps();
  if (!leader() || (state_.step % config_.logging.logging_steps != 0 && state_.step != total)) return;
  const double lr = optimizer_->base_lr() * lr_multiplier(config_.train, state_.step - 1, total);
  std::vector<std::pair<std::string, double>> rec{{"epoch", double(loader_->cursor().epoch)}, {"loss", s.loss}, {"lr", lr},
                                                  {"grad_norm", s.grad_norm}, {"tokens_per_s", s.tokens / seconds}};
  std::string line = fmt::format("step {}/{} | loss {:.4f}", state_.step, total, s.loss);
  for (const auto& [name, mean] : s.means()) {
    rec.emplace_back(name, mean);
    // A term at its target is 0 up to rounding: printed as 0.0000, not -0.0000 (metrics.jsonl keeps the value).
    if (name.rfind("visual_share.", 0) != 0) line += fmt::format(" | {} {:.4f}", name, std::abs(mean) < 5e-5 ? 0.0 : mean);
  }
  metrics_->write("train", state_.step, rec);
  line += fmt::format(" | lr {:.2e} | {:.0f} tok/s | ETA {}", lr, s.tokens / seconds,
                      duration(elapsed / double(state_.step - first_step) * double(total - state_.step)));
  if (bar) std::printf("\r\033[K%s", line.c_str()), std::fflush(stdout);
  else spdlog::info("{}", line);
}

TrainResult Trainer::train() {
  prepare();
  const auto& t = config_.train;
  const int64_t total = total_steps();
  const bool bar = leader() && (config_.logging.progress == ProgressMode::Bar ||
                                (config_.logging.progress == ProgressMode::Auto && ::isatty(STDOUT_FILENO)));
  StopSignalScope signals;
  TrainResult result;
  const auto started = std::chrono::steady_clock::now();
  const int64_t first_step = state_.step;
  while (state_.step < total) {
    const auto t0 = std::chrono::steady_clock::now();
    StepStats s = train_step();
    ++state_.step;
    state_.record_loss(s.loss);
    const auto now = std::chrono::steady_clock::now();
    const double seconds = std::chrono::duration<double>(now - t0).count();
    result.step_seconds.push_back(seconds);
    result.step_tokens.push_back(static_cast<int64_t>(s.tokens));
    log_step(s, seconds, std::chrono::duration<double>(now - started).count(), first_step, bar);
    if (state_.nonfinite_streak >= t.max_nonfinite_steps) {
      save();  // the state after the skipped updates, when its weights are finite
      throw std::runtime_error(fmt::format(
          "{} non-finite steps in a row (train.max_nonfinite_steps); {}{}", state_.nonfinite_streak,
          last_checkpoint_.empty() ? std::string("no checkpoint with finite weights was written")
                                   : "the last checkpoint (weights checked finite) is " + last_checkpoint_,
          before_streak_.empty() || before_streak_ == last_checkpoint_ ? ""
                                   : "; the last one before the non-finite steps began is " + before_streak_));
    }
    if (leader() && t.eval_steps > 0 && state_.step % t.eval_steps == 0 && state_.step < total)
      write_evals(*metrics_, state_.step, evaluate());
    const bool stop = s.stop > 0;
    if ((config_.checkpoint.save_steps > 0 && state_.step % config_.checkpoint.save_steps == 0) ||
        (state_.step == total && config_.checkpoint.save_final) || stop)
      result.checkpoint = save();
    if (stop) {
      if (bar) std::printf("\n");
      spdlog::warn("signal received: checkpoint written to {}", result.checkpoint);
      result.interrupted = true;
      break;
    }
  }
  if (bar) std::printf("\n");
  result.steps = state_.step;
  result.losses = state_.losses;
  result.skipped_samples = skipped_before_ + loader_->skipped();
  result.nonfinite_steps = state_.nonfinite_total;
  if (result.skipped_samples > 0) spdlog::warn("{} bad samples were skipped (data.on_bad_sample: skip)", result.skipped_samples);
  if (leader() && !result.interrupted && !config_.data.eval_files.empty()) {
    result.evals = evaluate();
    write_evals(*metrics_, state_.step, result.evals);
  }
  return result;
}

}  // namespace modalign
