#include "lib/model/attention_core.h"

#include <ATen/Parallel.h>

#include <limits>

#include "lib/model/precision.h"

// The BLAS that LibTorch links (libblas.so.3), Fortran interface.
extern "C" {
void sgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const float* alpha,
            const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c, const int* ldc);
void dgemm_(const char* transa, const char* transb, const int* m, const int* n, const int* k, const double* alpha,
            const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
            const int* ldc);
}

namespace modalign {
namespace {
using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const float* alpha,
               const float* a, const int* lda, const float* b, const int* ldb, const float* beta, float* c,
               const int* ldc) {
  sgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
void blas_gemm(const char* ta, const char* tb, const int* m, const int* n, const int* k, const double* alpha,
               const double* a, const int* lda, const double* b, const int* ldb, const double* beta, double* c,
               const int* ldc) {
  dgemm_(ta, tb, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}

// Row-major C (m x n) = alpha * op(A) (m x k) * op(B) (k x n) + beta * C, with leading dimensions (row
// strides) lda, ldb, ldc. BLAS is column-major, so this computes C^T = op(B)^T op(A)^T. Called inside
// at::parallel_for, where OpenBLAS runs single-threaded. beta = 0 never reads C.
template <class T>
void gemm(bool trans_a, bool trans_b, int64_t m, int64_t n, int64_t k, T alpha, const T* a, int64_t lda, const T* b,
          int64_t ldb, T beta, T* c, int64_t ldc) {
  if (m == 0 || n == 0) return;
  if (k == 0) {  // BLAS would scale C by beta; with beta 0 that means zeros
    for (int64_t i = 0; i < m; ++i)
      for (int64_t j = 0; j < n; ++j) c[i * ldc + j] = beta == T(0) ? T(0) : beta * c[i * ldc + j];
    return;
  }
  const char ta = trans_b ? 'T' : 'N', tb = trans_a ? 'T' : 'N';
  const int mm = static_cast<int>(n), nn = static_cast<int>(m), kk = static_cast<int>(k);
  const int la = static_cast<int>(ldb), lb = static_cast<int>(lda), lc = static_cast<int>(ldc);
  blas_gemm(&ta, &tb, &mm, &nn, &kk, &alpha, b, &la, a, &lb, &beta, c, &lc);
}

struct Dims {
  int64_t b, t, h, g, d, s;
  int64_t r() const { return h / g; }
};

Dims dims_of(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& sets) {
  return {q.size(0), q.size(1), q.size(2), k.size(2), q.size(3), sets.size(2)};
}

struct AttentionCoreFunction : torch::autograd::Function<AttentionCoreFunction> {
  // Blocks are (sample b, key/value head g): its r = H / G query heads, head-major, form one (r T, d)
  // matrix Q_g, and P_g = P[b, g r .. g r + r) is one contiguous (r T, T) matrix, so every product below
  // is one GEMM per block with r times the rows of a per-head one.
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& bias, const torch::Tensor& allowed,
                               bool empty_rows, const torch::Tensor& sets) {
    const Dims n = dims_of(q, k, sets);
    const int64_t rt = n.r() * n.t, ld_kv = n.g * n.d;
    const double scale = 1.0 / std::sqrt(static_cast<double>(n.d));
    torch::Tensor qh = q.transpose(1, 2).contiguous();                 // (B, H, T, d)
    torch::Tensor p = torch::empty({n.b, n.h, n.t, n.t}, q.options());  // (B, H, T, T)
    torch::Tensor out = torch::empty({n.b, n.h, n.t, n.d}, q.options());
    torch::Tensor mass = torch::empty({n.b, n.h, n.t, n.s}, q.options());
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_core_scores", [&] {
      const scalar_t *qp = qh.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>();
      scalar_t* pp = p.data_ptr<scalar_t>();
      at::parallel_for(0, n.b * n.g, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {  // S_g = Q_g K_bg^T / sqrt(d)
          const int64_t bi = i / n.g, gi = i % n.g;
          gemm<scalar_t>(false, true, rt, n.t, n.d, static_cast<scalar_t>(scale), qp + i * rt * n.d, n.d,
                         kp + (bi * n.t * n.g + gi) * n.d, ld_kv, 0, pp + i * rt * n.t, n.t);
        }
      });
    });
    // Masked scores become the lowest finite value (adding it absorbs any score), so masked keys get
    // exactly 0 and a row without allowed keys is uniform, as a lowest-value masked_fill gives. One
    // broadcast add is an order of magnitude faster than masked_fill with a broadcast mask.
    if (bias.numel() > 0) p.add_(bias);
    p = torch::softmax(p, -1);
    AT_DISPATCH_FLOATING_TYPES(q.scalar_type(), "attention_core_out", [&] {
      const scalar_t *pp = p.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>(), *sp = sets.data_ptr<scalar_t>();
      scalar_t *op = out.data_ptr<scalar_t>(), *mp = mass.data_ptr<scalar_t>();
      at::parallel_for(0, n.b * n.g, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {  // O_g = P_g V_bg; mass_g = P_g sets_b
          const int64_t bi = i / n.g, gi = i % n.g;
          const scalar_t* pg = pp + i * rt * n.t;
          gemm<scalar_t>(false, false, rt, n.d, n.t, 1, pg, n.t, vp + (bi * n.t * n.g + gi) * n.d, ld_kv, 0,
                         op + i * rt * n.d, n.d);
          if (n.s > 0)
            gemm<scalar_t>(false, false, rt, n.s, n.t, 1, pg, n.t, sp + bi * n.t * n.s, n.s, 0, mp + i * rt * n.s, n.s);
        }
      });
    });
    ctx->save_for_backward({qh, k, v, sets});
    ctx->saved_data["p"] = p;
    if (empty_rows) ctx->saved_data["allowed"] = allowed;
    return {out.transpose(1, 2).contiguous(), mass};  // out (B, T, H, d)
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &qh = saved[0], &k = saved[1], &v = saved[2], &sets = saved[3];
    const torch::Tensor p = ctx->saved_data["p"].toTensor();
    const int64_t b = k.size(0), t = k.size(1), g = k.size(2), d = k.size(3), h = qh.size(1), s = sets.size(2);
    const int64_t rt = (h / g) * t, ld_kv = g * d;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    torch::Tensor d_out = grads[0].defined() ? grads[0].transpose(1, 2).contiguous() : torch::zeros_like(qh);  // (B, H, T, d)
    torch::Tensor d_mass = grads[1].defined() && s > 0 ? grads[1].contiguous() : torch::Tensor();          // (B, H, T, S)
    torch::Tensor d_p = torch::empty_like(p);
    AT_DISPATCH_FLOATING_TYPES(qh.scalar_type(), "attention_core_dp", [&] {
      const scalar_t *dop = d_out.data_ptr<scalar_t>(), *vp = v.data_ptr<scalar_t>(), *sp = sets.data_ptr<scalar_t>();
      const scalar_t* dmp = d_mass.defined() ? d_mass.data_ptr<scalar_t>() : nullptr;
      scalar_t* dpp = d_p.data_ptr<scalar_t>();
      at::parallel_for(0, b * g, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {  // dP_g = dO_g V_bg^T (+ dMass_g sets_b^T)
          const int64_t bi = i / g, gi = i % g;
          scalar_t* dpg = dpp + i * rt * t;
          gemm<scalar_t>(false, true, rt, t, d, 1, dop + i * rt * d, d, vp + (bi * t * g + gi) * d, ld_kv, 0, dpg, t);
          if (dmp) gemm<scalar_t>(false, true, rt, t, s, 1, dmp + i * rt * s, s, sp + bi * t * s, s, 1, dpg, t);
        }
      });
    });
    // dS = P * (dP - rowsum(dP * P)); masked scores get no gradient (as masked_fill's backward). Where a
    // row has an allowed key, P (and so dS) is already exactly 0 at masked keys.
    torch::Tensor d_s = torch::_softmax_backward_data(d_p, p, -1, p.scalar_type());
    if (ctx->saved_data.count("allowed")) d_s.masked_fill_(~ctx->saved_data["allowed"].toTensor(), 0);
    torch::Tensor dqh = torch::empty_like(qh), dk = torch::empty_like(k), dv = torch::empty_like(v);
    AT_DISPATCH_FLOATING_TYPES(qh.scalar_type(), "attention_core_dqkv", [&] {
      const scalar_t *qp = qh.data_ptr<scalar_t>(), *kp = k.data_ptr<scalar_t>(), *pp = p.data_ptr<scalar_t>();
      const scalar_t *dsp = d_s.data_ptr<scalar_t>(), *dop = d_out.data_ptr<scalar_t>();
      scalar_t *dqp = dqh.data_ptr<scalar_t>(), *dkp = dk.data_ptr<scalar_t>(), *dvp = dv.data_ptr<scalar_t>();
      const auto sc = static_cast<scalar_t>(scale);
      at::parallel_for(0, b * g, 1, [&](int64_t begin, int64_t end) {
        for (int64_t i = begin; i < end; ++i) {
          const int64_t bi = i / g, gi = i % g, kv = (bi * t * g + gi) * d;
          const scalar_t *dsg = dsp + i * rt * t, *pg = pp + i * rt * t;
          gemm<scalar_t>(false, false, rt, d, t, sc, dsg, t, kp + kv, ld_kv, 0, dqp + i * rt * d, d);         // dQ_g = dS_g K
          gemm<scalar_t>(true, false, t, d, rt, sc, dsg, t, qp + i * rt * d, d, 0, dkp + kv, ld_kv);         // dK = dS_g^T Q_g
          gemm<scalar_t>(true, false, t, d, rt, 1, pg, t, dop + i * rt * d, d, 0, dvp + kv, ld_kv);          // dV = P_g^T dO_g
        }
      });
    });
    return {dqh.transpose(1, 2).contiguous(), dk, dv, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

// bf16 q, k, v (mixed precision): the same products as batched bf16 GEMMs over the (sample, key/value head)
// blocks (oneDNN through LibTorch, fast with AVX512-BF16), the softmax, its statistics, P and the taps in
// float32. Autocast is off inside: every dtype below is chosen here.
struct AttentionCoreBf16Function : torch::autograd::Function<AttentionCoreBf16Function> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& bias, const torch::Tensor& allowed,
                               bool empty_rows, const torch::Tensor& sets) {
    AutocastScope explicit_types(MixedPrecision{q.device().type()});
    const Dims n = dims_of(q, k, sets);
    const double scale = 1.0 / std::sqrt(static_cast<double>(n.d));
    torch::Tensor qg = q.transpose(1, 2).contiguous().view({n.b, n.g, n.r() * n.t, n.d});  // (B, G, rT, d)
    torch::Tensor kg = k.permute({0, 2, 1, 3}), vg = v.permute({0, 2, 1, 3});            // (B, G, T, d)
    torch::Tensor p = torch::matmul(qg, kg.transpose(-1, -2)).to(torch::kFloat32).mul_(scale);  // (B, G, rT, T)
    p = p.view({n.b, n.h, n.t, n.t});
    if (bias.numel() > 0) p.add_(bias);
    p = torch::softmax(p, -1);                                                              // (B, H, T, T) float32
    torch::Tensor pg = p.view({n.b, n.g, n.r() * n.t, n.t});
    torch::Tensor out = torch::matmul(pg.to(q.scalar_type()), vg).view({n.b, n.h, n.t, n.d});  // bf16
    torch::Tensor mass = torch::matmul(p, sets.unsqueeze(1));                               // (B, H, T, S) float32
    ctx->save_for_backward({qg, k, v, sets});
    ctx->saved_data["p"] = p;
    if (empty_rows) ctx->saved_data["allowed"] = allowed;
    return {out.transpose(1, 2).contiguous(), mass};  // out (B, T, H, d)
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &qg = saved[0], &k = saved[1], &v = saved[2], &sets = saved[3];
    AutocastScope explicit_types(MixedPrecision{qg.device().type()});
    const torch::Tensor p = ctx->saved_data["p"].toTensor();  // (B, H, T, T) float32
    const int64_t b = k.size(0), t = k.size(1), g = k.size(2), d = k.size(3), h = p.size(1), rt = (h / g) * t;
    const double scale = 1.0 / std::sqrt(static_cast<double>(d));
    const auto low = qg.scalar_type();
    torch::Tensor kg = k.permute({0, 2, 1, 3}), vg = v.permute({0, 2, 1, 3});  // (B, G, T, d)
    torch::Tensor d_out = grads[0].defined() ? grads[0].to(low).transpose(1, 2).contiguous().view({b, g, rt, d})
                                             : torch::zeros_like(qg);                       // (B, G, rT, d)
    torch::Tensor d_p = torch::matmul(d_out, vg.transpose(-1, -2)).to(torch::kFloat32).view({b, h, t, t});
    if (grads[1].defined() && sets.size(2) > 0) d_p.add_(torch::matmul(grads[1].to(torch::kFloat32), sets.transpose(1, 2).unsqueeze(1)));
    torch::Tensor d_s = torch::_softmax_backward_data(d_p, p, -1, torch::kFloat32).mul_(scale);
    if (ctx->saved_data.count("allowed")) d_s.masked_fill_(~ctx->saved_data["allowed"].toTensor(), 0);
    torch::Tensor dsg = d_s.to(low).view({b, g, rt, t});
    torch::Tensor dq = torch::matmul(dsg, kg).view({b, h, t, d}).transpose(1, 2).contiguous();   // (B, T, H, d)
    torch::Tensor dk = torch::matmul(dsg.transpose(-1, -2), qg).permute({0, 2, 1, 3}).contiguous();  // (B, T, G, d)
    torch::Tensor dv = torch::matmul(p.view({b, g, rt, t}).to(low).transpose(-1, -2), d_out).permute({0, 2, 1, 3}).contiguous();
    return {dq, dk, dv, torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

bool attention_core_supported(const torch::Tensor& q) {
  const auto t = q.scalar_type();
  return q.device().is_cpu() && (t == torch::kFloat32 || t == torch::kFloat64 || t == torch::kBFloat16);
}

AttentionMask make_attention_mask(const torch::Tensor& allowed, torch::ScalarType dtype) {
  TORCH_CHECK(allowed.dim() == 4 && allowed.size(1) == 1 && allowed.size(2) == allowed.size(3) &&
                  allowed.scalar_type() == torch::kBool,
              "make_attention_mask expects allowed (B, 1, T, T) bool, got ", allowed.sizes(), " ", allowed.scalar_type());
  const bool f64 = dtype == torch::kFloat64;  // float32 otherwise: bf16 scores are added to it in float32
  const double lowest = f64 ? std::numeric_limits<double>::lowest() : static_cast<double>(std::numeric_limits<float>::lowest());
  torch::Tensor bias = torch::zeros(allowed.sizes(), allowed.options().dtype(f64 ? torch::kFloat64 : torch::kFloat32))
                           .masked_fill_(~allowed, lowest);
  return {allowed.contiguous(), bias, !allowed.any(-1).all().item<bool>()};
}

AttentionCoreOutput attention_core(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const AttentionMask& mask, const torch::Tensor& sets) {
  TORCH_CHECK(attention_core_supported(q), "attention_core needs CPU float32/float64/bfloat16 tensors, got ", q.options());
  const bool bf16 = q.scalar_type() == torch::kBFloat16;
  const torch::ScalarType wide = wide_type(q.scalar_type());  // mask, sets, P and mass
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && k.size(0) == q.size(0) &&
                  k.size(1) == q.size(1) && k.size(3) == q.size(3) && q.size(2) % k.size(2) == 0,
              "attention_core expects q (B, T, H, d) and k, v (B, T, G, d) with H % G == 0, got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  const int64_t b = q.size(0), t = q.size(1);
  if (mask.allowed.defined())
    TORCH_CHECK(mask.allowed.size(0) == b && mask.allowed.size(2) == t && mask.bias.scalar_type() == wide,
                "attention_core: mask (", mask.allowed.sizes(), ", ", mask.bias.scalar_type(), ") does not fit q ",
                q.sizes(), " ", q.scalar_type());
  torch::Tensor s = sets.defined() ? sets.to(wide).contiguous() : torch::zeros({b, t, 0}, q.options().dtype(wide));
  TORCH_CHECK(s.dim() == 3 && s.size(0) == b && s.size(1) == t, "attention_core expects sets (B, T, S), got ", s.sizes());
  // Custom functions take defined tensors only: an empty bias means "no mask".
  const bool masked = mask.allowed.defined();
  torch::Tensor bias = masked ? mask.bias : torch::empty({0}, q.options().dtype(wide));
  torch::Tensor allowed = masked ? mask.allowed : torch::empty({0}, q.options().dtype(torch::kBool));
  auto outs = bf16 ? AttentionCoreBf16Function::apply(q, k.to(q.scalar_type()).contiguous(),
                                                      v.to(q.scalar_type()).contiguous(), bias, allowed, mask.empty_rows, s)
                   : AttentionCoreFunction::apply(q.contiguous(), k.contiguous(), v.contiguous(), bias, allowed,
                                                  mask.empty_rows, s);
  return {outs[0], outs[1]};
}

}  // namespace modalign
