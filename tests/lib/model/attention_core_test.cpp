#include "lib/model/attention_core.h"

#include <gtest/gtest.h>

#include <limits>

namespace modalign {
namespace {

// The textbook computation the blockwise kernel must equal: repeat key/value heads, a dense masked
// softmax, P v. Rows without an allowed key come out uniform here; the kernel gives them 0 instead, so
// comparisons mask those rows with `has_key`.
struct Reference {
  torch::Tensor out, mass, p;  // p (B, H, T, T)
};
Reference reference(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v, const torch::Tensor& allowed,
                    const torch::Tensor& sets) {
  const int64_t r = q.size(2) / k.size(2);
  torch::Tensor qh = q.transpose(1, 2), kh = k.transpose(1, 2).repeat_interleave(r, 1),
                vh = v.transpose(1, 2).repeat_interleave(r, 1);  // (B, H, T, d)
  torch::Tensor scores = torch::matmul(qh, kh.transpose(-1, -2)) / std::sqrt(static_cast<double>(q.size(3)));
  torch::Tensor p = torch::softmax(scores.masked_fill(~allowed, std::numeric_limits<double>::lowest()), -1);
  p = p * allowed.any(-1, true);  // rows with no allowed key: 0
  return {torch::matmul(p, vh).transpose(1, 2), torch::matmul(p, sets.unsqueeze(1)), p};
}

// Random float64 q (B, T, H, d) and k, v (B, T, G, d) that require gradients.
std::vector<torch::Tensor> random_qkv(uint64_t seed, int64_t b, int64_t t, int64_t h, int64_t g, int64_t d) {
  torch::manual_seed(seed);
  return {torch::randn({b, t, h, d}, torch::kFloat64).requires_grad_(true),
          torch::randn({b, t, g, d}, torch::kFloat64).requires_grad_(true),
          torch::randn({b, t, g, d}, torch::kFloat64).requires_grad_(true)};
}

// Gradients of one random linear functional of both outputs.
std::vector<torch::Tensor> functional_grads(const torch::Tensor& out, const torch::Tensor& mass, const torch::Tensor& wo,
                                            const torch::Tensor& wm, const std::vector<torch::Tensor>& inputs) {
  return torch::autograd::grad({(out.to(wo.scalar_type()) * wo).sum() + (mass.to(wm.scalar_type()) * wm).sum()}, inputs);
}

// Sample 0 full, sample 1 padded after 4 tokens, sample 2 with its first key invalid (so its query 0 has
// no allowed key), causal.
AttentionMask padded_causal(int64_t b, int64_t t) {
  torch::Tensor real = torch::ones({b, t}, torch::kBool);
  real[1].slice(0, 4).fill_(false);
  real[2][0] = false;
  return {true, real, {}};
}

TEST(AttentionCore, EqualsReferenceWithGradientsForGroupedHeadsPaddingAndTaps) {
  const int64_t b = 3, t = 7;
  auto qkv = random_qkv(21, b, t, 4, 2, 6);
  torch::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
  AttentionMask mask = padded_causal(b, t);
  torch::Tensor allowed = mask.dense(b, t, torch::kCPU);
  EXPECT_TRUE(torch::equal(allowed[1][0][5].slice(0, 0, 4), torch::ones({4}, torch::kBool)));
  EXPECT_FALSE(allowed[1][0][5][4].item<bool>());
  EXPECT_FALSE(allowed[0][0][2][3].item<bool>()) << "causal";
  torch::Tensor sets = (torch::rand({b, t, 2}, torch::kFloat64) > 0.5).to(torch::kFloat64);
  AttentionCoreOutput fused = attention_core(q, k, v, mask, sets);
  Reference ref = reference(q, k, v, allowed, sets);
  EXPECT_TRUE(torch::allclose(fused.out, ref.out, 1e-12, 1e-12));
  EXPECT_TRUE(torch::allclose(fused.mass, ref.mass, 1e-12, 1e-12));
  EXPECT_EQ(fused.out[2][0].abs().sum().item<double>(), 0.0) << "a query with no allowed key reads nothing";
  EXPECT_EQ(fused.mass[2].select(1, 0).abs().sum().item<double>(), 0.0);

  torch::Tensor wo = torch::randn_like(ref.out), wm = torch::randn_like(ref.mass);
  auto gf = functional_grads(fused.out, fused.mass, wo, wm, {q, k, v});
  auto gr = functional_grads(ref.out, ref.mass, wo, wm, {q, k, v});
  for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::allclose(gf[i], gr[i], 1e-10, 1e-10)) << "input " << i;
  // Without key sets the mass is empty and the output unchanged.
  AttentionCoreOutput plain = attention_core(q, k, v, mask);
  EXPECT_EQ(plain.mass.size(3), 0);
  EXPECT_TRUE(torch::equal(plain.out, fused.out));
}

TEST(AttentionCore, QueryBlocksChangeOnlyTheSummationOrder) {
  // Blocks of 1, 2 and 3 query rows (the last one short) against one block of all 7: outputs, taps and
  // every gradient equal in float64, for causal padding anywhere, packed segments without causality, and
  // right padding (read as lengths) with and without causality.
  const int64_t b = 3, t = 7;
  auto qkv = random_qkv(5, b, t, 6, 2, 4);
  torch::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
  torch::Tensor sets = (torch::rand({b, t, 3}, torch::kFloat64) > 0.4).to(torch::kFloat64);
  torch::Tensor segments = torch::tensor({0, 0, 0, 1, 1, 2, 2}, torch::kInt64).repeat({b, 1});
  segments[1] = torch::tensor({0, 1, 1, 1, 1, 1, 1}, torch::kInt64);
  torch::Tensor right_padded = torch::arange(t).unsqueeze(0) < torch::tensor({7, 4, 2}).unsqueeze(1);  // lengths
  for (const AttentionMask& mask : {padded_causal(b, t), AttentionMask{false, {}, segments}, AttentionMask{true, right_padded, {}},
                                    AttentionMask{false, right_padded, {}}}) {
    AttentionCoreOutput whole = attention_core(q, k, v, mask, sets, t);
    Reference ref = reference(q, k, v, mask.dense(b, t, torch::kCPU), sets);
    EXPECT_TRUE(torch::allclose(whole.out, ref.out, 1e-12, 1e-12));
    EXPECT_TRUE(torch::allclose(whole.mass, ref.mass, 1e-12, 1e-12));
    torch::Tensor wo = torch::randn_like(ref.out), wm = torch::randn_like(ref.mass);
    auto gw = functional_grads(whole.out, whole.mass, wo, wm, {q, k, v});
    for (int64_t rows : {1, 2, 3}) {
      AttentionCoreOutput blocks = attention_core(q, k, v, mask, sets, rows);
      EXPECT_TRUE(torch::allclose(blocks.out, whole.out, 1e-13, 1e-13)) << rows << " rows";
      EXPECT_TRUE(torch::allclose(blocks.mass, whole.mass, 1e-13, 1e-13)) << rows << " rows";
      auto gb = functional_grads(blocks.out, blocks.mass, wo, wm, {q, k, v});
      for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::allclose(gb[i], gw[i], 1e-12, 1e-12)) << rows << " rows, input " << i;
    }
  }
  // A segment reads only itself: sample 0's first three queries see nothing of tokens 3..6.
  AttentionCoreOutput packed = attention_core(q, k, v, AttentionMask{false, {}, segments}, sets, 2);
  auto first = [](const torch::Tensor& x) { return x.slice(0, 0, 1).slice(1, 0, 3); };
  torch::Tensor alone = attention_core(first(q), first(k), first(v)).out;
  EXPECT_TRUE(torch::allclose(first(packed.out), alone, 1e-12, 1e-12));
}

