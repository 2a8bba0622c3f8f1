// The inner loop of GroupedAdamW's fused update, on raw arrays (no LibTorch, so this file can be built
// with -fno-math-errno and vectorise its square roots without the project's precompiled header).
#pragma once
#include <cstdint>

namespace modalign {

template <class T>
struct AdamWCoefficients {
  T beta1, beta2;
  T decay;      // 1 - lr * weight_decay
  T grad_scale; // gradient clipping factor
  T step_size;  // lr / (1 - beta1^step)
  T bc2_sqrt;   // sqrt(1 - beta2^step)
  T eps;
};

// For i in [0, n): g = grad[i] * grad_scale; m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) g^2;
// p = p * decay - step_size * (m / (sqrt(v) / bc2_sqrt + eps)).
void adamw_update(float* p, const float* grad, float* m, float* v, int64_t n, const AdamWCoefficients<float>& c);
void adamw_update(double* p, const double* grad, double* m, double* v, int64_t n, const AdamWCoefficients<double>& c);

}  // namespace modalign
