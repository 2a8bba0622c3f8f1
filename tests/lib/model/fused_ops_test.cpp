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

// A bf16 kernel's output against its float64 reference on the same (rounded) inputs, and the gradients of
// sum(out * probe) for one bf16 probe, within `out_ulps` and `grad_ulps` bf16 roundings.
void expect_bf16_close(const torch::Tensor& fused, const torch::Tensor& ref, const std::vector<torch::Tensor>& low,
                       const std::vector<torch::Tensor>& high, double out_ulps, double grad_ulps) {
  EXPECT_LT(bf16_error(fused, ref), out_ulps / 256);
  torch::Tensor probe = torch::randn(ref.sizes()).to(torch::kBFloat16);
  auto gf = grads(fused, probe, low), gr = grads(ref, probe.to(torch::kFloat64), high);
  for (size_t i = 0; i < gf.size(); ++i) EXPECT_LT(bf16_error(gf[i], gr[i]), grad_ulps / 256) << "input " << i;
}

TEST(FusedOps, Bf16KernelsComputeInFloatAndRoundOnce) {
  // bf16 inputs (already rounded, so the float64 reference sees the same values): outputs and gradients
  // within a few bf16 roundings of the float64 formulas; RMSNorm's statistics and RoPE's tables in float.
  torch::manual_seed(9);
  auto bf = [](torch::Tensor x) { return x.to(torch::kBFloat16).requires_grad_(true); };
  auto wide = [](const torch::Tensor& x) { return x.detach().to(torch::kFloat64).requires_grad_(true); };
  torch::Tensor x = bf(torch::randn({3, 5, 64}) * 3), w = bf(torch::randn({64})), xr = wide(x), wr = wide(w);
  expect_bf16_close(fused_rms_norm(x, w, 1e-6), rms_norm_reference(xr, wr, 1e-6), {x, w}, {xr, wr}, 4, 8);

  torch::Tensor q = bf(torch::randn({2, 6, 3, 8})), qr = wide(q);
  torch::Tensor angles = torch::randn({2, 6, 1, 4}, torch::kFloat64) * 100;  // large positions: float tables matter
  torch::Tensor cos = torch::cat({angles, angles}, -1).cos(), sin = torch::cat({angles, angles}, -1).sin();
  expect_bf16_close(fused_rope(q, cos.to(torch::kFloat32), sin.to(torch::kFloat32)), rope_reference(qr, cos, sin), {q},
                    {qr}, 2, 2);

  torch::Tensor g = bf(torch::randn({3, 4, 10}) * 4), u = bf(torch::randn({3, 4, 10})), gr = wide(g), ur = wide(u);
  expect_bf16_close(fused_gated_silu(g, u, 1.0), torch::silu(gr) * ur, {g, u}, {gr, ur}, 4, 8);
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