TEST(AttentionCore, ProbeRowsAreTheirEntriesOfPWithGradients) {
  // A few query rows' probabilities at chosen keys (attention_kl's response queries over image keys), from
  // the blocks: equal to the dense P's entries (0 at padding rows and invalid key columns), and the gradient
  // of a functional of them and of the output equals the reference's, in one block and in blocks of 2 rows.
  const int64_t b = 3, t = 7;
  auto qkv = random_qkv(8, b, t, 4, 2, 6);
  torch::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
  AttentionMask mask = padded_causal(b, t);
  torch::Tensor rows = torch::tensor({6, 2, -1, 3, -1, -1, 5, 4, 1}, torch::kInt64).view({b, 3});
  torch::Tensor keys = torch::tensor({0, 1, 2, 1, 2, 0, 2, 3, 0}, torch::kInt64).view({b, 3});
  torch::Tensor valid = torch::tensor({1, 1, 1, 1, 1, 0, 1, 1, 0}, torch::kBool).view({b, 3});
  Reference ref = reference(q, k, v, mask.dense(b, t, torch::kCPU), torch::zeros({b, t, 0}, torch::kFloat64));
  // want[b][h][i][j] = P[b][h][rows[b][i]][keys[b][j]] where both are real
  torch::Tensor want = torch::zeros({b, 4, 3, 3}, torch::kFloat64);
  for (int64_t bi = 0; bi < b; ++bi)
    for (int64_t i = 0; i < 3; ++i)
      for (int64_t j = 0; j < 3; ++j)
        if (rows[bi][i].item<int64_t>() >= 0 && valid[bi][j].item<bool>())
          want.select(0, bi).select(1, i).select(1, j).copy_(
              ref.p[bi].select(1, rows[bi][i].item<int64_t>()).select(1, keys[bi][j].item<int64_t>()));
  torch::Tensor wo = torch::randn_like(ref.out), wp = torch::randn_like(want);
  auto gr = torch::autograd::grad({(ref.out * wo).sum() + (want * wp).sum()}, {q, k, v});
  for (int64_t block : {0, 2}) {
    AttentionCoreOutput got = attention_core(q, k, v, mask, {}, block, AttentionProbe{rows, keys, valid});
    ASSERT_EQ(got.probs.sizes(), want.sizes());
    EXPECT_TRUE(torch::allclose(got.probs, want, 1e-12, 1e-12)) << block;
    EXPECT_TRUE(torch::allclose(got.out, ref.out, 1e-12, 1e-12)) << block;
    auto gg = torch::autograd::grad({(got.out * wo).sum() + (got.probs * wp).sum()}, {q, k, v});
    for (size_t i = 0; i < 3; ++i) EXPECT_TRUE(torch::allclose(gg[i], gr[i], 1e-10, 1e-10)) << block << " input " << i;
  }
  EXPECT_FALSE(attention_core(q, k, v, mask).probs.defined());
  EXPECT_THROW(attention_core(q, k, v, mask, {}, 0, AttentionProbe{rows + 7, keys, valid}), c10::Error);  // past T
}

