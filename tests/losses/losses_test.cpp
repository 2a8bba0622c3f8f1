// losses/: golden values from the independent implementation, hand-computed small cases for every loss
// and form, finite-difference gradients in double, masking invariants, degenerate inputs, the composer.
#include <gtest/gtest.h>

#include <array>

#include "lib/io/safetensors.h"
#include "losses/attention_kl.h"
#include "losses/dual_channel.h"
#include "losses/layer_decay.h"
#include "losses/loss_composer.h"
#include "losses/modality_contrast.h"
#include "losses/sink_suppression.h"
#include "losses/text_ce.h"
#include "test_util.h"

namespace modalign {
namespace {

double value(const torch::Tensor& t) { return t.item<double>(); }

// ---------------------------------------------------------------- golden

class GoldenLosses : public ::testing::Test {
 protected:
  static void SetUpTestSuite() { golden_ = std::make_unique<SafetensorsFile>(test::golden_path()); }
  static void TearDownTestSuite() { golden_.reset(); }
  static torch::Tensor g(const std::string& name) { return golden_->tensor("golden." + name); }
  static AttentionStats stats() {
    AttentionStats s;
    s.layers = {0, 1};
    s.visual_mass = {g("visual_mass.0"), g("visual_mass.1")};
    s.labels = g("merged_labels");
    s.attention_mask = g("merged_attention_mask").to(torch::kBool);
    s.visual_mask = g("visual_mask").to(torch::kBool);
    return s;
  }
  static void expect_loss(const LossTerm& term, const std::string& key) {
    EXPECT_NEAR(value(term.sum), value(g("loss." + key + ".sum")), 1e-9) << key;
    EXPECT_EQ(value(term.count), value(g("loss." + key + ".count"))) << key;
    EXPECT_NEAR(value(term.mean()), value(g("loss." + key + ".mean")), 1e-9) << key;
  }
  static DualChannelOptions options(MassForm form, std::optional<double> target) {
    DualChannelOptions o;  // golden parameters: eps 1e-6, inter 1, intra 0.5, all layers
    o.form = form;
    o.target = target;
    return o;
  }
  static std::unique_ptr<SafetensorsFile> golden_;
};
std::unique_ptr<SafetensorsFile> GoldenLosses::golden_;

TEST_F(GoldenLosses, TextCe) { expect_loss(text_ce(g("logits"), g("merged_labels")), "text_ce"); }

TEST_F(GoldenLosses, TextCeFromLogitsAtSupervisedPositionsOnly) {
  torch::Tensor logits = g("logits"), labels = g("merged_labels");
  torch::Tensor rows = logits.index({response_queries(labels)});  // (N, V), what the model computes in training
  expect_loss(text_ce(rows, labels), "text_ce");
  EXPECT_THROW(text_ce(rows.slice(0, 1), labels), c10::Error);  // one row short
}

TEST_F(GoldenLosses, MassesAndBalancedTargets) {
  DualChannelLoss loss(options(MassForm::CappedLog, std::nullopt), 2);
  DualChannelLoss::Masses m = loss.masses(stats());
  EXPECT_TRUE(torch::allclose(m.inter, g("M_X"), 0, 1e-12));
  EXPECT_TRUE(torch::allclose(m.intra, g("M_I"), 0, 1e-12));
  EXPECT_TRUE(torch::allclose(m.inter_target, g("target_balanced.X"), 0, 1e-12));
  EXPECT_TRUE(torch::allclose(m.intra_target, g("target_balanced.I"), 0, 1e-12));
}

TEST_F(GoldenLosses, DualChannelEveryForm) {
  expect_loss(DualChannelLoss(options(MassForm::Log, std::nullopt), 2).compute(stats()), "dual_channel.log");
  expect_loss(DualChannelLoss(options(MassForm::CappedLog, 0.95), 2).compute(stats()), "dual_channel.capped_log");
  expect_loss(DualChannelLoss(options(MassForm::Hinge, 0.95), 2).compute(stats()), "dual_channel.hinge");
  expect_loss(DualChannelLoss(options(MassForm::CappedLog, std::nullopt), 2).compute(stats()),
              "dual_channel.capped_log_balanced");
}

// ---------------------------------------------------------------- hand-computed cases
//
// B = 2, H = 1, T = 6. Sample 0: BOS, image at 1..2, text 3, answer tokens at 4..5 (labels[4], labels[5]
// supervised -> response queries t = 3, 4). Sample 1: text only. Masses chosen by hand.

AttentionStats hand_stats(bool requires_grad = false) {
  AttentionStats s;
  s.layers = {0, 1};
  s.labels = torch::tensor({{-100, -100, -100, -100, 7, 9}, {-100, -100, 5, 6, -100, -100}});
  s.attention_mask = torch::tensor({{1, 1, 1, 1, 1, 1}, {1, 1, 1, 1, 0, 0}}).to(torch::kBool);
  s.visual_mask = torch::tensor({{0, 1, 1, 0, 0, 0}, {0, 0, 0, 0, 0, 0}}).to(torch::kBool);
  auto opts = torch::TensorOptions().dtype(torch::kFloat64).requires_grad(requires_grad);
  //                       t:     0    1    2    3    4    5
  s.visual_mass = {torch::tensor({{{0.0, 0.0, 0.5, 0.6, 0.2, 0.9}}, {{0.3, 0.3, 0.3, 0.3, 0.9, 0.9}}}, opts),
                   torch::tensor({{{0.0, 0.0, 0.4, 0.3, 0.1, 0.9}}, {{0.1, 0.1, 0.1, 0.1, 0.9, 0.9}}}, opts)};
  s.sink_mass = {torch::tensor({{{1.0, 0.5, 0.2, 0.3, 0.1, 0.0}}, {{1.0, 0.5, 0.5, 0.5, 0.5, 0.5}}}, opts),
                 torch::tensor({{{1.0, 0.5, 0.2, 0.5, 0.3, 0.0}}, {{1.0, 0.5, 0.5, 0.5, 0.5, 0.5}}}, opts)};
  return s;
}

TEST(LossHelpers, QuerySelection) {
  AttentionStats s = hand_stats();
  EXPECT_TRUE(torch::equal(response_queries(s.labels),
                           torch::tensor({{0, 0, 0, 1, 1, 0}, {0, 1, 1, 0, 0, 0}}).to(torch::kBool)));
  EXPECT_TRUE(torch::equal(image_queries(s.visual_mask), torch::tensor({{0, 0, 1, 0, 0, 0}, {0, 0, 0, 0, 0, 0}}).to(torch::kBool)));
  // Visible image share: t = 3 -> 2/4, t = 4 -> 2/5; mean 0.45. Image query t = 2 -> 2/3.
  torch::Tensor x = balanced_share(response_queries(s.labels), s.attention_mask, s.visual_mask);
  EXPECT_NEAR(value(x[0]), 0.45, 1e-15);
  EXPECT_NEAR(value(balanced_share(image_queries(s.visual_mask), s.attention_mask, s.visual_mask)[0]), 2.0 / 3, 1e-15);
}

TEST(DualChannel, HandComputedEveryForm) {
  AttentionStats s = hand_stats();
  // M_X: layer 0 mean(0.6, 0.2) = 0.4, layer 1 mean(0.3, 0.1) = 0.2. M_I: layer 0 0.5, layer 1 0.4.
  const double eps = 1e-6;
  auto check = [&](MassForm form, std::optional<double> target, double expected) {
    DualChannelOptions o;
    o.form = form;
    o.target = target;
    o.inter_weight = 1.0;
    o.intra_weight = 0.5;
    LossTerm t = DualChannelLoss(o, 2).compute(s);
    EXPECT_NEAR(value(t.sum), expected, 1e-12);
    EXPECT_EQ(value(t.count), 1);  // the text-only sample takes no part
  };
  check(MassForm::Log, std::nullopt,
        -(std::log(0.4 + eps) + std::log(0.2 + eps)) / 2 - 0.5 * (std::log(0.5 + eps) + std::log(0.4 + eps)) / 2);
  // Fixed target 0.45: inter min(0.4/0.45, 1), min(0.2/0.45, 1); intra capped at 1 for 0.5, 0.4/0.45.
  check(MassForm::CappedLog, 0.45,
        -(std::log(0.4 / 0.45 + eps) + std::log(0.2 / 0.45 + eps)) / 2 -
            0.5 * (std::log(1 + eps) + std::log(0.4 / 0.45 + eps)) / 2);
  check(MassForm::Hinge, 0.45,
        (std::pow(0.05, 2) + std::pow(0.25, 2)) / 2 + 0.5 * (0 + std::pow(0.05, 2)) / 2);
  // Balanced: inter target 0.45 (as above), intra target 2/3.
  check(MassForm::CappedLog, std::nullopt,
        -(std::log(0.4 / 0.45 + eps) + std::log(0.2 / 0.45 + eps)) / 2 -
            0.5 * (std::log(0.5 * 1.5 + eps) + std::log(0.4 * 1.5 + eps)) / 2);
}

TEST(DualChannel, TargetScaleAndLayerSelection) {
  AttentionStats s = hand_stats();
  DualChannelOptions o;
  o.form = MassForm::Hinge;
  o.target = 0.5;
  o.target_scale = 0.8;  // target 0.4
  o.intra_weight = 0;
  o.layers = {"1"};
  DualChannelLoss loss(o, 2);
  EXPECT_EQ(loss.layers(), (std::vector<int64_t>{1}));
  EXPECT_NEAR(value(loss.compute(s).sum), std::pow(0.4 - 0.2, 2), 1e-12);
}

TEST(LayerDecay, HandComputed) {
  AttentionStats s = hand_stats();
  LayerDecayOptions o;  // ref = first layer (0): relu(0.4 - 0.2) = 0.2
  LossTerm t = LayerDecayLoss(o, 2).compute(s);
  EXPECT_NEAR(value(t.sum), 0.2, 1e-12);
  EXPECT_EQ(value(t.count), 1);
  s.visual_mass[1] = s.visual_mass[1] + 0.3;  // deeper layer above the reference: no penalty
  EXPECT_NEAR(value(LayerDecayLoss(o, 2).compute(s).sum), 0.0, 1e-12);
  o.ref = 1;
  test::expect_error<c10::Error>([&] { LayerDecayLoss(o, 2); }, {"no selected layer comes after the reference layer 1"});
}

TEST(SinkSuppression, HandComputedAndSinkKeys) {
  AttentionStats s = hand_stats();
  SinkSuppressionOptions o;
  // Response queries t = 3, 4: layer 0 mean(0.3, 0.1) = 0.2, layer 1 mean(0.5, 0.3) = 0.4.
  LossTerm t = SinkSuppressionLoss(o, 2).compute(s);
  EXPECT_NEAR(value(t.sum), (std::log(0.2 + 1e-6) + std::log(0.4 + 1e-6)) / 2, 1e-12);
  EXPECT_EQ(value(t.count), 1);
  SinkSuppressionLoss bos(o, 2);
  AttentionStats masks;
  masks.attention_mask = torch::tensor({{0, 1, 1, 1, 1}, {1, 1, 1, 1, 0}}).to(torch::kBool);
  masks.visual_mask = torch::tensor({{0, 0, 0, 1, 1}, {0, 1, 1, 0, 0}}).to(torch::kBool);
  EXPECT_TRUE(torch::equal(bos.sink_keys(masks), torch::tensor({{0, 1, 0, 0, 0}, {1, 0, 0, 0, 0}}).to(torch::kBool)));
  o.sink = SinkTokens::System;  // every real token before the image span
  SinkSuppressionLoss sys(o, 2);
  EXPECT_TRUE(torch::equal(sys.sink_keys(masks), torch::tensor({{0, 1, 1, 0, 0}, {1, 0, 0, 0, 0}}).to(torch::kBool)));
  masks.visual_mask = torch::Tensor();
  test::expect_error<c10::Error>([&] { sys.sink_keys(masks); }, {"sink: system needs the (B, T) visual_mask"});
  EXPECT_TRUE(sys.needs().sink_mass && !sys.needs().probs_to_visual && !sys.needs().region_target);
}

TEST(AttentionKl, HandComputed) {
  AttentionStats s = hand_stats();
  // Two image tokens. Response queries t = 3, 4 put (0.3, 0.1) and (0.1, 0.1) on them in both layers.
  torch::Tensor p = torch::zeros({2, 1, 6, 2}, torch::kFloat64);
  p[0][0][3] = torch::tensor({0.3, 0.1}, torch::kFloat64);
  p[0][0][4] = torch::tensor({0.1, 0.1}, torch::kFloat64);
  s.probs_to_visual = {p, p};
  s.region_target = torch::tensor({{1.0, 3.0}, {0.0, 0.0}}, torch::kFloat64);  // normalised to (0.25, 0.75)
  AttentionKlOptions o;
  auto kl = [](double t0, double t1, double q0, double q1) { return t0 * std::log(t0 / q0) + t1 * std::log(t1 / q1); };
  double expected = (kl(0.25, 0.75, 0.75, 0.25) + kl(0.25, 0.75, 0.5, 0.5)) / 2;
  LossTerm t = AttentionKlLoss(o, 2).compute(s);
  EXPECT_NEAR(value(t.sum), expected, 1e-9);
  EXPECT_EQ(value(t.count), 1);
  // Not renormalised: the target against P itself, = the above - log(image mass) per query.
  o.renormalise = false;
  double unnormalised = (kl(0.25, 0.75, 0.3, 0.1) + kl(0.25, 0.75, 0.1, 0.1)) / 2;
  EXPECT_NEAR(value(AttentionKlLoss(o, 2).compute(s).sum), unnormalised, 1e-9);
  EXPECT_NEAR(unnormalised, expected - (std::log(0.4) + std::log(0.2)) / 2, 1e-12);
  o.renormalise = true;
  // The same from the response rows alone (what the trainer's blockwise taps hand over): query_rows gives
  // sample 0's rows 3, 4 and sample 1's 1, 2; probs_to_visual (B, H, Q, Nv) holds just those rows.
  torch::Tensor rows = query_rows(response_queries(s.labels));
  EXPECT_TRUE(torch::equal(rows, torch::tensor({{3, 4}, {1, 2}}, torch::kInt64)));
  EXPECT_TRUE(torch::equal(query_rows(torch::tensor({{0, 1, 0, 1, 1}, {0, 0, 0, 0, 1}}).to(torch::kBool)),
                           torch::tensor({{1, 3, 4}, {4, -1, -1}}, torch::kInt64)));
  AttentionStats rows_only = s;
  rows_only.probs_rows = rows;
  torch::Tensor pr = p.gather(2, rows.view({2, 1, 2, 1}).expand({2, 1, 2, 2}));  // (B, H, Q, Nv)
  rows_only.probs_to_visual = {pr, pr};
  EXPECT_NEAR(value(AttentionKlLoss(o, 2).compute(rows_only).sum), expected, 1e-12);
  rows_only.probs_to_visual = {p, p};  // T rows where Q were announced
  test::expect_error<c10::Error>([&] { AttentionKlLoss(o, 2).compute(rows_only); }, {"query rows, expected 2 (probs_rows)"});
  s.region_target = torch::zeros({2, 2}, torch::kFloat64);  // no targets: nothing to sum, no NaN
  LossTerm none = AttentionKlLoss(o, 2).compute(s);
  EXPECT_EQ(value(none.count), 0);
  EXPECT_EQ(value(none.mean()), 0.0);
}

// ---------------------------------------------------------------- gradients, invariants, degenerate

// Central differences of loss(stats) w.r.t. every element of visual_mass / sink_mass against autograd.
template <class Loss>
void check_gradient(const Loss& loss, bool sink) {
  AttentionStats s = hand_stats(true);
  LossTerm t = loss.compute(s);
  t.sum.backward();
  std::vector<torch::Tensor>& inputs = sink ? s.sink_mass : s.visual_mass;
  for (auto& x : inputs) {
    torch::Tensor grad = x.grad().clone();
    for (int64_t i = 0; i < x.numel(); ++i) {
      torch::NoGradGuard no_grad;
      double* v = x.data_ptr<double>() + i;
      const double h = 1e-7, saved = *v;
      *v = saved + h;
      double up = value(loss.compute(s).sum);
      *v = saved - h;
      double down = value(loss.compute(s).sum);
      *v = saved;
      EXPECT_NEAR(grad.view(-1)[i].item<double>(), (up - down) / (2 * h), 1e-6) << loss.name() << " element " << i;
    }
  }
}

TEST(LossGradients, FiniteDifferences) {
  for (MassForm form : {MassForm::CappedLog, MassForm::Log, MassForm::Hinge}) {
    DualChannelOptions o;
    o.form = form;
    o.target = form == MassForm::Log ? std::nullopt : std::optional<double>(0.45);
    check_gradient(DualChannelLoss(o, 2), false);
    o.target = std::nullopt;
    check_gradient(DualChannelLoss(o, 2), false);
  }
  check_gradient(LayerDecayLoss(LayerDecayOptions{}, 2), false);
  check_gradient(SinkSuppressionLoss(SinkSuppressionOptions{}, 2), true);
}

TEST(LossInvariants, PaddingAndTextOnlySamplesChangeNothing) {
  DualChannelOptions o;
  DualChannelLoss loss(o, 2);
  AttentionStats s = hand_stats();
  LossTerm base = loss.compute(s);
  // Right-pad every sample by 3 positions holding arbitrary mass.
  AttentionStats p = s;
  auto pad2 = [](const torch::Tensor& x, int64_t v) { return torch::cat({x, torch::full({x.size(0), 3}, v, x.options())}, 1); };
  p.labels = pad2(s.labels, -100);
  p.attention_mask = pad2(s.attention_mask, 0);
  p.visual_mask = pad2(s.visual_mask, 0);
  for (auto& m : p.visual_mass) m = torch::cat({m, torch::rand({2, 1, 3}, m.options())}, 2);
  LossTerm padded = loss.compute(p);
  EXPECT_NEAR(value(padded.sum), value(base.sum), 1e-15);
  EXPECT_EQ(value(padded.count), value(base.count));
  // Another text-only sample with arbitrary mass adds nothing.
  AttentionStats q = s;
  q.labels = torch::cat({s.labels, s.labels.slice(0, 1)});
  q.attention_mask = torch::cat({s.attention_mask, s.attention_mask.slice(0, 1)});
  q.visual_mask = torch::cat({s.visual_mask, s.visual_mask.slice(0, 1)});
  for (auto& m : q.visual_mass) m = torch::cat({m, torch::rand({1, 1, 6}, m.options())});
  EXPECT_NEAR(value(loss.compute(q).sum), value(base.sum), 1e-15);
  EXPECT_EQ(value(loss.compute(q).count), 1);
}

TEST(LossInvariants, DegenerateInputsStayFinite) {
  AttentionStats s = hand_stats(true);
  for (auto& m : s.visual_mass) m = torch::zeros_like(m).requires_grad_(true);  // zero mass everywhere
  for (auto& m : s.sink_mass) m = torch::zeros_like(m).requires_grad_(true);
  s.probs_to_visual = {torch::zeros({2, 1, 6, 2}, torch::kFloat64), torch::zeros({2, 1, 6, 2}, torch::kFloat64)};
  s.region_target = torch::ones({2, 2}, torch::kFloat64);
  std::vector<LossEntry> entries(4);
  entries[0].name = "dual_channel";
  entries[1].name = "layer_decay";
  entries[2].name = "sink_suppression";
  entries[3].name = "attention_kl";
  entries[0].get<DualChannelOptions>().form = MassForm::Log;
  LossComposer composer(entries, 2);
  for (auto labels : {s.labels, torch::full_like(s.labels, -100)}) {  // with and without supervised tokens
    s.labels = labels;
    auto terms = composer.compute(torch::zeros({2, 6, 10}, torch::kFloat64), s);
    torch::Tensor total = LossComposer::total(terms);
    EXPECT_TRUE(std::isfinite(value(total)));
    for (const auto& t : terms) EXPECT_TRUE(std::isfinite(value(t.term.sum))) << t.name;
    total.backward();
    for (auto& m : s.visual_mass) EXPECT_TRUE(torch::isfinite(m.grad()).all().item<bool>());
  }
  // No image in the batch at all.
  s.visual_mask = torch::zeros_like(s.visual_mask);
  LossTerm t = DualChannelLoss(DualChannelOptions{}, 2).compute(s);
  EXPECT_EQ(value(t.count), 0);
  EXPECT_EQ(value(t.mean()), 0.0);
}

TEST(LossPrecision, HalfPrecisionInputsAreComputedInFloat32) {
  AttentionStats s = hand_stats();
  double expected = value(DualChannelLoss(DualChannelOptions{}, 2).compute(s).sum);
  for (auto& m : s.visual_mass) m = m.to(torch::kBFloat16);
  LossTerm t = DualChannelLoss(DualChannelOptions{}, 2).compute(s);
  EXPECT_EQ(t.sum.scalar_type(), torch::kFloat32);
  EXPECT_NEAR(value(t.sum), expected, 2e-2);  // bf16 rounding of the masses only
  torch::Tensor logits = torch::randn({2, 6, 10}).to(torch::kBFloat16);
  EXPECT_EQ(text_ce(logits, s.labels).sum.scalar_type(), torch::kFloat32);
}

// ---------------------------------------------------------------- composer and registry

TEST(LossComposer, WeightsTermsCountsAndTotal) {
  std::vector<LossEntry> entries(2);
  entries[0].name = "dual_channel";
  entries[0].weight = 0.5;
  entries[0].get<DualChannelOptions>().layers = {"1"};
  entries[1].name = "layer_decay";
  entries[1].weight = 2.0;
  LossComposer composer(entries, 4);
  EXPECT_EQ(composer.needs().layers, (std::vector<int64_t>{0, 1, 2, 3}));
  EXPECT_FALSE(composer.needs().sink_mass || composer.needs().probs_to_visual || composer.needs().region_target);
  AttentionStats s = hand_stats();
  s.layers = {0, 1, 2, 3};
  s.visual_mass = {s.visual_mass[0], s.visual_mass[1], s.visual_mass[1], s.visual_mass[0]};
  torch::manual_seed(0);
  torch::Tensor logits = torch::randn({2, 6, 10}, torch::kFloat64);
  auto terms = composer.compute(logits, s);
  ASSERT_EQ(terms.size(), 3u);
  EXPECT_EQ(terms[0].name, "text_ce");
  EXPECT_EQ(terms[1].name, "dual_channel");
  EXPECT_EQ(terms[2].name, "layer_decay");
  LossTerm ce = text_ce(logits, s.labels);
  EXPECT_EQ(value(ce.count), 4);
  DualChannelOptions dual = entries[0].get<DualChannelOptions>();
  double expected = value(ce.sum) / 4 + 0.5 * value(DualChannelLoss(dual, 4).compute(s).sum) +
                    2.0 * value(LayerDecayLoss(LayerDecayOptions{}, 4).compute(s).sum);
  EXPECT_NEAR(value(LossComposer::total(terms)), expected, 1e-12);
  auto counts = composer.counts(s);
  ASSERT_EQ(counts.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(value(counts[i]), value(terms[i].term.count));
  // Global counts replace local ones (e.g. twice the tokens over an accumulation window).
  std::vector<torch::Tensor> global{counts[0] * 2, counts[1] * 2, counts[2] * 2};
  EXPECT_NEAR(value(LossComposer::total(terms, global)), expected / 2, 1e-12);
}

// labels_shifted: the same batch with labels shifted by the collator (position t predicts labels[t]) gives the
// same terms and counts as labels aligned with input_ids; a token in the last column cannot be shifted labels.
TEST(LossComposer, ShiftedLabelsWithTheFlagGiveTheAlignedResult) {
  std::vector<LossEntry> entries(2);
  entries[0].name = "dual_channel";
  entries[1].name = "layer_decay";
  LossComposer composer(entries, 2);
  AttentionStats aligned = hand_stats();
  torch::manual_seed(0);
  torch::Tensor logits = torch::randn({2, 6, 10}, torch::kFloat64);
  AttentionStats shifted = aligned;
  shifted.labels = torch::cat({aligned.labels.slice(1, 1), torch::full({2, 1}, -100, torch::kInt64)}, 1);
  shifted.labels_shifted = true;
  auto a = composer.compute(logits, aligned), b = composer.compute(logits, shifted);
  auto ca = composer.counts(aligned), cb = composer.counts(shifted);
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_NEAR(value(a[i].term.sum), value(b[i].term.sum), 1e-12) << a[i].name;
    EXPECT_EQ(value(a[i].term.count), value(b[i].term.count)) << a[i].name;
    EXPECT_EQ(value(ca[i]), value(cb[i])) << a[i].name;
  }
  // The mistake the flag exists for: shifted labels read as aligned train each position on the wrong token.
  shifted.labels_shifted = false;
  EXPECT_GT(std::abs(value(composer.compute(logits, shifted)[0].term.sum) - value(a[0].term.sum)), 1e-3);
  AttentionStats wrong = aligned;  // aligned labels (a token at the end) declared shifted
  wrong.labels = aligned.labels.clone();
  wrong.labels.select(1, -1).fill_(3);
  wrong.labels_shifted = true;
  test::expect_error<c10::Error>([&] { composer.compute(logits, wrong); },
                                 {"labels_shifted = true", "last column", "labels_shifted = false"});
}

TEST(LossComposer, UnknownNameListsRegisteredAndCustomLossesRegister) {
  LossEntry e;
  e.name = "focal";
  test::expect_error<std::invalid_argument>([&] { make_loss(e, 2); },
                                            {"unknown loss 'focal'", "attention_kl, contrastive_tokens, dual_channel, layer_decay, sink_suppression, text_prior_poe"});
  struct Constant : AlignmentLoss {
    std::string name() const override { return "constant"; }
    LossTerm compute(const AttentionStats&) const override { return {torch::tensor(3.0), torch::tensor(1.0)}; }
  };
  register_loss("constant", [](const LossEntry&, int64_t) { return std::make_unique<Constant>(); });
  e.name = "constant";
  EXPECT_EQ(value(make_loss(e, 2)->compute(AttentionStats{}).sum), 3.0);
}

TEST(LossOptions, RangesAreCheckedInCppAsInYaml) {
  // The mistakes YAML would refuse are refused when the options are built in C++ too, naming loss and field.
  DualChannelOptions percent;
  percent.target = 80;  // meant 0.8
  test::expect_error<std::invalid_argument>([&] { DualChannelLoss(percent, 2); },
                                            {"dual_channel.target must be in (0, 1], got 80"});
  DualChannelOptions zero;
  zero.target = 0;  // would disable the loss without a word
  test::expect_error<std::invalid_argument>([&] { DualChannelLoss(zero, 2); }, {"dual_channel.target must be in (0, 1]"});
  DualChannelOptions off;
  off.inter_weight = off.intra_weight = 0;
  test::expect_error<std::invalid_argument>([&] { DualChannelLoss(off, 2); }, {"inter_weight and intra_weight are both 0"});
  AttentionKlOptions kl;
  kl.eps = -1;
  test::expect_error<std::invalid_argument>([&] { AttentionKlLoss(kl, 2); }, {"attention_kl.eps must be > 0, got -1"});
  LayerDecayOptions decay;
  decay.ref = -2;
  test::expect_error<std::invalid_argument>([&] { LayerDecayLoss(decay, 2); }, {"layer_decay.ref must be >= 0, got -2"});
  TextPriorPoeOptions poe;
  poe.prior_scale = 0;
  test::expect_error<std::invalid_argument>([&] { TextPriorPoeLoss{poe}; }, {"text_prior_poe.prior_scale must be > 0"});
  test::expect_error<std::invalid_argument>([&] { LossComposer({LossEntry(DualChannelOptions{}, -1.0)}, 2); },
                                            {"dual_channel.weight must be >= 0, got -1"});
}

TEST(LossOptions, AnEntryHoldsOnlyItsOwnLossOptions) {
  DualChannelOptions d;
  d.target = 0.8;
  LossEntry typed(d, 0.3);  // the name follows the options' type
  EXPECT_EQ(typed.name, "dual_channel");
  EXPECT_EQ(typed.weight_value(), 0.3);
  EXPECT_DOUBLE_EQ(*typed.get<DualChannelOptions>().target, 0.8);
  test::expect_error<std::invalid_argument>([&] { typed.get<AttentionKlOptions>(); },
                                            {"loss entry 'dual_channel' holds no attention_kl options"});
  LossEntry named;  // a name alone (as `- name: layer_decay` in YAML) holds that loss's defaults
  named.name = "layer_decay";
  EXPECT_FALSE(named.get<LayerDecayOptions>().ref.has_value());
  EXPECT_EQ(named.weight_value(), 0.5);
  LossEntry mismatched(AttentionKlOptions{});
  mismatched.name = "dual_channel";  // renamed after the fact: the factory refuses instead of using defaults
  test::expect_error<std::invalid_argument>([&] { make_loss(mismatched, 2); },
                                            {"loss entry 'dual_channel' holds no dual_channel options"});
}

// ---------------------------------------------------------------- modality contrast

// Two samples of 4 tokens, 3 classes: sample 0 holds an image (position 1) and answers at positions 2, 3
// (logit rows 1, 2); sample 1 holds no image and answers at position 3 (row 2). Rows in row-major order:
// (0, 1), (0, 2), (1, 2).
struct ContrastCase {
  AttentionStats stats;
  std::vector<std::array<double, 3>> with, alone;  // logits per supervised row, with and without the image
  std::vector<int64_t> y{2, 0, 1};
  ContrastCase() {
    stats.labels = torch::tensor({-100, -100, 2, 0, -100, -100, -100, 1}, torch::kInt64).view({2, 4});
    stats.attention_mask = torch::ones({2, 4}, torch::kBool);
    stats.visual_mask = torch::tensor({0, 1, 0, 0, 0, 0, 0, 0}, torch::kBool).view({2, 4});
    with = {{0.5, -1.0, 3.0}, {2.0, 1.0, -0.5}, {0.0, 0.3, -0.2}};
    alone = {{0.5, 0.0, 0.5}, {1.5, 1.0, 1.0}, {0.1, -2.0, 0.4}};
    auto rows = [](const std::vector<std::array<double, 3>>& r) {
      torch::Tensor t = torch::empty({3, 3}, torch::kFloat64);
      for (int64_t i = 0; i < 3; ++i)
        for (int64_t j = 0; j < 3; ++j) t[i][j] = r[static_cast<size_t>(i)][static_cast<size_t>(j)];
      return t;
    };
    stats.logits = rows(with).requires_grad_(true);
    stats.text_only_logits = rows(alone).requires_grad_(true);
  }
  static double lse(const std::array<double, 3>& z) { return std::log(std::exp(z[0]) + std::exp(z[1]) + std::exp(z[2])); }
};

TEST(ModalityContrast, ContrastiveTokensWeightsEachTokenByTheImagesLogitGainClamped) {
  ContrastCase c;
  ContrastiveTokensLoss loss(ContrastiveTokensOptions{});  // clamp to [1, 5]
  // Row 0: 3.0 - 0.5 = 2.5 (inside); row 1: 2.0 - 1.5 = 0.5 -> 1 (the lower clamp); row 2: no image -> 1.
  torch::Tensor w = loss.token_weights(c.stats);
  ASSERT_EQ(w.numel(), 3);
  EXPECT_DOUBLE_EQ(value(w[0]), 2.5);
  EXPECT_DOUBLE_EQ(value(w[1]), 1.0);
  EXPECT_DOUBLE_EQ(value(w[2]), 1.0);
  double expected = 0;
  const double weights[] = {2.5, 1.0, 1.0};
  for (size_t i = 0; i < 3; ++i) expected += weights[i] * (ContrastCase::lse(c.with[i]) - c.with[i][static_cast<size_t>(c.y[i])]);
  LossTerm t = loss.compute(c.stats);
  EXPECT_NEAR(value(t.sum), expected, 1e-12);
  EXPECT_EQ(value(t.count), 3);
  EXPECT_EQ(value(loss.count(c.stats)), 3);
  // The upper clamp: the image raises row 0's answer by 7.5.
  c.stats.text_only_logits = c.stats.text_only_logits.detach().clone();
  c.stats.text_only_logits[0][2] = -4.5;
  EXPECT_DOUBLE_EQ(value(loss.token_weights(c.stats)[0]), 5.0);
  // No gradient reaches the text-only logits or flows through the weights: d sum / d z = w (softmax - onehot).
  t = loss.compute(c.stats);
  t.sum.backward();
  torch::Tensor expected_grad = torch::softmax(c.stats.logits.detach(), 1);
  for (int64_t i = 0; i < 3; ++i) {
    expected_grad[i][c.y[static_cast<size_t>(i)]] -= 1;
    expected_grad[i] *= (i == 0 ? 5.0 : 1.0);
  }
  EXPECT_TRUE(torch::allclose(c.stats.logits.grad(), expected_grad, 1e-12, 1e-12));
  EXPECT_FALSE(c.stats.text_only_logits.grad().defined());
  // (B, T, V) logits give the same as the supervised rows.
  ContrastCase full;
  torch::Tensor z = torch::zeros({2, 4, 3}, torch::kFloat64), zt = torch::zeros({2, 4, 3}, torch::kFloat64);
  z[0][1] = full.stats.logits[0], z[0][2] = full.stats.logits[1], z[1][2] = full.stats.logits[2];
  zt[0][1] = full.stats.text_only_logits[0], zt[0][2] = full.stats.text_only_logits[1], zt[1][2] = full.stats.text_only_logits[2];
  full.stats.logits = z, full.stats.text_only_logits = zt;
  EXPECT_NEAR(value(loss.compute(full.stats).sum), expected, 1e-12);
}

TEST(ModalityContrast, TextPriorPoeIsTheCeOfTheProductOfExperts) {
  ContrastCase c;
  TextPriorPoeOptions o;
  o.prior_scale = 0.5;
  TextPriorPoeLoss loss(o);
  // -log softmax(log p + s log q)[y] = lse(z + s zt) - (z_y + s zt_y) (the normalisers cancel); the sample
  // without an image (row 2) has no prior: plain CE.
  double expected = 0;
  for (size_t i = 0; i < 3; ++i) {
    const double s = i < 2 ? 0.5 : 0.0;
    std::array<double, 3> mixed{};
    for (size_t j = 0; j < 3; ++j) mixed[j] = c.with[i][j] + s * c.alone[i][j];
    expected += ContrastCase::lse(mixed) - mixed[static_cast<size_t>(c.y[i])];
  }
  LossTerm t = loss.compute(c.stats);
  EXPECT_NEAR(value(t.sum), expected, 1e-12);
  EXPECT_EQ(value(t.count), 3);
  // Gradient: softmax(z + s zt) - onehot on the model's logits, nothing on the prior.
  t.sum.backward();
  torch::Tensor prior = c.stats.text_only_logits.detach() * torch::tensor({0.5, 0.5, 0.0}, torch::kFloat64).view({3, 1});
  torch::Tensor expected_grad = torch::softmax(c.stats.logits.detach() + prior, 1);
  for (int64_t i = 0; i < 3; ++i) expected_grad[i][c.y[static_cast<size_t>(i)]] -= 1;
  EXPECT_TRUE(torch::allclose(c.stats.logits.grad(), expected_grad, 1e-12, 1e-12));
  EXPECT_FALSE(c.stats.text_only_logits.grad().defined());
  // A prior that already puts all its mass on the answer leaves the model almost nothing to learn there.
  ContrastCase sure;
  sure.stats.text_only_logits = sure.stats.text_only_logits.detach().clone();
  sure.stats.text_only_logits[0][2] = 40.0;
  LossTerm easy = TextPriorPoeLoss(TextPriorPoeOptions{}).compute(sure.stats);
  easy.sum.backward();
  EXPECT_LT(value(sure.stats.logits.grad()[0].abs().max()), 1e-12);
  EXPECT_GT(value(sure.stats.logits.grad()[1].abs().max()), 0.1);
}

TEST(ModalityContrast, ComposerReplacesTextCeAndRefusesBoth) {
  ContrastCase c;
  std::vector<LossEntry> entries(1);
  entries[0].name = "contrastive_tokens";
  EXPECT_EQ(entries[0].weight_value(), 1.0);  // it replaces text_ce, so it weighs what text_ce did
  LossComposer composer(entries, 2);
  EXPECT_TRUE(composer.needs().text_only_logits && composer.needs().replaces_text_ce);
  EXPECT_TRUE(composer.needs().layers.empty());
  torch::Tensor z = c.stats.logits.detach();
  auto terms = composer.compute(z, c.stats);  // the composer hands its logits to the term
  ASSERT_EQ(terms.size(), 2u);
  EXPECT_EQ(terms[0].name, "text_ce");
  EXPECT_EQ(terms[0].weight, 0.0);  // logged, not trained on
  EXPECT_NEAR(value(LossComposer::total(terms)), value(ContrastiveTokensLoss({}).compute(c.stats).sum) / 3, 1e-12);
  std::vector<LossEntry> both(2);
  both[0].name = "contrastive_tokens";
  both[1].name = "text_prior_poe";
  test::expect_error<std::invalid_argument>([&] { LossComposer(both, 2); }, {"each replace text_ce"});
  c.stats.text_only_logits = torch::Tensor();
  test::expect_error<c10::Error>([&] { ContrastiveTokensLoss({}).compute(c.stats); }, {"text_only_logits"});
  ContrastiveTokensOptions bad;
  bad.min_weight = 6;
  test::expect_error<c10::Error>([&] { ContrastiveTokensLoss{bad}; }, {"min_weight 6 is above max_weight 5"});
}

TEST(AttentionStats, ProbsToVisualHoldsEachSamplesOwnImageKeysOnly) {
  // Sample 0 has image tokens at 1, 2, 3; sample 1 only at 2: its slots 1 and 2 must stay 0, not hold the
  // probabilities of the keys after its image.
  torch::Tensor causal = torch::ones({5, 5}, torch::kBool).tril();
  torch::Tensor probs = torch::randn({2, 1, 5, 5}, torch::kFloat64).masked_fill(~causal, -INFINITY).softmax(-1);
  torch::Tensor visual = torch::zeros({2, 5}, torch::kBool);
  visual[0].slice(0, 1, 4).fill_(true);
  visual[1][2] = true;
  torch::Tensor labels = torch::full({2, 5}, -100, torch::kInt64);
  AttentionStats s = stats_from_probs({0}, {probs}, labels, torch::ones({2, 5}, torch::kBool), visual, {}, true);
  torch::Tensor p = s.probs_to_visual[0];  // (2, 1, 5, 3)
  ASSERT_EQ(p.sizes(), (std::vector<int64_t>{2, 1, 5, 3}));
  EXPECT_TRUE(torch::equal(p[0][0], probs[0][0].slice(1, 1, 4)));
  EXPECT_TRUE(torch::equal(p[1][0].select(1, 0), probs[1][0].select(1, 2)));
  EXPECT_EQ(p[1][0].slice(1, 1, 3).abs().sum().item<double>(), 0.0);
}

TEST(AttentionStats, MisusedInputsAreRefusedWithTheFix) {
  // The misuse table of issue 28: each mistake ends in an error naming the argument and the fix.
  torch::Tensor causal = torch::ones({4, 4}, torch::kBool).tril();
  torch::Tensor probs = torch::randn({1, 2, 4, 4}, torch::kFloat64).masked_fill(~causal, -INFINITY).softmax(-1);
  torch::Tensor labels = torch::tensor({-100, -100, 5, 6}, torch::kInt64).view({1, 4});
  torch::Tensor real = torch::ones({1, 4}, torch::kBool);
  torch::Tensor visual = torch::tensor({0, 1, 0, 0}, torch::kBool).view({1, 4});
  auto stats = [&](torch::Tensor p, torch::Tensor mask, torch::Tensor vis) {
    return stats_from_probs({0}, {p}, labels, mask, vis);
  };
  EXPECT_NO_THROW(stats(probs, real, visual));
  EXPECT_NO_THROW(stats(probs, real.to(torch::kFloat32), visual.to(torch::kInt64)));  // 0/1 of any type
  torch::Tensor additive = torch::zeros({1, 4});
  test::expect_error<c10::Error>([&] { stats(probs, additive.index_put_({0, 0}, -1e9), visual); },
                                 {"attention_mask holds negative values", "additive mask", "(mask == 0)"});
  test::expect_error<c10::Error>([&] { stats(probs, real * 2, visual); }, {"attention_mask must be boolean or hold only 0 and 1"});
  test::expect_error<c10::Error>([&] { stats(probs, visual.logical_not(), visual); }, {"is the mask inverted?"});
  test::expect_error<c10::Error>([&] { stats(probs.log(), real, visual); }, {"probs[0] holds negative values", "not log-probabilities"});
  test::expect_error<c10::Error>([&] { stats(probs * 0.5, real, visual); }, {"rows of real queries must sum to 1"});
  torch::Tensor full = torch::randn({1, 2, 4, 4}, torch::kFloat64).softmax(-1);  // rows sum to 1, not causal
  test::expect_error<c10::Error>([&] { stats(full, real, visual); }, {"on later keys", "transposed?"});
  test::expect_error<c10::Error>([&] { stats_from_probs({1, 0}, {probs, probs}, labels, real, visual); },
                                 {"layers must be ascending"});
  test::expect_error<c10::Error>([&] { stats_from_probs({0, 1}, {probs}, labels, real, visual); },
                                 {"one probability map per layer expected"});
  // Padded query rows may hold anything (a trainer's padded rows are often all zero).
  torch::Tensor padded = probs.clone();
  padded.select(2, 3).zero_();
  torch::Tensor three = torch::tensor({1, 1, 1, 0}, torch::kBool).view({1, 4});
  EXPECT_NO_THROW(stats(padded, three, visual));
}

TEST(AttentionStats, UntappedLayerIsNamed) {
  AttentionStats s = hand_stats();
  DualChannelOptions o;
  test::expect_error<c10::Error>([&] { DualChannelLoss(o, 4).compute(s); }, {"dual_channel reads decoder layer 2 but it was not tapped"});
}

}  // namespace
}  // namespace modalign
