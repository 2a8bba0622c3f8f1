// losses/modality_shares: group attention means and MDI / AEI against hand computation.
#include <gtest/gtest.h>

#include "losses/modality_shares.h"

namespace modalign {
namespace {

TEST(GroupAttention, MeansOverHeadsAndSelectedQueriesWithVisibleKeyCounts) {
  // B=2, H=2, T=3, K=2. Sample 0 selects queries 1 and 2; sample 1 selects none.
  torch::Tensor mass = torch::zeros({2, 2, 3, 2}, torch::kFloat64);
  mass[0][0][1] = torch::tensor({0.2, 0.8}, torch::kFloat64);
  mass[0][1][1] = torch::tensor({0.4, 0.6}, torch::kFloat64);
  mass[0][0][2] = torch::tensor({0.5, 0.5}, torch::kFloat64);
  mass[0][1][2] = torch::tensor({0.1, 0.9}, torch::kFloat64);
  mass[0][0][0] = torch::tensor({9.0, 9.0}, torch::kFloat64);  // not a selected query: must not count
  torch::Tensor queries = torch::tensor({0, 1, 1, 0, 0, 0}, torch::kBool).view({2, 3});
  // Groups of sample 0: keys 0,1 in group 0; key 2 in group 1.
  torch::Tensor groups = torch::tensor({1, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0}, torch::kFloat32).view({2, 3, 2});
  GroupAttention g = group_attention(mass, queries, groups);
  // Query 1: head means (0.3, 0.7); query 2: (0.3, 0.7). Mean: (0.3, 0.7).
  EXPECT_NEAR(g.mass[0][0].item<double>(), 0.3, 1e-12);
  EXPECT_NEAR(g.mass[0][1].item<double>(), 0.7, 1e-12);
  // Visible keys: query 1 sees keys 0,1 -> (2, 0); query 2 sees 0,1,2 -> (2, 1). Mean (2, 0.5).
  EXPECT_NEAR(g.keys[0][0].item<double>(), 2.0, 1e-12);
  EXPECT_NEAR(g.keys[0][1].item<double>(), 0.5, 1e-12);
  EXPECT_TRUE(g.valid[0].item<bool>());
  EXPECT_FALSE(g.valid[1].item<bool>());
  EXPECT_EQ(g.mass[1].abs().sum().item<double>(), 0.0);
}

TEST(GroupAttention, RejectsMismatchedShapes) {
  EXPECT_THROW(group_attention(torch::zeros({1, 2, 3, 2}), torch::zeros({1, 4}, torch::kBool), torch::zeros({1, 3, 2})),
               c10::Error);
  EXPECT_THROW(group_attention(torch::zeros({1, 2, 3, 2}), torch::zeros({1, 3}, torch::kBool), torch::zeros({1, 3, 3})),
               c10::Error);
}

TEST(DominanceIndices, MatchHandComputation) {
  // 16 image keys share 0.2 of the attention, 4 text keys 0.8.
  DominanceIndices d = dominance_indices(0.2, 16, 0.8, 4);
  EXPECT_NEAR(d.mdi, (0.8 / 4) / (0.2 / 16), 1e-12);   // 16: a text token gets 16x an image token
  EXPECT_NEAR(d.aei_image, (0.2 / 1.0) / (16.0 / 20.0), 1e-12);  // 0.25
  EXPECT_NEAR(d.aei_text, (0.8 / 1.0) / (4.0 / 20.0), 1e-12);    // 4
  EXPECT_NEAR(d.aei_text / d.aei_image, d.mdi, 1e-12);
  // Attention proportional to token counts is balanced: every index is 1.
  DominanceIndices even = dominance_indices(0.75, 12, 0.25, 4);
  EXPECT_NEAR(even.mdi, 1.0, 1e-12);
  EXPECT_NEAR(even.aei_image, 1.0, 1e-12);
  EXPECT_NEAR(even.aei_text, 1.0, 1e-12);
  // Only the shares within image + text matter (a third group's attention is left out of P).
  DominanceIndices scaled = dominance_indices(0.1, 16, 0.4, 4);
  EXPECT_NEAR(scaled.aei_image, d.aei_image, 1e-12);
  EXPECT_NEAR(scaled.mdi, d.mdi, 1e-12);
}

}  // namespace
}  // namespace modalign
