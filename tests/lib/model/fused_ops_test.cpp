#include "lib/model/fused_ops.h"

#include <gtest/gtest.h>

namespace modalign {
namespace {

// The operator formulas the fused kernels replace (autograd differentiates these).
torch::Tensor rms_norm_reference(const torch::Tensor& x, const torch::Tensor& w, double eps) {
  return w * (x * torch::rsqrt(x.pow(2).mean(-1, true) + eps));
}
torch::Tensor rope_reference(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  const int64_t half = x.size(-1) / 2;
  return x * cos + torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1) * sin;
}

// Gradients of sum(out * probe) with respect to `inputs`.
std::vector<torch::Tensor> grads(const torch::Tensor& out, const torch::Tensor& probe, const std::vector<torch::Tensor>& inputs) {
  return torch::autograd::grad({(out * probe).sum()}, inputs);
}

TEST(FusedOps, RmsNormEqualsTheOperatorFormulaWithGradients) {
  for (auto dtype : {torch::kFloat64, torch::kFloat32}) {
    torch::manual_seed(6);
    torch::Tensor x = (torch::randn({3, 5, 40}, dtype) * 3).requires_grad_(true);
    torch::Tensor w = torch::randn({40}, dtype).requires_grad_(true);
    torch::Tensor fused = fused_rms_norm(x, w, 1e-6), ref = rms_norm_reference(x, w, 1e-6);
    const double tol = dtype == torch::kFloat64 ? 1e-12 : 2e-5;
    EXPECT_TRUE(torch::allclose(fused, ref, tol, tol));
    torch::Tensor probe = torch::randn_like(ref);
    auto gf = grads(fused, probe, {x, w}), gr = grads(ref, probe, {x, w});
    EXPECT_TRUE(torch::allclose(gf[0], gr[0], tol, tol)) << "dx " << (gf[0] - gr[0]).abs().max().item<double>();
    EXPECT_TRUE(torch::allclose(gf[1], gr[1], 10 * tol, 10 * tol)) << "dw " << (gf[1] - gr[1]).abs().max().item<double>();
  }
  // A frozen weight gets no gradient and the input gradient is unchanged.
  torch::Tensor x = torch::randn({4, 8}, torch::kFloat64).requires_grad_(true), w = torch::randn({8}, torch::kFloat64);
  auto g = torch::autograd::grad({fused_rms_norm(x, w, 1e-5).pow(2).sum()}, {x});
  auto r = torch::autograd::grad({rms_norm_reference(x, w, 1e-5).pow(2).sum()}, {x});
  EXPECT_TRUE(torch::allclose(g[0], r[0], 1e-12, 1e-12));
}

TEST(FusedOps, RopeEqualsTheOperatorFormulaWithGradients) {
  torch::manual_seed(7);
  torch::Tensor x = torch::randn({2, 6, 3, 8}, torch::kFloat64).requires_grad_(true);
  torch::Tensor angles = torch::randn({2, 6, 1, 4}, torch::kFloat64);
  torch::Tensor cos = torch::cat({angles, angles}, -1).cos(), sin = torch::cat({angles, angles}, -1).sin();
  torch::Tensor fused = fused_rope(x, cos, sin), ref = rope_reference(x, cos, sin);
  EXPECT_TRUE(torch::allclose(fused, ref, 1e-14, 1e-14));
  torch::Tensor probe = torch::randn_like(ref);
  EXPECT_TRUE(torch::allclose(grads(fused, probe, {x})[0], grads(ref, probe, {x})[0], 1e-14, 1e-14));
  // A rotation keeps each head's norm.
  EXPECT_TRUE(torch::allclose(fused.norm(2, -1), x.norm(2, -1), 1e-12, 1e-12));
}

TEST(FusedOps, GatedSiluIsSwigluAndQuickGeluWithGradients) {
  torch::manual_seed(8);
  torch::Tensor x = (torch::randn({3, 4, 10}, torch::kFloat64) * 4).requires_grad_(true);
  torch::Tensor u = torch::randn({3, 4, 10}, torch::kFloat64).requires_grad_(true);
  torch::Tensor probe = torch::randn({3, 4, 10}, torch::kFloat64);
  torch::Tensor fused = fused_gated_silu(x, u, 1.0), ref = torch::silu(x) * u;  // SwiGLU
  EXPECT_TRUE(torch::allclose(fused, ref, 1e-13, 1e-13));
  auto gf = grads(fused, probe, {x, u}), gr = grads(ref, probe, {x, u});
  EXPECT_TRUE(torch::allclose(gf[0], gr[0], 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(gf[1], gr[1], 1e-12, 1e-12));
  torch::Tensor quick = fused_gated_silu(x, {}, 1.702), quick_ref = x * torch::sigmoid(1.702 * x);  // CLIP
  EXPECT_TRUE(torch::allclose(quick, quick_ref, 1e-13, 1e-13));
  EXPECT_TRUE(torch::allclose(grads(quick, probe, {x})[0], grads(quick_ref, probe, {x})[0], 1e-12, 1e-12));
}

// How far `got` (bf16) is from `want` (float64), in units of want's scale: bf16 keeps 8 significant bits, so
// one rounding of values of scale s is at most s / 256.
double bf16_error(const torch::Tensor& got, const torch::Tensor& want) {
  EXPECT_EQ(got.scalar_type(), torch::kBFloat16);
  return ((got.to(torch::kFloat64) - want).abs().max() / want.abs().max()).item<double>();
}

TEST(FusedOps, Bf16KernelsComputeInFloatAndRoundOnce) {
  // bf16 inputs (already rounded, so the float64 reference sees the same values): outputs and gradients
  // within a few bf16 roundings of the float64 formulas; RMSNorm's statistics and RoPE's tables in float.
  torch::manual_seed(9);
  auto bf = [](torch::Tensor x) { return x.to(torch::kBFloat16).requires_grad_(true); };
  auto wide = [](const torch::Tensor& x) { return x.detach().to(torch::kFloat64).requires_grad_(true); };
  {
    torch::Tensor x = bf(torch::randn({3, 5, 64}) * 3), w = bf(torch::randn({64}));
    torch::Tensor xr = wide(x), wr = wide(w);
    torch::Tensor fused = fused_rms_norm(x, w, 1e-6), ref = rms_norm_reference(xr, wr, 1e-6);
    EXPECT_LT(bf16_error(fused, ref), 4.0 / 256);
    torch::Tensor probe = torch::randn({3, 5, 64}).to(torch::kBFloat16);
    auto gf = grads(fused, probe, {x, w});
    auto gr = grads(ref, probe.to(torch::kFloat64), {xr, wr});
    EXPECT_LT(bf16_error(gf[0], gr[0]), 8.0 / 256);
    EXPECT_LT(bf16_error(gf[1], gr[1]), 8.0 / 256);
  }
  {
    torch::Tensor x = bf(torch::randn({2, 6, 3, 8})), xr = wide(x);
    torch::Tensor angles = torch::randn({2, 6, 1, 4}, torch::kFloat64) * 100;  // large positions: float tables matter
    torch::Tensor cos = torch::cat({angles, angles}, -1).cos(), sin = torch::cat({angles, angles}, -1).sin();
    torch::Tensor fused = fused_rope(x, cos.to(torch::kFloat32), sin.to(torch::kFloat32)), ref = rope_reference(xr, cos, sin);
    EXPECT_LT(bf16_error(fused, ref), 2.0 / 256);
    torch::Tensor probe = torch::randn({2, 6, 3, 8}).to(torch::kBFloat16);
    EXPECT_LT(bf16_error(grads(fused, probe, {x})[0], grads(ref, probe.to(torch::kFloat64), {xr})[0]), 2.0 / 256);
  }
  {
    torch::Tensor x = bf(torch::randn({3, 4, 10}) * 4), u = bf(torch::randn({3, 4, 10}));
    torch::Tensor xr = wide(x), ur = wide(u);
    torch::Tensor fused = fused_gated_silu(x, u, 1.0), ref = torch::silu(xr) * ur;
    EXPECT_LT(bf16_error(fused, ref), 4.0 / 256);
    torch::Tensor probe = torch::randn({3, 4, 10}).to(torch::kBFloat16);
    auto gf = grads(fused, probe, {x, u});
    auto gr = grads(ref, probe.to(torch::kFloat64), {xr, ur});
    EXPECT_LT(bf16_error(gf[0], gr[0]), 8.0 / 256);
    EXPECT_LT(bf16_error(gf[1], gr[1]), 4.0 / 256);
  }
}

TEST(FusedOps, RejectWhatTheyCannotRun) {
  EXPECT_FALSE(fused_ops_supported(torch::zeros({2}, torch::kHalf)));
  EXPECT_FALSE(fused_ops_supported(torch::zeros({2}, torch::kInt64)));
  EXPECT_THROW(fused_rms_norm(torch::zeros({2, 4}), torch::ones({3}), 1e-6), c10::Error);
  EXPECT_THROW(fused_rope(torch::zeros({1, 2, 1, 4}), torch::zeros({1, 2, 1, 2}), torch::zeros({1, 2, 1, 2})), c10::Error);
  EXPECT_THROW(fused_gated_silu(torch::zeros({2, 3}), torch::zeros({3}), 1.0), c10::Error);
}

}  // namespace
}  // namespace modalign