TEST(AttentionCore, BlockSizeKeepsOneBlockOfScoresBounded) {
  EXPECT_EQ(attention_query_block(2, 100), 100);  // small problems: one block
  EXPECT_EQ(attention_query_block(7, 16384), 16);  // 7 x 16 x 16384 scores: the minimum of 16 rows
  const int64_t rows = attention_query_block(2, 4096);
  EXPECT_LE(2 * rows * 4096, int64_t{1} << 20);
  EXPECT_GE(2 * (rows + 1) * 4096, int64_t{1} << 20);
}

TEST(AttentionCore, GradientMatchesFiniteDifferences) {
  const int64_t b = 2, t = 5;
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64);
  auto qkv = random_qkv(4, b, t, 2, 1, 4);
  torch::Tensor q = qkv[0], k = qkv[1], v = qkv[2];
  torch::Tensor sets = torch::zeros({b, t, 1}, f64);
  sets.slice(1, 1, 3).fill_(1);
  auto loss = [&] {
    AttentionCoreOutput o = attention_core(q, k, v, AttentionMask{true, {}, {}}, sets, 2);
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
  EXPECT_THROW(attention_core(q, k, k), c10::Error);  // 2 heads over 3
  EXPECT_THROW(attention_core(q, q, q, AttentionMask{true, torch::ones({1, 4}, torch::kBool), {}}), c10::Error);  // (B, T)
  EXPECT_THROW(attention_core(q, q, q, {}, {}, -1), c10::Error);
  // No mask: every query reads every key (the vision tower), as a plain softmax.
  torch::manual_seed(2);
  torch::Tensor x = torch::randn({2, 5, 3, 4}, torch::kFloat64);
  Reference ref = reference(x, x, x, torch::ones({2, 1, 5, 5}, torch::kBool), torch::ones({2, 5, 1}, torch::kFloat64));
  EXPECT_TRUE(torch::allclose(attention_core(x, x, x).out, ref.out, 1e-12, 1e-12));
  EXPECT_FALSE(attention_core_supported(torch::zeros({1}, torch::kHalf)));
  EXPECT_FALSE(attention_core_supported(torch::zeros({1}, torch::kInt64)));
  EXPECT_TRUE(attention_core_supported(torch::zeros({1}, torch::kBFloat16)));
  EXPECT_TRUE(attention_core_supported(torch::zeros({1}, torch::kFloat32)));
}

