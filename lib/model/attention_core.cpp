#include "lib/model/attention_core.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <limits>
#include <vector>

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

// c (G, m, n) = a (G, m, k) @ b (G, k, n) in a's dtype. float32/float64 on CPU call BLAS once per batch
// element on the operands in place (either may be a transposed view; a batch stride of 0 broadcasts), which
// inside the blocks' parallel loop costs none of batched matmul's per-element dispatch; other dtypes and
// devices go through torch::matmul.
torch::Tensor block_mm(torch::Tensor a, torch::Tensor b) {
  const auto t = a.scalar_type();
  if (!a.is_cpu() || (t != torch::kFloat32 && t != torch::kFloat64)) return torch::matmul(a, b);
  auto layout = [](torch::Tensor& x, bool& trans, int64_t& ld) {  // row-major op(X) with leading dimension ld
    if (x.stride(2) == 1 && x.stride(1) >= std::max<int64_t>(1, x.size(2))) {
      trans = false, ld = x.stride(1);
    } else if (x.stride(1) == 1 && x.stride(2) >= std::max<int64_t>(1, x.size(1))) {
      trans = true, ld = x.stride(2);
    } else {
      x = x.contiguous(), trans = false, ld = std::max<int64_t>(1, x.size(2));
    }
  };
  bool ta = false, tb = false;
  int64_t lda = 0, ldb = 0;
  layout(a, ta, lda);
  layout(b, tb, ldb);
  const int64_t g = a.size(0), m = a.size(1), k = a.size(2), n = b.size(2);
  torch::Tensor c = torch::empty({g, m, n}, a.options());
  AT_DISPATCH_FLOATING_TYPES(t, "attention_block_mm", [&] {
    const scalar_t *pa = a.data_ptr<scalar_t>(), *pb = b.data_ptr<scalar_t>();
    scalar_t* pc = c.data_ptr<scalar_t>();
    for (int64_t i = 0; i < g; ++i)
      gemm<scalar_t>(ta, tb, m, n, k, 1, pa + i * a.stride(0), lda, pb + i * b.stride(0), ldb, 0, pc + i * m * n,
                     std::max<int64_t>(1, n));
  });
  return c;
}

// The problem's sizes and its mask, shared by the forward and backward passes. Work is split by sample and
// block of query rows, every block batched over the G key/value heads: (G, r n, kend) scores for its n rows of
// the r query heads of each key/value head. Absent mask tensors are empty (autograd functions take defined
// tensors only).
struct Geometry {
  int64_t b, t, h, g, d, s, r, rows;
  double scale;
  bool causal;
  std::vector<int64_t> length;      // per sample: keys at or past it are never read (a valid prefix)
  torch::Tensor key_valid, segments;  // (B, T) bool when validity is not a prefix, (B, T) int64
  torch::Tensor tri;                // (rows, rows) bool: j <= i within a block's diagonal square
  std::vector<std::vector<std::pair<int64_t, int64_t>>> probe_rows;  // per sample: (probe row q, position i)
  torch::Tensor probe_keys, probe_valid;  // (B, Nv) int64, (B, Nv) bool; empty without a probe

  // Sample bi's probe rows in [i0, i1), as (q, i - i0).
  std::vector<std::pair<int64_t, int64_t>> probes_in(int64_t bi, int64_t i0, int64_t i1) const {
    std::vector<std::pair<int64_t, int64_t>> out;
    if (probe_rows.empty()) return out;
    for (const auto& [qi, pos] : probe_rows[static_cast<size_t>(bi)])
      if (pos >= i0 && pos < i1) out.push_back({qi, pos - i0});
    return out;
  }
  // Sample bi's probe key columns clamped to [0, kend) (G-broadcastable index) and their weight (1 where the
  // column is a key the block holds, else 0): (Nv) int64, (Nv) in `dtype`.
  std::pair<torch::Tensor, torch::Tensor> probe_columns(int64_t bi, int64_t kend, torch::ScalarType dtype) const {
    torch::Tensor keys = probe_keys[bi];
    torch::Tensor keep = (probe_valid[bi] & (keys < kend) & (keys >= 0)).to(dtype);
    return {keys.clamp(0, std::max<int64_t>(kend - 1, 0)), keep};
  }

  int64_t blocks() const { return (t + rows - 1) / rows; }
  int64_t key_end(int64_t bi, int64_t i1) const { return std::min(causal ? i1 : t, length[static_cast<size_t>(bi)]); }

