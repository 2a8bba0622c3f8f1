#include "lib/model/fused_ops.h"

#include <ATen/Parallel.h>

#include "lib/model/fused_kernels.h"
#include "lib/model/precision.h"

namespace modalign {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

// Rows per task so that each task touches at least ~16k values.
int64_t grain(int64_t row_size) { return std::max<int64_t>(1, 16384 / std::max<int64_t>(1, row_size)); }

#define MODALIGN_DISPATCH(type, name, ...) AT_DISPATCH_FLOATING_TYPES_AND(at::kBFloat16, type, name, __VA_ARGS__)

struct RmsNormFunction : torch::autograd::Function<RmsNormFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& weight, double eps) {
    const int64_t dim = x.size(-1), rows = x.numel() / dim;
    torch::Tensor y = torch::empty_like(x), rstd = torch::empty({rows}, x.options().dtype(wide_type(x.scalar_type())));
    MODALIGN_DISPATCH(x.scalar_type(), "fused_rms_norm", [&] {
      const scalar_t *xp = x.data_ptr<scalar_t>(), *wp = weight.data_ptr<scalar_t>();
      scalar_t* yp = y.data_ptr<scalar_t>();
      auto* rp = rstd.data_ptr<kernels::Acc<scalar_t>>();
      at::parallel_for(0, rows, grain(dim), [&](int64_t begin, int64_t end) {
        kernels::rms_norm_forward(xp + begin * dim, wp, yp + begin * dim, rp + begin, end - begin, dim, eps);
      });
    });
    ctx->save_for_backward({x, weight, rstd});
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &weight = saved[1], &rstd = saved[2];
    const torch::Tensor dy = grads[0].contiguous();
    const int64_t dim = x.size(-1), rows = x.numel() / dim;
    const bool weight_grad = ctx->needs_input_grad(1);
    torch::Tensor dx = torch::empty_like(x);
    // Per-thread partial sums of the weight gradient, added in thread order (deterministic for a fixed
    // thread count, like the rest of the step).
    const int64_t threads = at::get_num_threads();
    torch::Tensor partial = torch::zeros({weight_grad ? threads : 0, dim}, x.options().dtype(torch::kFloat64));
    MODALIGN_DISPATCH(x.scalar_type(), "fused_rms_norm_backward", [&] {
      const scalar_t *dyp = dy.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>(), *wp = weight.data_ptr<scalar_t>();
      const auto* rp = rstd.data_ptr<kernels::Acc<scalar_t>>();
      scalar_t* dxp = dx.data_ptr<scalar_t>();
      double* pp = weight_grad ? partial.data_ptr<double>() : nullptr;
      at::parallel_for(0, rows, grain(dim), [&](int64_t begin, int64_t end) {
        double* dw = pp ? pp + at::get_thread_num() * dim : nullptr;
        kernels::rms_norm_backward(dyp + begin * dim, xp + begin * dim, wp, rp + begin, dxp + begin * dim, dw,
                                   end - begin, dim);
      });
    });
    torch::Tensor dw = weight_grad ? partial.sum(0).to(weight.scalar_type()) : torch::Tensor();
    return {dx, dw, torch::Tensor()};
  }
};

struct RopeFunction : torch::autograd::Function<RopeFunction> {
  template <bool Backward>
  static torch::Tensor rotate(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
    const int64_t rows = x.size(0) * x.size(1), heads = x.size(2), d = x.size(3);
    torch::Tensor y = torch::empty_like(x);
    MODALIGN_DISPATCH(x.scalar_type(), "fused_rope", [&] {
      const scalar_t* xp = x.data_ptr<scalar_t>();
      const auto *cp = cos.data_ptr<kernels::Acc<scalar_t>>(), *sp = sin.data_ptr<kernels::Acc<scalar_t>>();
      scalar_t* yp = y.data_ptr<scalar_t>();
      at::parallel_for(0, rows, grain(heads * d), [&](int64_t begin, int64_t end) {
        const int64_t off = begin * heads * d;
        if (Backward)
          kernels::rope_backward(xp + off, cp + begin * d, sp + begin * d, yp + off, end - begin, heads, d);
        else
          kernels::rope_forward(xp + off, cp + begin * d, sp + begin * d, yp + off, end - begin, heads, d);
      });
    });
    return y;
  }

  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& cos,
                               const torch::Tensor& sin) {
    ctx->save_for_backward({cos, sin});
    return rotate<false>(x, cos, sin);
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    return {rotate<true>(grads[0].contiguous(), saved[0], saved[1]), torch::Tensor(), torch::Tensor()};
  }
};

