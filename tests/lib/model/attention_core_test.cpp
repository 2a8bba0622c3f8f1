#include "lib/model/attention_core.h"

#include <gtest/gtest.h>

#include <limits>

namespace modalign {
namespace {

// The textbook computation the fused kernel must equal: repeat key/value heads, masked softmax, P v.
struct Reference {
  torch::Tensor out, mass;
};
Reference reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& allowed,
                    const torch::Tensor& sets) {
  const int64_t r = q.size(2) / k.size(2);
  torch::Tensor qh = q.transpose(1, 2), kh = k.transpose(1, 2).repeat_interleave(r, 1),
                vh = v.transpose(1, 2).repeat_interleave(r, 1);  // (B, H, T, d)
  torch::Tensor scores = torch::matmul(qh, kh.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(3)));
  torch::Tensor p = torch::softmax(scores.masked_fill(~allowed, std::numeric_limits<double>::lowest()), -1);
  return {torch::matmul(p, vh).transpose(1, 2), torch::matmul(p, sets.unsqueeze(1))};
}

// Random float64 q (B, T, H, d) and k, v (B, T, G, d) that require gradients.
std::vector<torch::Tensor> random_qkv(uint64_t seed, int64_t b, int64_t t, int64_t h, int64_t g, int64_t d) {
  torch::manual_seed(seed);
  return {torch::randn({b, t, h, d}, torch::kFloat64).requires_grad_(true),
          torch::randn({b, t, g, d}, torch::kFloat64).requires_grad_(true),
          torch::randn({b, t, g, d}, torch::kFloat64).requires_grad_(true)};
}

TEST(AttentionCore, EqualsReferenceWithGradientsForGroupedHeadsPaddingAndTaps) {
  const int64_t b = 3, t = 7;
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto qkv = random_qkv(21, b, t, 4, 2, 6);
  torch::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
  // Sample 0 full, sample 1 padded after 4 tokens, sample 2 with its first key masked (so query 0 of
  // sample 2 has no allowed key and must attend uniformly, as the eager masked softmax does).
  torch::Tensor real = torch::ones({b, t}, torch::kBool);
  real[1].slice(0, 4).fill_(false);
  real[2][0] = false;
  torch::Tensor allowed = (torch::ones({t, t}, torch::kBool).tril().unsqueeze(0) & real.unsqueeze(1)).unsqueeze(1);
  torch::Tensor sets = (torch::rand({b, t, 2}, f64) > 0.5).to(torch::kFloat64);
  AttentionMask mask = make_attention_mask(allowed, torch::kFloat64);
  EXPECT_TRUE(mask.empty_rows);
  AttentionCoreOutput fused = attention_core(q, k, v, mask, sets);
  Reference ref = reference(q, k, v, allowed, sets);
  EXPECT_TRUE(torch::allclose(fused.out, ref.out, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(fused.mass, ref.mass, 1e-12, 1e-12));
  EXPECT_NEAR(fused.mass[2][0][0].sum().item<double>(), sets[2].sum().item<double>() / t, 1e-12) << "uniform row";

  // Gradients of one random linear functional of both outputs.
  torch::Tensor wo = torch::randn_like(ref.out), wm = torch::randn_like(ref.mass);
  auto grads = [&](const torch::Tensor& out, const torch::Tensor& mass) {
    return torch::autograd::grad({(out * wo).sum() + (mass * wm).sum()}, {q, k, v});
  };
  auto gf = grads(fused.out, fused.mass), gr = grads(ref.out, ref.mass);
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::allclose(gf[i], gr[i], 1e-10, 1e-10)) << "input " << i;
  // Without key sets the mass is empty and the output unchanged.
  AttentionCoreOutput plain = attention_core(q, k, v, mask);
  EXPECT_EQ(plain.mass.size(3), 0);
  EXPECT_TRUE(torch::equal(plain.out, fused.out));
}

TEST(AttentionCore, GradientMatchesFiniteDifferences) {
  const int64_t b = 2, t = 5;
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto qkv = random_qkv(4, b, t, 2, 1, 4);
  torch::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
  torch::Tensor allowed = torch::ones({t, t}, torch::kBool).tril().expand({b, 1, t, t}).contiguous();
  torch::Tensor sets = torch::zeros({b, t, 1}, f64);
  sets.slice(1, 1, 3).fill_(1);
  auto loss = [&] {
    AttentionCoreOutput o = attention_core(q, k, v, make_attention_mask(allowed, torch::kFloat64), sets);
    return o.out.pow(2).sum() + 3.0 * o.mass.sum();
  };
  auto analytic = torch::autograd::grad({loss()}, {q, k, v});
  torch::NoGradGuard no_grad;
  const double eps = 1e-6;
  std::vector<torch::Tensor> inputs = {q, k, v};
  for (size_t i = 0; i < inputs.size(); ++i) {
    torch::Tensor flat = inputs[i].view(-1);
    for (int64_t j = 0; j < flat.numel(); j += 3) {
      const double x = flat[j].item<double>();
      flat[j] = x + eps;
      const double up = loss().item<double>();
      flat[j] = x - eps;
      const double down = loss().item<double>();
      flat[j] = x;
      EXPECT_NEAR(analytic[i].view(-1)[j].item<double>(), (up - down) / (2 * eps), 1e-6) << "input " << i << " elem " << j;
    }
  }
}

