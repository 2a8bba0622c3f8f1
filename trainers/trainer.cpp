#include "trainers/trainer.h"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <filesystem>
#include <thread>

#include "lib/config/config_loader.h"
#include "lib/io/weights.h"
#include "lib/util/allocator.h"
#include "lib/util/metrics_sink.h"
#include "losses/sink_suppression.h"
#include "losses/text_ce.h"
#include "trainers/checkpoint.h"
#include "trainers/lora.h"

namespace modalign {
namespace fs = std::filesystem;
namespace {

std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) { g_signal = sig; }

// Installs SIGINT/SIGTERM handlers for the lifetime of a train() call.
struct SignalScope {
  SignalScope() {
    g_signal = 0;
    old_int_ = std::signal(SIGINT, on_signal);
    old_term_ = std::signal(SIGTERM, on_signal);
  }
  ~SignalScope() {
    std::signal(SIGINT, old_int_);
    std::signal(SIGTERM, old_term_);
  }
  void (*old_int_)(int);
  void (*old_term_)(int);
};

ModelInterface model_interface(const ModelShapes& s) {
  return {s.vision.image_size, s.vision.num_patches(), s.image_token_index, s.text.vocab_size};
}

std::string normalise(std::string s) {
  std::string out;
  for (char c : s)
    if (std::isalnum(static_cast<unsigned char>(c)) || c == ' ') out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t a = out.find_first_not_of(' '), b = out.find_last_not_of(' ');
  return a == std::string::npos ? "" : out.substr(a, b - a + 1);
}

void write_evals(MetricsSink& metrics, int64_t step, const std::vector<EvalResult>& evals) {
  for (const auto& e : evals) {
    std::vector<std::pair<std::string, double>> v = {{"step", double(step)}, {e.split + ".loss", e.loss},
                                                     {e.split + ".accuracy", e.accuracy}};
    if (e.hint_rate >= 0) v.push_back({e.split + ".hint_rate", e.hint_rate});
    metrics.write("eval", v);
  }
}

std::string duration(double seconds) {
  int s = static_cast<int>(seconds);
  return s >= 3600 ? fmt::format("{}h{:02d}m", s / 3600, s / 60 % 60) : fmt::format("{}m{:02d}s", s / 60, s % 60);
}

// LibTorch's default CPU generator (dropout, LoRA dropout): saved with checkpoints so resume is exact.
std::vector<uint8_t> rng_state() {
  torch::Tensor state = at::detail::getDefaultCPUGenerator().get_state();
  return std::vector<uint8_t>(state.data_ptr<uint8_t>(), state.data_ptr<uint8_t>() + state.numel());
}

void set_rng_state(const std::vector<uint8_t>& bytes) {
  torch::Tensor state = torch::tensor(std::vector<int64_t>(bytes.begin(), bytes.end())).to(torch::kUInt8);
  at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle to the shared generator
  generator.set_state(state);
}

}  // namespace

struct Trainer::StepStats {
  double loss = 0, grad_norm = 0;
  std::vector<std::pair<std::string, double>> terms;  // each term's mean over the window
  std::vector<std::pair<int64_t, double>> visual_share;  // per tapped layer: mean M_X over image samples
  int64_t tokens = 0;
  bool finite = true;
  bool stop = false;  // a signal reached this process (or, data parallel, any rank)
};

Trainer::Trainer(const RunConfig& config, const WorldInfo& world) : config_(config) {
  keep_freed_memory();  // no page faults for the step's buffers after the first step
  torch::set_num_threads(config_.train.num_threads > 0 ? static_cast<int>(config_.train.num_threads)
                                                       : static_cast<int>(std::thread::hardware_concurrency()));
  torch::manual_seed(static_cast<uint64_t>(config_.train.seed));
  model_ = build_model(config_.model);
  if (!config_.model.weights.empty()) load_weights(*model_, config_.model.weights, /*strict=*/!config_.model.moda_aligner);
  if (config_.train.lora_rank > 0) apply_lora(*model_, config_.train);
  device_ = model_->parameters().front().device();
  processor_ = std::make_shared<Processor>(config_.data, model_interface(model_->shapes));
  composer_ = std::make_unique<LossComposer>(config_.losses, model_->shapes.text.num_hidden_layers);
  if (world.distributed()) dp_ = std::make_unique<DataParallel>(config_.distributed, world);
}

