#include "lib/model/fused_kernels.h"

#include <cmath>

namespace modalign::kernels {

template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, Acc<T>* rstd, int64_t rows, int64_t dim, double eps) {
  using A = Acc<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const T* xr = x + r * dim;
    double sum = 0;
    for (int64_t j = 0; j < dim; ++j) sum += static_cast<double>(xr[j]) * static_cast<double>(xr[j]);
    const A s = static_cast<A>(1.0 / std::sqrt(sum / static_cast<double>(dim) + eps));
    rstd[r] = s;
    T* yr = y + r * dim;
    for (int64_t j = 0; j < dim; ++j) yr[j] = static_cast<T>(static_cast<A>(w[j]) * (static_cast<A>(xr[j]) * s));
  }
}

template <class T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const Acc<T>* rstd, T* dx, double* dw, int64_t rows,
                       int64_t dim) {
  using A = Acc<T>;
  for (int64_t r = 0; r < rows; ++r) {
    const T *dyr = dy + r * dim, *xr = x + r * dim;
    const A s = rstd[r];
    double dot = 0;  // sum of dn * n
    for (int64_t j = 0; j < dim; ++j)
      dot += static_cast<double>(static_cast<A>(dyr[j]) * static_cast<A>(w[j])) * (static_cast<A>(xr[j]) * s);
    const A c = static_cast<A>(dot / static_cast<double>(dim));
    T* dxr = dx + r * dim;
    for (int64_t j = 0; j < dim; ++j)
      dxr[j] = static_cast<T>(s * (static_cast<A>(dyr[j]) * static_cast<A>(w[j]) - (static_cast<A>(xr[j]) * s) * c));
    if (dw)
      for (int64_t j = 0; j < dim; ++j) dw[j] += static_cast<double>(dyr[j]) * (static_cast<A>(xr[j]) * s);
  }
}

template <class T>
void rope_forward(const T* x, const Acc<T>* cos, const Acc<T>* sin, T* y, int64_t rows, int64_t heads, int64_t d) {
  using A = Acc<T>;
  const int64_t half = d / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const A *c = cos + r * d, *s = sin + r * d;
    for (int64_t h = 0; h < heads; ++h) {
      const T* xr = x + (r * heads + h) * d;
      T* yr = y + (r * heads + h) * d;
      for (int64_t i = 0; i < half; ++i)
        yr[i] = static_cast<T>(static_cast<A>(xr[i]) * c[i] - static_cast<A>(xr[i + half]) * s[i]);
      for (int64_t i = half; i < d; ++i)
        yr[i] = static_cast<T>(static_cast<A>(xr[i]) * c[i] + static_cast<A>(xr[i - half]) * s[i]);
    }
  }
}

template <class T>
void rope_backward(const T* dy, const Acc<T>* cos, const Acc<T>* sin, T* dx, int64_t rows, int64_t heads, int64_t d) {
  using A = Acc<T>;
  const int64_t half = d / 2;
  for (int64_t r = 0; r < rows; ++r) {
    const A *c = cos + r * d, *s = sin + r * d;
    for (int64_t h = 0; h < heads; ++h) {
      const T* g = dy + (r * heads + h) * d;
      T* o = dx + (r * heads + h) * d;
      for (int64_t i = 0; i < half; ++i)
        o[i] = static_cast<T>(static_cast<A>(g[i]) * c[i] + static_cast<A>(g[i + half]) * s[i + half]);
      for (int64_t i = half; i < d; ++i)
        o[i] = static_cast<T>(static_cast<A>(g[i]) * c[i] - static_cast<A>(g[i - half]) * s[i - half]);
    }
  }
}

template <class T>
void gated_silu_forward(const T* x, const T* s, const T* u, T* y, int64_t n) {
  using A = Acc<T>;
  if (u)
    for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(static_cast<A>(x[i]) * static_cast<A>(s[i]) * static_cast<A>(u[i]));
  else
    for (int64_t i = 0; i < n; ++i) y[i] = static_cast<T>(static_cast<A>(x[i]) * static_cast<A>(s[i]));
}

template <class T>
void gated_silu_backward(const T* dy, const T* x, const T* s, const T* u, Acc<T> alpha, T* dx, T* du, int64_t n) {
  using A = Acc<T>;
  for (int64_t i = 0; i < n; ++i) {
    const A g = u ? static_cast<A>(dy[i]) * static_cast<A>(u[i]) : static_cast<A>(dy[i]);
    const A si = static_cast<A>(s[i]);
    dx[i] = static_cast<T>(g * si * (1 + alpha * static_cast<A>(x[i]) * (1 - si)));
  }
  if (du)
    for (int64_t i = 0; i < n; ++i)
      du[i] = static_cast<T>(static_cast<A>(dy[i]) * static_cast<A>(x[i]) * static_cast<A>(s[i]));
}

#define MODALIGN_INSTANTIATE(T)                                                                                    \
  template void rms_norm_forward<T>(const T*, const T*, T*, Acc<T>*, int64_t, int64_t, double);                   \
  template void rms_norm_backward<T>(const T*, const T*, const T*, const Acc<T>*, T*, double*, int64_t, int64_t); \
  template void rope_forward<T>(const T*, const Acc<T>*, const Acc<T>*, T*, int64_t, int64_t, int64_t);           \
  template void rope_backward<T>(const T*, const Acc<T>*, const Acc<T>*, T*, int64_t, int64_t, int64_t);          \
  template void gated_silu_forward<T>(const T*, const T*, const T*, T*, int64_t);                                 \
  template void gated_silu_backward<T>(const T*, const T*, const T*, const T*, Acc<T>, T*, T*, int64_t);
MODALIGN_INSTANTIATE(float)
MODALIGN_INSTANTIATE(double)
MODALIGN_INSTANTIATE(c10::BFloat16)
#undef MODALIGN_INSTANTIATE

}  // namespace modalign::kernels