TEST(AttentionCore, RejectsWhatItCannotRun) {
  torch::Tensor q = torch::zeros({1, 3, 2, 4}), k = torch::zeros({1, 3, 3, 4});
  torch::Tensor allowed = torch::ones({1, 1, 3, 3}, torch::kBool);
  EXPECT_THROW(attention_core(q, k, k, make_attention_mask(allowed, torch::kFloat32)), c10::Error);  // 2 heads over 3
  EXPECT_THROW(attention_core(q, q, q, make_attention_mask(allowed, torch::kFloat64)), c10::Error);  // dtype
  // No mask: every query reads every key (the vision tower), as a plain softmax.
  torch::manual_seed(2);
  torch::Tensor x = torch::randn({2, 5, 3, 4}, torch::kFloat64);
  Reference ref = reference(x, x, x, torch::ones({2, 1, 5, 5}, torch::kBool), torch::ones({2, 5, 1}, torch::kFloat64));
  EXPECT_TRUE(torch::allclose(attention_core(x, x, x).out, ref.out, 1e-12, 1e-12));
  EXPECT_FALSE(attention_core_supported(torch::zeros({1}, torch::kHalf)));
  EXPECT_TRUE(attention_core_supported(torch::zeros({1}, torch::kBFloat16)));
  EXPECT_TRUE(attention_core_supported(torch::zeros({1}, torch::kFloat32)));
  // A bf16 mask holds float32 values (bf16 scores are added to it in float32).
  EXPECT_EQ(make_attention_mask(allowed, torch::kBFloat16).bias.scalar_type(), torch::kFloat32);
}

TEST(AttentionCore, Bf16PathEqualsReferenceWithinBf16RoundingAndKeepsTapsFloat32) {
  // bf16 q, k, v (mixed precision) with grouped heads, padding, an empty row and taps: outputs and
  // gradients against the float64 reference on the same (rounded) values; the mass comes back float32.
  const int64_t b = 3, t = 9;
  auto qkv = random_qkv(31, b, t, 4, 2, 8);
  std::vector<torch::Tensor> low, wide;
  for (const auto& x : qkv) {
    low.push_back(x.detach().to(torch::kBFloat16).requires_grad_(true));
    wide.push_back(low.back().detach().to(torch::kFloat64).requires_grad_(true));
  }
  torch::Tensor real = torch::ones({b, t}, torch::kBool);
  real[1].slice(0, 5).fill_(false);
  real[2][0] = false;
  torch::Tensor allowed = (torch::ones({t, t}, torch::kBool).tril().unsqueeze(0) & real.unsqueeze(1)).unsqueeze(1);
  torch::Tensor sets = (torch::rand({b, t, 2}) > 0.5).to(torch::kFloat32);
  AttentionCoreOutput fused = attention_core(low[0], low[1], low[2], make_attention_mask(allowed, torch::kFloat32), sets);
  Reference ref = reference(wide[0], wide[1], wide[2], allowed, sets.to(torch::kFloat64));
  EXPECT_EQ(fused.out.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(fused.mass.scalar_type(), torch::kFloat32);
  auto rel = [](const torch::Tensor& got, const torch::Tensor& want) {
    return ((got.to(torch::kFloat64) - want).abs().max() / want.abs().max()).item<double>();
  };
  EXPECT_LT(rel(fused.out, ref.out), 4.0 / 256);
  EXPECT_LT(rel(fused.mass, ref.mass), 4.0 / 256);  // scores are bf16 products, the softmax float32
  torch::Tensor wo = torch::randn(ref.out.sizes(), torch::kFloat64), wm = torch::randn(ref.mass.sizes(), torch::kFloat64);
  auto gf = torch::autograd::grad({(fused.out.to(torch::kFloat64) * wo).sum() + (fused.mass.to(torch::kFloat64) * wm).sum()},
                                  {low[0], low[1], low[2]});
  auto gr = torch::autograd::grad({(ref.out * wo).sum() + (ref.mass * wm).sum()}, {wide[0], wide[1], wide[2]});
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(gf[i].scalar_type(), torch::kBFloat16);
    EXPECT_LT(rel(gf[i], gr[i]), 8.0 / 256) << "input " << i;
  }
}

}  // namespace
}  // namespace modalign