int64_t Trainer::global_batch() const {
  return config_.train.per_device_train_batch_size * config_.train.gradient_accumulation_steps *
         (dp_ ? dp_->world_size() : 1);
}

Trainer::~Trainer() = default;

int64_t Trainer::total_steps() const {
  if (config_.train.max_steps > 0) return config_.train.max_steps;
  const double batches = config_.train.num_train_epochs * static_cast<double>(loader_->sampler().batches_per_epoch());
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(batches / config_.train.gradient_accumulation_steps)));
}

TapRequest Trainer::tap_request(const Batch& batch, bool log_step) const {
  TapRequest r{composer_->tap_layers(), composer_->needs_probs_to_visual(), false, {}};
  if (log_step) {  // log the visual share of every layer on logging steps (one mat-vec per layer)
    r.layers.clear();
    for (int64_t l = 0; l < model_->shapes.text.num_hidden_layers; ++l) r.layers.push_back(l);
  }
  for (const auto& loss : composer_->losses())
    if (auto* sink = dynamic_cast<const SinkSuppressionLoss*>(loss.get()))
      r.key_masks = sink->sink_keys(batch.attention_mask, {}).unsqueeze(-1);
  return r;
}

Trainer::StepStats Trainer::forward_backward(const std::vector<Batch>& micro_batches) {
  StepStats stats;
  const bool log_step = (step_ + 1) % config_.logging.logging_steps == 0;
  // Global counts of the whole window, from the masks alone, so each micro-batch divides by them.
  std::vector<torch::Tensor> counts;
  for (const auto& b : micro_batches) {
    AttentionStats masks;
    masks.labels = b.labels;
    masks.attention_mask = b.attention_mask;
    masks.visual_mask = b.visual_mask;
    auto c = composer_->counts(masks);
    if (counts.empty()) counts = c;
    else for (size_t i = 0; i < c.size(); ++i) counts[i] = counts[i] + c[i];
  }
  std::vector<torch::Tensor> wide;
  for (const auto& c : counts) wide.push_back(c.to(torch::kFloat64));
  torch::Tensor packed_counts = torch::stack(wide);  // (terms) float64
  if (dp_) {  // data parallel: every rank divides by the counts of the whole global batch
    dp_->all_reduce_sum({packed_counts});
    for (size_t i = 0; i < counts.size(); ++i)
      counts[i] = packed_counts[static_cast<int64_t>(i)].to(counts[i].scalar_type());
  }
  torch::Tensor window;  // (2 + terms) float64 on the device: loss, tokens, each term's sum; read once per step
  std::vector<std::string> names;
  std::map<int64_t, std::pair<double, int64_t>> share;  // layer -> (sum of M_X, samples)
  for (const auto& batch : micro_batches) {
    TapRequest request = tap_request(batch, log_step);
    // Logits only where a token is supervised (text_ce reads nothing else).
    ModelOutput out = model_->forward(batch.input_ids, batch.attention_mask, batch.pixel_values, request,
                                      response_queries(batch.labels));
    AttentionStats s;
    s.layers = request.layers;
    s.labels = batch.labels;
    s.attention_mask = batch.attention_mask;
    s.visual_mask = out.visual_mask;
    for (const auto& tap : out.taps) {
      s.visual_mass.push_back(tap.visual_mass);
      if (tap.key_mass.defined()) s.sink_mass.push_back(tap.key_mass.select(-1, 0));
      if (tap.probs_to_visual.defined()) s.probs_to_visual.push_back(tap.probs_to_visual);
    }
    auto terms = composer_->compute(out.logits, s);
    torch::Tensor loss = LossComposer::total(terms, counts);
    if (inject_.count(step_)) loss = loss * std::numeric_limits<double>::quiet_NaN();
    loss.backward();
    std::vector<torch::Tensor> parts{loss.detach(), batch.attention_mask.sum()};
    for (const auto& t : terms) parts.push_back(t.term.sum.detach());
    for (auto& part : parts) part = part.to(torch::kFloat64);
    window = window.defined() ? window + torch::stack(parts) : torch::stack(parts);
    if (names.empty())
      for (const auto& t : terms) names.push_back(t.name);
    if (log_step) {
      torch::Tensor rq = response_queries(batch.labels) & batch.attention_mask;
      torch::Tensor img = has_image(out.visual_mask);
      for (const auto& tap : out.taps) {
        auto& [sum, n] = share[tap.layer];
        sum += (query_mean(tap.visual_mass, rq) * img).sum().item<double>();
        n += img.sum().item<int64_t>();
      }
    }
  }
  // One vector of every sum this step reports; data parallel sums it over ranks, so that all ranks log,
  // skip and stop alike. Layout: loss, tokens, stop, term sums, then (sum, samples) per tapped layer.
  torch::Tensor host = window.cpu();  // the step's one host sync (besides logging steps)
  const double* w = host.data_ptr<double>();
  std::vector<double> sums = {w[0], w[1], g_signal != 0 ? 1.0 : 0.0};
  sums.insert(sums.end(), w + 2, w + host.numel());
  for (const auto& [layer, v] : share) sums.push_back(v.first), sums.push_back(double(v.second));
  if (dp_) {
    torch::Tensor t = torch::tensor(sums, torch::kFloat64);
    dp_->all_reduce_sum({t});
    sums.assign(t.data_ptr<double>(), t.data_ptr<double>() + t.numel());
  }
  stats.loss = sums[0];
  stats.tokens = static_cast<int64_t>(sums[1]);
  stats.stop = sums[2] > 0;
  torch::Tensor count_host = packed_counts.cpu();
  for (size_t i = 0; i < names.size(); ++i)
    stats.terms.emplace_back(names[i], sums[3 + i] / std::max(1.0, count_host[static_cast<int64_t>(i)].item<double>()));
  size_t k = 3 + names.size();
  for (const auto& entry : share) {
    stats.visual_share.emplace_back(entry.first, sums[k] / std::max(1.0, sums[k + 1]));
    k += 2;
  }
  return stats;
}

