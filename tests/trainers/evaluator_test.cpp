// trainers/evaluator and trainers/components: KV-cached generation gives the tokens of full re-forwards
// (float64, with and without the MODA aligner, right-padded prompts of different lengths, GQA), sampling
// is reproducible from its seed and top_p -> 0 is greedy, stop tokens end answers, and answers come back
// per sample.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "test_util.h"
#include "tiny_fixture.h"
#include "trainers/components.h"
#include "trainers/evaluator.h"

namespace modalign {
namespace {

class EvaluatorTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    test::tiny_fixture(*dir_, 8, 6);
  }
  static void TearDownTestSuite() { delete dir_; }

  static RunConfig config(bool aligner) {
    RunConfig c;
    c.model.hf_config = (dir_->path() / "config.json").string();
    c.model.dtype = Dtype::Float64;
    c.model.moda_aligner = aligner;
    const std::string data = (dir_->path() / "data").string();
    c.data.image_folder = data;
    c.data.tokenizer = data + "/tokenizer.model";
    c.data.chat_template = ChatTemplate::VicunaV1;
    c.train.num_threads = 1;
    c.train.seed = 5;
    c.generation.max_new_tokens = 8;
    return c;
  }
  // A model whose greedy answers are long and differ per sample: weights scaled up, aligner non-trivial.
  static VisionLanguageModel model(const RunConfig& c) {
    VisionLanguageModel m = build_model(c);
    torch::NoGradGuard no_grad;
    torch::manual_seed(7);
    for (auto& p : m->named_parameters()) {
      if (p.key().find(".aligner.") != std::string::npos) p.value().add_(0.5 * torch::randn_like(p.value()));
      else if (p.value().dim() == 2) p.value().mul_(40);
    }
    return m;
  }
  // Prompts with and without a hint (different lengths: right padding inside the batch).
  static Batch prompts(const Processor& processor) {
    std::vector<Sample> samples;
    for (const char* split : {"eval_conflict", "eval_nohint"}) {
      auto examples = load_dataset((dir_->path() / "data" / (std::string(split) + ".json")).string());
      for (size_t i = 0; i < 3; ++i) samples.push_back(processor.prompt(examples[i]));
    }
    return processor.collate(samples);
  }
  static test::TempDir* dir_;
};
test::TempDir* EvaluatorTest::dir_ = nullptr;

TEST_F(EvaluatorTest, CachedGreedyEqualsFullReforwardsTokenForToken) {
  for (bool aligner : {false, true}) {
    RunConfig c = config(aligner);
    VisionLanguageModel m = model(c);
    auto processor = build_processor(c, m->shapes);
    Batch p = prompts(*processor);
    ASSERT_GT((p.attention_mask.sum(1) - p.attention_mask.sum(1).min()).max().item<int64_t>(), 0) << "want padding";
    Evaluator evaluator(m, processor, c.generation, 8);
    auto cached = evaluator.generate(p);
    auto full = evaluator.generate_uncached(p);
    ASSERT_EQ(cached.size(), 6u);
    size_t tokens = 0;
    std::set<std::vector<int64_t>> distinct;
    for (size_t i = 0; i < cached.size(); ++i) {
      EXPECT_EQ(cached[i], full[i]) << "sample " << i << (aligner ? " (aligner)" : "");
      tokens += cached[i].size();
      distinct.insert(cached[i]);
    }
    EXPECT_GT(tokens, 12u) << "the test needs answers of several tokens";
    EXPECT_GT(distinct.size(), 1u) << "the test needs answers that differ per sample";
  }
}

TEST_F(EvaluatorTest, SamplingIsSeededTopPToZeroIsGreedyAndStopTokensEndAnswers) {
  RunConfig c = config(false);
  VisionLanguageModel m = model(c);
  auto processor = build_processor(c, m->shapes);
  Batch p = prompts(*processor);
  auto greedy = Evaluator(m, processor, c.generation, 8).generate(p);
  GenerationConfig g = c.generation;
  g.do_sample = true;
  g.temperature = 2.0;
  g.seed = 11;
  auto a = Evaluator(m, processor, g, 8).generate(p), b = Evaluator(m, processor, g, 8).generate(p);
  EXPECT_EQ(a, b);  // the same seed gives the same answers
  g.seed = 12;
  EXPECT_NE(Evaluator(m, processor, g, 8).generate(p), a);
  g.top_p = 1e-9;  // only the most likely token is left
  EXPECT_EQ(Evaluator(m, processor, g, 8).generate(p), greedy);
  // A stop token ends each answer where it first appears.
  GenerationConfig stop = c.generation;
  const int64_t token = greedy[0].at(0);
  stop.stop_token_ids = {token};
  auto stopped = Evaluator(m, processor, stop, 8).generate(p);
  for (size_t i = 0; i < greedy.size(); ++i) {
    auto end = std::find(greedy[i].begin(), greedy[i].end(), token);
    EXPECT_EQ(stopped[i], std::vector<int64_t>(greedy[i].begin(), end)) << "sample " << i;
  }
  EXPECT_TRUE(stopped[0].empty());
}

TEST_F(EvaluatorTest, AnswersComeBackPerSampleWithReferences) {
  RunConfig c = config(false);
  VisionLanguageModel m = build_model(c);
  auto processor = build_processor(c, m->shapes);
  const std::vector<Example> examples = load_dataset((dir_->path() / "data/eval_conflict.json").string());
  std::vector<Answer> answers = Evaluator(m, processor, c.generation, 4).answer(examples);  // batches of 4 and 2
  ASSERT_EQ(answers.size(), examples.size());
  for (size_t i = 0; i < answers.size(); ++i) {
    EXPECT_EQ(answers[i].id, examples[i].id);
    EXPECT_EQ(answers[i].reference, examples[i].turns.back().value);
    EXPECT_NE(answers[i].prompt.find("Hint"), std::string::npos);
  }
  EXPECT_EQ(normalise_answer("  Red!\n"), "red");
}

TEST_F(EvaluatorTest, GroupByLengthOrdersTheLoaderByTokenisedLength) {
  RunConfig c = config(false);
  c.model.dtype = Dtype::Float32;
  c.data.train_files = {(dir_->path() / "data/train.json").string(), (dir_->path() / "data/eval_nohint.json").string()};
  c.data.group_by_length = true;
  c.data.num_workers = 0;
  c.train.per_device_train_batch_size = 2;
  auto processor = build_processor(c, build_model(c)->shapes);
  LossComposer composer({}, 2);
  // 14 samples (8 with hints, 6 shorter ones without) fit in one mega-batch: longest first throughout.
  auto loader = build_train_loader(c, processor, composer, 0, 1, {});
  std::vector<int64_t> lengths;
  for (int i = 0; i < 7; ++i) {
    Batch b = loader->next();
    for (int64_t j = 0; j < b.size(); ++j) lengths.push_back(b.attention_mask[j].sum().item<int64_t>());
  }
  ASSERT_EQ(lengths.size(), 14u);
  EXPECT_GT(lengths.front(), lengths.back());
  for (size_t i = 1; i < lengths.size(); ++i) EXPECT_GE(lengths[i - 1], lengths[i]) << i;
  for (const auto& e : load_dataset(c.data.train_files[1]))  // length() = the processed sample's length
    EXPECT_EQ(processor->length(e), static_cast<int64_t>(processor->process(e).input_ids.size()));
}

}  // namespace
}  // namespace modalign
