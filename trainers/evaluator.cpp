#include "trainers/evaluator.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

#include "losses/text_ce.h"

namespace modalign {
namespace fs = std::filesystem;

std::string normalise_answer(const std::string& text) {
  std::string out;
  for (char c : text)
    if (std::isalnum(static_cast<unsigned char>(c)) || c == ' ') out += static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  size_t a = out.find_first_not_of(' '), b = out.find_last_not_of(' ');
  return a == std::string::npos ? "" : out.substr(a, b - a + 1);
}

nlohmann::json eval_json(const std::vector<EvalResult>& evals) {
  nlohmann::json out = nlohmann::json::array();
  for (const auto& e : evals) {
    nlohmann::json j = {{"split", e.split}, {"loss", e.loss}, {"accuracy", e.accuracy}, {"samples", e.samples}};
    if (e.hint_rate >= 0) j["hint_rate"] = e.hint_rate;
    if (!e.accuracy_by_type.empty()) j["accuracy_by_type"] = e.accuracy_by_type;
    out.push_back(j);
  }
  return out;
}

void write_evals(MetricsSink& metrics, int64_t step, const std::vector<EvalResult>& evals) {
  for (const auto& e : evals) {
    std::vector<std::pair<std::string, double>> v = {{e.split + ".loss", e.loss}, {e.split + ".accuracy", e.accuracy}};
    if (e.hint_rate >= 0) v.push_back({e.split + ".hint_rate", e.hint_rate});
    for (const auto& [type, accuracy] : e.accuracy_by_type) v.push_back({e.split + ".accuracy." + type, accuracy});
    metrics.write("eval", step, v);
  }
}

Evaluator::Evaluator(VisionLanguageModel model, std::shared_ptr<const Processor> processor, GenerationConfig generation,
                     int64_t batch_size)
    : model_(std::move(model)),
      processor_(std::move(processor)),
      generation_(std::move(generation)),
      batch_size_(batch_size),
      sampler_(at::detail::createCPUGenerator(static_cast<uint64_t>(generation_.seed))) {
  // Only ids the tokenizer can decode are generated (the model's padded rows and a cut tokenizer's holes are
  // not), and never the image token.
  const Tokenizer& tok = processor_->tokenizer();
  undecodable_ = torch::zeros({tok.vocab_size()}, torch::kBool);
  auto u = undecodable_.accessor<bool, 1>();
  for (int64_t id = 0; id < tok.vocab_size(); ++id) u[id] = !tok.has_id(id);
  const int64_t image = processor_->model().image_token_index;
  if (image < tok.vocab_size()) u[image] = true;
}

torch::Tensor Evaluator::next_tokens(torch::Tensor logits) {
  logits = logits.slice(-1, 0, undecodable_.size(0)).to(torch::kFloat32).cpu().masked_fill(undecodable_, -INFINITY);  // (B, V')
  if (!generation_.do_sample) return logits.argmax(-1);
  torch::Tensor probs = torch::softmax(logits / generation_.temperature, -1);
  if (generation_.top_p < 1.0) {  // keep the smallest head of the sorted distribution reaching top_p
    auto [sorted, order] = probs.sort(-1, /*descending=*/true);
    torch::Tensor before = sorted.cumsum(-1) - sorted;  // mass of the tokens ranked above each one
    sorted.masked_fill_(before >= generation_.top_p, 0);
    probs = torch::zeros_like(probs).scatter_(-1, order, sorted);
  }
  return torch::multinomial(probs, 1, false, sampler_).squeeze(-1);
}

bool Evaluator::is_stop(int64_t id) const {
  const auto& stops = generation_.stop_token_ids;
  return id == processor_->tokenizer().eos_id() || std::find(stops.begin(), stops.end(), id) != stops.end();
}

std::vector<std::vector<int64_t>> Evaluator::generate(const Batch& prompts) {
  torch::NoGradGuard no_grad;
  model_->eval();
  const auto device = model_->parameters().front().device();
  Batch p = prompts.to(device);
  const int64_t n = p.size();
  KvCache cache;
  torch::Tensor logits = model_->prefill(p.input_ids, p.attention_mask, p.pixel_values, cache, p.image_grid_thw);  // (n, V)
  std::vector<std::vector<int64_t>> answers(static_cast<size_t>(n));
  std::vector<bool> done(static_cast<size_t>(n), false);
  for (int64_t step = 0; step < generation_.max_new_tokens; ++step) {
    torch::Tensor next = next_tokens(logits);  // (n) on the CPU
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = next[i].item<int64_t>();
      if (is_stop(id)) done[static_cast<size_t>(i)] = true;
      if (!done[static_cast<size_t>(i)]) answers[static_cast<size_t>(i)].push_back(id);
    }
    if (std::all_of(done.begin(), done.end(), [](bool d) { return d; }) || step + 1 == generation_.max_new_tokens) break;
    logits = model_->decode(next.to(device), cache);
  }
  return answers;
}