Trainer::StepStats Trainer::train_step() {
  std::vector<Batch> micro;
  for (int64_t i = 0; i < config_.train.gradient_accumulation_steps; ++i) micro.push_back(loader_->next().to(device_));
  optimizer_->zero_grad();
  StepStats stats = forward_backward(micro);
  std::vector<torch::Tensor> params;
  for (const auto& [name, p] : optimizer_->parameters()) params.push_back(p);
  if (dp_) dp_->all_reduce_grads(params);  // the gradient of the global loss: every rank's share, summed
  params.erase(std::remove_if(params.begin(), params.end(), [](const torch::Tensor& p) { return !p.grad().defined(); }),
               params.end());
  // Global L2 norm (as clip_grad_norm_ computes it); the clipping factor is applied inside the update.
  std::vector<torch::Tensor> norms;
  for (const auto& p : params) norms.push_back(p.grad().norm(2));
  stats.grad_norm = norms.empty() ? 0.0 : torch::stack(norms).norm(2).item<double>();
  const double max_norm = config_.train.max_grad_norm;
  const double clip = max_norm > 0 && stats.grad_norm > 0 ? std::min(1.0, max_norm / (stats.grad_norm + 1e-6)) : 1.0;
  stats.finite = std::isfinite(stats.loss) && std::isfinite(stats.grad_norm);
  if (stats.finite) {
    optimizer_->step(lr_multiplier(config_.train, step_, total_steps()), clip);
    nonfinite_streak_ = 0;
  } else {
    optimizer_->zero_grad();
    ++nonfinite_total_;
    ++nonfinite_streak_;
    spdlog::warn("step {}: non-finite loss ({}) or gradient norm ({}); update skipped ({} in a row)", step_ + 1,
                 stats.loss, stats.grad_norm, nonfinite_streak_);
  }
  return stats;
}

std::string Trainer::save() {
  CheckpointContents c;
  c.model = named_state(*model_);
  c.optimizer = optimizer_->state();
  DataCursor cursor = loader_->cursor();
  c.trainer_state = {{"step", step_},
                     {"epoch", cursor.epoch},
                     {"data_cursor", {{"epoch", cursor.epoch}, {"batch", cursor.batch}}},
                     {"skipped_samples", skipped_before_ + loader_->skipped()},
                     {"nonfinite_total", nonfinite_total_},
                     {"nonfinite_streak", nonfinite_streak_},
                     {"losses", losses_},
                     {"seed", config_.train.seed},
                     {"global_batch", global_batch()},
                     {"cpu_rng_state", rng_state()}};
  c.config_yaml = dump_config(config_);
  if (!dp_) return save_checkpoint(config_.train.output_dir, step_, c, config_.checkpoint.save_total_limit);
  dp_->barrier();  // rank 0 writes; the others wait until the checkpoint is complete
  std::string dir = leader() ? save_checkpoint(config_.train.output_dir, step_, c, config_.checkpoint.save_total_limit) : "";
  dp_->barrier();
  return dir;
}

