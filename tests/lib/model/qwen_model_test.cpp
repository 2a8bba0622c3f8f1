// The Qwen2.5-VL family against tests/golden/qwen2_5_vl_tiny_golden.safetensors (see QWEN.md
// there): computed in float64 by an independent plain-PyTorch implementation
// written from the Hugging Face source. Checks the M-RoPE position ids, the vision layout (2-D rotary
// positions, window order, segment offsets), patch embeddings, merged vision features, logits, per-layer
// visual mass and the losses computed from the model's own taps: 1e-9 in float64, QWEN.md's float32
// bounds. The Qwen2-VL variant (LayerNorm blocks, quick-GELU, no windows) has no golden file: its tests
// check what the Hugging Face code implies (identity window order, per-image isolation, names, counts).
#include <gtest/gtest.h>

#include "lib/io/safetensors.h"
#include "lib/io/weights.h"
#include "lib/model/vision_language_model.h"
#include "losses/attention_stats.h"
#include "losses/dual_channel.h"
#include "losses/text_ce.h"
#include "test_util.h"

namespace modalign {
namespace {

double max_abs(const torch::Tensor& a, const torch::Tensor& b) {
  return (a.to(torch::kFloat64) - b.to(torch::kFloat64)).abs().max().item<double>();
}

class QwenGolden : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { golden_ = std::make_unique<SafetensorsFile>(test::qwen_golden_path()); }
  static void TearDownTestSuite() { golden_.reset(); }
  static torch::Tensor g(const std::string& name) { return golden_->tensor("golden." + name); }

  // The weights of the file (Hub names), optionally renamed the way newer transformers save them.
  static NamedTensors weights(bool newer_names) {
    NamedTensors out;
    for (const auto& e : golden_->entries()) {
      if (e.name.rfind("golden.", 0) == 0) continue;
      std::string name = e.name;
      if (newer_names && name.rfind("visual.", 0) == 0) name = "model." + name;
      if (newer_names && name.rfind("model.", 0) == 0 && name.rfind("model.visual.", 0) != 0)
        name = "model.language_model." + name.substr(6);
      out.emplace_back(name, golden_->tensor(e.name));
    }
    return out;
  }
  static VisionLanguageModel load_model(torch::ScalarType dtype, bool newer_names = false) {
    VisionLanguageModel model(preset_shapes("qwen2_5_vl_tiny"));
    model->to(dtype);
    NamedTensors w = weights(newer_names);
    LoadReport report = load_weights(*model, w, "qwen golden", /*strict=*/true);
    EXPECT_EQ(report.loaded, w.size());
    return model;
  }
  static ModelOutput run(VisionLanguageModel& model, torch::ScalarType dtype, const TapRequest& taps = {}) {
    return model->forward(g("input_ids"), g("attention_mask"), g("pixel_values").to(dtype), taps, {}, {},
                          g("image_grid_thw"));
  }
  static torch::Tensor real() { return g("attention_mask").to(torch::kBool); }

