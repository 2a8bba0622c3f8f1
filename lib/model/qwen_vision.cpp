#include "lib/model/qwen_vision.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "lib/model/attention_core.h"
#include "lib/model/decoder.h"
#include "lib/model/precision.h"
#include "lib/model/recompute.h"

namespace modalign {
namespace nn = torch::nn;
namespace {

struct Grid {
  int64_t t, h, w;
};

std::vector<Grid> grids(const QwenVisionShapes& s, const torch::Tensor& image_grid_thw) {
  TORCH_CHECK(image_grid_thw.dim() == 2 && image_grid_thw.size(1) == 3, "image_grid_thw must be (images, 3), got ",
              image_grid_thw.sizes());
  torch::Tensor g = image_grid_thw.to(torch::kCPU, torch::kInt64).contiguous();
  auto a = g.accessor<int64_t, 2>();
  std::vector<Grid> out;
  for (int64_t i = 0; i < g.size(0); ++i) {
    Grid x{a[i][0], a[i][1], a[i][2]};
    TORCH_CHECK(x.t >= 1 && x.h >= 1 && x.w >= 1 && x.h % s.spatial_merge_size == 0 && x.w % s.spatial_merge_size == 0,
                "image ", i, ": grid (t, h, w) = (", x.t, ", ", x.h, ", ", x.w, ") must be positive with h and w multiples of ",
                "spatial_merge_size ", s.spatial_merge_size);
    out.push_back(x);
  }
  return out;
}

// Softmax attention of q, k, v (1, N, h, d) within each [segments[i], segments[i+1]) -> (1, N, h, d).
// Equal-length groups run as one batch.
torch::Tensor segment_attention(const torch::Tensor& q, const torch::Tensor& k, const torch::Tensor& v,
                                const std::vector<int64_t>& segments) {
  auto attend = [](const torch::Tensor& qs, const torch::Tensor& ks, const torch::Tensor& vs) {  // (S, L, h, d)
    if (attention_core_supported(qs)) return attention_core(qs, ks, vs).out;
    torch::ScalarType wide = wide_type(qs.scalar_type());
    torch::Tensor scores = torch::matmul(qs.transpose(1, 2), ks.permute({0, 2, 3, 1})).to(wide) /
                           std::sqrt(static_cast<double>(qs.size(-1)));             // (S, h, L, L)
    torch::Tensor p = torch::softmax(scores, -1).to(vs.scalar_type());
    return torch::matmul(p, vs.transpose(1, 2)).transpose(1, 2);                   // (S, L, h, d)
  };
  const int64_t n = q.size(1), len = segments.size() > 1 ? segments[1] - segments[0] : n;
  bool equal = true;
  for (size_t i = 1; i < segments.size(); ++i) equal &= segments[i] - segments[i - 1] == len;
  if (equal && len > 0 && n % len == 0) {
    const int64_t groups = n / len, h = q.size(2), d = q.size(3);
    return attend(q.view({groups, len, h, d}), k.view({groups, len, h, d}), v.view({groups, len, h, d})).reshape({1, n, h, d});
  }
  std::vector<torch::Tensor> parts;
  for (size_t i = 1; i < segments.size(); ++i) {
    const int64_t a = segments[i - 1], b = segments[i];
    parts.push_back(attend(q.slice(1, a, b), k.slice(1, a, b), v.slice(1, a, b)));
  }
  return torch::cat(parts, 1);
}

}  // namespace

std::vector<int64_t> merged_tokens_per_image(const QwenVisionShapes& s, const torch::Tensor& image_grid_thw) {
  std::vector<int64_t> out;
  for (const Grid& g : grids(s, image_grid_thw)) out.push_back(g.t * g.h * g.w / s.merge_unit());
  return out;
}

VisionLayout vision_layout(const QwenVisionShapes& s, const torch::Tensor& image_grid_thw) {
  const int64_t m = s.spatial_merge_size;
  // Merged tokens per window side; no windows = one window per frame (its order is the identity).
  const int64_t ws = s.window_size > 0 ? s.window_size / (m * s.patch_size) : 0;
  VisionLayout out;
  out.cu_seqlens = {0};
  out.cu_window_seqlens = {0};
  std::vector<torch::Tensor> ids, windows;
  int64_t merged_offset = 0;
  for (const Grid& g : grids(s, image_grid_thw)) {
    // (row, col) of each patch, in merge-block order: (h/m, m, w/m, m) -> (h/m, w/m, m, m)
    torch::Tensor rows = torch::arange(g.h).view({-1, 1}).expand({g.h, g.w});
    torch::Tensor cols = torch::arange(g.w).view({1, -1}).expand({g.h, g.w});
    auto blocks = [&](const torch::Tensor& x) { return x.reshape({g.h / m, m, g.w / m, m}).permute({0, 2, 1, 3}).flatten(); };
    ids.push_back(torch::stack({blocks(rows), blocks(cols)}, -1).repeat({g.t, 1}));  // (t h w, 2)
    for (int64_t f = 0; f < g.t; ++f) out.cu_seqlens.push_back(out.cu_seqlens.back() + g.h * g.w);
    const int64_t gh = g.h / m, gw = g.w / m;
    torch::Tensor index = torch::arange(g.t * gh * gw).view({g.t, gh, gw}) + merged_offset;
    if (ws == 0) {
      windows.push_back(index.flatten());
      for (int64_t f = 0; f < g.t; ++f) out.cu_window_seqlens.push_back(out.cu_window_seqlens.back() + g.h * g.w);
    } else {
      // Pad the merged grid to whole windows (as Hugging Face: by ws - n % ws, so a whole extra window
      // of padding when n divides), cut it into ws x ws windows, keep the real tokens of each.
      const int64_t ph = ws - gh % ws, pw = ws - gw % ws, nh = (gh + ph) / ws, nw = (gw + pw) / ws;
      torch::Tensor padded = torch::constant_pad_nd(index, {0, pw, 0, ph}, -1)
                                 .view({g.t, nh, ws, nw, ws})
                                 .permute({0, 1, 3, 2, 4})
                                 .reshape({g.t * nh * nw, ws * ws});  // (windows, ws^2)
      torch::Tensor real = padded >= 0;
      windows.push_back(padded.masked_select(real));
      torch::Tensor lengths = real.sum(1).contiguous();
      for (int64_t i = 0; i < lengths.size(0); ++i) {
        int64_t len = lengths[i].item<int64_t>();
        if (len > 0) out.cu_window_seqlens.push_back(out.cu_window_seqlens.back() + len * s.merge_unit());
      }
    }
    merged_offset += g.t * gh * gw;
  }
  TORCH_CHECK(!ids.empty(), "image_grid_thw holds no image");
  out.rot_pos_ids = torch::cat(ids, 0);
  out.window_index = torch::cat(windows, 0);
  return out;
}

QwenVisionNormImpl::QwenVisionNormImpl(int64_t dim, bool layer_norm_)
    : layer_norm(layer_norm_), weight(register_parameter("weight", torch::ones({dim}))) {
  if (layer_norm) bias = register_parameter("bias", torch::zeros({dim}));
}

torch::Tensor QwenVisionNormImpl::forward(const torch::Tensor& x) {
  torch::ScalarType wide = wide_type(x.scalar_type());
  torch::Tensor h = x.to(wide);
  if (layer_norm) return torch::layer_norm(h, {h.size(-1)}, weight.to(wide), bias.to(wide), 1e-6).to(x.scalar_type());
  h = h * torch::rsqrt(h.pow(2).mean(-1, true) + 1e-6);
  return weight * h.to(x.scalar_type());
}

QwenVisionBlockImpl::QwenVisionBlockImpl(const QwenVisionShapes& s, bool qwen2_)
    : heads(s.num_heads),
      qwen2(qwen2_),
      norm1(register_module("norm1", QwenVisionNorm(s.hidden_size, qwen2))),
      norm2(register_module("norm2", QwenVisionNorm(s.hidden_size, qwen2))) {
  auto attn = register_module("attn", std::make_shared<nn::Module>());
  qkv = attn->register_module("qkv", Linear(s.hidden_size, 3 * s.hidden_size));
  proj = attn->register_module("proj", Linear(s.hidden_size, s.hidden_size));
  auto mlp = register_module("mlp", std::make_shared<nn::Module>());
  if (qwen2) {
    fc1 = mlp->register_module("fc1", Linear(s.hidden_size, s.intermediate_size));
    fc2 = mlp->register_module("fc2", Linear(s.intermediate_size, s.hidden_size));
  } else {
    gate_proj = mlp->register_module("gate_proj", Linear(s.hidden_size, s.intermediate_size));
    up_proj = mlp->register_module("up_proj", Linear(s.hidden_size, s.intermediate_size));
    down_proj = mlp->register_module("down_proj", Linear(s.intermediate_size, s.hidden_size));
  }
}

torch::Tensor QwenVisionBlockImpl::forward(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                           const std::vector<int64_t>& segments) {
  const int64_t n = x.size(0), c = x.size(1), d = c / heads;
  torch::Tensor qkv_out = qkv(norm1(x)).view({1, n, 3, heads, d});
  torch::Tensor q = apply_rope(qkv_out.select(2, 0), cos, sin);  // (1, N, h, d)
  torch::Tensor k = apply_rope(qkv_out.select(2, 1), cos, sin);
  torch::Tensor v = qkv_out.select(2, 2);
  torch::Tensor h = x + proj(segment_attention(q, k, v, segments).reshape({n, c}));
  torch::Tensor y = norm2(h);
  if (qwen2) {
    y = fc1(y);
    return h + fc2(y * torch::sigmoid(1.702 * y));  // quick_gelu
  }
  return h + down_proj(torch::silu(gate_proj(y)) * up_proj(y));
}

QwenVisionModelImpl::QwenVisionModelImpl(const QwenVisionShapes& s, ModelFamily family_) : shapes(s), family(family_) {
  const bool qwen2 = family == ModelFamily::Qwen2VL;
  auto patch_embed = register_module("patch_embed", std::make_shared<nn::Module>());
  patch_embed_proj = patch_embed->register_module(
      "proj", nn::Conv3d(nn::Conv3dOptions(s.in_channels, s.hidden_size, {s.temporal_patch_size, s.patch_size, s.patch_size})
                             .stride({s.temporal_patch_size, s.patch_size, s.patch_size})
                             .bias(false)));
  blocks = register_module("blocks", nn::ModuleList());
  for (int64_t i = 0; i < s.depth; ++i) blocks->push_back(QwenVisionBlock(s, qwen2));
  auto merger = register_module("merger", std::make_shared<nn::Module>());
  const int64_t merged = s.hidden_size * s.merge_unit();
  merger_ln_q = merger->register_module("ln_q", QwenVisionNorm(s.hidden_size, qwen2));
  auto mlp = merger->register_module("mlp", std::make_shared<nn::Module>());
  merger_fc1 = mlp->register_module("0", Linear(merged, merged));
  merger_fc2 = mlp->register_module("2", Linear(merged, s.out_hidden_size));
}

torch::Tensor QwenVisionModelImpl::embed_patches(const torch::Tensor& pixel_values) {
  const torch::Tensor& w = patch_embed_proj->weight;  // (C, channels, t, p, p): the Conv3d is a GEMM per patch row
  TORCH_CHECK(pixel_values.dim() == 2 && pixel_values.size(1) == shapes.patch_dim(),
              "the Qwen vision tower expects pixel_values (patches, ", shapes.patch_dim(), "), got ", pixel_values.sizes());
  return torch::matmul(pixel_values.to(w.scalar_type()), w.view({w.size(0), -1}).t());  // (N, C)
}

torch::Tensor QwenVisionModelImpl::forward(const torch::Tensor& pixel_values, const torch::Tensor& image_grid_thw) {
  torch::Tensor order;
  torch::Tensor hidden = encode(pixel_values, image_grid_thw, order);
  return merge(hidden, order);
}

torch::Tensor QwenVisionModelImpl::encode(const torch::Tensor& pixel_values, const torch::Tensor& image_grid_thw,
                                          torch::Tensor& order) {
  VisionLayout layout = vision_layout(shapes, image_grid_thw);
  const int64_t n = layout.rot_pos_ids.size(0), mu = shapes.merge_unit(), c = shapes.hidden_size;
  TORCH_CHECK(pixel_values.size(0) == n, "pixel_values holds ", pixel_values.size(0), " patch rows but image_grid_thw ",
              "describes ", n);
  const auto dev = pixel_values.device();
  torch::Tensor x = embed_patches(pixel_values);
  order = layout.window_index.to(dev);
  // 2-D rotary angles: row * f for the first d/4 channels, col * f for the next, f = 10000^(-2i / (d/2)).
  const int64_t half = shapes.head_dim() / 2;
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(dev);
  torch::Tensor inv_freq = 1.0 / torch::pow(10000.0, torch::arange(0, half, 2, f64) / static_cast<double>(half));
  torch::Tensor angles = (layout.rot_pos_ids.to(f64).unsqueeze(-1) * inv_freq).view({n, half});  // (N, d/2)
  // Window-major order of the merged tokens (their mu patches move together).
  x = x.view({n / mu, mu, c}).index_select(0, order).view({n, c});
  angles = angles.view({n / mu, mu, half}).index_select(0, order).view({n, half});
  torch::Tensor emb = torch::cat({angles, angles}, -1).view({1, n, 1, 2 * half});  // (1, N, 1, d)
  torch::ScalarType table = wide_type(x.scalar_type());
  torch::Tensor cos = emb.cos().to(table), sin = emb.sin().to(table);
  for (int64_t b = 0; b < shapes.depth; ++b) {
    const auto& full = shapes.fullatt_block_indexes;
    bool windowed = shapes.window_size > 0 && std::find(full.begin(), full.end(), b) == full.end();
    std::shared_ptr<torch::nn::Module> block = blocks[b];
    std::vector<int64_t> segments = windowed ? layout.cu_window_seqlens : layout.cu_seqlens;
    auto run = [block, cos, sin, segments](const torch::Tensor& in) {
      return block->as<QwenVisionBlockImpl>()->forward(in, cos, sin, segments);
    };
    x = run_block(gradient_checkpointing, run, x, *block);
  }
  return x;
}

torch::Tensor QwenVisionModelImpl::merge(const torch::Tensor& hidden, const torch::Tensor& order) {
  const int64_t mu = shapes.merge_unit(), c = shapes.hidden_size;
  torch::Tensor merged = merger_ln_q(hidden).view({hidden.size(0) / mu, mu * c});  // (M, 4C)
  torch::Tensor out = merger_fc2(torch::gelu(merger_fc1(merged)));                // (M, out)
  return out.index_select(0, torch::argsort(order));                             // raster order again
}

}  // namespace modalign
