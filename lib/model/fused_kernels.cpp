#include "lib/model/fused_kernels.h"

#include <cmath>

namespace modalign::kernels {

template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, T* rstd, int64_t rows, int64_t dim, double eps) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    double sum = 0;
    for (int64_t j = 0; j < dim; ++j) sum += static_cast<double>(xr[j]) * xr[j];
    const T s = static_cast<T>(1.0 / std::sqrt(sum / static_cast<double>(dim) + eps));
    rstd[r] = s;
    T* yr = y + r * dim;
    for (int64_t j = 0; j < dim; ++j) yr[j] = w[j] * (xr[j] * s);
  }
}

template <class T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const T* rstd, T* dx, double* dw, int64_t rows, int64_t dim) {
  for (int64_t r = 0; r < rows; ++r) {
    const T *dyr = dy + r * dim, *xr = x + r * dim;
    const T s = rstd[r];
    double dot = 0;  // sum of dn * n
    for (int64_t j = 0; j < dim; ++j) dot += static_cast<double>(dyr[j] * w[j]) * (xr[j] * s);
    const T c = static_cast<T>(dot / static_cast<double>(dim));
    T* dxr = dx + r * dim;
    for (int64_t j = 0; j < dim; ++j) dxr[j] = s * (dyr[j] * w[j] - (xr[j] * s) * c);
    if (dw)
      for (int64_t j = 0; j < dim; ++j) dw[j] += static_cast<double>(dyr[j]) * (xr[j] * s);
  }
}

template <class T>
void rope_forward(const T* x, const T* cos, const T* sin, T* y, int64_t rows, int64_t heads, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const T *c = cos + r * d, *s = sin + r * d;
    for (int64_t h = 0; h < heads; ++h) {
      const T* xr = x + (r * heads + h) * d;
      T* yr = y + (r * heads + h) * d;
      for (int64_t i = 0; i < half; ++i) yr[i] = xr[i] * c[i] - xr[i + half] * s[i];
      for (int64_t i = half; i < d; ++i) yr[i] = xr[i] * c[i] + xr[i - half] * s[i];
    }
  }
}

template <class T>
void rope_backward(const T* dy, const T* cos, const T* sin, T* dx, int64_t rows, int64_t heads, int64_t d) {
  const int64_t half = d / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const T *c = cos + r * d, *s = sin + r * d;
    for (int64_t h = 0; h < heads; ++h) {
      const T* g = dy + (r * heads + h) * d;
      T* o = dx + (r * heads + h) * d;
      for (int64_t i = 0; i < half; ++i) o[i] = g[i] * c[i] + g[i + half] * s[i + half];
      for (int64_t i = half; i < d; ++i) o[i] = g[i] * c[i] - g[i - half] * s[i - half];
    }
  }
}

template <class T>
void gated_silu_forward(const T* x, const T* s, const T* u, T* y, int64_t n) {
  if (u)
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s[i] * u[i];
  else
    for (int64_t i = 0; i < n; ++i) y[i] = x[i] * s[i];
}

template <class T>
void gated_silu_backward(const T* dy, const T* x, const T* s, const T* u, T alpha, T* dx, T* du, int64_t n) {
  for (int64_t i = 0; i < n; ++i) {
    const T g = u ? dy[i] * u[i] : dy[i];
    dx[i] = g * s[i] * (1 + alpha * x[i] * (1 - s[i]));
  }
  if (du)
    for (int64_t i = 0; i < n; ++i) du[i] = dy[i] * x[i] * s[i];
}

#define MODALIGN_INSTANTIATE(T)                                                                                  \
  template void rms_norm_forward<T>(const T*, const T*, T*, T*, int64_t, int64_t, double);                      \
  template void rms_norm_backward<T>(const T*, const T*, const T*, const T*, T*, double*, int64_t, int64_t);    \
  template void rope_forward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t);                   \
  template void rope_backward<T>(const T*, const T*, const T*, T*, int64_t, int64_t, int64_t);                 \
  template void gated_silu_forward<T>(const T*, const T*, const T*, T*, int64_t);                               \
  template void gated_silu_backward<T>(const T*, const T*, const T*, const T*, T, T*, T*, int64_t);
MODALIGN_INSTANTIATE(float)
MODALIGN_INSTANTIATE(double)
#undef MODALIGN_INSTANTIATE

}  // namespace modalign::kernels
