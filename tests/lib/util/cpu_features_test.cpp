#include "lib/util/cpu_features.h"

#include <gtest/gtest.h>

#include <fstream>
#include <sstream>

namespace modalign {
namespace {

TEST(CpuFeatures, NativeBf16FromCpuinfoFlags) {
  // x86: the flags line; an AVX2-only EPYC lacks both bf16 flags.
  EXPECT_FALSE(cpuinfo_has_native_bf16("processor\t: 0\nmodel name\t: AMD EPYC\nflags\t\t: fpu sse2 avx avx2 fma avx512f\n"));
  EXPECT_TRUE(cpuinfo_has_native_bf16("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 avx512_vnni\n"));
  EXPECT_TRUE(cpuinfo_has_native_bf16("flags\t\t: avx2 amx_bf16 amx_tile\n"));
  // aarch64: the Features line.
  EXPECT_TRUE(cpuinfo_has_native_bf16("processor\t: 0\nFeatures\t: fp asimd sve bf16 i8mm\n"));
  EXPECT_FALSE(cpuinfo_has_native_bf16("Features\t: fp asimd sve i8mm\n"));
  // Whole words of those lines only: not a longer flag, not another field.
  EXPECT_FALSE(cpuinfo_has_native_bf16("flags\t\t: avx512_bf16x\nmodel name\t: bf16 avx512_bf16\n"));
  EXPECT_FALSE(cpuinfo_has_native_bf16(""));
}

TEST(CpuFeatures, CheckAgreesWithThisMachineAndMeasuresWhenTheFlagsAreMissing) {
  std::ifstream in("/proc/cpuinfo");
  std::stringstream text;
  text << in.rdbuf();
  const Bf16Check c = check_cpu_bf16();
  EXPECT_EQ(c.native, cpuinfo_has_native_bf16(text.str()));
  if (c.native) {
    EXPECT_TRUE(c.message.empty());
  } else {  // the warning carries what was measured and what to do
    EXPECT_GT(c.bf16_gflops, 0);
    EXPECT_GT(c.float32_gflops, 0);
    EXPECT_NE(c.message.find("train.bf16: false"), std::string::npos);
    EXPECT_NE(c.message.find("GFLOP/s"), std::string::npos);
  }
}

}  // namespace
}  // namespace modalign
