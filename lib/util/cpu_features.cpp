#include "lib/util/cpu_features.h"

#include <fmt/format.h>
#include <torch/torch.h>

#include <chrono>
#include <fstream>
#include <sstream>

namespace modalign {
namespace {

// GFLOP/s of a 256^3 product in `dtype` on one thread, best of 3.
double gemm_rate(torch::ScalarType dtype) {
  const int previous = torch::get_num_threads();
  torch::set_num_threads(1);
  torch::NoGradGuard no_grad;
  torch::Tensor a = torch::rand({256, 256}).to(dtype), b = torch::rand({256, 256}).to(dtype);
  double best = 1e30;
  for (int i = 0; i < 4; ++i) {  // the first is a warm-up
    auto t0 = std::chrono::steady_clock::now();
    torch::Tensor c = torch::mm(a, b);
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (i > 0) best = std::min(best, s);
  }
  torch::set_num_threads(previous);
  return 2.0 * 256 * 256 * 256 / best / 1e9;
}

}  // namespace

bool cpuinfo_has_native_bf16(const std::string& cpuinfo) {
  std::istringstream lines(cpuinfo);
  std::string line;
  while (std::getline(lines, line)) {
    const auto colon = line.find(':');
    if (colon == std::string::npos) continue;
    const std::string key = line.substr(0, colon);
    if (key.rfind("flags", 0) != 0 && key.rfind("Features", 0) != 0) continue;  // x86 / aarch64
    std::istringstream words(line.substr(colon + 1));
    std::string w;
    while (words >> w)
      if (w == "avx512_bf16" || w == "amx_bf16" || w == "bf16") return true;
  }
  return false;
}

Bf16Check check_cpu_bf16() {
  std::ifstream in("/proc/cpuinfo");
  std::stringstream text;
  text << in.rdbuf();
  Bf16Check c;
  c.native = cpuinfo_has_native_bf16(text.str());
  if (c.native) return c;
  c.bf16_gflops = gemm_rate(torch::kBFloat16);
  c.float32_gflops = gemm_rate(torch::kFloat32);
  c.message = fmt::format(
      "train.bf16 on a CPU without native bfloat16 products (/proc/cpuinfo lists none of avx512_bf16, amx_bf16, "
      "bf16): measured here, a bf16 matrix product runs at {:.1f} GFLOP/s against {:.1f} in float32 ({:.0f}x "
      "slower), so mixed precision makes every step slower, not faster; set train.bf16: false on this machine "
      "(bf16 pays on CPUs with AVX512-BF16 or AMX, and on GPUs)",
      c.bf16_gflops, c.float32_gflops, c.float32_gflops / std::max(c.bf16_gflops, 1e-9));
  return c;
}

}  // namespace modalign