std::vector<std::vector<int64_t>> Evaluator::generate_uncached(const Batch& prompts) {
  TORCH_CHECK(!generation_.do_sample, "generate_uncached is greedy only");
  torch::NoGradGuard no_grad;
  model_->eval();
  const int64_t n = prompts.size(), max_new = generation_.max_new_tokens;
  const Batch p = prompts.to(model_->parameters().front().device());
  torch::Tensor ids = torch::cat({p.input_ids, torch::zeros({n, max_new}, p.input_ids.options())}, 1);
  torch::Tensor mask = torch::cat({p.attention_mask, torch::zeros({n, max_new}, p.attention_mask.options())}, 1);
  const torch::Tensor prompt = mask.clone();  // the aligner reads the prompt only, as in training
  std::vector<std::vector<int64_t>> answers(static_cast<size_t>(n));
  std::vector<bool> done(static_cast<size_t>(n), false);
  for (int64_t step = 0; step < max_new; ++step) {
    torch::Tensor logits = model_->forward(ids, mask, p.pixel_values, {}, {}, prompt, p.image_grid_thw).logits;  // (n, T, V)
    torch::Tensor last = (mask.sum(1) - 1).view({n, 1, 1}).expand({n, 1, logits.size(2)});
    torch::Tensor next = next_tokens(logits.gather(1, last).squeeze(1));
    for (int64_t i = 0; i < n; ++i) {
      const int64_t id = next[i].item<int64_t>();
      const auto k = static_cast<size_t>(i);
      if (is_stop(id)) done[k] = true;
      if (done[k]) continue;
      answers[k].push_back(id);
      const int64_t pos = mask[i].sum().item<int64_t>();
      ids[i][pos] = id;
      mask[i][pos] = true;
    }
    if (std::all_of(done.begin(), done.end(), [](bool d) { return d; })) break;
  }
  return answers;
}

std::vector<Answer> Evaluator::answer(const std::vector<Example>& examples) {
  const Tokenizer& tok = processor_->tokenizer();
  std::vector<Answer> out;
  for (size_t start = 0; start < examples.size(); start += static_cast<size_t>(batch_size_)) {
    std::vector<Sample> prompts;
    const size_t end = std::min(examples.size(), start + static_cast<size_t>(batch_size_));
    for (size_t i = start; i < end; ++i) prompts.push_back(processor_->prompt(examples[i]));
    std::vector<std::vector<int64_t>> ids = generate(processor_->collate(prompts));
    for (size_t i = start; i < end; ++i) {
      const Example& e = examples[i];
      const bool has_reference = !e.turns.empty() && !e.turns.back().from_human;
      const std::string question = e.turns[has_reference ? e.turns.size() - 2 : e.turns.size() - 1].value;
      out.push_back({e.id, question, tok.decode(ids[i - start]), has_reference ? e.turns.back().value : ""});
    }
  }
  return out;
}

std::vector<EvalSplit> load_eval_splits(const std::vector<std::string>& files) {
  std::vector<EvalSplit> splits;
  for (const auto& file : files) splits.push_back({fs::path(file).stem().string(), load_dataset(file)});
  return splits;
}

std::vector<EvalResult> Evaluator::evaluate(const std::vector<EvalSplit>& splits) {
  torch::NoGradGuard no_grad;
  model_->eval();
  const auto device = model_->parameters().front().device();
  const Tokenizer& tok = processor_->tokenizer();
  std::vector<EvalResult> results;
  for (const auto& [name, examples] : splits) {
    EvalResult r;
    r.split = name;
    r.samples = static_cast<int64_t>(examples.size());
    double ce_sum = 0, ce_count = 0, correct = 0, misleading = 0, followed = 0;
    std::map<std::string, std::pair<double, double>> by_type;  // type -> (correct, samples)
    for (size_t start = 0; start < examples.size(); start += static_cast<size_t>(batch_size_)) {
      const size_t end = std::min(examples.size(), start + static_cast<size_t>(batch_size_));
      std::vector<Sample> full, prompts;
      for (size_t i = start; i < end; ++i) {
        full.push_back(processor_->process(examples[i]));
        prompts.push_back(processor_->prompt(examples[i], &full.back()));
      }
      Batch b = processor_->collate(full).to(device);
      LossTerm ce = text_ce(
          model_->forward(b.input_ids, b.attention_mask, b.pixel_values, {}, {}, prompt_mask_from_labels(b.labels),
                         b.image_grid_thw).logits,
          b.labels);
      ce_sum += ce.sum.item<double>();
      ce_count += ce.count.item<double>();
      std::vector<std::vector<int64_t>> answers = generate(processor_->collate(prompts));
      for (size_t i = start; i < end; ++i) {
        const Example& e = examples[i];
        const std::string answer = normalise_answer(tok.decode(answers[i - start]));
        const std::string ref = normalise_answer(e.turns.back().from_human ? "" : e.turns.back().value);
        const std::string hint = normalise_answer(e.hint);
        correct += answer == ref;
        if (!e.type.empty()) by_type[e.type].first += answer == ref, by_type[e.type].second += 1;
        if (!hint.empty() && hint != ref) misleading += 1, followed += answer == hint;
      }
    }
    r.loss = ce_sum / std::max(1.0, ce_count);
    r.accuracy = correct / std::max<double>(1.0, double(r.samples));
    if (misleading > 0) r.hint_rate = followed / misleading;
    for (const auto& [type, counts] : by_type) r.accuracy_by_type[type] = counts.first / counts.second;
    spdlog::info("eval {}: loss {:.4f}, accuracy {:.3f} ({} samples)", r.split, r.loss, r.accuracy, r.samples);
    results.push_back(r);
  }
  return results;
}

}  // namespace modalign
