// lib/model against tests/golden/llava_tiny_golden.safetensors: weights, inputs and outputs computed in
// float64 by an independent plain-PyTorch LLaVA implementation. Checks the image-token expansion, the
// logits and the per-layer visual attention mass, in float64 (1e-9) and float32 (1e-5).
#include <gtest/gtest.h>

#include "lib/io/safetensors.h"
#include "lib/io/weights.h"
#include "lib/model/vision_language_model.h"
#include "test_util.h"

namespace modalign {
namespace {

class GoldenModel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { golden_ = std::make_unique<SafetensorsFile>(test::golden_path()); }
  static void TearDownTestSuite() { golden_.reset(); }
  static torch::Tensor g(const std::string& name) { return golden_->tensor("golden." + name); }

  // The tiny model with the golden weights (written to a weights-only file, loaded strictly).
  static VisionLanguageModel load_model(torch::ScalarType dtype, const test::TempDir& dir) {
    NamedTensors weights;
    for (const auto& e : golden_->entries())
      if (e.name.rfind("golden.", 0) != 0) weights.emplace_back(e.name, golden_->tensor(e.name));
    std::string path = (dir.path() / "llava_tiny.safetensors").string();
    save_safetensors(path, weights);
    VisionLanguageModel model(preset_shapes("tiny"));
    model->to(dtype);
    LoadReport report = load_weights(*model, path, /*strict=*/true);
    EXPECT_EQ(report.loaded, weights.size());
    return model;
  }

  static ExpandedInputs expanded() {
    ModelShapes s = preset_shapes("tiny");
    return expand_image_tokens(g("input_ids"), g("attention_mask"), g("labels"), s.image_token_index,
                               s.vision.num_patches());
  }

  static std::unique_ptr<SafetensorsFile> golden_;
};
std::unique_ptr<SafetensorsFile> GoldenModel::golden_;

TEST_F(GoldenModel, ExpansionMatchesMergedLayout) {
  ExpandedInputs in = expanded();
  EXPECT_TRUE(torch::equal(in.attention_mask, g("merged_attention_mask")));
  EXPECT_TRUE(torch::equal(in.labels, g("merged_labels")));
  EXPECT_TRUE(torch::equal((in.input_ids == 3).to(torch::kInt64) * in.attention_mask, g("visual_mask")));
}

TEST_F(GoldenModel, LogitsAndVisualMassFloat64) {
  test::TempDir dir;
  VisionLanguageModel model = load_model(torch::kFloat64, dir);
  ExpandedInputs in = expanded();
  ModelOutput out = model->forward(in.input_ids, in.attention_mask, g("pixel_values"), TapRequest{{0, 1}});
  torch::Tensor real = in.attention_mask.to(torch::kBool);  // (B, T)
  torch::Tensor logits = g("logits");
  ASSERT_EQ(out.logits.sizes(), logits.sizes());
  // Real positions must agree to float64 round-off; padded rows are not compared (implementations may
  // put any embedding there and nothing reads them).
  double err = (out.logits - logits).abs().index({real}).max().item<double>();
  EXPECT_LT(err, 1e-9) << "max |logits - golden| at real positions";
  ASSERT_EQ(out.taps.size(), 2u);
  for (int l = 0; l < 2; ++l) {
    torch::Tensor golden_mass = g("visual_mass." + std::to_string(l));  // (B, H, T)
    torch::Tensor diff = (out.taps[l].visual_mass - golden_mass).abs().permute({0, 2, 1}).index({real});
    EXPECT_LT(diff.max().item<double>(), 1e-9) << "layer " << l;
  }
}

TEST_F(GoldenModel, LogitsFloat32) {
  test::TempDir dir;
  VisionLanguageModel model = load_model(torch::kFloat32, dir);
  ExpandedInputs in = expanded();
  ModelOutput out = model->forward(in.input_ids, in.attention_mask, g("pixel_values").to(torch::kFloat32));
  torch::Tensor real = in.attention_mask.to(torch::kBool);
  double err = (out.logits.to(torch::kFloat64) - g("logits")).abs().index({real}).max().item<double>();
  EXPECT_LT(err, 1e-5);
}

TEST_F(GoldenModel, StrictLoadListsWhatIsWrong) {
  VisionLanguageModel model(preset_shapes("tiny"));
  torch::Tensor before = model->language_model->embed_tokens->weight.clone();
  size_t extra = 0;
  for (const auto& e : golden_->entries()) extra += e.name.rfind("golden.", 0) == 0;
  ASSERT_GT(extra, 0u);
  // The golden file holds golden.* tensors besides the weights: strict loading refuses and copies nothing.
  test::expect_error<std::runtime_error>(
      [&] { load_weights(*model, test::golden_path(), true); },
      {"unexpected " + std::to_string(extra) + ":", "golden.M_I", "missing 0:", "shape mismatch 0:"});
  EXPECT_TRUE(torch::equal(before, model->language_model->embed_tokens->weight));
  LoadReport report = load_weights(*model, test::golden_path(), /*strict=*/false);
  EXPECT_EQ(report.unexpected.size(), extra);
  EXPECT_TRUE(report.missing.empty());
  EXPECT_TRUE(torch::equal(model->language_model->embed_tokens->weight,
                           golden_->tensor("language_model.model.embed_tokens.weight").to(torch::kFloat32)));
}

TEST_F(GoldenModel, ShapeMismatchAndMissingAreNamed) {
  test::TempDir dir;
  std::string path = (dir.path() / "w.safetensors").string();
  save_safetensors(path, {{"language_model.model.norm.weight", torch::ones({7})},
                          {"language_model.model.layers.0.self_attn.rotary_emb.inv_freq", torch::ones({4})}});
  VisionLanguageModel model(preset_shapes("tiny"));
  test::expect_error<std::runtime_error>(
      [&] { load_weights(*model, path, true); },
      {"language_model.model.norm.weight: file [7] vs model [32]", "unexpected 0:", "missing 79:", "(+59 more)"});
}

}  // namespace
}  // namespace modalign