struct GatedSiluFunction : torch::autograd::Function<GatedSiluFunction> {
  static torch::Tensor forward(AutogradContext* ctx, const torch::Tensor& x, const torch::Tensor& u, double alpha) {
    torch::Tensor s = torch::sigmoid(alpha == 1.0 ? x : x * alpha), y = torch::empty_like(x);
    const bool gated = u.numel() > 0;
    MODALIGN_DISPATCH(x.scalar_type(), "fused_gated_silu", [&] {
      const scalar_t *xp = x.data_ptr<scalar_t>(), *sp = s.data_ptr<scalar_t>();
      const scalar_t* up = gated ? u.data_ptr<scalar_t>() : nullptr;
      scalar_t* yp = y.data_ptr<scalar_t>();
      at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
        kernels::gated_silu_forward(xp + begin, sp + begin, up ? up + begin : nullptr, yp + begin, end - begin);
      });
    });
    ctx->save_for_backward({x, u, s});
    ctx->saved_data["alpha"] = alpha;
    return y;
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &x = saved[0], &u = saved[1], &s = saved[2];
    const torch::Tensor dy = grads[0].contiguous();
    const bool gated = u.numel() > 0;
    torch::Tensor dx = torch::empty_like(x), du = gated ? torch::empty_like(u) : torch::Tensor();
    MODALIGN_DISPATCH(x.scalar_type(), "fused_gated_silu_backward", [&] {
      const scalar_t *dyp = dy.data_ptr<scalar_t>(), *xp = x.data_ptr<scalar_t>(), *sp = s.data_ptr<scalar_t>();
      const scalar_t* up = gated ? u.data_ptr<scalar_t>() : nullptr;
      scalar_t *dxp = dx.data_ptr<scalar_t>(), *dup = gated ? du.data_ptr<scalar_t>() : nullptr;
      const auto alpha = static_cast<kernels::Acc<scalar_t>>(ctx->saved_data["alpha"].toDouble());
      at::parallel_for(0, x.numel(), 1 << 14, [&](int64_t begin, int64_t end) {
        kernels::gated_silu_backward(dyp + begin, xp + begin, sp + begin, up ? up + begin : nullptr, alpha, dxp + begin,
                                     dup ? dup + begin : nullptr, end - begin);
      });
    });
    return {dx, du, torch::Tensor()};
  }
};

}  // namespace

bool fused_ops_supported(const torch::Tensor& x) {
  const auto t = x.scalar_type();
  return x.device().is_cpu() && (t == torch::kFloat32 || t == torch::kFloat64 || t == torch::kBFloat16);
}

torch::Tensor fused_rms_norm(const torch::Tensor& x, const torch::Tensor& weight, double eps) {
  TORCH_CHECK(fused_ops_supported(x) && weight.scalar_type() == x.scalar_type() && weight.dim() == 1 &&
                  weight.size(0) == x.size(-1),
              "fused_rms_norm expects CPU float32/float64/bfloat16 x (..., D) and weight (D) of its dtype, got ", x.sizes(), " ",
              x.scalar_type(), " and ", weight.sizes(), " ", weight.scalar_type());
  return RmsNormFunction::apply(x.contiguous(), weight.contiguous(), eps);
}

torch::Tensor fused_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  TORCH_CHECK(fused_ops_supported(x) && x.dim() == 4 && x.size(3) % 2 == 0,
              "fused_rope expects CPU float32/float64/bfloat16 x (B, T, h, d) with even d, got ", x.sizes());
  const std::vector<int64_t> table{x.size(0), x.size(1), 1, x.size(3)};
  TORCH_CHECK(cos.sizes() == table && sin.sizes() == table, "fused_rope expects cos and sin ", table, ", got ",
              cos.sizes(), " and ", sin.sizes());
  const torch::ScalarType acc = wide_type(x.scalar_type());  // bf16 rotates with float tables
  return RopeFunction::apply(x.contiguous(), cos.to(acc).contiguous(), sin.to(acc).contiguous());
}

torch::Tensor fused_gated_silu(const torch::Tensor& x, const torch::Tensor& u, double alpha) {
  TORCH_CHECK(fused_ops_supported(x) && (!u.defined() || (u.sizes() == x.sizes() && u.scalar_type() == x.scalar_type())),
              "fused_gated_silu expects CPU float32/float64/bfloat16 x and u of its shape and dtype, got ", x.sizes(), " ",
              x.scalar_type(), (u.defined() ? " and u " : ""), (u.defined() ? u.sizes() : x.sizes()));
  // Custom functions take defined tensors only: an empty u means "no gate".
  return GatedSiluFunction::apply(x.contiguous(), u.defined() ? u.contiguous() : torch::empty({0}, x.options()), alpha);
}

}  // namespace modalign