  static std::unique_ptr<SafetensorsFile> golden_;
};
std::unique_ptr<SafetensorsFile> QwenGolden::golden_;

TEST_F(QwenGolden, PresetMatchesTheFileConfig) {
  ModelShapes s = preset_shapes("qwen2_5_vl_tiny");
  EXPECT_EQ(s.family, ModelFamily::Qwen2_5VL);
  int64_t n = 0;
  for (const auto& e : golden_->entries())
    if (e.name.rfind("golden.", 0) != 0) n += golden_->tensor(e.name).numel();
  EXPECT_EQ(count_parameters(s), n);
}

TEST(QwenModel, ReleasedShapesCountLikeTheModelCards) {
  // Qwen2.5-VL-7B-Instruct and -3B-Instruct: 8,292,166,656 and 3,754,622,976 parameters (safetensors index).
  EXPECT_EQ(count_parameters(preset_shapes("qwen2_5_vl_7b")), 8292166656);
  EXPECT_EQ(count_parameters(preset_shapes("qwen2_5_vl_3b")), 3754622976);
  EXPECT_NO_THROW(check_shapes(preset_shapes("qwen2_5_vl_demo")));
}

TEST_F(QwenGolden, ConvertWritesHubNamesThatLoadBack) {
  VisionLanguageModel model = load_model(torch::kFloat64);
  NamedTensors hub;
  for (auto [name, t] : named_state(*model)) hub.emplace_back(qwen_hub_name(name), t);
  for (const auto& [name, t] : hub) EXPECT_TRUE(golden_->contains(name)) << name;  // exactly the file's names
  VisionLanguageModel again(preset_shapes("qwen2_5_vl_tiny"));
  again->to(torch::kFloat64);
  EXPECT_EQ(load_weights(*again, hub, "hub names", true).loaded, hub.size());
}

TEST_F(QwenGolden, PositionIdsLikeGetRopeIndex) {
  ModelShapes s = preset_shapes("qwen2_5_vl_tiny");
  torch::Tensor pos = qwen_position_ids(s, g("input_ids"), g("attention_mask"), g("image_grid_thw"));
  EXPECT_TRUE(torch::equal(pos, g("position_ids"))) << pos[0][0] << "\n" << g("position_ids")[0][0];
  // A grid that does not match the span, or one grid too many, is an error naming the sample.
  test::expect_error<c10::Error>(
      [&] { qwen_position_ids(s, g("input_ids"), g("attention_mask"), torch::tensor({{1, 8, 8}, {1, 4, 8}, {1, 2, 2}})); },
      {"image_grid_thw has 3 rows but the batch holds 2 image spans"});
  test::expect_error<c10::Error>(
      [&] { qwen_position_ids(s, g("input_ids"), g("attention_mask"), torch::tensor({{1, 8, 8}, {1, 8, 8}})); },
      {"sample 1"});
}

TEST_F(QwenGolden, VisionLayout) {
  QwenVisionShapes s = preset_shapes("qwen2_5_vl_tiny").qwen_vision;
  VisionLayout layout = vision_layout(s, g("image_grid_thw"));
  EXPECT_TRUE(torch::equal(layout.rot_pos_ids, g("vision.rot_pos_ids")));
  EXPECT_TRUE(torch::equal(layout.window_index, g("vision.window_index"))) << layout.window_index;
  auto vec = [](const torch::Tensor& t) { return std::vector<int64_t>(t.data_ptr<int64_t>(), t.data_ptr<int64_t>() + t.numel()); };
  EXPECT_EQ(layout.cu_seqlens, vec(g("vision.cu_seqlens")));
  EXPECT_EQ(layout.cu_window_seqlens, vec(g("vision.cu_window_seqlens")));
  EXPECT_EQ(merged_tokens_per_image(s, g("image_grid_thw")), (std::vector<int64_t>{16, 8}));
}

TEST_F(QwenGolden, VisionFeaturesFloat64) {
  VisionLanguageModel model = load_model(torch::kFloat64);
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs(model->visual->embed_patches(g("pixel_values")), g("vision.patch_embeds")), 1e-12);
  EXPECT_LT(max_abs(model->visual(g("pixel_values"), g("image_grid_thw")), g("vision_features")), 1e-9);
}