TEST(AttentionCore, Bf16PathEqualsReferenceWithinBf16RoundingAndKeepsTapsFloat32) {
  // bf16 q, k, v (mixed precision) with grouped heads, padding, an empty row and taps, in blocks of 4
  // rows: outputs and gradients against the float64 reference on the same (rounded) values; the mass
  // comes back float32.
  const int64_t b = 3, t = 9;
  auto qkv = random_qkv(31, b, t, 4, 2, 8);
  std::vector<torch::Tensor> low, wide;
  for (const auto& x : qkv) {
    low.push_back(x.detach().to(torch::kBFloat16).requires_grad_(true));
    wide.push_back(low.back().detach().to(torch::kFloat64).requires_grad_(true));
  }
  AttentionMask mask = padded_causal(b, t);
  torch::Tensor sets = (torch::rand({b, t, 2}) > 0.5).to(torch::kFloat32);
  AttentionCoreOutput fused = attention_core(low[0], low[1], low[2], mask, sets, 4);
  Reference ref = reference(wide[0], wide[1], wide[2], mask.dense(b, t, torch::kCPU), sets.to(torch::kFloat64));
  EXPECT_EQ(fused.out.scalar_type(), torch::kBFloat16);
  EXPECT_EQ(fused.mass.scalar_type(), torch::kFloat32);
  auto rel = [](const torch::Tensor& got, const torch::Tensor& want) {
    return ((got.to(torch::kFloat64) - want).abs().max() / want.abs().max()).item<double>();
  };
  EXPECT_LT(rel(fused.out, ref.out), 4.0 / 256);
  EXPECT_LT(rel(fused.mass, ref.mass), 4.0 / 256);  // scores are bf16 products, the softmax float32
  torch::Tensor wo = torch::randn(ref.out.sizes(), torch::kFloat64), wm = torch::randn(ref.mass.sizes(), torch::kFloat64);
  auto gf = functional_grads(fused.out, fused.mass, wo, wm, {low[0], low[1], low[2]});
  auto gr = functional_grads(ref.out, ref.mass, wo, wm, {wide[0], wide[1], wide[2]});
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(gf[i].scalar_type(), torch::kBFloat16);
    EXPECT_LT(rel(gf[i], gr[i]), 8.0 / 256) << "input " << i;
  }
}

}  // namespace
}  // namespace modalign
