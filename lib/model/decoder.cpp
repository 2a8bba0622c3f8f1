#include "lib/model/decoder.h"

#include <limits>

#include "lib/model/fused_ops.h"
#include "lib/model/precision.h"
#include "lib/model/recompute.h"
#include "losses/attention_stats.h"

namespace modalign {
namespace nn = torch::nn;

DecoderContext make_decoder_context(const TextShapes& s, const torch::Tensor& attention_mask,
                                    const torch::Tensor& visual_mask, torch::ScalarType dtype,
                                    const torch::Tensor& prompt_mask, const torch::Tensor& position_ids) {
  TORCH_CHECK(attention_mask.dim() == 2 && visual_mask.sizes() == attention_mask.sizes(),
              "attention_mask and visual_mask must both be (B, T), got ", attention_mask.sizes(), " and ",
              visual_mask.sizes());
  const int64_t t = attention_mask.size(1);
  DecoderContext ctx;
  torch::Tensor real = attention_mask.to(torch::kBool);
  ctx.visual_mask = visual_mask.to(torch::kBool) & real;
  ctx.text_mask = real & ~ctx.visual_mask;
  if (prompt_mask.defined()) {
    TORCH_CHECK(prompt_mask.sizes() == attention_mask.sizes(), "prompt_mask must be (B, T) like attention_mask, got ",
                prompt_mask.sizes());
    ctx.text_mask = ctx.text_mask & prompt_mask.to(torch::kBool);
  }

  // RoPE at positions cumsum(mask) - 1, so right padding changes nothing at real positions; or the
  // caller's (3, B, T) M-RoPE positions.
  if (position_ids.defined()) {
    TORCH_CHECK(position_ids.dim() == 3 && position_ids.size(0) == 3 && position_ids.size(1) == attention_mask.size(0) &&
                    position_ids.size(2) == t,
                "position_ids must be (3, B, T) = (3, ", attention_mask.size(0), ", ", t, "), got ", position_ids.sizes());
    std::tie(ctx.cos, ctx.sin) = rope_tables(s, position_ids, dtype);
  } else {
    std::tie(ctx.cos, ctx.sin) = rope_tables(s, (real.to(torch::kInt64).cumsum(1) - 1).clamp_min(0), dtype);
  }
  ctx.mask = {true, real, {}};  // causal, padding keys excluded

  // Each sample's image positions in order, -1 past its count (counts differ: Qwen takes any image size): (B, Nv)
  torch::Tensor positions = query_rows(ctx.visual_mask);
  ctx.visual_slots = positions >= 0;
  ctx.visual_index = positions.clamp_min(0);
  return ctx;
}

std::pair<torch::Tensor, torch::Tensor> rope_tables(const TextShapes& s, const torch::Tensor& positions,
                                                    torch::ScalarType dtype) {
  // float64 angles, cast: float32 and float64 models see the same angles to their precision.
  const int64_t d = s.head_dim();
  auto f64 = torch::TensorOptions().dtype(torch::kFloat64).device(positions.device());
  torch::Tensor inv_freq = 1.0 / torch::pow(s.rope_theta, torch::arange(0, d, 2, f64) / static_cast<double>(d));
  torch::Tensor freqs;  // (B, T, d/2)
  if (positions.dim() == 3) {
    // M-RoPE: channel c of each half rotates by the t, h or w position of its mrope_section.
    TORCH_CHECK(s.mrope_section.size() == 3, "(3, B, T) position ids need rope_scaling.mrope_section");
    std::vector<int64_t> rows;
    for (int64_t r = 0; r < 3; ++r) rows.insert(rows.end(), static_cast<size_t>(s.mrope_section[r]), r);
    torch::Tensor row = torch::tensor(rows, torch::TensorOptions().dtype(torch::kInt64)).to(positions.device());
    freqs = positions.to(torch::kFloat64).index_select(0, row).permute({1, 2, 0}) * inv_freq;
  } else {
    freqs = positions.to(torch::kFloat64).unsqueeze(-1) * inv_freq;
  }
  torch::Tensor emb = torch::cat({freqs, freqs}, -1).unsqueeze(2);               // (B, T, 1, d)
  torch::ScalarType table_type = wide_type(dtype);
  return {emb.cos().to(table_type), emb.sin().to(table_type)};
}

torch::Tensor apply_rope(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin) {
  if (fused_ops_supported(x) && x.dim() == 4 && cos.dim() == 4 && cos.size(2) == 1 && cos.size(0) == x.size(0) &&
      cos.size(1) == x.size(1))
    return fused_rope(x, cos, sin);
  const int64_t half = x.size(-1) / 2;
  torch::Tensor rotated = torch::cat({-x.slice(-1, half), x.slice(-1, 0, half)}, -1);  // rotate_half
  const torch::ScalarType wide = wide_type(x.scalar_type());
  return (x.to(wide) * cos.to(wide) + rotated.to(wide) * sin.to(wide)).to(x.scalar_type());  // bf16: float tables
}

RmsNormImpl::RmsNormImpl(int64_t dim, double eps_)
    : eps(eps_), weight(register_parameter("weight", torch::ones({dim}))) {}

torch::Tensor RmsNormImpl::forward(const torch::Tensor& x) {
  if (fused_ops_supported(x) && weight.scalar_type() == x.scalar_type()) return fused_rms_norm(x, weight, eps);
  torch::ScalarType wide = wide_type(x.scalar_type());
  torch::Tensor h = x.to(wide);
  h = h * torch::rsqrt(h.pow(2).mean(-1, true) + eps);
  return weight * h.to(x.scalar_type());
}

DuplexAlignerImpl::DuplexAlignerImpl(int64_t head_dim)
    : gamma(register_parameter("gamma", torch::zeros({head_dim}))),
      wf(register_module("wf", Linear(head_dim, head_dim, false))) {
  torch::NoGradGuard no_grad;
  wf->weight.copy_(torch::eye(head_dim));
}

torch::Tensor DuplexAlignerImpl::forward(const torch::Tensor& k, const torch::Tensor& v, const DecoderContext& ctx) {
  TORCH_CHECK(k.dim() == 4 && v.sizes() == k.sizes(), "DuplexAligner expects k, v (B, G, T, d), got ", k.sizes(),
              " and ", v.sizes());
  auto rownorm = [](const torch::Tensor& x) { return x / x.norm(2, -1, true).clamp_min(1e-6); };
  torch::Tensor kn = rownorm(k);                                                   // (B, G, T, d)
  torch::Tensor text = ctx.text_mask.to(k.scalar_type()).view({k.size(0), 1, -1, 1});  // (B, 1, T, 1)
  torch::Tensor g = rownorm(torch::matmul((kn * text).transpose(-1, -2), v));      // (B, G, d, d)
  torch::Tensor aligned = wf(k + gamma * torch::matmul(kn, g));                    // (B, G, T, d)
  torch::Tensor vis = ctx.visual_mask.view({k.size(0), 1, -1, 1});
  return torch::where(vis, aligned, k);
}

LlamaAttentionImpl::LlamaAttentionImpl(const TextShapes& s, bool with_aligner)
    : heads(s.num_attention_heads),
      kv_heads(s.num_key_value_heads),
      head_dim(s.head_dim()),
      q_proj(register_module("q_proj", Linear(s.hidden_size, heads * head_dim, s.attention_bias))),
      k_proj(register_module("k_proj", Linear(s.hidden_size, kv_heads * head_dim, s.attention_bias))),
      v_proj(register_module("v_proj", Linear(s.hidden_size, kv_heads * head_dim, s.attention_bias))),
      o_proj(register_module("o_proj", Linear(heads * head_dim, s.hidden_size, false))) {
  if (with_aligner) aligner = register_module("aligner", DuplexAligner(head_dim));
}

torch::Tensor LlamaAttentionImpl::forward(const torch::Tensor& x, const DecoderContext& ctx, LayerTap* tap,
                                          const TapRequest& request, LayerCache* cache) {
  TORCH_CHECK(x.dim() == 3, "LlamaAttention expects (B, T, D), got ", x.sizes());
  const int64_t b = x.size(0), t = x.size(1);
  torch::Tensor q = apply_rope(q_proj(x).view({b, t, heads, head_dim}), ctx.cos, ctx.sin);     // (B, T, H, d)
  torch::Tensor k = apply_rope(k_proj(x).view({b, t, kv_heads, head_dim}), ctx.cos, ctx.sin);  // (B, T, G, d)
  torch::Tensor v = v_proj(x).view({b, t, kv_heads, head_dim});                                // (B, T, G, d)
  torch::ScalarType wide = wide_type(x.scalar_type());
  // Key sets whose attention mass a tap returns: image keys, then any requested ones: (B, T, 1+K)
  torch::Tensor sets;
  if (tap) {
    sets = ctx.visual_mask.to(wide).view({b, t, 1});
    if (request.key_masks.defined()) {
      TORCH_CHECK(request.key_masks.dim() == 3 && request.key_masks.size(0) == b && request.key_masks.size(1) == t,
                  "TapRequest.key_masks must be (B, T, K) = (", b, ", ", t, ", K), got ", request.key_masks.sizes());
      sets = torch::cat({sets, request.key_masks.to(wide)}, -1);
    }
  }
  auto fill_tap = [&](const torch::Tensor& mass) {  // mass (B, H, T, 1+K)
    tap->visual_mass = mass.select(-1, 0);           // (B, H, T)
    if (request.key_masks.defined()) tap->key_mass = mass.slice(-1, 1);
  };
  if (aligner) k = aligner(k.transpose(1, 2), v.transpose(1, 2), ctx).transpose(1, 2);  // on (B, G, T, d)
  if (cache) *cache = {k, v};
  // Blockwise attention (no T x T) unless this layer's tap must return per-key probabilities of every row.
  const bool probe = tap && request.probs_to_visual && request.probs_rows.defined() && !request.full_probs;
  const bool whole_maps = tap && (request.full_probs || (request.probs_to_visual && !probe));
  if (!whole_maps && attention_core_supported(q)) {
    AttentionProbe rows;
    if (probe) rows = {request.probs_rows, ctx.visual_index, ctx.visual_slots};
    AttentionCoreOutput core = attention_core(q, k, v, ctx.mask, sets, 0, rows);
    if (tap) fill_tap(core.mass);
    if (probe) tap->probs_to_visual = core.probs;            // (B, H, Q, Nv)
    return o_proj(core.out.view({b, t, heads * head_dim}));  // (B, T, D)
  }
  // Eager attention: per-key probabilities, other devices and dtypes.
  q = q.transpose(1, 2), k = k.transpose(1, 2), v = v.transpose(1, 2);  // (B, h, T, d)
  if (kv_heads != heads) {  // query head h reads key/value head h / (H / G)
    k = k.repeat_interleave(heads / kv_heads, 1);
    v = v.repeat_interleave(heads / kv_heads, 1);
  }
  torch::Tensor scores = torch::matmul(q, k.transpose(-1, -2)) / std::sqrt(static_cast<double>(head_dim));  // (B,H,T,T)
  scores = scores.to(wide);
  // Masked scores take the lowest finite value (not -inf), so no row of P is ever NaN.
  double lowest = wide == torch::kFloat64 ? std::numeric_limits<double>::lowest() : std::numeric_limits<float>::lowest();
  torch::Tensor allowed = ctx.mask.dense(b, t, scores.device());                             // (B, 1, T, T)
  torch::Tensor p = torch::softmax(scores.masked_fill(~allowed, lowest), -1);                // (B, H, T, T)
  if (tap) {
    AutocastScope wide_taps(MixedPrecision{p.device().type()});  // taps stay float32 under mixed precision
    fill_tap(torch::matmul(p, sets.unsqueeze(1)));                // (B, H, T, 1+K)
    if (request.probs_to_visual) {
      const int64_t nv = ctx.visual_index.size(1);
      torch::Tensor idx = ctx.visual_index.view({b, 1, 1, nv}).expand({b, heads, t, nv});
      tap->probs_to_visual = p.gather(-1, idx) * ctx.visual_slots.to(wide).view({b, 1, 1, nv});  // (B, H, T, Nv)
    }
    if (request.full_probs) tap->probs = p;
  }
  torch::Tensor out = torch::matmul(p.to(v.scalar_type()), v);       // (B, H, T, d)
  return o_proj(out.transpose(1, 2).reshape({b, t, heads * head_dim}));  // (B, T, D)
}

torch::Tensor LlamaAttentionImpl::decode(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                         const torch::Tensor& valid, LayerCache& cache) {
  TORCH_CHECK(x.dim() == 3 && x.size(1) == 1, "LlamaAttention::decode expects (B, 1, D), got ", x.sizes());
  const int64_t b = x.size(0), r = heads / kv_heads;
  torch::Tensor q = apply_rope(q_proj(x).view({b, 1, heads, head_dim}), cos, sin);     // (B, 1, H, d)
  torch::Tensor k = apply_rope(k_proj(x).view({b, 1, kv_heads, head_dim}), cos, sin);  // (B, 1, G, d)
  torch::Tensor v = v_proj(x).view({b, 1, kv_heads, head_dim});
  cache.k = torch::cat({cache.k, k}, 1);  // (B, L+1, G, d): a text token, which the aligner never changes
  cache.v = torch::cat({cache.v, v}, 1);
  TORCH_CHECK(valid.sizes() == torch::IntArrayRef({b, cache.k.size(1)}), "decode: valid must be (B, L+1) = (", b, ", ",
              cache.k.size(1), "), got ", valid.sizes());
  torch::ScalarType wide = wide_type(x.scalar_type());
  // Query head h reads key/value head h / r: (B, G, r, d) x (B, G, d, L+1)
  torch::Tensor scores = torch::matmul(q.view({b, kv_heads, r, head_dim}), cache.k.permute({0, 2, 3, 1})).to(wide) /
                         std::sqrt(static_cast<double>(head_dim));
  double lowest = wide == torch::kFloat64 ? std::numeric_limits<double>::lowest() : std::numeric_limits<float>::lowest();
  torch::Tensor p = torch::softmax(scores.masked_fill(~valid.view({b, 1, 1, -1}), lowest), -1);  // (B, G, r, L+1)
  torch::Tensor out = torch::matmul(p.to(v.scalar_type()), cache.v.transpose(1, 2));             // (B, G, r, d)
  return o_proj(out.reshape({b, 1, heads * head_dim}));
}

LlamaMlpImpl::LlamaMlpImpl(const TextShapes& s)
    : gate_proj(register_module("gate_proj",
                                Linear(s.hidden_size, s.intermediate_size, false))),
      up_proj(register_module("up_proj", Linear(s.hidden_size, s.intermediate_size, false))),
      down_proj(register_module("down_proj",
                                Linear(s.intermediate_size, s.hidden_size, false))) {}

torch::Tensor LlamaMlpImpl::forward(const torch::Tensor& x) {
  torch::Tensor gate = gate_proj(x), up = up_proj(x);
  return down_proj(fused_ops_supported(gate) ? fused_gated_silu(gate, up, 1.0) : torch::silu(gate) * up);
}

LlamaDecoderLayerImpl::LlamaDecoderLayerImpl(const TextShapes& s, bool aligner)
    : input_layernorm(register_module("input_layernorm", RmsNorm(s.hidden_size, s.rms_norm_eps))),
      post_attention_layernorm(register_module("post_attention_layernorm", RmsNorm(s.hidden_size, s.rms_norm_eps))),
      self_attn(register_module("self_attn", LlamaAttention(s, aligner))),
      mlp(register_module("mlp", LlamaMlp(s))) {}

torch::Tensor LlamaDecoderLayerImpl::forward(const torch::Tensor& x, const DecoderContext& ctx, LayerTap* tap,
                                             const TapRequest& request, LayerCache* cache) {
  torch::Tensor h = x + self_attn(input_layernorm(x), ctx, tap, request, cache);
  return h + mlp(post_attention_layernorm(h));
}

torch::Tensor LlamaDecoderLayerImpl::decode(const torch::Tensor& x, const torch::Tensor& cos, const torch::Tensor& sin,
                                            const torch::Tensor& valid, LayerCache& cache) {
  torch::Tensor h = x + self_attn->decode(input_layernorm(x), cos, sin, valid, cache);
  return h + mlp(post_attention_layernorm(h));
}

LanguageModelImpl::LanguageModelImpl(const TextShapes& s, bool aligner) : shapes(s) {
  auto model = register_module("model", std::make_shared<nn::Module>());
  embed_tokens = model->register_module("embed_tokens", nn::Embedding(s.vocab_size, s.hidden_size));
  layers = model->register_module("layers", nn::ModuleList());
  for (int64_t i = 0; i < s.num_hidden_layers; ++i) layers->push_back(LlamaDecoderLayer(s, aligner));
  norm = model->register_module("norm", RmsNorm(s.hidden_size, s.rms_norm_eps));
  if (!s.tie_word_embeddings)
    lm_head = register_module("lm_head", Linear(s.hidden_size, s.vocab_size, false));
}

torch::Tensor LanguageModelImpl::forward(const torch::Tensor& embeds, const DecoderContext& ctx,
                                         const TapRequest& request, std::vector<LayerTap>& taps, KvCache* cache) {
  TORCH_CHECK(embeds.dim() == 3 && embeds.size(2) == shapes.hidden_size, "LanguageModel expects embeds (B, T, ",
              shapes.hidden_size, "), got ", embeds.sizes());
  for (int64_t l : request.layers)
    TORCH_CHECK(l >= 0 && l < shapes.num_hidden_layers, "tap layer ", l, " is outside the ", shapes.num_hidden_layers,
                " decoder layers");
  torch::Tensor h = embeds;
  if (cache) cache->layers.assign(static_cast<size_t>(shapes.num_hidden_layers), {});
  for (int64_t l = 0; l < shapes.num_hidden_layers; ++l) {
    bool tapped = std::find(request.layers.begin(), request.layers.end(), l) != request.layers.end();
    LayerTap tap;
    tap.layer = l;
    if (gradient_checkpointing && !cache) {  // the layer's output and taps, recomputed in the backward pass
      std::shared_ptr<torch::nn::Module> layer = layers[l];
      BlockFn run = [layer, ctx, request, tapped, l](const torch::Tensor& x) {
        LayerTap t;
        t.layer = l;
        torch::Tensor out = layer->as<LlamaDecoderLayerImpl>()->forward(x, ctx, tapped ? &t : nullptr, request);
        return std::vector<torch::Tensor>{out, t.visual_mass, t.key_mass, t.probs_to_visual, t.probs};
      };
      std::vector<torch::Tensor> out = recompute_in_backward(run, h, layer->parameters());
      h = out[0], tap.visual_mass = out[1], tap.key_mass = out[2], tap.probs_to_visual = out[3], tap.probs = out[4];
    } else {
      h = layers[l]->as<LlamaDecoderLayerImpl>()->forward(h, ctx, tapped ? &tap : nullptr, request,
                                                          cache ? &cache->layers[static_cast<size_t>(l)] : nullptr);
    }
    if (tapped) taps.push_back(std::move(tap));
  }
  return norm(h);
}

torch::Tensor LanguageModelImpl::decode(const torch::Tensor& embeds, KvCache& cache) {
  TORCH_CHECK(embeds.dim() == 3 && embeds.size(1) == 1, "LanguageModel::decode expects (B, 1, D), got ", embeds.sizes());
  TORCH_CHECK(cache.layers.size() == static_cast<size_t>(shapes.num_hidden_layers), "decode needs a prefilled cache");
  auto [cos, sin] = rope_tables(shapes, cache.next_position.view({-1, 1}), embeds.scalar_type());  // (B, 1, 1, d)
  cache.valid = torch::cat({cache.valid, torch::ones({embeds.size(0), 1}, cache.valid.options())}, 1);
  torch::Tensor h = embeds;
  for (int64_t l = 0; l < shapes.num_hidden_layers; ++l)
    h = layers[l]->as<LlamaDecoderLayerImpl>()->decode(h, cos, sin, cache.valid, cache.layers[static_cast<size_t>(l)]);
  cache.next_position = cache.next_position + 1;
  return norm(h);
}

torch::Tensor LanguageModelImpl::logits(const torch::Tensor& hidden) {
  // In hidden's dtype: float32 under autocast, whose LM-head product is bf16.
  return (lm_head ? lm_head(hidden) : torch::matmul(hidden, embed_tokens->weight.t())).to(hidden.scalar_type());
}

}  // namespace modalign