TEST_F(QwenGolden, LogitsVisualMassAndLossesFloat64) {
  VisionLanguageModel model = load_model(torch::kFloat64);
  torch::NoGradGuard no_grad;
  ModelOutput out = run(model, torch::kFloat64, TapRequest{{0, 1}});
  EXPECT_TRUE(torch::equal(out.visual_mask.to(torch::kInt64), g("visual_mask")));
  torch::Tensor r = real();
  EXPECT_LT((out.logits - g("logits")).abs().index({r}).max().item<double>(), 1e-9);
  ASSERT_EQ(out.taps.size(), 2u);
  AttentionStats stats;
  stats.layers = {0, 1};
  stats.labels = g("labels");
  stats.attention_mask = r;
  stats.visual_mask = out.visual_mask;
  for (int l = 0; l < 2; ++l) {
    torch::Tensor diff = (out.taps[l].visual_mass - g("visual_mass." + std::to_string(l))).abs().permute({0, 2, 1}).index({r});
    EXPECT_LT(diff.max().item<double>(), 1e-9) << "layer " << l;
    stats.visual_mass.push_back(out.taps[l].visual_mass);
  }
  auto expect_loss = [&](const LossTerm& term, const std::string& key) {
    EXPECT_NEAR(term.sum.item<double>(), g("loss." + key + ".sum").item<double>(), 1e-9) << key;
    EXPECT_EQ(term.count.item<double>(), g("loss." + key + ".count").item<double>()) << key;
  };
  expect_loss(text_ce(out.logits, g("labels")), "text_ce");
  auto dc = [](MassForm form, std::optional<double> target) {
    DualChannelOptions o;  // the golden parameters: eps 1e-6, inter 1, intra 0.5, all layers
    o.form = form, o.target = target;
    return DualChannelLoss(o, 2);
  };
  expect_loss(dc(MassForm::Log, std::nullopt).compute(stats), "dual_channel.log");
  expect_loss(dc(MassForm::CappedLog, 0.95).compute(stats), "dual_channel.capped_log");
  expect_loss(dc(MassForm::Hinge, 0.95).compute(stats), "dual_channel.hinge");
  expect_loss(dc(MassForm::CappedLog, std::nullopt).compute(stats), "dual_channel.capped_log_balanced");
  DualChannelLoss::Masses m = dc(MassForm::CappedLog, std::nullopt).masses(stats);
  EXPECT_LT(max_abs(m.inter, g("M_X")), 1e-9);
  EXPECT_LT(max_abs(m.intra, g("M_I")), 1e-9);
}

TEST_F(QwenGolden, Float32WithinTheReferenceBounds) {
  VisionLanguageModel model = load_model(torch::kFloat32);
  torch::NoGradGuard no_grad;
  EXPECT_LT(max_abs(model->visual(g("pixel_values").to(torch::kFloat32), g("image_grid_thw")), g("vision_features")), 2e-5);
  ModelOutput out = run(model, torch::kFloat32, TapRequest{{0, 1}});
  torch::Tensor r = real();
  EXPECT_LT((out.logits.to(torch::kFloat64) - g("logits")).abs().index({r}).max().item<double>(), 1e-5);
  for (int l = 0; l < 2; ++l) {
    torch::Tensor diff =
        (out.taps[l].visual_mass.to(torch::kFloat64) - g("visual_mass." + std::to_string(l))).abs().permute({0, 2, 1}).index({r});
    EXPECT_LT(diff.max().item<double>(), 2e-6) << "layer " << l;
  }
}

TEST_F(QwenGolden, NewerTransformersNamesLoadTheSameModel) {
  VisionLanguageModel model = load_model(torch::kFloat64, /*newer_names=*/true);
  torch::NoGradGuard no_grad;
  EXPECT_LT((run(model, torch::kFloat64).logits - g("logits")).abs().index({real()}).max().item<double>(), 1e-9);
}

