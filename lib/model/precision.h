// Mixed precision through LibTorch's autocast: inside an AutocastScope, matrix products and convolutions
// on the scope's device type run in the lower-precision dtype (bf16) while their float32 inputs, the
// weights included, stay float32 (the master copy the optimizer updates); everything autocast leaves
// alone (norms, softmax, losses) runs in the dtype of its inputs. The state is per thread, so code that
// replays a forward later (activation checkpointing) captures it with MixedPrecision::current().
#pragma once
#include <torch/torch.h>

namespace modalign {

struct MixedPrecision {
  torch::DeviceType device = torch::kCPU;
  torch::ScalarType dtype = torch::kFloat32;  // kFloat32 = off; kBFloat16 (or kHalf on CUDA) = on
  bool enabled() const { return dtype != torch::kFloat32; }
  static MixedPrecision current(torch::DeviceType device);  // this thread's autocast state on `device`
};

// The dtype values of dtype `t` are computed and kept wide in (statistics, softmax, tables, taps): float64
// for float64, float32 for everything narrower (float32, bf16, fp16).
inline torch::ScalarType wide_type(torch::ScalarType t) { return t == torch::kFloat64 ? torch::kFloat64 : torch::kFloat32; }

// Sets `mp` for its scope and restores the previous state when it closes; the outermost scope also drops
// autocast's cache of casted weights (they change at every optimizer step). Disabled `mp` turns autocast
// off inside (values that must stay float32, such as the alignment taps).
class AutocastScope {
 public:
  explicit AutocastScope(const MixedPrecision& mp);
  ~AutocastScope();
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  MixedPrecision previous_;
};

}  // namespace modalign
