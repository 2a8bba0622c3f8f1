// lib/model/precision (bf16 mixed precision through autocast): the scope sets and restores the thread's
// state and drops casted weights when it closes; a float32 model under autocast returns float32 logits and
// taps, computes in bf16 (its values differ from float32 by bf16 rounding, not more), its alignment-loss
// gradients point where float32's do (cosine > 0.99), and activation checkpointing replays the autocast
// state, so checkpointed bf16 layers give exactly the plain bf16 values.
#include "lib/model/precision.h"

#include <gtest/gtest.h>

#include "lib/model/vision_language_model.h"
#include "losses/dual_channel.h"
#include "losses/text_ce.h"

namespace modalign {
namespace {

constexpr int64_t kImage = 3;  // tiny preset's image_token_index

TEST(Precision, ScopeSetsRestoresAndDropsCastWeights) {
  const MixedPrecision bf16{torch::kCPU, torch::kBFloat16};
  ASSERT_FALSE(MixedPrecision::current(torch::kCPU).enabled());
  torch::Tensor x = torch::randn({4, 8});
  torch::Tensor w = torch::randn({3, 8}).requires_grad_(true);  // a leaf weight: autocast caches its cast
  torch::Tensor first;
  {
    AutocastScope on(bf16);
    EXPECT_EQ(MixedPrecision::current(torch::kCPU).dtype, torch::kBFloat16);
    first = torch::nn::functional::linear(x, w);
    EXPECT_EQ(first.scalar_type(), torch::kBFloat16);
    {
      AutocastScope off(MixedPrecision{torch::kCPU});
      EXPECT_FALSE(MixedPrecision::current(torch::kCPU).enabled());
      EXPECT_EQ(torch::nn::functional::linear(x, w).scalar_type(), torch::kFloat32);
    }
    EXPECT_TRUE(MixedPrecision::current(torch::kCPU).enabled()) << "the inner scope restores the outer state";
  }
  EXPECT_FALSE(MixedPrecision::current(torch::kCPU).enabled());
  EXPECT_EQ(torch::nn::functional::linear(x, w).scalar_type(), torch::kFloat32);
  // An optimizer step between forwards: the next scope casts the new weights, not the cached old ones.
  {
    torch::NoGradGuard no_grad;
    w.mul_(-1);
  }
  AutocastScope on(bf16);
  EXPECT_TRUE(torch::equal(torch::nn::functional::linear(x, w), -first));
}

// Two samples with a 16-token image at positions 2..17, answers (labels) after it.
struct Inputs {
  torch::Tensor ids, mask, pixels, labels;
};
Inputs inputs() {
  torch::manual_seed(5);
  const int64_t b = 2, t = 28;
  Inputs in{torch::randint(4, 64, {b, t}, torch::kInt64), torch::ones({b, t}, torch::kInt64), torch::randn({b, 3, 16, 16}),
            {}};
  in.mask[1].slice(0, 25).fill_(0);
  in.ids.slice(1, 2, 18).fill_(kImage);
  in.labels = in.ids.masked_fill(torch::arange(t).unsqueeze(0) < 20, -100).masked_fill(in.mask == 0, -100);
  return in;
}

struct Pass {
  torch::Tensor ce, align;            // the two objectives
  std::vector<torch::Tensor> taps;    // visual mass per decoder layer
  torch::Tensor ce_grad, align_grad;  // flattened gradients over every parameter
};

// Text CE and the uncapped dual_channel loss (on both layers) of the tiny float32 model with the MODA
// aligner, and each one's gradient.
Pass run(VisionLanguageModel& model, const Inputs& in) {
  ModelOutput out = model->forward(in.ids, in.mask, in.pixels, TapRequest{{0, 1}});
  AttentionStats s;
  s.layers = {0, 1};
  for (const auto& tap : out.taps) s.visual_mass.push_back(tap.visual_mass);
  s.labels = in.labels, s.attention_mask = in.mask.to(torch::kBool), s.visual_mask = out.visual_mask;
  DualChannelOptions o;
  o.form = MassForm::Log;  // uncapped: every sample pushes, so the gradient is never zero
  LossTerm ce = text_ce(out.logits, in.labels), align = DualChannelLoss(o, 2).compute(s);
  Pass p{ce.sum / ce.count, align.sum / align.count, {}, {}, {}};
  for (const auto& tap : out.taps) p.taps.push_back(tap.visual_mass);
  auto flat = [&](const torch::Tensor& objective) {
    std::vector<torch::Tensor> params = model->parameters();
    auto g = torch::autograd::grad({objective}, params, {}, /*retain_graph=*/true, false, /*allow_unused=*/true);
    std::vector<torch::Tensor> parts;
    for (size_t i = 0; i < g.size(); ++i) parts.push_back(g[i].defined() ? g[i].reshape(-1) : torch::zeros({params[i].numel()}));
    return torch::cat(parts);
  };
  p.ce_grad = flat(p.ce), p.align_grad = flat(p.align);
  return p;
}

VisionLanguageModel tiny_float32(torch::ScalarType autocast) {
  torch::manual_seed(1);
  ModelShapes s = preset_shapes("tiny");
  s.moda_aligner = true;
  VisionLanguageModel model(s);
  {
    torch::NoGradGuard no_grad;  // an aligner that acts (it starts as the identity)
    for (auto& item : model->named_parameters())
      if (item.key().find("aligner.gamma") != std::string::npos) item.value().fill_(0.5);
  }
  model->autocast_dtype = autocast;
  return model;
}

double cosine(const torch::Tensor& a, const torch::Tensor& b) {
  return (torch::dot(a, b) / (a.norm() * b.norm())).item<double>();
}

TEST(Precision, Bf16ModelTracksFloat32AndItsAlignmentGradientsPointTheSameWay) {
  Inputs in = inputs();
  VisionLanguageModel f32 = tiny_float32(torch::kFloat32), bf16 = tiny_float32(torch::kBFloat16);
  Pass a = run(f32, in), b = run(bf16, in);
  EXPECT_EQ(b.ce.scalar_type(), torch::kFloat32);
  for (const auto& tap : b.taps) EXPECT_EQ(tap.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(torch::equal(a.ce, b.ce)) << "autocast must change the arithmetic";
  EXPECT_NEAR(b.ce.item<double>(), a.ce.item<double>(), 1e-2 * a.ce.item<double>());
  EXPECT_NEAR(b.align.item<double>(), a.align.item<double>(), 1e-2 * a.align.item<double>());
  for (size_t l = 0; l < a.taps.size(); ++l) EXPECT_LT((a.taps[l] - b.taps[l]).abs().max().item<double>(), 1e-2);
  EXPECT_GT(cosine(a.align_grad, b.align_grad), 0.99);
  EXPECT_GT(cosine(a.ce_grad, b.ce_grad), 0.99);
  // The generation path runs under autocast too and gives float32 logits.
  KvCache cache;
  torch::NoGradGuard no_grad;
  torch::Tensor logits = bf16->prefill(in.ids, in.mask, in.pixels, cache);
  EXPECT_EQ(logits.scalar_type(), torch::kFloat32);
  EXPECT_EQ(bf16->decode(logits.argmax(-1), cache).scalar_type(), torch::kFloat32);
}

TEST(Precision, AFloat32ModelKeepsTheCallersAutocast) {
  // An external trainer that wraps the forward in its own autocast gets bf16 arithmetic (the model opens no
  // scope of its own when its autocast_dtype is float32), and float32 logits either way.
  Inputs in = inputs();
  VisionLanguageModel model = tiny_float32(torch::kFloat32);
  torch::NoGradGuard no_grad;
  torch::Tensor plain = model->forward(in.ids, in.mask, in.pixels).logits;
  AutocastScope caller(MixedPrecision{torch::kCPU, torch::kBFloat16});
  torch::Tensor wrapped = model->forward(in.ids, in.mask, in.pixels).logits;
  EXPECT_EQ(wrapped.scalar_type(), torch::kFloat32);
  EXPECT_FALSE(torch::equal(plain, wrapped));
  EXPECT_LT((plain - wrapped).abs().max().item<double>(), 0.05 * plain.abs().max().item<double>());
}

TEST(Precision, CheckpointedBf16LayersReplayAutocastExactly) {
  // The vision tower and decoder checkpointed: the recomputation runs in the backward pass, outside the
  // forward's autocast scope; replaying the captured state gives the plain bf16 pass's values exactly.
  Inputs in = inputs();
  VisionLanguageModel plain = tiny_float32(torch::kBFloat16), recomputed = tiny_float32(torch::kBFloat16);
  recomputed->set_gradient_checkpointing(true);
  Pass a = run(plain, in), b = run(recomputed, in);
  EXPECT_TRUE(torch::equal(a.ce, b.ce));
  EXPECT_TRUE(torch::equal(a.align, b.align));
  for (size_t l = 0; l < a.taps.size(); ++l) EXPECT_TRUE(torch::equal(a.taps[l], b.taps[l])) << "layer " << l;
  EXPECT_LT((a.align_grad - b.align_grad).abs().max().item<double>(), 1e-6 * a.align_grad.abs().max().item<double>());
  EXPECT_LT((a.ce_grad - b.ce_grad).abs().max().item<double>(), 1e-6 * a.ce_grad.abs().max().item<double>());
}

}  // namespace
}  // namespace modalign