  // -inf where query i of rows [i0, i1) may not read key j < kend; s is (G, r n, kend).
  void mask_scores(torch::Tensor& s, int64_t bi, int64_t i0, int64_t i1, int64_t kend) const {
    const int64_t n = i1 - i0;
    const double inf = std::numeric_limits<double>::infinity();
    torch::Tensor s4 = s.view({g, r, n, kend});
    if (causal && kend > i0)  // keys before i0 are all earlier than every row; the square [i0, i1) is a triangle
      s4.narrow(3, i0, kend - i0).masked_fill_(tri.slice(0, 0, n).slice(1, 0, kend - i0).logical_not(), -inf);
    if (key_valid.numel() > 0) s4.masked_fill_(key_valid[bi].slice(0, 0, kend).logical_not(), -inf);
    if (segments.numel() > 0)
      s4.masked_fill_(segments[bi].slice(0, i0, i1).unsqueeze(1) != segments[bi].slice(0, 0, kend).unsqueeze(0), -inf);
  }

  // Runs f(bi, i0, i1) for every sample and block of query rows; with `per_sample` a sample's blocks run
  // in order in one task (the backward pass accumulates key gradients along them). Parallel on CPU: one
  // task runs inline, where LibTorch's own operations may use every thread.
  template <class F>
  void for_each_block(bool cpu, bool per_sample, F&& f) const {
    const int64_t nb = blocks(), tasks = per_sample ? b : b * nb;
    auto run = [&](int64_t begin, int64_t end) {
      for (int64_t i = begin; i < end; ++i) {
        const int64_t bi = per_sample ? i : i / nb;
        for (int64_t j = per_sample ? 0 : i % nb; j < (per_sample ? nb : i % nb + 1); ++j)
          f(bi, j * rows, std::min(t, (j + 1) * rows));
      }
    };
    if (cpu)
      at::parallel_for(0, tasks, 1, run);
    else
      run(0, tasks);
  }
};

Geometry geometry(const torch::Tensor& qh, const torch::Tensor& k, const torch::Tensor& sets,
                  const torch::Tensor& lengths, const torch::Tensor& key_valid, const torch::Tensor& segments,
                  bool causal, int64_t rows, const torch::Tensor& probe_rows, const torch::Tensor& probe_keys,
                  const torch::Tensor& probe_valid) {
  Geometry m{qh.size(0), qh.size(2), qh.size(1), k.size(2), qh.size(3), sets.size(2), qh.size(1) / k.size(2), rows,
             1.0 / std::sqrt(static_cast<double>(qh.size(3))), causal, {}, key_valid, segments, {}, {},
             probe_keys, probe_valid};
  if (probe_rows.numel() > 0) {
    torch::Tensor r = probe_rows.to(torch::kCPU, torch::kInt64).contiguous();
    auto a = r.accessor<int64_t, 2>();
    m.probe_rows.resize(static_cast<size_t>(m.b));
    for (int64_t bi = 0; bi < m.b; ++bi)
      for (int64_t qi = 0; qi < r.size(1); ++qi)
        if (a[bi][qi] >= 0) m.probe_rows[static_cast<size_t>(bi)].push_back({qi, a[bi][qi]});
  }
  if (m.rows <= 0) m.rows = attention_query_block(m.r, m.t);
  m.length.assign(static_cast<size_t>(m.b), m.t);
  if (lengths.numel() > 0) {
    torch::Tensor l = lengths.to(torch::kCPU, torch::kInt64).contiguous();
    std::copy(l.data_ptr<int64_t>(), l.data_ptr<int64_t>() + m.b, m.length.begin());
  }
  if (causal) m.tri = torch::ones({m.rows, m.rows}, qh.options().dtype(torch::kBool)).tril();
  return m;
}

// Sample bi's rows [i0, i1) of a (B, H, T, ...) tensor: rows_of as a (G, r, n, ...) view (to write into),
// rows_flat as (G, r n, ...) (a copy when n < T).
torch::Tensor rows_of(const torch::Tensor& bhx, const Geometry& m, int64_t bi, int64_t i0, int64_t i1) {
  torch::Tensor x = bhx[bi];
  std::vector<int64_t> shape{m.g, m.r, m.t};
  for (int64_t i = 2; i < x.dim(); ++i) shape.push_back(x.size(i));
  return x.view(shape).slice(2, i0, i1);
}
torch::Tensor rows_flat(const torch::Tensor& bhx, const Geometry& m, int64_t bi, int64_t i0, int64_t i1) {
  torch::Tensor x = rows_of(bhx, m, bi, i0, i1);
  std::vector<int64_t> shape{m.g, m.r * (i1 - i0)};
  for (int64_t i = 3; i < x.dim(); ++i) shape.push_back(x.size(i));
  return x.reshape(shape);
}
// Sample bi's keys or values [0, kend) of (B, T, G, d) as (G, kend, d).
torch::Tensor keys_of(const torch::Tensor& btgd, int64_t bi, int64_t kend) {
  return btgd[bi].slice(0, 0, kend).permute({1, 0, 2});
}

