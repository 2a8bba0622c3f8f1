// trainers/memory_plan: the parameter counts by part equal the built models' (both families), the trainable
// count and LoRA size equal what apply_lora + apply_freezing leave trainable, bytes follow the dtype, and the
// activation estimate grows linearly with the batch and falls with checkpointing.
#include "trainers/memory_plan.h"

#include <gtest/gtest.h>

#include "lib/model/vision_language_model.h"
#include "trainers/lora.h"
#include "trainers/optimizer.h"

namespace modalign {
namespace {

bool starts_with(const std::string& s, const std::string& prefix) { return s.rfind(prefix, 0) == 0; }

TEST(MemoryPlan, PartsAndTrainableCountsEqualTheBuiltModels) {
  for (const char* preset : {"tiny", "demo", "qwen2_5_vl_tiny", "qwen2_vl_tiny"}) {
    SCOPED_TRACE(preset);
    ModelShapes s = preset_shapes(preset);
    {
      VisionLanguageModel model(s);
      ParameterCounts built;
      for (const auto& p : model->named_parameters()) {
        const std::string& n = p.key();
        const bool projector = starts_with(n, "multi_modal_projector.") || starts_with(n, "visual.merger.");
        int64_t& part = projector ? built.projector
                        : starts_with(n, "vision_tower.") || starts_with(n, "visual.") ? built.vision_tower
                                                                                       : built.language_model;
        part += p.value().numel();
      }
      const ParameterCounts planned = parameter_counts(s);
      EXPECT_EQ(planned.vision_tower, built.vision_tower);
      EXPECT_EQ(planned.projector, built.projector);
      EXPECT_EQ(planned.language_model, built.language_model);
    }
    struct Case {
      bool tower, projector;
      int64_t lora;
    };
    for (const Case& c : {Case{true, false, 0}, Case{false, false, 0}, Case{true, true, 4}, Case{false, false, 2}}) {
      RunConfig config;
      config.train.freeze_vision_tower = c.tower, config.train.freeze_projector = c.projector, config.train.lora_rank = c.lora;
      VisionLanguageModel model(s);
      if (c.lora) apply_lora(*model, config.train);
      apply_freezing(*model, config.train);
      int64_t trainable = 0, adapters = 0;
      for (const auto& p : model->named_parameters()) {
        if (p.value().requires_grad()) trainable += p.value().numel();
        if (p.key().find(".lora_") != std::string::npos) adapters += p.value().numel();
      }
      const MemoryPlan plan = plan_memory(config, s, 40, 16);
      EXPECT_EQ(plan.lora, adapters);
      EXPECT_EQ(plan.trainable, trainable);
      EXPECT_EQ(plan.weights, 4.0 * static_cast<double>(parameter_counts(s).total() + adapters));  // float32
      EXPECT_EQ(plan.optimizer, 2 * plan.gradients);
      EXPECT_EQ(plan.gradients, 4.0 * static_cast<double>(trainable));
    }
  }
}

TEST(MemoryPlan, ActivationsScaleWithTheBatchAndFallWithCheckpointing) {
  RunConfig config;
  config.model.preset = "small";
  const ModelShapes s = preset_shapes("small");
  config.train.per_device_train_batch_size = 4;
  const MemoryPlan four = plan_memory(config, s, 160);
  config.train.per_device_train_batch_size = 8;
  const MemoryPlan eight = plan_memory(config, s, 160);
  EXPECT_DOUBLE_EQ(eight.activations, 2 * four.activations);
  EXPECT_LT(eight.activations_checkpointed, eight.activations / 3);
  EXPECT_EQ(eight.weights, four.weights);
  // The frozen tower keeps nothing; training it adds its layers' values.
  config.train.freeze_vision_tower = false;
  EXPECT_GT(plan_memory(config, s, 160).activations, eight.activations);
  // bfloat16 halves every byte count but the attention probabilities' (float32 either way).
  config.model.dtype = Dtype::BFloat16;
  const MemoryPlan half = plan_memory(config, s, 160);
  config.model.dtype = Dtype::Float32;
  const MemoryPlan full = plan_memory(config, s, 160);
  EXPECT_DOUBLE_EQ(2 * half.weights, full.weights);
  EXPECT_DOUBLE_EQ(half.attention_probs, full.attention_probs);
  EXPECT_LT(half.activations, full.activations);
  EXPECT_GT(half.activations - half.attention_probs, (full.activations - full.attention_probs) / 2);
  // Attention is blockwise: without attention_kl no probabilities are kept, and the activations grow
  // linearly in T.
  EXPECT_EQ(full.attention_probs, 0);
  const double step = plan_memory(config, s, 320).activations - full.activations;
  EXPECT_GT(step, 0);
  EXPECT_NEAR(plan_memory(config, s, 480).activations - plan_memory(config, s, 320).activations, step, 1e-6 * step);
  // attention_kl keeps, in each layer it taps, 4 bytes x B x heads x (text tokens) x (image tokens): its
  // response queries' probabilities on the image keys (small: 64 image tokens).
  LossEntry kl;
  kl.name = "attention_kl";
  kl.get<AttentionKlOptions>().layers.spec = "second_half";
  config.losses = {kl};
  const MemoryPlan with_kl = plan_memory(config, s, 160), twice = plan_memory(config, s, 320);
  const double per_row = 4.0 * 8 * static_cast<double>(s.text.num_attention_heads * s.text.num_hidden_layers / 2) * 64;
  EXPECT_DOUBLE_EQ(with_kl.attention_probs, per_row * (160 - 64));
  EXPECT_DOUBLE_EQ(twice.attention_probs, per_row * (320 - 64));
  // ... on top of the rest, and twice more in the backward pass's working set (two saved sets of the largest
  // block, now a tapped layer).
  const double one_layer = with_kl.attention_probs / static_cast<double>(s.text.num_hidden_layers / 2);
  EXPECT_DOUBLE_EQ(with_kl.activations - full.activations, with_kl.attention_probs + 2 * one_layer);
  config.losses.clear();
  // Mixed precision: float32 weights, gradients and moments, plus a bf16 copy of every weight; the values
  // the matmuls save are bf16, the residual stream and the probabilities stay float32.
  config.train.bf16 = true;
  const MemoryPlan mixed = plan_memory(config, s, 160);
  config.train.bf16 = false;
  EXPECT_EQ(mixed.weights, full.weights);
  EXPECT_EQ(mixed.optimizer, full.optimizer);
  EXPECT_EQ(mixed.weight_casts, 2.0 * static_cast<double>(parameter_counts(s).total()));
  EXPECT_EQ(full.weight_casts, 0);
  EXPECT_DOUBLE_EQ(mixed.attention_probs, full.attention_probs);
  EXPECT_LT(mixed.activations, full.activations);
  EXPECT_GT(mixed.activations, half.activations);
  // ZeRO-1 divides the moments (only them) by the ranks; one rank keeps them all.
  config.distributed.shard_optimizer = true;
  const MemoryPlan sharded = plan_memory(config, s, 160, 0, 8);
  EXPECT_DOUBLE_EQ(8 * sharded.optimizer, full.optimizer);
  EXPECT_EQ(sharded.gradients, full.gradients);
  EXPECT_EQ(sharded.weights, full.weights);
  EXPECT_EQ(plan_memory(config, s, 160, 0, 1).optimizer, full.optimizer);
  // Data parallel holds the buckets in flight: three of 25 MB and the embedding's (small's LM trains here);
  // ZeRO-1 its gather round too.
  const double in_flight = 3.0 * (25 << 20) + 4.0 * static_cast<double>(s.text.vocab_size * s.text.hidden_size);
  EXPECT_EQ(full.collectives, 0);
  EXPECT_DOUBLE_EQ(sharded.collectives, in_flight + 9.0 * (16 << 20));
  config.distributed.shard_optimizer = false;
  EXPECT_EQ(plan_memory(config, s, 160, 0, 8).optimizer, full.optimizer);
  EXPECT_DOUBLE_EQ(plan_memory(config, s, 160, 0, 8).collectives, in_flight);
  // A Qwen model's image tokens default to what image_max_pixels allows (28 x 28 pixels per token), and never
  // more than the sequence.
  config.data.image_max_pixels = 28 * 28 * 100;
  EXPECT_EQ(plan_memory(config, preset_shapes("qwen2_5_vl_7b"), 4096).image_tokens, 100);
  EXPECT_EQ(plan_memory(config, preset_shapes("qwen2_5_vl_7b"), 64).image_tokens, 64);
}

}  // namespace
}  // namespace modalign
