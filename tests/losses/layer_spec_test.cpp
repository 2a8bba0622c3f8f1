// losses/layer_spec: every accepted form, negative indices, and the errors.
#include "losses/layer_spec.h"

#include <gtest/gtest.h>

#include "test_util.h"

namespace modalign {
namespace {

using V = std::vector<int64_t>;

TEST(LayerSpec, Keywords) {
  EXPECT_EQ(resolve_layers({"all"}, 4), (V{0, 1, 2, 3}));
  EXPECT_EQ(resolve_layers({"first_half"}, 5), (V{0, 1}));
  EXPECT_EQ(resolve_layers({"second_half"}, 5), (V{2, 3, 4}));
  EXPECT_EQ(resolve_layers({"first_half"}, 1), (V{0}));
}

TEST(LayerSpec, RangesListsAndNegatives) {
  EXPECT_EQ(resolve_layers({"16-18"}, 32), (V{16, 17, 18}));
  EXPECT_EQ(resolve_layers({"5, 0,2,2"}, 6), (V{0, 2, 5}));
  EXPECT_EQ(resolve_layers({"-1"}, 6), (V{5}));
  EXPECT_EQ(resolve_layers({"0-1,-2"}, 6), (V{0, 1, 4}));
}

TEST(LayerSpec, Errors) {
  EXPECT_EQ(layer_spec_error("0-3,7"), "");
  EXPECT_NE(layer_spec_error("3-1").find("'3-1' is not a range"), std::string::npos);
  EXPECT_NE(layer_spec_error("a").find("'a' is not a layer index"), std::string::npos);
  EXPECT_NE(layer_spec_error("1,,2").find("'' is not a layer index"), std::string::npos);
  EXPECT_NE(layer_spec_error("").find("empty layer selection"), std::string::npos);
  test::expect_error<std::invalid_argument>([] { resolve_layers({"0-7"}, 4); },
                                            {"layers '0-7' name an index outside 0..3"});
  test::expect_error<std::invalid_argument>([] { resolve_layers({"-5"}, 4); }, {"outside 0..3"});
}

}  // namespace
}  // namespace modalign