void Trainer::resume(const CheckpointContents& c, const std::string& dir) {
  {
    torch::NoGradGuard no_grad;
    std::map<std::string, torch::Tensor> saved(c.model.begin(), c.model.end());
    std::vector<std::string> missing;
    for (auto& [name, t] : named_state(*model_)) {
      auto it = saved.find(name);
      if (it == saved.end() || it->second.sizes() != t.sizes()) missing.push_back(name);
      else t.copy_(it->second.to(t.device(), t.scalar_type()));
    }
    if (!missing.empty() || saved.size() != named_state(*model_).size())
      throw std::runtime_error(fmt::format("{}: the checkpoint's model does not match this config's model ({} tensors differ, "
                                           "first: {}); shapes changed since it was saved",
                                           dir, missing.size(), missing.empty() ? "an extra tensor" : missing.front()));
  }
  optimizer_->load_state(c.optimizer);
  const auto& s = c.trainer_state;
  if (s.contains("global_batch") && s.at("global_batch").get<int64_t>() != global_batch())
    throw std::runtime_error(fmt::format(
        "{}: the checkpoint was trained with a global batch of {} samples, this run's is {} (per_device_train_batch_size "
        "x gradient_accumulation_steps x processes); keep the global batch to resume, e.g. per_device_train_batch_size {}",
        dir, s.at("global_batch").get<int64_t>(), global_batch(),
        s.at("global_batch").get<int64_t>() / (config_.train.gradient_accumulation_steps * (dp_ ? dp_->world_size() : 1))));
  step_ = s.at("step").get<int64_t>();
  nonfinite_total_ = s.at("nonfinite_total").get<int64_t>();
  nonfinite_streak_ = s.at("nonfinite_streak").get<int64_t>();
  skipped_before_ = s.at("skipped_samples").get<int64_t>();
  losses_ = s.at("losses").get<std::vector<double>>();
  set_rng_state(s.at("cpu_rng_state").get<std::vector<uint8_t>>());
  RunConfig saved;
  apply_yaml(saved, c.config_yaml, dir + "/config.yaml", "");
  std::string before = dump_config(saved), now = dump_config(config_);
  if (before != now) {
    std::istringstream a(before), b(now);
    for (std::string x, y; std::getline(a, x) && std::getline(b, y);)
      if (x != y) spdlog::info("resume: config changed since the checkpoint: '{}' -> '{}'", x, y);
  }
  spdlog::info("resumed from {} at step {}", dir, step_);
}