TEST_F(QwenGolden, GenerationCacheContinuesThePositions) {
  // Prefill on the first 20 tokens of sample 0 (text, image, text), then decode its next tokens one by
  // one: each step's logits equal the full forward's at that position (M-RoPE positions continue at
  // one past the largest, not at the token count).
  VisionLanguageModel model = load_model(torch::kFloat64);
  torch::NoGradGuard no_grad;
  torch::Tensor ids = g("input_ids").slice(0, 0, 1), mask = g("attention_mask").slice(0, 0, 1);
  torch::Tensor pixels = g("pixel_values").slice(0, 0, 64), grid = g("image_grid_thw").slice(0, 0, 1);
  KvCache cache;
  torch::Tensor logits = model->prefill(ids.slice(1, 0, 20), mask.slice(1, 0, 20), pixels, cache, grid);
  EXPECT_LT(max_abs(logits[0], g("logits")[0][19]), 1e-9);
  for (int64_t t = 20; t < 24; ++t) {
    logits = model->decode(ids.select(1, t), cache);
    EXPECT_LT(max_abs(logits[0], g("logits")[0][t]), 1e-9) << "position " << t;
  }
}

TEST_F(QwenGolden, ImagesInOneBatchNeverAttendToEachOther) {
  // Features of image 1 alone equal its rows of the two-image batch (per-image isolation in every block).
  VisionLanguageModel model = load_model(torch::kFloat64);
  torch::NoGradGuard no_grad;
  torch::Tensor alone = model->visual(g("pixel_values").slice(0, 64), g("image_grid_thw").slice(0, 1));
  EXPECT_LT(max_abs(alone, g("vision_features").slice(0, 16)), 1e-9);
}

TEST_F(QwenGolden, TwoImagesInOneSampleTakeTheirOwnFeaturesAndPositions) {
  // One sample holding both golden images (16 then 8 merged tokens) with text around and between them:
  // each span gets its own image's features, in order, and M-RoPE positions by hand: text 0 1, image 0
  // at base 2 (rows and cols 2..5), text resumes at 6, image 1 at base 7 (rows 7..8, cols 7..10), then 11 12.
  VisionLanguageModel model = load_model(torch::kFloat64);
  torch::NoGradGuard no_grad;
  std::vector<int64_t> ids{10, 11};
  ids.insert(ids.end(), 16, 5);
  ids.push_back(12);
  ids.insert(ids.end(), 8, 5);
  ids.insert(ids.end(), {13, 14});
  torch::Tensor input = torch::tensor(ids).unsqueeze(0), mask = torch::ones_like(input);
  torch::Tensor pos = qwen_position_ids(model->shapes, input, mask, g("image_grid_thw"));
  std::vector<int64_t> t{0, 1}, h{0, 1}, w{0, 1};
  for (int64_t y = 0; y < 4; ++y)
    for (int64_t x = 0; x < 4; ++x) t.push_back(2), h.push_back(2 + y), w.push_back(2 + x);
  t.push_back(6), h.push_back(6), w.push_back(6);
  for (int64_t y = 0; y < 2; ++y)
    for (int64_t x = 0; x < 4; ++x) t.push_back(7), h.push_back(7 + y), w.push_back(7 + x);
  for (int64_t p : {11, 12}) t.push_back(p), h.push_back(p), w.push_back(p);
  EXPECT_TRUE(torch::equal(pos, torch::stack({torch::tensor(t), torch::tensor(h), torch::tensor(w)}).unsqueeze(1)));
  torch::Tensor visual = input == 5;
  torch::Tensor embeds = model->embed(input, visual, g("pixel_values"), g("image_grid_thw"));  // (1, 29, D)
  EXPECT_LT(max_abs(embeds[0].index({visual[0]}), g("vision_features")), 1e-12);
  EXPECT_LT(max_abs(embeds[0][18], model->language_model->embed_tokens(torch::tensor({12}))[0]), 1e-15);
}

