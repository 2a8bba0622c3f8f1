// Whether this CPU runs bfloat16 matrix products natively, so that train.bf16 can say before step 1 when it
// would make training slower instead of faster: the CPU flags that LibTorch's oneDNN bf16 kernels need
// (x86: avx512_bf16 or amx_bf16; aarch64: bf16), read from /proc/cpuinfo, and one timed product per dtype.
#pragma once
#include <string>

namespace modalign {

// True when `cpuinfo` (the text of /proc/cpuinfo) lists a native bfloat16 dot-product flag.
bool cpuinfo_has_native_bf16(const std::string& cpuinfo);

struct Bf16Check {
  bool native = false;          // the flags are there (or the device is not a CPU)
  double bf16_gflops = 0;       // measured: one thread, 256^3 products, best of 3
  double float32_gflops = 0;
  std::string message;          // empty when native; otherwise what the CPU lacks, what was measured, what to do
};

// Reads /proc/cpuinfo; when the flags are missing, times a bf16 and a float32 product (about 0.1 s).
Bf16Check check_cpu_bf16();

}  // namespace modalign
