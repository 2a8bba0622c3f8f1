// lib/model/recompute (activation checkpointing): the recomputed backward gives the gradients of the plain
// one, with dropout (the generator state is replayed), with an input or parameters that do not require grad;
// and checkpointed decoder layers (with their taps) and vision blocks give the same outputs, taps, loss and
// gradients as without, in float64: Qwen golden weights with the MODA aligner and LoRA, LLaVA golden weights.
#include "lib/model/recompute.h"

#include <gtest/gtest.h>

#include "lib/io/safetensors.h"
#include "lib/io/weights.h"
#include "lib/model/vision_language_model.h"
#include "test_util.h"
#include "trainers/lora.h"

namespace modalign {
namespace {

double max_abs(const torch::Tensor& a, const torch::Tensor& b) { return (a - b).abs().max().item<double>(); }

// y0 = dropout(tanh(x W^T + b)), y1 undefined, y2 = rowsum(x W^T): x (5, 3), W (4, 3), b (4).
std::vector<torch::Tensor> block(const torch::Tensor& x, const torch::Tensor& w, const torch::Tensor& b) {
  torch::Tensor z = torch::matmul(x, w.t());
  return {torch::dropout(torch::tanh(z + b), 0.5, /*train=*/true), torch::Tensor(), z.sum(1)};
}

torch::Tensor loss_of(const std::vector<torch::Tensor>& y) { return y[0].pow(2).sum() + 0.3 * y[2].sum(); }

TEST(Recompute, GradientsEqualThePlainPassWithDropoutAndFrozenInputs) {
  for (bool x_grad : {true, false}) {
    torch::manual_seed(3);
    torch::Tensor x = torch::randn({5, 3}, torch::kFloat64).requires_grad_(x_grad);
    torch::Tensor w = torch::randn({4, 3}, torch::kFloat64).requires_grad_(true);
    torch::Tensor b = torch::randn({4}, torch::kFloat64);  // frozen
    torch::manual_seed(11);
    std::vector<torch::Tensor> plain = block(x, w, b);
    loss_of(plain).backward();
    torch::Tensor gx = x_grad ? x.grad().clone() : torch::Tensor(), gw = w.grad().clone();
    if (x_grad) x.mutable_grad().reset();
    w.mutable_grad().reset();

    torch::manual_seed(11);
    std::vector<torch::Tensor> again =
        recompute_in_backward([&](const torch::Tensor& in) { return block(in, w, b); }, x, {w, b});
    ASSERT_EQ(again.size(), 3u);
    EXPECT_FALSE(again[1].defined());
    EXPECT_TRUE(torch::equal(again[0], plain[0]));  // the same dropout mask
    EXPECT_TRUE(torch::equal(again[2], plain[2]));
    torch::randn({100});  // the generator moves on before backward: the recomputation must not see it
    loss_of(again).backward();
    EXPECT_LT(max_abs(w.grad(), gw), 1e-15);
    if (x_grad) {
      EXPECT_LT(max_abs(x.grad(), gx), 1e-15);
    }
    EXPECT_FALSE(b.grad().defined());
  }
  // Nothing requires grad: the block simply runs.
  torch::Tensor x = torch::randn({5, 3}), w = torch::randn({4, 3}), b = torch::zeros({4});
  auto out = recompute_in_backward([&](const torch::Tensor& in) { return block(in, w, b); }, x, {w});
  EXPECT_FALSE(out[0].requires_grad());
}

// Runs `model` forward (taps on layers 0 and 1 with probabilities to image keys) and backward on a loss of
// its logits and taps; returns the loss, the taps and the gradients of the parameters that require grad.
struct Pass {
  torch::Tensor loss;
  std::vector<torch::Tensor> taps, grads;
};
using Forward = std::function<ModelOutput(VisionLanguageModel&, const TapRequest&)>;
Pass run_pass(VisionLanguageModel& model, const Forward& forward) {
  ModelOutput out = forward(model, TapRequest{{0, 1}, true, false});
  Pass p;
  p.loss = out.logits.pow(2).mean();
  for (const LayerTap& t : out.taps) {
    p.loss = p.loss + t.visual_mass.mean() + t.probs_to_visual.pow(2).sum();
    p.taps.push_back(t.visual_mass), p.taps.push_back(t.probs_to_visual);
  }
  p.loss.backward();
  for (const auto& param : model->parameters())
    if (param.requires_grad()) p.grads.push_back(param.grad().defined() ? param.grad().clone() : torch::zeros_like(param));
  return p;
}

void expect_same(const Pass& a, const Pass& b) {
  EXPECT_TRUE(torch::equal(a.loss, b.loss));
  ASSERT_EQ(a.taps.size(), 4u);
  for (size_t i = 0; i < a.taps.size(); ++i) EXPECT_TRUE(torch::equal(a.taps[i], b.taps[i])) << "tap " << i;
  ASSERT_EQ(a.grads.size(), b.grads.size());
  ASSERT_GT(a.grads.size(), 8u);
  double largest = 0;
  for (size_t i = 0; i < a.grads.size(); ++i) {
    EXPECT_LT(max_abs(a.grads[i], b.grads[i]), 1e-12) << "parameter " << i;
    largest = std::max(largest, a.grads[i].abs().max().item<double>());
  }
  EXPECT_GT(largest, 1e-3);  // the gradients compared are not all zero
}

// A golden file's model weights (every tensor not named golden.*).
NamedTensors weights_of(const SafetensorsFile& golden) {
  NamedTensors out;
  for (const auto& e : golden.entries())
    if (e.name.rfind("golden.", 0) != 0) out.emplace_back(e.name, golden.tensor(e.name));
  return out;
}

TEST(Recompute, CheckpointedQwenLayersAndBlocksGiveTheSameTapsLossAndGradients) {
  // Qwen golden weights in float64 with the MODA aligner acting and LoRA adapters: once with everything
  // training (vision blocks and decoder layers checkpointed, their inputs need gradients), once as a LoRA
  // run trains (adapters and aligners only: the layers' inputs need none).
  SafetensorsFile golden(test::qwen_golden_path());
  auto g = [&](const std::string& n) { return golden.tensor("golden." + n); };
  const NamedTensors weights = weights_of(golden);
  ModelShapes s = preset_shapes("qwen2_5_vl_tiny");
  s.moda_aligner = true;
  Forward forward = [&](VisionLanguageModel& m, const TapRequest& taps) {
    return m->forward(g("input_ids"), g("attention_mask"), g("pixel_values"), taps, {}, {}, g("image_grid_thw"));
  };
  for (bool lora_only : {false, true}) {
    std::vector<Pass> passes;
    for (bool checkpointing : {false, true}) {
      torch::manual_seed(5);  // the same LoRA A and B in both models
      VisionLanguageModel model(s);
      model->to(torch::kFloat64);
      load_weights(*model, weights, "qwen golden", /*strict=*/false);
      TrainConfig lora;
      lora.lora_rank = 2;
      apply_lora(*model, lora);
      for (auto& p : model->named_parameters()) {
        const bool adapter = p.key().find("lora_") != std::string::npos || p.key().find(".gamma") != std::string::npos;
        if (p.key().find(".gamma") != std::string::npos) p.value().detach().fill_(0.5);        // the aligner acts
        if (p.key().find("lora_B") != std::string::npos) p.value().detach().normal_(0, 0.1);  // adapters act
        p.value().set_requires_grad(adapter || !lora_only);
      }
      model->set_gradient_checkpointing(checkpointing);
      passes.push_back(run_pass(model, forward));
    }
    SCOPED_TRACE(lora_only ? "adapters only" : "everything trains");
    expect_same(passes[0], passes[1]);
  }
}

TEST(Recompute, CheckpointedLlavaLayersGiveTheSameTapsLossAndGradients) {
  // The LLaVA golden weights in float64, everything training: CLIP layers and decoder layers checkpointed.
  SafetensorsFile golden(test::golden_path());
  auto g = [&](const std::string& n) { return golden.tensor("golden." + n); };
  const NamedTensors weights = weights_of(golden);
  ModelShapes s = preset_shapes("tiny");
  ExpandedInputs in = expand_image_tokens(g("input_ids"), g("attention_mask"), g("labels"), s.image_token_index,
                                          s.vision.num_patches());
  Forward forward = [&](VisionLanguageModel& m, const TapRequest& taps) {
    return m->forward(in.input_ids, in.attention_mask, g("pixel_values"), taps);
  };
  std::vector<Pass> passes;
  for (bool checkpointing : {false, true}) {
    VisionLanguageModel model(s);
    model->to(torch::kFloat64);
    load_weights(*model, weights, "llava golden", /*strict=*/true);
    model->set_gradient_checkpointing(checkpointing);
    passes.push_back(run_pass(model, forward));
  }
  expect_same(passes[0], passes[1]);
}

}  // namespace
}  // namespace modalign
