// trainers/probe: key groups and query sets by hand; on a tiny model with real prompts, the three
// groups' shares sum to 1 and equal what the full attention maps give.
#include <gtest/gtest.h>

#include "test_util.h"
#include "tiny_fixture.h"
#include "trainers/probe.h"
#include "trainers/trainer.h"

namespace modalign {
namespace {

// The tiny model on a few samples of the benchmark, vicuna_v1 prompts.
RunConfig tiny_config(const test::TempDir& dir, int64_t eval) {
  RunConfig c;
  c.model.hf_config = test::tiny_fixture(dir, 4, eval);
  const std::string data = (dir.path() / "data").string();
  c.data.train_files = {data + "/train.json"};
  c.data.image_folder = data;
  c.data.tokenizer = data + "/tokenizer.model";
  c.data.chat_template = ChatTemplate::VicunaV1;
  c.train.num_threads = 1;
  c.train.output_dir = (dir.path() / "run").string();
  return c;
}

TEST(ProbeKeyGroups, SplitRealTokensAroundTheImageSpan) {
  // [BOS, sys, img, img, question, answer, pad]
  torch::Tensor mask = torch::tensor({1, 1, 1, 1, 1, 1, 0}, torch::kBool).view({1, 7});
  torch::Tensor visual = torch::tensor({0, 0, 1, 1, 0, 0, 0}, torch::kBool).view({1, 7});
  torch::Tensor g = probe_key_groups(mask, visual);  // (1, 7, 3)
  EXPECT_TRUE(torch::equal(g.select(-1, 0), torch::tensor({0, 0, 1, 1, 0, 0, 0}, torch::kFloat32).view({1, 7})));
  EXPECT_TRUE(torch::equal(g.select(-1, 1), torch::tensor({1, 1, 0, 0, 0, 0, 0}, torch::kFloat32).view({1, 7})));
  EXPECT_TRUE(torch::equal(g.select(-1, 2), torch::tensor({0, 0, 0, 0, 1, 1, 0}, torch::kFloat32).view({1, 7})));
}

TEST(ProbeQueries, LastPromptIsThePositionBeforeTheFirstAnswerToken) {
  torch::Tensor labels = torch::tensor({-100, -100, -100, 7, 8, -100, 9, -100, -100, -100, -100, -100}).view({2, 6});
  EXPECT_TRUE(torch::equal(last_prompt_queries(labels),
                           torch::tensor({0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0}, torch::kBool).view({2, 6})));
}

TEST(Probe, SharesSumToOneAndEqualTheFullAttentionMaps) {
  test::TempDir dir;
  Trainer trainer(tiny_config(dir, 5));
  const std::vector<Example> examples = load_dataset((dir.path() / "data/eval_conflict.json").string());
  ProbeReport r = probe(trainer.model(), trainer.processor(), examples, 2);  // batches of 2, 2, 1
  ASSERT_EQ(r.samples, 5);
  ASSERT_EQ(static_cast<int64_t>(r.layers.size()), trainer.model()->shapes.text.num_hidden_layers);
  for (const auto& l : r.layers)
    for (const GroupShares* g : {&l.response, &l.last_prompt}) {
      EXPECT_NEAR(g->image + g->system + g->text, 1.0, 1e-5) << "layer " << l.layer;
      EXPECT_GT(g->system, 0.0);
      EXPECT_GT(g->text, 0.0);
      EXPECT_EQ(g->keys_image, static_cast<double>(trainer.model()->shapes.vision.num_patches()));
      EXPECT_NEAR(g->indices.mdi, ((g->system + g->text) / (g->keys_system + g->keys_text)) / (g->image / g->keys_image), 1e-9);
    }

  // Independent path: full P of every layer, one sample at a time, groups summed by hand.
  torch::NoGradGuard no_grad;
  trainer.model()->eval();
  TapRequest full;
  full.full_probs = true;
  for (const auto& l : r.layers) full.layers.push_back(l.layer);
  std::vector<double> image_share(r.layers.size(), 0.0), last_text(r.layers.size(), 0.0);
  for (const auto& e : examples) {
    Batch b = trainer.processor().collate({trainer.processor().process(e)});
    ModelOutput out = trainer.model()->forward(b.input_ids, b.attention_mask, b.pixel_values, full);
    torch::Tensor labels = b.labels[0];
    const int64_t T = labels.size(0);
    int64_t first_image = -1, last_image = -1;
    for (int64_t t = 0; t < T; ++t)
      if (b.visual_mask[0][t].item<bool>()) last_image = t, first_image = first_image < 0 ? t : first_image;
    for (size_t li = 0; li < out.taps.size(); ++li) {
      torch::Tensor p = out.taps[li].probs[0].mean(0).to(torch::kFloat64);  // (T, T) mean over heads
      double sum = 0, queries = 0;
      bool first = true;
      for (int64_t t = 0; t + 1 < T; ++t) {
        if (labels[t + 1].item<int64_t>() == -100) continue;
        sum += p[t].slice(0, first_image, last_image + 1).sum().item<double>();
        queries += 1;
        if (first) last_text[li] += p[t].slice(0, last_image + 1, t + 1).sum().item<double>() / examples.size();
        first = false;
      }
      image_share[li] += sum / queries / static_cast<double>(examples.size());
    }
  }
  for (size_t li = 0; li < r.layers.size(); ++li) {
    EXPECT_NEAR(r.layers[li].response.image, image_share[li], 1e-5);
    EXPECT_NEAR(r.layers[li].last_prompt.text, last_text[li], 1e-5);
  }
}

TEST(Probe, SplitWithoutImagesIsAnError) {
  test::TempDir dir;
  std::string text_only = dir.write("text.json", R"([{"id": "t0", "conversations": [{"from": "human", "value": "What colour?"},
    {"from": "gpt", "value": "red"}]}])");
  Trainer trainer(tiny_config(dir, 2));
  test::expect_error<DataError>([&] { probe(trainer.model(), trainer.processor(), load_dataset(text_only), 4); },
                                {"none of the 1 samples holds an image"});
}

}  // namespace
}  // namespace modalign
