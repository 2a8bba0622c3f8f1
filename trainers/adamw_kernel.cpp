#include "trainers/adamw_kernel.h"

#include <cmath>

namespace modalign {
namespace {

template <class T>
void update(T* p, const T* grad, T* m, T* v, int64_t n, const AdamWCoefficients<T>& c) {
  for (int64_t i = 0; i < n; ++i) {
    const T g = grad[i] * c.grad_scale;
    m[i] = c.beta1 * m[i] + (1 - c.beta1) * g;
    v[i] = c.beta2 * v[i] + (1 - c.beta2) * g * g;
    p[i] = p[i] * c.decay - c.step_size * (m[i] / (std::sqrt(v[i]) / c.bc2_sqrt + c.eps));
  }
}

}  // namespace

void adamw_update(float* p, const float* grad, float* m, float* v, int64_t n, const AdamWCoefficients<float>& c) {
  update(p, grad, m, v, n, c);
}

void adamw_update(double* p, const double* grad, double* m, double* v, int64_t n, const AdamWCoefficients<double>& c) {
  update(p, grad, m, v, n, c);
}

}  // namespace modalign