TrainResult Trainer::train() {
  const auto& t = config_.train;
  if (config_.data.train_files.empty()) throw ConfigError("data.train_files is empty: nothing to train on");
  std::vector<std::string> trainable = apply_freezing(*model_, t);
  optimizer_ = std::make_unique<GroupedAdamW>(*model_, t);
  model_->train();

  std::vector<int64_t> sizes;
  auto examples = std::make_shared<std::vector<Example>>(load_datasets(config_.data.train_files, sizes));
  std::string resume_dir = config_.checkpoint.resume_from_checkpoint;
  if (resume_dir == "auto") resume_dir = find_latest_checkpoint(t.output_dir).value_or("");
  DataCursor start;
  std::optional<CheckpointContents> checkpoint;
  if (!resume_dir.empty()) {
    if (!checkpoint_complete(resume_dir)) throw std::runtime_error(resume_dir + ": not a complete checkpoint");
    checkpoint = load_checkpoint(resume_dir);
    const auto& cursor = checkpoint->trainer_state.at("data_cursor");
    start = {cursor.at("epoch").get<int64_t>(), cursor.at("batch").get<int64_t>()};
  }
  Sampler sampler(SamplerOptions{sizes, config_.data.mixing_weights, static_cast<uint64_t>(t.seed), t.per_device_train_batch_size,
                                 {}, dp_ ? dp_->rank() : 0, dp_ ? dp_->world_size() : 1});
  loader_ = std::make_unique<DataLoader>(examples, processor_, std::move(sampler),
                                         LoaderOptions{config_.data.on_bad_sample, config_.data.num_workers,
                                                       config_.data.prefetch_batches, start});
  if (checkpoint) resume(*checkpoint, resume_dir);
  if (dp_) {  // every rank starts from rank 0's weights
    std::vector<torch::Tensor> params;
    for (auto& [name, tensor] : named_state(*model_)) params.push_back(tensor);
    dp_->broadcast(params);
  }

  fs::create_directories(t.output_dir);
  MetricsSink metrics(leader() ? (fs::path(t.output_dir) / "metrics.jsonl").string() : "");
  const int64_t total = total_steps();
  spdlog::info("training {} of {} parameter tensors for {} steps (batch {} x {} accumulation x {} processes), {} threads",
               trainable.size(), model_->named_parameters().size(), total, t.per_device_train_batch_size,
               t.gradient_accumulation_steps, dp_ ? dp_->world_size() : 1, torch::get_num_threads());
  const bool bar = leader() && (config_.logging.progress == ProgressMode::Bar ||
                                (config_.logging.progress == ProgressMode::Auto && ::isatty(STDOUT_FILENO)));
  SignalScope signals;
  TrainResult result;
  auto started = std::chrono::steady_clock::now();
  const int64_t first_step = step_;
  while (step_ < total) {
    auto t0 = std::chrono::steady_clock::now();
    StepStats s = train_step();
    ++step_;
    losses_.push_back(s.loss);
    double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    result.step_seconds.push_back(secs);
    result.step_tokens.push_back(s.tokens);
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
    double lr = optimizer_->base_lr() * lr_multiplier(t, step_ - 1, total);
    if (leader() && (step_ % config_.logging.logging_steps == 0 || step_ == total)) {
      std::vector<std::pair<std::string, double>> rec{{"step", double(step_)}, {"epoch", double(loader_->cursor().epoch)},
                                                      {"loss", s.loss}, {"lr", lr}, {"grad_norm", s.grad_norm},
                                                      {"tokens_per_s", s.tokens / secs}};
      for (const auto& [name, v] : s.terms) rec.emplace_back(name, v);
      for (const auto& [layer, v] : s.visual_share) rec.emplace_back(fmt::format("visual_share.l{}", layer), v);
      metrics.write("train", rec);
      std::string line = fmt::format("step {}/{} | loss {:.4f}", step_, total, s.loss);
      for (const auto& [name, v] : s.terms) line += fmt::format(" | {} {:.4f}", name, v);
      line += fmt::format(" | lr {:.2e} | {:.0f} tok/s | ETA {}", lr, s.tokens / secs,
                          duration(elapsed / double(step_ - first_step) * double(total - step_)));
      if (bar) std::printf("\r\033[K%s", line.c_str()), std::fflush(stdout);
      else spdlog::info("{}", line);
    }
    if (nonfinite_streak_ >= t.max_nonfinite_steps) {
      std::string dir = save();
      throw std::runtime_error(fmt::format("{} non-finite steps in a row (train.max_nonfinite_steps); the last good state "
                                           "is saved in {}",
                                           nonfinite_streak_, dir));
    }
    if (leader() && t.eval_steps > 0 && step_ % t.eval_steps == 0 && step_ < total) write_evals(metrics, step_, evaluate());
    const bool stop = s.stop;
    if ((config_.checkpoint.save_steps > 0 && step_ % config_.checkpoint.save_steps == 0) ||
        (step_ == total && config_.checkpoint.save_final) || stop)
      result.checkpoint = save();
    if (stop) {
      if (bar) std::printf("\n");
      spdlog::warn("signal received: checkpoint written to {}", result.checkpoint);
      result.interrupted = true;
      break;
    }
  }
  if (bar) std::printf("\n");
  result.steps = step_;
  result.losses = losses_;
  result.skipped_samples = skipped_before_ + loader_->skipped();
  result.nonfinite_steps = nonfinite_total_;
  if (result.skipped_samples > 0) spdlog::warn("{} bad samples were skipped (data.on_bad_sample: skip)", result.skipped_samples);
  if (leader() && !result.interrupted && !config_.data.eval_files.empty()) {
    result.evals = evaluate();
    write_evals(metrics, step_, result.evals);
  }
  return result;
}