TEST_F(QwenGolden, AlignerAndPerImageKeyProbabilitiesWithSpansOfTwoLengths) {
  // The MODA aligner (non-trivial gamma) on the Qwen decoder, and probs_to_visual when sample 0 holds 16
  // image tokens and sample 1 holds 8: columns past a sample's span are zero, the others are P at its
  // image keys in position order, and they add up to visual_mass.
  ModelShapes s = preset_shapes("qwen2_5_vl_tiny");
  s.moda_aligner = true;
  VisionLanguageModel model(s);
  model->to(torch::kFloat64);
  load_weights(*model, weights(false), "qwen golden", /*strict=*/false);
  torch::NoGradGuard no_grad;
  for (auto& p : model->named_parameters())
    if (p.key().find(".gamma") != std::string::npos) p.value().fill_(0.5);
  ModelOutput out = model->forward(g("input_ids"), g("attention_mask"), g("pixel_values"), TapRequest{{1}, true, true},
                                   {}, {}, g("image_grid_thw"));
  EXPECT_GT((out.logits - g("logits")).abs().index({real()}).max().item<double>(), 1e-6);  // the aligner acts
  const LayerTap& tap = out.taps[0];
  ASSERT_EQ(tap.probs_to_visual.sizes(), (std::vector<int64_t>{3, 4, 28, 16}));
  EXPECT_EQ(tap.probs_to_visual[1].slice(-1, 8).abs().sum().item<double>(), 0.0);
  EXPECT_EQ(tap.probs_to_visual[2].abs().sum().item<double>(), 0.0);
  torch::Tensor image_keys = torch::nonzero(g("visual_mask")[1]).flatten();  // sample 1's 8 image positions
  EXPECT_TRUE(torch::allclose(tap.probs_to_visual[1].slice(-1, 0, 8), tap.probs[1].index_select(-1, image_keys), 0, 1e-15));
  EXPECT_TRUE(torch::allclose(tap.probs_to_visual.sum(-1), tap.visual_mass, 0, 1e-12));
}

TEST_F(QwenGolden, FrozenTowerRunsWithoutAutogradWhileTheMergerTrains) {
  // freeze_vision_tower freezes `visual` but its merger (LLaVA stage 2): the blocks then run without a
  // graph (encode and merge are split for that); the merger still gets gradients and the outputs are unchanged.
  VisionLanguageModel model = load_model(torch::kFloat64);
  for (auto& p : model->visual->named_parameters())
    if (p.key().rfind("merger.", 0) != 0) p.value().set_requires_grad(false);
  ModelOutput out = run(model, torch::kFloat64);
  EXPECT_LT((out.logits - g("logits")).abs().index({real()}).max().item<double>(), 1e-9);
  out.logits.index({real()}).sum().backward();
  EXPECT_GT(model->visual->merger_fc1->weight.grad().abs().sum().item<double>(), 0.0);
  EXPECT_FALSE(model->visual->blocks[0]->as<QwenVisionBlockImpl>()->qkv->weight.grad().defined());
}

TEST(QwenModel, Qwen2VlLayoutNamesAndIsolation) {
  ModelShapes s = preset_shapes("qwen2_vl_tiny");
  torch::manual_seed(0);
  VisionLanguageModel model(s);
  model->to(torch::kFloat64);
  std::map<std::string, std::vector<int64_t>> names;
  int64_t n = 0;
  for (const auto& [name, t] : named_state(*model)) names[name] = t.sizes().vec(), n += t.numel();
  EXPECT_EQ(n, count_parameters(s));
  // The Hub names of Qwen2-VL's tower: LayerNorm norms with bias, fc1/fc2, merger ln_q with bias.
  for (const char* name : {"visual.blocks.0.norm1.bias", "visual.blocks.3.mlp.fc1.weight", "visual.blocks.3.mlp.fc2.bias",
                           "visual.merger.ln_q.bias", "visual.patch_embed.proj.weight", "language_model.model.layers.1.self_attn.q_proj.bias"})
    EXPECT_TRUE(names.count(name)) << name;
  EXPECT_EQ(names["visual.blocks.0.mlp.fc1.weight"], (std::vector<int64_t>{48, 32}));
  // No windows: the merged tokens stay in raster order and every block attends over whole images.
  torch::Tensor grid = torch::tensor({{1, 8, 8}, {1, 4, 8}});
  VisionLayout layout = vision_layout(s.qwen_vision, grid);
  EXPECT_TRUE(torch::equal(layout.window_index, torch::arange(24)));
  EXPECT_EQ(layout.cu_window_seqlens, layout.cu_seqlens);
  // Qwen2-VL's image temporal index is the frame (0 for a single image, as for Qwen2.5-VL).
  torch::NoGradGuard no_grad;
  torch::Tensor pixels = torch::randn({96, s.qwen_vision.patch_dim()}, torch::kFloat64);
  torch::Tensor both = model->visual(pixels, grid);
  EXPECT_LT(max_abs(model->visual(pixels.slice(0, 0, 64), grid.slice(0, 0, 1)), both.slice(0, 0, 16)), 1e-12);
  EXPECT_LT(max_abs(model->visual(pixels.slice(0, 64), grid.slice(0, 1)), both.slice(0, 16)), 1e-12);
  // Initialised like Hugging Face: norms 1 with bias 0, linear biases 0.
  EXPECT_TRUE(torch::equal(model->visual->merger_ln_q->bias, torch::zeros({32}, torch::kFloat64)));
  EXPECT_EQ(model->language_model->layers[0]->as<LlamaDecoderLayerImpl>()->self_attn->q_proj->bias.abs().sum().item<double>(), 0);
}

