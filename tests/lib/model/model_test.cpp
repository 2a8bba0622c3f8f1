// lib/model properties on the tiny preset in float64: shapes, causality, padding invariance, RoPE's
// relative-position property, taps against full attention maps, a finite-difference gradient through
// the taps, and the MODA aligner (identity at init, gradient for gamma).
#include <gtest/gtest.h>

#include "lib/model/vision_language_model.h"
#include "test_util.h"

namespace modalign {
namespace {

constexpr int64_t kImage = 3;  // tiny preset's image_token_index

// A batch of expanded inputs: sample i has `lens[i]` real tokens; those with an image hold 16 image tokens
// starting at position 2. Token ids avoid the image token.
struct Batch {
  torch::Tensor ids, mask, pixels;
};

Batch make_batch(const std::vector<int64_t>& lens, const std::vector<bool>& image, int64_t t, uint64_t seed) {
  torch::manual_seed(seed);
  const int64_t b = static_cast<int64_t>(lens.size());
  Batch batch{torch::randint(4, 64, {b, t}, torch::kInt64), torch::zeros({b, t}, torch::kInt64), {}};
  int64_t n_images = 0;
  for (int64_t i = 0; i < b; ++i) {
    batch.mask[i].slice(0, 0, lens[i]).fill_(1);
    if (image[i]) batch.ids[i].slice(0, 2, 18).fill_(kImage), ++n_images;
  }
  batch.pixels = torch::randn({n_images, 3, 16, 16}, torch::kFloat64);
  return batch;
}

VisionLanguageModel tiny_model(bool aligner = false, uint64_t seed = 1) {
  torch::manual_seed(seed);
  ModelShapes s = preset_shapes("tiny");
  s.moda_aligner = aligner;
  VisionLanguageModel model(s);
  model->to(torch::kFloat64);
  return model;
}

TEST(Model, ShapesAndPresetSizes) {
  VisionLanguageModel model = tiny_model();
  Batch b = make_batch({24, 20, 10}, {true, true, false}, 24, 0);
  ModelOutput out = model->forward(b.ids, b.mask, b.pixels, TapRequest{{1}, true, true});
  EXPECT_EQ(out.logits.sizes(), (std::vector<int64_t>{3, 24, 64}));
  ASSERT_EQ(out.taps.size(), 1u);
  EXPECT_EQ(out.taps[0].layer, 1);
  EXPECT_EQ(out.taps[0].visual_mass.sizes(), (std::vector<int64_t>{3, 4, 24}));
  EXPECT_EQ(out.taps[0].probs_to_visual.sizes(), (std::vector<int64_t>{3, 4, 24, 16}));
  EXPECT_EQ(out.taps[0].probs.sizes(), (std::vector<int64_t>{3, 4, 24, 24}));
  EXPECT_TRUE(model->forward(b.ids, b.mask, b.pixels).taps.empty());
  // probs_to_visual for chosen rows only comes from the blockwise core: the eager map's rows, and the same
  // visual mass; a padding row (-1) is 0.
  torch::Tensor rows = torch::tensor({{23, 17, 5}, {19, -1, -1}, {3, 9, -1}}, torch::kInt64);
  ModelOutput probe = model->forward(b.ids, b.mask, b.pixels, TapRequest{{1}, true, false, {}, rows});
  torch::Tensor want = out.taps[0].probs_to_visual.gather(2, rows.clamp_min(0).view({3, 1, 3, 1}).expand({3, 4, 3, 16})) *
                       (rows >= 0).to(torch::kFloat64).view({3, 1, 3, 1});
  EXPECT_TRUE(torch::allclose(probe.taps[0].probs_to_visual, want, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(probe.taps[0].visual_mass, out.taps[0].visual_mass, 1e-12, 1e-12));
  EXPECT_FALSE(probe.taps[0].probs.defined());

  int64_t counted = 0;
  for (const auto& p : model->parameters()) counted += p.numel();
  EXPECT_EQ(counted, count_parameters(model->shapes));
  EXPECT_LT(count_parameters(preset_shapes("tiny")), 1'000'000);
  EXPECT_NEAR(count_parameters(preset_shapes("demo")) / 1e6, 10, 4);
  EXPECT_NEAR(count_parameters(preset_shapes("small")) / 1e6, 100, 15);
  EXPECT_NEAR(count_parameters(preset_shapes("llava-1.5-7b")) / 1e9, 7.06, 0.1);
}

TEST(Model, ImageCountMismatchIsAnError) {
  VisionLanguageModel model = tiny_model();
  Batch b = make_batch({24, 20}, {true, true}, 24, 0);
  test::expect_error<c10::Error>([&] { model->forward(b.ids, b.mask, b.pixels.slice(0, 0, 1)); },
                                 {"the batch holds 32 image tokens but 1 images of 16 patches"});
}

TEST(Model, Causality) {
  VisionLanguageModel model = tiny_model();
  Batch b = make_batch({24}, {true}, 24, 2);
  torch::Tensor before = model->forward(b.ids, b.mask, b.pixels).logits;
  b.ids[0][21] = (b.ids[0][21].item<int64_t>() + 1 - 4) % 60 + 4;  // change a late text token
  torch::Tensor after = model->forward(b.ids, b.mask, b.pixels).logits;
  EXPECT_TRUE(torch::allclose(before.slice(1, 0, 21), after.slice(1, 0, 21), 0, 1e-12));
  EXPECT_FALSE(torch::allclose(before.slice(1, 21), after.slice(1, 21), 0, 1e-6));
}

TEST(Model, LogitsAtRequestedPositionsAreThoseRowsOfTheFullLogits) {
  VisionLanguageModel model = tiny_model();
  Batch b = make_batch({24, 20, 10}, {true, true, false}, 24, 8);
  torch::Tensor positions = torch::rand({3, 24}) > 0.7;
  torch::Tensor full = model->forward(b.ids, b.mask, b.pixels).logits;
  torch::Tensor rows = model->forward(b.ids, b.mask, b.pixels, {}, positions).logits;
  ASSERT_EQ(rows.size(0), positions.sum().item<int64_t>());
  EXPECT_TRUE(torch::allclose(rows, full.index({positions}), 0, 1e-12));
}

TEST(Model, RightPaddingChangesNothingAtRealPositions) {
  VisionLanguageModel model = tiny_model();
  Batch b = make_batch({20}, {true}, 20, 3);
  torch::Tensor alone = model->forward(b.ids, b.mask, b.pixels).logits;  // (1, 20, V)
  // Same sample right padded to 30, batched with a longer sample.
  Batch other = make_batch({30}, {true}, 30, 4);
  torch::Tensor ids = torch::cat({torch::cat({b.ids, torch::full({1, 10}, 0, torch::kInt64)}, 1), other.ids});
  torch::Tensor mask = torch::cat({torch::cat({b.mask, torch::zeros({1, 10}, torch::kInt64)}, 1), other.mask});
  torch::Tensor pixels = torch::cat({b.pixels, other.pixels});
  torch::Tensor padded = model->forward(ids, mask, pixels).logits;
  EXPECT_TRUE(torch::allclose(alone[0], padded[0].slice(0, 0, 20), 0, 1e-12));
}

TEST(Model, WithoutImageEqualsTheSequenceWithTheImageTokensCut) {
  // The text-alone forward of the modality-contrast losses: image tokens become padding inside the
  // sequence; every text position's logits equal those of the same tokens with the image span cut out.
  for (bool aligner : {false, true}) {
    VisionLanguageModel model = tiny_model(aligner);
    Batch b = make_batch({24}, {true}, 24, 5);
    TextOnlyInputs text = without_image(b.ids, b.mask, kImage);
    EXPECT_EQ(text.attention_mask.sum().item<int64_t>(), 8);
    EXPECT_FALSE((text.input_ids == kImage).any().item<bool>());
    torch::Tensor holes = model->forward(text.input_ids, text.attention_mask, {}).logits;  // (1, 24, V)
    torch::Tensor keep = torch::cat({torch::arange(0, 2), torch::arange(18, 24)});
    torch::Tensor cut = model->forward(b.ids.index_select(1, keep), b.mask.index_select(1, keep), {}).logits;  // (1, 8, V)
    EXPECT_TRUE(torch::allclose(holes.index_select(1, keep), cut, 0, 1e-12)) << "aligner " << aligner;
    // ... and differ from the forward that sees the image.
    torch::Tensor seen = model->forward(b.ids, b.mask, b.pixels).logits;
    EXPECT_FALSE(torch::allclose(seen.index_select(1, keep.slice(0, 2)), cut.slice(1, 2), 0, 1e-6));
  }
}

TEST(Model, RopeScoresDependOnlyOnRelativePosition) {
  TextShapes s = preset_shapes("tiny").text;
  const int64_t t = 12;
  torch::Tensor mask = torch::ones({1, t}, torch::kBool);
  DecoderContext ctx = make_decoder_context(s, mask, torch::zeros({1, t}, torch::kBool), torch::kFloat64);
  torch::manual_seed(5);
  torch::Tensor q = torch::randn({1, 1, 1, s.head_dim()}, torch::kFloat64).expand({1, t, 1, s.head_dim()});  // (B, T, h, d)
  torch::Tensor k = torch::randn({1, 1, 1, s.head_dim()}, torch::kFloat64).expand({1, t, 1, s.head_dim()});
  torch::Tensor scores = torch::matmul(apply_rope(q, ctx.cos, ctx.sin).select(2, 0),
                                       apply_rope(k, ctx.cos, ctx.sin).select(2, 0).transpose(-1, -2))[0];
  for (int64_t m = 0; m + 3 < t; ++m)  // <R_m q, R_n k> is a function of m - n only
    EXPECT_NEAR(scores[m][m + 3].item<double>(), scores[0][3].item<double>(), 1e-12) << m;
  for (int64_t m = 0; m < t; ++m) EXPECT_NEAR(scores[m][m].item<double>(), scores[0][0].item<double>(), 1e-12);
  EXPECT_GT(std::abs(scores[0][3].item<double>() - scores[0][5].item<double>()), 1e-6);
  // Position 0 is the identity rotation.
  EXPECT_TRUE(torch::allclose(apply_rope(q, ctx.cos, ctx.sin)[0][0][0], q[0][0][0], 0, 1e-15));  // t = 0
}

TEST(Model, TapsEqualFullAttentionMaps) {
  VisionLanguageModel model = tiny_model();
  Batch b = make_batch({24, 19, 10}, {true, true, false}, 24, 6);
  torch::Tensor bos = torch::zeros({3, 24, 2}, torch::kFloat64);
  bos.select(2, 0).select(1, 0).fill_(1);     // key set 0: the first token
  bos.select(2, 1).slice(1, 18).fill_(1);      // key set 1: positions 18..23
  ModelOutput out = model->forward(b.ids, b.mask, b.pixels, TapRequest{{0, 1}, true, true, bos});
  for (const LayerTap& tap : out.taps) {
    EXPECT_TRUE(torch::allclose(tap.key_mass.select(-1, 0), tap.probs.select(-1, 0), 0, 1e-12));
    EXPECT_TRUE(torch::allclose(tap.key_mass.select(-1, 1), tap.probs.slice(-1, 18).sum(-1), 0, 1e-12));
    torch::Tensor vis = out.visual_mask.to(torch::kFloat64);  // (B, T)
    torch::Tensor recomputed = (tap.probs * vis.view({3, 1, 1, 24})).sum(-1);  // (B, H, T)
    EXPECT_TRUE(torch::allclose(tap.visual_mass, recomputed, 0, 1e-12));
    // Rows of P sum to 1, including padded query rows (no NaN anywhere).
    EXPECT_TRUE(torch::allclose(tap.probs.sum(-1), torch::ones({3, 4, 24}, torch::kFloat64), 0, 1e-12));
    // probs_to_visual = P at image keys, in position order; zero for the text-only sample.
    torch::Tensor expected = tap.probs[0].slice(-1, 2, 18);
    EXPECT_TRUE(torch::allclose(tap.probs_to_visual[0], expected, 0, 1e-15));
    EXPECT_EQ(tap.probs_to_visual[2].abs().sum().item<double>(), 0.0);
    EXPECT_EQ(tap.visual_mass[2].abs().sum().item<double>(), 0.0);
    // Causal: no query attends to a later key; padded keys get (numerically) nothing.
    EXPECT_EQ(tap.probs[0][0][5].slice(0, 6).abs().max().item<double>(), 0.0);
    EXPECT_LT(tap.probs[1][0][10].slice(0, 19).abs().max().item<double>(), 1e-300);
  }
}

// d/dw of sum(c * visual_mass) through softmax, RoPE and the projections, against central differences.
TEST(Model, FiniteDifferenceGradientThroughTaps) {
  VisionLanguageModel model = tiny_model();
  Batch b = make_batch({22, 24}, {true, true}, 24, 7);
  torch::manual_seed(8);
  torch::Tensor c = torch::randn({2, 4, 24}, torch::kFloat64);
  auto objective = [&] {
    ModelOutput out = model->forward(b.ids, b.mask, b.pixels, TapRequest{{1}});
    return (out.taps[0].visual_mass * c).sum();
  };
  std::vector<torch::Tensor> params = {model->language_model->layers[1]->as<LlamaDecoderLayerImpl>()->self_attn->q_proj->weight,
                                       model->language_model->layers[0]->as<LlamaDecoderLayerImpl>()->mlp->up_proj->weight,
                                       model->multi_modal_projector->linear_1->weight};
  model->zero_grad();
  objective().backward();
  for (auto& p : params) {
    torch::Tensor grad = p.grad().clone();
    for (int64_t flat : {0L, 7L, 33L}) {
      double* w = p.data_ptr<double>() + flat;
      const double h = 1e-6, saved = *w;
      torch::NoGradGuard no_grad;
      *w = saved + h;
      double up = objective().item<double>();
      *w = saved - h;
      double down = objective().item<double>();
      *w = saved;
      double numeric = (up - down) / (2 * h);
      double analytic = grad.view(-1)[flat].item<double>();
      EXPECT_NEAR(analytic, numeric, 1e-6 + 1e-5 * std::abs(numeric)) << "param element " << flat;
    }
  }
}

TEST(Model, AlignerIsTheIdentityAtInitAndLearns) {
  VisionLanguageModel plain = tiny_model(false, 9);
  VisionLanguageModel aligned = tiny_model(true, 9);
  // The same seed gives the same weights for every shared name: the aligner draws nothing from the
  // generator, so a study's paired seeds start aligned and plain models from the same point.
  auto src = plain->named_parameters();
  for (auto& p : aligned->named_parameters()) {
    if (!src.contains(p.key())) continue;
    ASSERT_TRUE(torch::equal(p.value(), src[p.key()])) << p.key();
  }
  Batch b = make_batch({24, 20, 10}, {true, true, false}, 24, 10);
  TapRequest taps{{0, 1}};
  ModelOutput a = plain->forward(b.ids, b.mask, b.pixels, taps);
  ModelOutput c = aligned->forward(b.ids, b.mask, b.pixels, taps);
  EXPECT_TRUE(torch::equal(a.logits, c.logits)) << "aligner must be exactly the identity at init";
  auto named = aligned->named_parameters();
  ASSERT_TRUE(named.contains("language_model.model.layers.0.self_attn.aligner.gamma"));
  ASSERT_TRUE(named.contains("language_model.model.layers.0.self_attn.aligner.wf.weight"));
  (c.taps[1].visual_mass.sum() + c.logits.pow(2).mean()).backward();
  torch::Tensor gamma_grad = named["language_model.model.layers.1.self_attn.aligner.gamma"].grad();
  ASSERT_TRUE(gamma_grad.defined());
  EXPECT_GT(gamma_grad.abs().sum().item<double>(), 1e-8);
  EXPECT_GT(named["language_model.model.layers.0.self_attn.aligner.wf.weight"].grad().abs().sum().item<double>(), 1e-8);
}

TEST(Model, HuggingFaceInitialisation) {
  ModelShapes s = preset_shapes("tiny");
  s.moda_aligner = true;
  s.initializer_range = 0.05;
  torch::manual_seed(3);
  VisionLanguageModel model(s);
  for (const auto& p : model->named_parameters()) {
    const std::string& name = p.key();
    const torch::Tensor& t = p.value();
    auto ends = [&](const std::string& suffix) {
      return name.size() >= suffix.size() && name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0;
    };
    if (name.find(".aligner.") != std::string::npos) {
      EXPECT_TRUE(torch::equal(t, ends("gamma") ? torch::zeros_like(t) : torch::eye(t.size(0)))) << name;
    } else if (ends("bias")) {
      EXPECT_EQ(t.abs().max().item<double>(), 0.0) << name;
    } else if (name.find("norm") != std::string::npos) {  // LayerNorm / RMSNorm weights
      EXPECT_TRUE(torch::equal(t, torch::ones_like(t))) << name;
    } else {  // linear, convolution, embedding and class embedding weights: normal(0, 0.05)
      ASSERT_GE(t.numel(), 32) << name;
      EXPECT_NEAR(t.std().item<double>(), 0.05, 0.05 * (t.numel() >= 1000 ? 0.1 : 0.4)) << name;
      EXPECT_LT(std::abs(t.mean().item<double>()), 0.05) << name;
    }
  }
  torch::manual_seed(3);
  VisionLanguageModel again(s);
  auto a = model->named_parameters(), b = again->named_parameters();
  for (const auto& p : a) EXPECT_TRUE(torch::equal(p.value(), b[p.key()])) << "same seed, same weights: " << p.key();
}

TEST(Model, AlignerIsCausalInEverySupervisedToken) {
  // Text keys of the aligner are the prompt only: changing a supervised token (or anything after the
  // first one) leaves the logits at every earlier position bitwise equal.
  VisionLanguageModel model = tiny_model(true, 12);
  {
    torch::NoGradGuard no_grad;
    for (auto& p : model->named_parameters())
      if (p.key().find(".aligner.") != std::string::npos) p.value().copy_(torch::randn_like(p.value()));
  }
  Batch b = make_batch({24, 22}, {true, true}, 24, 13);
  torch::Tensor labels = torch::full({2, 24}, -100, torch::kInt64);
  labels[0].slice(0, 20, 24) = b.ids[0].slice(0, 20, 24);  // sample 0 answers with tokens 20..23
  labels[1].slice(0, 19, 22) = b.ids[1].slice(0, 19, 22);
  torch::Tensor prompt = prompt_mask_from_labels(labels);
  EXPECT_EQ(prompt[0].sum().item<int64_t>(), 20);
  EXPECT_EQ(prompt[1].sum().item<int64_t>(), 19);
  torch::Tensor before = model->forward(b.ids, b.mask, b.pixels, {}, {}, prompt).logits;
  for (int64_t changed : {20L, 23L}) {  // the first and the last answer token of sample 0
    torch::Tensor ids = b.ids.clone();
    ids[0][changed] = (ids[0][changed].item<int64_t>() + 7) % 60 + 4;
    torch::Tensor after = model->forward(ids, b.mask, b.pixels, {}, {}, prompt).logits;
    EXPECT_TRUE(torch::equal(after[0].slice(0, 0, changed), before[0].slice(0, 0, changed))) << "token " << changed;
    EXPECT_TRUE(torch::equal(after[1], before[1]));
    // Reading every text token, as MODA's code does, leaks the answer into earlier positions.
    torch::Tensor leaky_before = model->forward(b.ids, b.mask, b.pixels).logits;
    torch::Tensor leaky_after = model->forward(ids, b.mask, b.pixels).logits;
    EXPECT_GT((leaky_after[0].slice(0, 0, changed) - leaky_before[0].slice(0, 0, changed)).abs().max().item<double>(), 1e-6);
  }
}

TEST(Model, AlignerMatchesTheFormulaPerSampleAndHead) {
  // Direct evaluation of Kv' = Wf (Kv + gamma * (Kn_vis @ rownorm(Kn_text^T V_text))) for one sample/head.
  torch::manual_seed(11);
  const int64_t t = 6, d = 4;
  DuplexAligner aligner(d);
  aligner->to(torch::kFloat64);
  {
    torch::NoGradGuard no_grad;
    aligner->gamma.copy_(torch::tensor({0.5, -1.0, 2.0, 0.25}, torch::kFloat64));
    aligner->wf->weight.copy_(torch::randn({d, d}, torch::kFloat64));
  }
  torch::Tensor k = torch::randn({1, 1, t, d}, torch::kFloat64), v = torch::randn({1, 1, t, d}, torch::kFloat64);
  DecoderContext ctx;
  ctx.visual_mask = torch::tensor({{false, true, true, false, false, false}});
  ctx.text_mask = torch::tensor({{true, false, false, true, true, false}});  // last position: padding
  torch::Tensor out = aligner(k, v, ctx)[0][0];  // (T, d)
  auto kk = k[0][0], vv = v[0][0];
  torch::Tensor kn = kk / kk.norm(2, 1, true);
  torch::Tensor text = torch::tensor({0, 3, 4});
  torch::Tensor g = torch::matmul(kn.index_select(0, text).t(), vv.index_select(0, text));
  g = g / g.norm(2, 1, true);
  for (int64_t i : {1, 2}) {
    torch::Tensor expected = torch::matmul(aligner->wf->weight, kk[i] + aligner->gamma * torch::matmul(kn[i], g));
    EXPECT_TRUE(torch::allclose(out[i], expected, 0, 1e-12)) << i;
  }
  for (int64_t i : {0, 3, 4, 5}) EXPECT_TRUE(torch::equal(out[i], kk[i])) << "text key " << i << " must not change";
}

TEST(Model, HuggingFaceConfigJson) {
  test::TempDir dir;
  std::string path = dir.write("config.json", R"({
    "architectures": ["LlavaForConditionalGeneration"], "image_token_index": 32000,
    "projector_hidden_act": "gelu", "vision_feature_layer": -2, "vision_feature_select_strategy": "default",
    "vision_config": {"hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 24,
                      "num_attention_heads": 16, "image_size": 336, "patch_size": 14},
    "text_config": {"vocab_size": 32064, "num_key_value_heads": 8, "rope_theta": 500000.0, "initializer_range": 0.01}})");
  ModelShapes s = shapes_from_hf_config(path);
  EXPECT_DOUBLE_EQ(s.initializer_range, 0.01);
  EXPECT_DOUBLE_EQ(preset_shapes("tiny").initializer_range, 0.02);
  EXPECT_EQ(s.vision.num_patches(), 576);
  EXPECT_EQ(s.text.hidden_size, 4096);  // LlamaConfig default
  EXPECT_EQ(s.text.num_key_value_heads, 8);
  EXPECT_DOUBLE_EQ(s.text.rope_theta, 500000.0);
  EXPECT_EQ(s.vision_layers_used(), 23);
  std::string bad = dir.write("bad.json", R"({"projector_hidden_act": "relu"})");
  test::expect_error<std::runtime_error>([&] { shapes_from_hf_config(bad); }, {"bad.json", "projector_hidden_act 'relu'"});
  test::expect_error<std::invalid_argument>([] { preset_shapes("huge"); }, {"unknown model preset 'huge'", "tiny, demo"});
}

}  // namespace
}  // namespace modalign