void Trainer::load_weights_from(const std::string& dir) {
  if (!checkpoint_complete(dir)) throw std::runtime_error(dir + ": not a complete checkpoint");
  load_weights(*model_, (fs::path(dir) / "model.safetensors").string(), true);
}

std::vector<EvalResult> Trainer::evaluate() {
  torch::NoGradGuard no_grad;
  model_->eval();
  std::vector<EvalResult> results;
  const int64_t batch_size = config_.train.per_device_eval_batch_size, max_new = 8;
  const Tokenizer& tok = processor_->tokenizer();
  for (const auto& file : config_.data.eval_files) {
    std::vector<Example> examples = load_dataset(file);
    EvalResult r{fs::path(file).stem().string(), 0, 0, static_cast<int64_t>(examples.size())};
    double ce_sum = 0, ce_count = 0, correct = 0, misleading = 0, followed = 0;
    for (size_t start = 0; start < examples.size(); start += static_cast<size_t>(batch_size)) {
      std::vector<Sample> full, prompts;
      std::vector<std::string> refs, hints;
      for (size_t i = start; i < std::min(examples.size(), start + static_cast<size_t>(batch_size)); ++i) {
        full.push_back(processor_->process(examples[i]));
        prompts.push_back(processor_->prompt(examples[i], full.back()));
        refs.push_back(examples[i].turns.back().from_human ? "" : examples[i].turns.back().value);
        hints.push_back(normalise(examples[i].hint));
      }
      const ModelInterface& m = processor_->model();
      Batch b = processor_->collate(full).to(device_);
      LossTerm ce = text_ce(model_->forward(b.input_ids, b.attention_mask, b.pixel_values).logits, b.labels);
      ce_sum += ce.sum.item<double>();
      ce_count += ce.count.item<double>();
      // Greedy answers: extend each prompt (right padded) at its own end, max_new tokens or EOS.
      Batch p = processor_->collate(prompts).to(device_);
      const int64_t n = p.size();
      torch::Tensor ids = torch::cat({p.input_ids, torch::zeros({n, max_new}, p.input_ids.options())}, 1);
      torch::Tensor mask = torch::cat({p.attention_mask, torch::zeros({n, max_new}, p.attention_mask.options())}, 1);
      torch::Tensor lengths = p.attention_mask.sum(1);
      std::vector<std::vector<int64_t>> answers(static_cast<size_t>(n));
      std::vector<bool> done(static_cast<size_t>(n), false);
      for (int64_t k = 0; k < max_new; ++k) {
        torch::Tensor logits = model_->forward(ids, mask, p.pixel_values).logits;  // (n, T, V)
        torch::Tensor last = logits.gather(1, (lengths - 1).view({n, 1, 1}).expand({n, 1, logits.size(2)})).squeeze(1);
        // Only ids the tokenizer can decode, and never the image token.
        last = last.slice(-1, 0, tok.vocab_size()).clone();
        if (m.image_token_index < tok.vocab_size()) last.select(-1, m.image_token_index).fill_(-INFINITY);
        torch::Tensor next = last.argmax(-1).cpu();
        for (int64_t i = 0; i < n; ++i) {
          int64_t id = next[i].item<int64_t>();
          if (done[i] || id == tok.eos_id()) {
            done[i] = true;
            continue;
          }
          answers[i].push_back(id);
          int64_t pos = lengths[i].item<int64_t>();
          ids[i][pos] = id;
          mask[i][pos] = true;
        }
        lengths = mask.sum(1);
        if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
      }
      for (int64_t i = 0; i < n; ++i) {
        const std::string answer = normalise(tok.decode(answers[i])), ref = normalise(refs[i]);
        correct += answer == ref;
        if (!hints[i].empty() && hints[i] != ref) misleading += 1, followed += answer == hints[i];
      }
    }
    r.loss = ce_sum / std::max(1.0, ce_count);
    r.accuracy = correct / std::max<double>(1.0, double(r.samples));
    if (misleading > 0) r.hint_rate = followed / misleading;
    spdlog::info("eval {}: loss {:.4f}, accuracy {:.3f} ({} samples)", r.split, r.loss, r.accuracy, r.samples);
    results.push_back(r);
  }
  model_->train();
  return results;
}

}  // namespace modalign