TEST(QwenModel, ConfigJsonOfBothLayouts) {
  test::TempDir dir;
  // Older transformers: text fields at the top level; Qwen2-VL's vision config uses embed_dim / mlp_ratio.
  std::string old_layout = dir.write("qwen2.json", R"({"model_type": "qwen2_vl", "vocab_size": 96, "hidden_size": 64,
    "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
    "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]}, "image_token_id": 5, "vision_start_token_id": 3,
    "vision_config": {"depth": 2, "embed_dim": 32, "hidden_size": 64, "mlp_ratio": 2, "num_heads": 2, "patch_size": 4}})");
  ModelShapes a = shapes_from_hf_config(old_layout);
  EXPECT_EQ(a.family, ModelFamily::Qwen2VL);
  EXPECT_EQ(a.qwen_vision.hidden_size, 32);
  EXPECT_EQ(a.qwen_vision.out_hidden_size, 64);
  EXPECT_EQ(a.qwen_vision.intermediate_size, 64);
  EXPECT_EQ(a.qwen_vision.window_size, 0);
  EXPECT_EQ(a.text.mrope_section, (std::vector<int64_t>{2, 3, 3}));
  EXPECT_TRUE(a.text.attention_bias);
  // Newer transformers: text_config.
  std::string new_layout = dir.write("qwen25.json", R"({"model_type": "qwen2_5_vl", "image_token_id": 5,
    "vision_start_token_id": 3, "text_config": {"vocab_size": 96, "hidden_size": 32, "intermediate_size": 64,
    "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2, "rope_theta": 1000000.0,
    "rope_scaling": {"type": "mrope", "mrope_section": [1, 1, 2]}}, "vision_config": {"depth": 4, "hidden_size": 32,
    "intermediate_size": 48, "num_heads": 2, "patch_size": 4, "window_size": 16, "fullatt_block_indexes": [1, 3],
    "out_hidden_size": 32}})");
  ModelShapes b = shapes_from_hf_config(new_layout);
  EXPECT_EQ(count_parameters(b), count_parameters(preset_shapes("qwen2_5_vl_tiny")));
  std::string bad = dir.write("bad.json", R"({"model_type": "qwen2_5_vl", "text_config": {"hidden_size": 32,
    "num_attention_heads": 4, "rope_scaling": {"mrope_section": [1, 1, 1]}}, "vision_config": {"out_hidden_size": 32}})");
  test::expect_error<std::invalid_argument>([&] { shapes_from_hf_config(bad); }, {"mrope_section", "(4)"});
}

}  // namespace
}  // namespace modalign
