// The same alignment losses computed two ways on the tiny model: from the model's attention taps
// (visual_mass, one matrix-vector product) and from full attention maps via stats_from_probs.
#include <gtest/gtest.h>

#include "lib/model/vision_language_model.h"
#include "losses/loss_composer.h"
#include "losses/sink_suppression.h"
#include "test_util.h"

namespace modalign {
namespace {

TEST(TapsVsProbs, LossValuesAgree) {
  torch::manual_seed(3);
  VisionLanguageModel model(preset_shapes("tiny"));
  model->to(torch::kFloat64);
  const int64_t b = 3, t = 26;
  torch::Tensor ids = torch::randint(4, 64, {b, t});
  torch::Tensor mask = torch::ones({b, t}, torch::kInt64);
  mask[1].slice(0, 22).fill_(0);
  ids[0].slice(0, 1, 17).fill_(3);
  ids[1].slice(0, 3, 19).fill_(3);
  torch::Tensor labels = torch::full({b, t}, -100, torch::kInt64);
  labels[0].slice(0, 22) = ids[0].slice(0, 22);
  labels[1].slice(0, 20, 22) = ids[1].slice(0, 20, 22);
  labels[2].slice(0, 5, 9) = ids[2].slice(0, 5, 9);
  torch::Tensor pixels = torch::randn({2, 3, 16, 16}, torch::kFloat64);

  std::vector<LossEntry> entries(3);
  entries[0].name = "dual_channel";
  entries[1].name = "layer_decay";
  entries[2].name = "sink_suppression";
  LossComposer composer(entries, 2);
  AttentionStats masks;
  masks.labels = labels;
  masks.attention_mask = mask.to(torch::kBool);
  masks.visual_mask = (ids == 3) & masks.attention_mask;
  torch::Tensor key_masks = composer.key_masks(masks);  // (B, T, 1): sink_suppression's keys
  ASSERT_EQ(key_masks.size(-1), 1);

  TapRequest request{composer.needs().layers, false, true, key_masks};
  ModelOutput out = model->forward(ids, mask, pixels, request);

  AttentionStats from_taps;
  from_taps.layers = request.layers;
  from_taps.labels = labels;
  from_taps.attention_mask = mask.to(torch::kBool);
  from_taps.visual_mask = out.visual_mask;
  std::vector<torch::Tensor> probs;
  for (const auto& tap : out.taps) {
    from_taps.visual_mass.push_back(tap.visual_mass);
    from_taps.key_mass.push_back(tap.key_mass);  // the composer hands each sink loss its set
    probs.push_back(tap.probs);
  }
  AttentionStats from_probs = stats_from_probs(request.layers, probs, labels, mask, out.visual_mask, key_masks.select(-1, 0));
  auto a = composer.compute(out.logits, from_taps);
  auto c = composer.compute(out.logits, from_probs);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i].term.sum.item<double>(), c[i].term.sum.item<double>(), 1e-12) << a[i].name;
    EXPECT_EQ(a[i].term.count.item<double>(), c[i].term.count.item<double>()) << a[i].name;
  }
  EXPECT_GT(a[1].term.sum.item<double>(), 0.0);  // dual_channel is not trivially zero here
}

}  // namespace
}  // namespace modalign