// Sample bi's key sets [0, kend) as (G, kend, S), the same for every key/value head.
torch::Tensor sets_of(const torch::Tensor& sets, const Geometry& m, int64_t bi, int64_t kend) {
  return sets[bi].slice(0, 0, kend).unsqueeze(0).expand({m.g, kend, m.s});
}

// Probabilities P (G, r n, kend) in the wide type: exp(scores - lse), exact softmax rows, 0 at masked keys;
// lse (G, r n) given, or computed (+inf for a row without an allowed key, whose P is then 0).
torch::Tensor block_probs(const Geometry& m, const torch::Tensor& qb, const torch::Tensor& kb, int64_t bi, int64_t i0,
                          int64_t i1, torch::ScalarType wide, torch::Tensor& lse) {
  torch::Tensor s = block_mm(qb, kb.transpose(1, 2)).to(wide).mul_(m.scale);
  m.mask_scores(s, bi, i0, i1, kb.size(1));
  if (!lse.defined()) {
    lse = torch::logsumexp(s, -1);
    lse.masked_fill_(torch::isneginf(lse), std::numeric_limits<double>::infinity());
  }
  return s.sub_(lse.unsqueeze(-1)).exp_();
}

struct AttentionCoreFunction : torch::autograd::Function<AttentionCoreFunction> {
  static variable_list forward(AutogradContext* ctx, const torch::Tensor& q, const torch::Tensor& k,
                               const torch::Tensor& v, const torch::Tensor& sets, const torch::Tensor& lengths,
                               const torch::Tensor& key_valid, const torch::Tensor& segments, bool causal, int64_t rows,
                               const torch::Tensor& probe_rows, const torch::Tensor& probe_keys,
                               const torch::Tensor& probe_valid) {
    const torch::ScalarType wide = wide_type(q.scalar_type());
    AutocastScope explicit_types(MixedPrecision{q.device().type()});  // every dtype below is chosen here
    torch::Tensor qh = q.transpose(1, 2).contiguous();                 // (B, H, T, d)
    const Geometry m = geometry(qh, k, sets, lengths, key_valid, segments, causal, rows, probe_rows, probe_keys, probe_valid);
    const int64_t nq = probe_rows.numel() > 0 ? probe_rows.size(1) : 0, nv = probe_keys.numel() > 0 ? probe_keys.size(1) : 0;
    torch::Tensor probs = torch::zeros({m.b, m.h, nq, nv}, q.options().dtype(wide));  // (B, H, Q, Nv)
    torch::Tensor out = torch::zeros({m.b, m.h, m.t, m.d}, q.options());
    torch::Tensor mass = torch::zeros({m.b, m.h, m.t, m.s}, q.options().dtype(wide));
    torch::Tensor lse = torch::full({m.b, m.h, m.t}, std::numeric_limits<double>::infinity(), q.options().dtype(wide));
    m.for_each_block(q.is_cpu(), false, [&](int64_t bi, int64_t i0, int64_t i1) {
      const int64_t kend = m.key_end(bi, i1), n = i1 - i0;
      if (kend == 0) return;  // no key at all: output and taps 0
      torch::Tensor l;
      torch::Tensor p = block_probs(m, rows_flat(qh, m, bi, i0, i1), keys_of(k, bi, kend), bi, i0, i1, wide, l);
      rows_of(lse, m, bi, i0, i1).copy_(l.view({m.g, m.r, n}));
      rows_of(out, m, bi, i0, i1).copy_(block_mm(p.to(v.scalar_type()), keys_of(v, bi, kend)).view({m.g, m.r, n, m.d}));
      if (m.s > 0) rows_of(mass, m, bi, i0, i1).copy_(block_mm(p, sets_of(sets, m, bi, kend)).view({m.g, m.r, n, m.s}));
      const auto probes = m.probes_in(bi, i0, i1);
      if (probes.empty()) return;
      auto [cols, keep] = m.probe_columns(bi, kend, wide);
      torch::Tensor p4 = p.view({m.h, n, kend});  // head-major: (G, r) flattened
      for (const auto& [qi, row] : probes) probs[bi].select(1, qi).copy_(p4.select(1, row).index_select(1, cols) * keep);
    });
    ctx->save_for_backward({qh, k, v, sets, lengths, key_valid, segments, lse, probe_rows, probe_keys, probe_valid});
    ctx->saved_data["causal"] = causal;
    ctx->saved_data["rows"] = m.rows;
    return {out.transpose(1, 2).contiguous(), mass, probs};  // out (B, T, H, d)
  }

