#include "lib/model/precision.h"

#include <ATen/autocast_mode.h>

namespace modalign {
namespace {

void apply(const MixedPrecision& mp) {
  if (mp.device == torch::kCUDA) {
    at::autocast::set_enabled(mp.enabled());
    if (mp.enabled()) at::autocast::set_autocast_gpu_dtype(mp.dtype);
  } else {
    TORCH_CHECK(!mp.enabled() || mp.dtype == torch::kBFloat16, "CPU autocast runs in bfloat16 only, not ", mp.dtype);
    at::autocast::set_cpu_enabled(mp.enabled());
    if (mp.enabled()) at::autocast::set_autocast_cpu_dtype(mp.dtype);
  }
}

}  // namespace

MixedPrecision MixedPrecision::current(torch::DeviceType device) {
  MixedPrecision mp{device, torch::kFloat32};
  if (device == torch::kCUDA && at::autocast::is_enabled()) mp.dtype = at::autocast::get_autocast_gpu_dtype();
  if (device != torch::kCUDA && at::autocast::is_cpu_enabled()) mp.dtype = at::autocast::get_autocast_cpu_dtype();
  return mp;
}

AutocastScope::AutocastScope(const MixedPrecision& mp) : previous_(MixedPrecision::current(mp.device)) {
  apply(mp);
  at::autocast::increment_nesting();
}

AutocastScope::~AutocastScope() {
  apply(previous_);
  if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
}

}  // namespace modalign
