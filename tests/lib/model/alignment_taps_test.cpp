// AlignmentTaps (blockwise attention with alignment taps, for trainers of their own) against the same losses
// computed from dense attention maps through stats_from_probs: values, counts and gradients.
#include <gtest/gtest.h>

#include "lib/model/alignment_taps.h"
#include "test_util.h"

namespace modalign {
namespace {

constexpr int64_t kB = 3, kT = 12, kH = 4, kG = 2, kD = 8, kLayers = 2;

struct Batch {
  torch::Tensor labels, attention_mask, visual_mask, region_target;
};

// Right padding, image tokens at 1..4 (sample 2: none), a few supervised tokens; masks in Hugging Face's 0/1 int64.
Batch batch() {
  Batch x;
  x.attention_mask = torch::ones({kB, kT}, torch::kInt64);
  x.attention_mask[1].slice(0, 9).fill_(0);
  x.visual_mask = torch::zeros({kB, kT}, torch::kInt64);
  x.visual_mask.slice(0, 0, 2).slice(1, 1, 5).fill_(1);
  x.labels = torch::full({kB, kT}, -100, torch::kInt64);
  x.labels[0].slice(0, 7, 12).fill_(5);
  x.labels[1].slice(0, 6, 9).fill_(6);
  x.labels[2].slice(0, 3, 6).fill_(7);
  x.region_target = torch::zeros({kB, 4}, torch::kFloat64);
  x.region_target[0][2] = 1.0;
  x.region_target[1].slice(0, 0, 2).fill_(0.5);
  return x;
}

LossComposer four_losses() {
  return LossComposer({LossEntry(DualChannelOptions{}), LossEntry(LayerDecayOptions{}), LossEntry(SinkSuppressionOptions{}),
                       LossEntry(AttentionKlOptions{})},
                      kLayers);
}

// Dense reference: (B, H, T, T) probabilities, causal over real keys, query head h reading key/value head h / (H/G).
torch::Tensor dense_probs(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& real) {
  torch::Tensor kk = k.transpose(1, 2).repeat_interleave(kH / kG, 1);                                     // (B, H, T, d)
  torch::Tensor scores = torch::matmul(q.transpose(1, 2), kk.transpose(-1, -2)) / std::sqrt(double(kD));  // (B, H, T, T)
  torch::Tensor allowed = torch::ones({kT, kT}, torch::kBool).tril() & real.to(torch::kBool).view({kB, 1, 1, kT});
  return torch::softmax(scores.masked_fill(~allowed, -1e300), -1);
}

TEST(AlignmentTaps, FourLossesMatchDenseMapsWithGradients) {
  torch::manual_seed(11);
  const Batch x = batch();
  const LossComposer composer = four_losses();
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  std::vector<torch::Tensor> qs, ks, vs;
  for (int64_t l = 0; l < kLayers; ++l) {
    qs.push_back(torch::randn({kB, kT, kH, kD}, f64).requires_grad_());
    ks.push_back(torch::randn({kB, kT, kG, kD}, f64).requires_grad_());
    vs.push_back(torch::randn({kB, kT, kG, kD}, f64).requires_grad_());
  }
  torch::Tensor logits = torch::randn({kB, kT, 9}, f64);

  AttentionStats tapped = batch_stats(x.labels, x.attention_mask, x.visual_mask);
  tapped.region_target = x.region_target;
  AlignmentTaps taps(composer, tapped);
  EXPECT_EQ(tapped.layers, (std::vector<int64_t>{0, 1}));
  std::vector<torch::Tensor> outs;
  for (int64_t l = 0; l < kLayers; ++l) outs.push_back(taps.attend(l, qs[l], ks[l], vs[l]));

  // The outputs too, read through a fixed random projection at real positions, so that v's gradient is compared.
  std::vector<torch::Tensor> probs;
  torch::Tensor real = x.attention_mask.to(torch::kFloat64).view({kB, kT, 1, 1});
  torch::Tensor read_tapped = torch::zeros({}, f64), read_dense = torch::zeros({}, f64);
  for (int64_t l = 0; l < kLayers; ++l) {
    probs.push_back(dense_probs(qs[l], ks[l], x.attention_mask));
    torch::Tensor dense_out = torch::matmul(probs[l], vs[l].transpose(1, 2).repeat_interleave(kH / kG, 1))
                                  .transpose(1, 2);  // (B, T, H, d)
    EXPECT_TRUE(torch::allclose(outs[l] * real, dense_out * real, 1e-10, 1e-12)) << "layer " << l;
    torch::Tensor w = torch::randn({kB, kT, kH, kD}, f64) * real;
    read_tapped = read_tapped + (outs[l] * w).sum(), read_dense = read_dense + (dense_out * w).sum();
  }
  AttentionStats masks = batch_stats(x.labels, x.attention_mask, x.visual_mask);
  torch::Tensor sink = composer.key_masks(masks).select(-1, 0);  // sink_suppression's keys: the first token
  AttentionStats dense = stats_from_probs({0, 1}, probs, x.labels, x.attention_mask, x.visual_mask, sink, true);
  dense.region_target = x.region_target;

  auto a = composer.compute(logits, tapped);
  auto b = composer.compute(logits, dense);
  ASSERT_EQ(a.size(), 5u);
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(a[i].term.sum.item<double>(), b[i].term.sum.item<double>(), 1e-10) << a[i].name;
    EXPECT_EQ(a[i].term.count.item<double>(), b[i].term.count.item<double>()) << a[i].name;
    if (i > 0) {
      EXPECT_GT(a[i].term.sum.abs().item<double>(), 1e-6) << a[i].name << " is not exercised";
    }
  }
  std::vector<torch::Tensor> inputs;
  for (int64_t l = 0; l < kLayers; ++l) inputs.insert(inputs.end(), {qs[l], ks[l], vs[l]});
  auto ga = torch::autograd::grad({LossComposer::total(a) + read_tapped}, inputs);
  auto gb = torch::autograd::grad({LossComposer::total(b) + read_dense}, inputs);
  for (size_t i = 0; i < ga.size(); ++i) EXPECT_TRUE(torch::allclose(ga[i], gb[i], 1e-8, 1e-10)) << "input " << i;
}

TEST(AlignmentTaps, RefusesLayersOutOfOrderAndAMissingRegionTarget) {
  const Batch x = batch();
  const LossComposer composer = four_losses();
  AttentionStats no_target = batch_stats(x.labels, x.attention_mask, x.visual_mask);
  test::expect_error<c10::Error>([&] { AlignmentTaps taps(composer, no_target); }, {"region_target", "undefined"});

  AttentionStats stats = batch_stats(x.labels, x.attention_mask, x.visual_mask);
  stats.region_target = x.region_target;
  AlignmentTaps taps(composer, stats);
  torch::Tensor q = torch::randn({kB, kT, kH, kD}), kv = torch::randn({kB, kT, kG, kD});
  test::expect_error<c10::Error>([&] { taps.attend(1, q, kv, kv); }, {"layer 1", "out of order", "next expected 0"});
  taps.attend(0, q, kv, kv);
  test::expect_error<c10::Error>([&] { taps.attend(0, q, kv, kv); }, {"layer 0", "twice"});
  EXPECT_EQ(stats.visual_mass.size(), 1u);
}

}  // namespace
}  // namespace modalign