  static variable_list backward(AutogradContext* ctx, variable_list grads) {
    auto saved = ctx->get_saved_variables();
    const torch::Tensor &qh = saved[0], &k = saved[1], &v = saved[2], &sets = saved[3], &lse = saved[7];
    const torch::ScalarType low = qh.scalar_type(), wide = wide_type(low);
    AutocastScope explicit_types(MixedPrecision{qh.device().type()});
    const Geometry m = geometry(qh, k, sets, saved[4], saved[5], saved[6], ctx->saved_data["causal"].toBool(),
                                ctx->saved_data["rows"].toInt(), saved[8], saved[9], saved[10]);
    torch::Tensor d_probs = grads[2].defined() && grads[2].numel() > 0 ? grads[2].to(wide) : torch::Tensor();  // (B, H, Q, Nv)
    torch::Tensor d_out = grads[0].defined() ? grads[0].to(low).transpose(1, 2).contiguous() : torch::zeros_like(qh);  // (B, H, T, d)
    torch::Tensor d_mass = grads[1].defined() && m.s > 0 ? grads[1].to(wide).contiguous() : torch::Tensor();  // (B, H, T, S)
    torch::Tensor dqh = torch::zeros_like(qh);
    torch::Tensor dk = torch::zeros({m.b, m.g, m.t, m.d}, k.options().dtype(wide)), dv = torch::zeros_like(dk);
    m.for_each_block(qh.is_cpu(), true, [&](int64_t bi, int64_t i0, int64_t i1) {
      const int64_t kend = m.key_end(bi, i1), n = i1 - i0;
      if (kend == 0) return;
      torch::Tensor qb = rows_flat(qh, m, bi, i0, i1), kb = keys_of(k, bi, kend), vb = keys_of(v, bi, kend);
      torch::Tensor l = rows_flat(lse, m, bi, i0, i1);
      torch::Tensor p = block_probs(m, qb, kb, bi, i0, i1, wide, l);                 // (G, r n, kend)
      torch::Tensor dob = rows_flat(d_out, m, bi, i0, i1);                          // (G, r n, d)
      torch::Tensor dp = block_mm(dob, vb.transpose(1, 2)).to(wide);
      if (d_mass.defined()) dp.add_(block_mm(rows_flat(d_mass, m, bi, i0, i1), sets_of(sets, m, bi, kend).transpose(1, 2)));
      if (d_probs.defined()) {  // the probe's probabilities are P's entries: their gradient adds to dP there
        const auto probes = m.probes_in(bi, i0, i1);
        if (!probes.empty()) {
          auto [cols, keep] = m.probe_columns(bi, kend, wide);
          torch::Tensor dp4 = dp.view({m.h, n, kend});
          for (const auto& [qi, row] : probes)
            dp4.select(1, row).index_add_(1, cols, d_probs[bi].select(1, qi) * keep);
        }
      }
      // dS = P * (dP - rowsum(P * dP)) / sqrt(d): zero at masked keys and in empty rows, where P is.
      torch::Tensor ds = (p * (dp - (p * dp).sum(-1, true))).mul_(m.scale).to(low);
      rows_of(dqh, m, bi, i0, i1).copy_(block_mm(ds, kb).view({m.g, m.r, n, m.d}));           // dQ = dS K
      dk[bi].slice(1, 0, kend).add_(block_mm(ds.transpose(1, 2), qb).to(wide));               // dK += dS^T Q
      dv[bi].slice(1, 0, kend).add_(block_mm(p.to(low).transpose(1, 2), dob).to(wide));       // dV += P^T dO
    });
    return {dqh.transpose(1, 2).contiguous(), dk.transpose(1, 2).to(low).contiguous(), dv.transpose(1, 2).to(low).contiguous(),
            torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(), torch::Tensor(),
            torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor AttentionMask::dense(int64_t batch, int64_t tokens, torch::Device device) const {
  auto opts = torch::TensorOptions().dtype(torch::kBool).device(device);
  torch::Tensor a = torch::ones({batch, 1, tokens, tokens}, opts);
  if (causal) a = a & torch::ones({tokens, tokens}, opts).tril();
  if (key_valid.defined()) a = a & key_valid.to(torch::kBool).view({batch, 1, 1, tokens});
  if (segments.defined()) a = a & (segments.unsqueeze(2) == segments.unsqueeze(1)).unsqueeze(1);
  return a;
}

bool attention_core_supported(const torch::Tensor& q) {
  const auto t = q.scalar_type();
  return t == torch::kFloat32 || t == torch::kFloat64 || t == torch::kBFloat16;
}

int64_t attention_query_block(int64_t r, int64_t t) {
  constexpr int64_t kBudget = int64_t{1} << 20;  // score values per block
  if (r * t * t <= kBudget) return std::max<int64_t>(t, 1);
  return std::max<int64_t>(16, kBudget / std::max<int64_t>(r * t, 1));
}

AttentionCoreOutput attention_core(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                   const AttentionMask& mask, const torch::Tensor& sets, int64_t query_block,
                                   const AttentionProbe& probe) {
  TORCH_CHECK(attention_core_supported(q), "attention_core needs float32/float64/bfloat16 tensors, got ", q.options());
  TORCH_CHECK(q.dim() == 4 && k.dim() == 4 && v.sizes() == k.sizes() && k.size(0) == q.size(0) &&
                  k.size(1) == q.size(1) && k.size(3) == q.size(3) && q.size(2) % k.size(2) == 0,
              "attention_core expects q (B, T, H, d) and k, v (B, T, G, d) with H % G == 0, got ", q.sizes(), ", ",
              k.sizes(), ", ", v.sizes());
  const int64_t b = q.size(0), t = q.size(1);
  const torch::ScalarType wide = wide_type(q.scalar_type());  // sets, the softmax statistics and the taps
  auto o = q.options();
  for (const auto* x : {&mask.key_valid, &mask.segments})
    TORCH_CHECK(!x->defined() || x->sizes() == torch::IntArrayRef({b, t}),
                "attention_core: mask key_valid and segments must be (B, T) = (", b, ", ", t, "), got ", x->sizes());
  // Validity that is a prefix of each sample (right padding) becomes lengths: keys past them are never read.
  torch::Tensor lengths = torch::empty({0}, o.dtype(torch::kInt64)), valid = torch::empty({0}, o.dtype(torch::kBool));
  if (mask.key_valid.defined()) {
    valid = mask.key_valid.to(o.dtype(torch::kBool)).contiguous();
    torch::Tensor count = valid.sum(1);  // (B)
    if (torch::equal(valid, torch::arange(t, o.dtype(torch::kInt64)).unsqueeze(0) < count.unsqueeze(1)))
      lengths = count, valid = torch::empty({0}, o.dtype(torch::kBool));
  }
  torch::Tensor segments = mask.segments.defined() ? mask.segments.to(o.dtype(torch::kInt64)).contiguous()
                                                   : torch::empty({0}, o.dtype(torch::kInt64));
  torch::Tensor s = sets.defined() ? sets.to(o.dtype(wide)).contiguous() : torch::zeros({b, t, 0}, o.dtype(wide));
  TORCH_CHECK(s.dim() == 3 && s.size(0) == b && s.size(1) == t, "attention_core expects sets (B, T, S), got ", s.sizes());
  TORCH_CHECK(query_block >= 0, "attention_core: query_block must be >= 0, got ", query_block);
  torch::Tensor prows = torch::empty({0}, o.dtype(torch::kInt64)), pkeys = prows, pvalid = torch::empty({0}, o.dtype(torch::kBool));
  if (probe.rows.defined()) {
    TORCH_CHECK(probe.rows.dim() == 2 && probe.rows.size(0) == b && probe.keys.defined() && probe.keys.dim() == 2 &&
                    probe.keys.size(0) == b && probe.keys_valid.defined() && probe.keys_valid.sizes() == probe.keys.sizes(),
                "attention_core: probe rows (B, Q), keys and keys_valid (B, Nv) with B = ", b, ", got ", probe.rows.sizes(),
                ", ", probe.keys.defined() ? probe.keys.sizes() : torch::IntArrayRef{}, ", ",
                probe.keys_valid.defined() ? probe.keys_valid.sizes() : torch::IntArrayRef{});
    prows = probe.rows.to(o.dtype(torch::kInt64)).contiguous();
    pkeys = probe.keys.to(o.dtype(torch::kInt64)).contiguous();
    pvalid = probe.keys_valid.to(o.dtype(torch::kBool)).contiguous();
    TORCH_CHECK(prows.numel() == 0 || prows.max().item<int64_t>() < t, "attention_core: probe row past the ", t, " tokens");
  }
  auto outs = AttentionCoreFunction::apply(q, k.to(q.scalar_type()).contiguous(), v.to(q.scalar_type()).contiguous(), s,
                                           lengths, valid, segments, mask.causal, query_block, prows, pkeys, pvalid);
  return {outs[0], outs[1], probe.rows.defined() ? outs[2] : torch::Tensor()};
}

}  // namespace modalign
