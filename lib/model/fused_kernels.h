// Row loops behind lib/model/fused_ops (RMSNorm, RoPE and gated units, forward and backward), on raw
// arrays and free of LibTorch's operators (only c10's header-only BFloat16 type), so this file is built
// with -fno-math-errno (vectorised square roots) and without the project's precompiled header. Each call
// handles a range of rows; the caller parallelises. T is float, double or c10::BFloat16; arithmetic runs in
// Acc<T> (float for bf16: each value is read once, computed in float and rounded once when stored).
#pragma once
#include <c10/util/BFloat16.h>

#include <cstdint>

namespace modalign::kernels {

template <class T>
struct AccOf {
  using type = T;
};
template <>
struct AccOf<c10::BFloat16> {
  using type = float;
};
template <class T>
using Acc = typename AccOf<T>::type;

// y = w * x * rstd per row of `dim` values, rstd = 1 / sqrt(mean(x^2) + eps) (accumulated in double).
template <class T>
void rms_norm_forward(const T* x, const T* w, T* y, Acc<T>* rstd, int64_t rows, int64_t dim, double eps);

// dx = rstd * (dn - n * mean(dn * n)), n = x * rstd, dn = dy * w; dw (double, may be null) += dy * n.
template <class T>
void rms_norm_backward(const T* dy, const T* x, const T* w, const Acc<T>* rstd, T* dx, double* dw, int64_t rows,
                       int64_t dim);

// Rotary embedding (rotate_half convention) of `rows` (b, t) rows of `heads` x d values; cos and sin
// hold one d-vector per row. Forward: y = x cos + rotate_half(x) sin. Backward: its transpose.
template <class T>
void rope_forward(const T* x, const Acc<T>* cos, const Acc<T>* sin, T* y, int64_t rows, int64_t heads, int64_t d);
template <class T>
void rope_backward(const T* dy, const Acc<T>* cos, const Acc<T>* sin, T* dx, int64_t rows, int64_t heads, int64_t d);

// Gated sigmoid-weighted unit, s = sigmoid(alpha x) given: y = x s u (u null: y = x s). Backward: dx =
// dy u s (1 + alpha x (1 - s)), du = dy x s (skipped when du is null).
template <class T>
void gated_silu_forward(const T* x, const T* s, const T* u, T* y, int64_t n);
template <class T>
void gated_silu_backward(const T* dy, const T* x, const T* s, const T* u, Acc<T> alpha, T* dx, T* du, int64_t n);

}  // namespace modalign::kernels
