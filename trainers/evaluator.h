// Evaluator: answers and eval metrics of a model, outside the training loop. Generation prefills each
// batch of prompts once and decodes one token per step from the KV cache (greedy, or sampling with
// temperature / top_p from a seeded generator), up to generation.max_new_tokens or a stop token. Eval
// reports per split the text CE per supervised token, the share of exact answers, the hint rate and the
// accuracy per question type.
#pragma once
#include <torch/torch.h>

#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "lib/config/run_config.h"
#include "lib/data/dataset.h"
#include "lib/data/processor.h"
#include "lib/model/vision_language_model.h"
#include "lib/util/metrics_sink.h"

namespace modalign {

// One eval file, read and checked once (a run evaluates it many times).
struct EvalSplit {
  std::string name;  // the file's stem, e.g. eval_conflict
  std::vector<Example> examples;
};
std::vector<EvalSplit> load_eval_splits(const std::vector<std::string>& files);

struct EvalResult {
  std::string split;    // eval file stem, e.g. eval_conflict
  double loss = 0;      // text CE per supervised token
  double accuracy = 0;  // generated answer == reference after normalisation
  int64_t samples = 0;
  // Among samples whose "hint" names a wrong answer: the share answered with the hint (-1 when none).
  double hint_rate = -1;
  std::map<std::string, double> accuracy_by_type;  // per "type" of the samples that carry one
};

// One answered sample of `modalign generate --data`.
struct Answer {
  std::string id, prompt, answer, reference;
};

class Evaluator {
 public:
  Evaluator(VisionLanguageModel model, std::shared_ptr<const Processor> processor, GenerationConfig generation,
            int64_t batch_size);

  // The answer to each example's last human turn (its final reply, if any, is the reference), in order.
  std::vector<Answer> answer(const std::vector<Example>& examples);
  // Loss, accuracy, hint rate and accuracy per type of each split.
  std::vector<EvalResult> evaluate(const std::vector<EvalSplit>& splits);
  // Greedy (or sampled) token ids after each prompt of a collated prompt batch, without EOS / stop tokens.
  std::vector<std::vector<int64_t>> generate(const Batch& prompts);
  // The same answers by re-running the whole sequence for every new token (no cache): the reference the
  // cached path is tested against. Greedy only.
  std::vector<std::vector<int64_t>> generate_uncached(const Batch& prompts);

 private:
  torch::Tensor next_tokens(torch::Tensor logits);  // (B, V) -> (B) int64 on the CPU
  bool is_stop(int64_t id) const;                   // EOS or one of generation.stop_token_ids
  VisionLanguageModel model_;
  std::shared_ptr<const Processor> processor_;
  GenerationConfig generation_;
  int64_t batch_size_;
  torch::Generator sampler_;
  torch::Tensor undecodable_;  // (V') bool: ids the tokenizer lacks, or the image token; never generated
};

// Lower case, letters, digits and spaces only, trimmed: how answers and references are compared.
std::string normalise_answer(const std::string& text);

// [{split, loss, accuracy, samples, hint_rate (when measured), accuracy_by_type}] for `modalign eval --out`.
nlohmann::json eval_json(const std::vector<EvalResult>& evals);
// One "eval" record per split in metrics.jsonl: <split>.loss, .accuracy, .hint_rate, .accuracy.<type>.
void write_evals(MetricsSink& metrics, int64_t step, const std::vector<EvalResult>& evals);

}  // namespace modalign
