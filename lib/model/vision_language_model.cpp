#include "lib/model/vision_language_model.h"

#include <optional>

#include "lib/model/precision.h"

namespace modalign {
namespace nn = torch::nn;

ProjectorImpl::ProjectorImpl(ProjectorKind kind, int64_t vision_dim, int64_t text_dim)
    : linear_1(register_module("linear_1", Linear(vision_dim, text_dim))) {
  if (kind == ProjectorKind::Mlp2xGelu) linear_2 = register_module("linear_2", Linear(text_dim, text_dim));
}

torch::Tensor ProjectorImpl::forward(const torch::Tensor& x) {
  torch::Tensor h = linear_1(x);
  return linear_2 ? linear_2(torch::gelu(h)) : h;  // erf GELU, as projector_hidden_act "gelu"
}

VisionLanguageModelImpl::VisionLanguageModelImpl(const ModelShapes& s) : shapes(s) {
  check_shapes(s);
  if (s.is_qwen()) {
    visual = register_module("visual", QwenVisionModel(s.qwen_vision, s.family));
  } else {
    vision_tower = register_module("vision_tower", VisionTower(s.vision, s.vision_layers_used()));
    multi_modal_projector =
        register_module("multi_modal_projector", Projector(s.projector, s.vision.hidden_size, s.text.hidden_size));
  }
  language_model = register_module("language_model", LanguageModel(s.text, s.moda_aligner));
  initialize_weights(*this, s.initializer_range);
}

torch::Tensor VisionLanguageModelImpl::embed(const torch::Tensor& input_ids, const torch::Tensor& visual_mask,
                                             const torch::Tensor& pixel_values, const torch::Tensor& image_grid_thw) {
  // Image-token ids may lie outside the vocabulary (LLaVA-1.5: 32000); their embeddings are replaced.
  torch::Tensor ids = input_ids.masked_fill(visual_mask, 0);
  torch::Tensor embeds = language_model->embed_tokens(ids);  // (B, T, D)
  const int64_t image_tokens = visual_mask.sum().item<int64_t>();
  // A frozen tower (and projector) runs without autograd: no graph is kept for parameters nobody trains.
  auto trains = [](torch::nn::Module& m) {
    for (const auto& p : m.parameters())
      if (p.requires_grad()) return true;
    return false;
  };
  torch::Tensor features;
  if (visual) {  // Qwen: rows of patches of images of any size, their grids in image_grid_thw
    const int64_t images = image_grid_thw.defined() ? image_grid_thw.size(0) : 0;
    int64_t merged = 0;
    if (images > 0)
      for (int64_t m : merged_tokens_per_image(shapes.qwen_vision, image_grid_thw)) merged += m;
    TORCH_CHECK(image_tokens == merged, "the batch holds ", image_tokens, " image tokens but image_grid_thw describes ",
                images, " images of ", merged, " merged tokens in all");
    if (images == 0) return embeds;
    const bool merger_trains = trains(*visual->merger_ln_q) || trains(*visual->merger_fc1) || trains(*visual->merger_fc2);
    const bool tower_trains = trains(*visual->patch_embed_proj) || trains(*visual->blocks);
    torch::Tensor order, hidden;
    {
      torch::AutoGradMode grad(torch::GradMode::is_enabled() && tower_trains);
      hidden = visual->encode(pixel_values, image_grid_thw, order);  // (N, C)
    }
    torch::AutoGradMode grad(torch::GradMode::is_enabled() && (hidden.requires_grad() || merger_trains));
    features = visual->merge(hidden, order);  // (M, D)
    return embeds.masked_scatter(visual_mask.unsqueeze(-1), features.to(embeds.scalar_type()));
  }
  const int64_t np = shapes.vision.num_patches();
  const int64_t n = pixel_values.defined() ? pixel_values.size(0) : 0;
  TORCH_CHECK(image_tokens == n * np, "the batch holds ", image_tokens, " image tokens but ", n, " images of ", np,
              " patches each were given");
  if (n == 0) return embeds;
  {
    torch::AutoGradMode grad(torch::GradMode::is_enabled() && trains(*vision_tower));
    features = vision_tower(pixel_values);  // (N, P, Dv)
  }
  {
    torch::AutoGradMode grad(torch::GradMode::is_enabled() && (features.requires_grad() || trains(*multi_modal_projector)));
    features = multi_modal_projector(features);  // (N, P, D)
  }
  return embeds.masked_scatter(visual_mask.unsqueeze(-1), features.to(embeds.scalar_type()));
}

void VisionLanguageModelImpl::set_gradient_checkpointing(bool on) {
  language_model->gradient_checkpointing = on;
  if (vision_tower) vision_tower->gradient_checkpointing = on;
  if (visual) visual->gradient_checkpointing = on;
}

namespace {
// Opens the model's autocast scope for a forward on `like`'s device; none when the model has no autocast
// dtype, so that a caller's own autocast (an external trainer's) still applies inside.
void enter_autocast(std::optional<AutocastScope>& scope, const torch::Tensor& like, torch::ScalarType dtype) {
  if (dtype != torch::kFloat32) scope.emplace(MixedPrecision{like.device().type(), dtype});
}
}  // namespace

ModelOutput VisionLanguageModelImpl::forward(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                             const torch::Tensor& pixel_values, const TapRequest& taps,
                                             const torch::Tensor& logit_positions, const torch::Tensor& prompt_mask,
                                             const torch::Tensor& image_grid_thw) {
  TORCH_CHECK(input_ids.dim() == 2 && attention_mask.sizes() == input_ids.sizes(),
              "input_ids and attention_mask must both be (B, T), got ", input_ids.sizes(), " and ",
              attention_mask.sizes());
  std::optional<AutocastScope> autocast;
  enter_autocast(autocast, input_ids, autocast_dtype);
  ModelOutput out;
  torch::Tensor real = attention_mask.to(torch::kBool);
  out.visual_mask = (input_ids == shapes.image_token_index) & real;
  torch::Tensor embeds = embed(input_ids, out.visual_mask, pixel_values, image_grid_thw);
  torch::Tensor positions = shapes.is_qwen() ? qwen_position_ids(shapes, input_ids, real, image_grid_thw) : torch::Tensor();
  DecoderContext ctx =
      make_decoder_context(shapes.text, real, out.visual_mask, embeds.scalar_type(), prompt_mask, positions);
  torch::Tensor hidden = language_model(embeds, ctx, taps, out.taps);
  out.logits = language_model->logits(logit_positions.defined() ? hidden.index({logit_positions.to(torch::kBool)}) : hidden);
  return out;
}

torch::Tensor VisionLanguageModelImpl::prefill(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                               const torch::Tensor& pixel_values, KvCache& cache,
                                               const torch::Tensor& image_grid_thw) {
  TORCH_CHECK(input_ids.dim() == 2 && attention_mask.sizes() == input_ids.sizes(),
              "prefill: input_ids and attention_mask must both be (B, T), got ", input_ids.sizes(), " and ",
              attention_mask.sizes());
  std::optional<AutocastScope> autocast;
  enter_autocast(autocast, input_ids, autocast_dtype);
  torch::Tensor real = attention_mask.to(torch::kBool);
  TORCH_CHECK(real.any(1).all().item<bool>(), "prefill: every prompt needs at least one real token");
  torch::Tensor visual = (input_ids == shapes.image_token_index) & real;
  torch::Tensor embeds = embed(input_ids, visual, pixel_values, image_grid_thw);
  torch::Tensor positions = shapes.is_qwen() ? qwen_position_ids(shapes, input_ids, real, image_grid_thw) : torch::Tensor();
  DecoderContext ctx = make_decoder_context(shapes.text, real, visual, embeds.scalar_type(), {}, positions);
  std::vector<LayerTap> taps;
  torch::Tensor hidden = language_model->forward(embeds, ctx, {}, taps, &cache);  // (B, T, D)
  cache.valid = real;
  torch::Tensor count = real.sum(1);  // (B) real tokens
  // The next token's position: the running count of real tokens, or with M-RoPE one past the largest
  // position so far (a text token's t, h and w are equal, so 1-D RoPE at that position is the same).
  cache.next_position = positions.defined() ? positions.masked_fill(~real.unsqueeze(0), 0).amax({0, 2}) + 1 : count;
  torch::Tensor last = (count - 1).view({-1, 1, 1}).expand({-1, 1, hidden.size(2)});
  return language_model->logits(hidden.gather(1, last).squeeze(1));  // (B, V)
}

torch::Tensor VisionLanguageModelImpl::decode(const torch::Tensor& next_ids, KvCache& cache) {
  TORCH_CHECK(next_ids.dim() == 1 && next_ids.size(0) == cache.valid.size(0), "decode: next_ids must be (B) = (",
              cache.valid.size(0), "), got ", next_ids.sizes());
  std::optional<AutocastScope> autocast;
  enter_autocast(autocast, next_ids, autocast_dtype);
  torch::Tensor embeds = language_model->embed_tokens(next_ids.view({-1, 1}));  // (B, 1, D)
  return language_model->logits(language_model->decode(embeds, cache).squeeze(1));  // (B, V)
}

torch::Tensor qwen_position_ids(const ModelShapes& shapes, const torch::Tensor& input_ids,
                                const torch::Tensor& attention_mask, const torch::Tensor& image_grid_thw) {
  TORCH_CHECK(input_ids.dim() == 2 && attention_mask.sizes() == input_ids.sizes(),
              "input_ids and attention_mask must both be (B, T), got ", input_ids.sizes(), " and ", attention_mask.sizes());
  torch::Tensor ids = input_ids.to(torch::kCPU, torch::kInt64).contiguous();
  torch::Tensor real = attention_mask.to(torch::kCPU, torch::kBool).contiguous();
  const int64_t b = ids.size(0), t = ids.size(1), m = shapes.qwen_vision.spatial_merge_size;
  torch::Tensor grid = image_grid_thw.defined() ? image_grid_thw.to(torch::kCPU, torch::kInt64).contiguous()
                                                : torch::zeros({0, 3}, torch::kInt64);
  torch::Tensor out = torch::ones({3, b, t}, torch::kInt64);  // padding holds 1, as in Hugging Face
  auto o = out.accessor<int64_t, 3>();
  auto ia = ids.accessor<int64_t, 2>();
  auto ra = real.accessor<bool, 2>();
  auto ga = grid.accessor<int64_t, 2>();
  int64_t image = 0;
  for (int64_t i = 0; i < b; ++i) {
    int64_t next = 0;  // the next text position: one past the largest so far
    for (int64_t j = 0; j < t;) {
      if (!ra[i][j]) {
        ++j;
        continue;
      }
      if (ia[i][j] != shapes.image_token_index) {
        for (int64_t r = 0; r < 3; ++r) o[r][i][j] = next;
        ++next, ++j;
        continue;
      }
      TORCH_CHECK(image < grid.size(0), "sample ", i, " holds more image spans than image_grid_thw has rows (",
                  grid.size(0), ")");
      const int64_t gt = ga[image][0], gh = ga[image][1] / m, gw = ga[image][2] / m;
      ++image;
      TORCH_CHECK(j + gt * gh * gw <= t, "sample ", i, ": the image span at position ", j, " is shorter than its ",
                  gt * gh * gw, " merged tokens");
      // Qwen2.5-VL: an image's temporal index is 0 (seconds per grid step are 0 for images); Qwen2-VL: the frame.
      const bool frames = shapes.family == ModelFamily::Qwen2VL;
      int64_t largest = 0;
      for (int64_t f = 0; f < gt; ++f)
        for (int64_t y = 0; y < gh; ++y)
          for (int64_t x = 0; x < gw; ++x, ++j) {
            TORCH_CHECK(ra[i][j] && ia[i][j] == shapes.image_token_index, "sample ", i, ": position ", j,
                        " should be one of the image's ", gt * gh * gw, " merged tokens");
            o[0][i][j] = next + (frames ? f : 0), o[1][i][j] = next + y, o[2][i][j] = next + x;
            largest = std::max({largest, o[0][i][j], o[1][i][j], o[2][i][j]});
          }
      next = largest + 1;
    }
  }
  TORCH_CHECK(image == grid.size(0), "image_grid_thw has ", grid.size(0), " rows but the batch holds ", image,
              " image spans");
  return out.to(input_ids.device());
}

torch::Tensor prompt_mask_from_labels(const torch::Tensor& labels) {
  TORCH_CHECK(labels.dim() == 2, "labels must be (B, T), got ", labels.sizes());
  return (labels != -100).to(torch::kInt64).cumsum(1) == 0;
}

TextOnlyInputs without_image(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                             int64_t image_token_index) {
  TORCH_CHECK(input_ids.dim() == 2 && attention_mask.sizes() == input_ids.sizes(),
              "without_image: input_ids and attention_mask must both be (B, T), got ", input_ids.sizes(), " and ",
              attention_mask.sizes());
  torch::Tensor image = input_ids == image_token_index;
  return {input_ids.masked_fill(image, 0), attention_mask.to(torch::kBool) & ~image};
}

ExpandedInputs expand_image_tokens(const torch::Tensor& input_ids, const torch::Tensor& attention_mask,
                                   const torch::Tensor& labels, int64_t image_token_index, int64_t num_patches,
                                   int64_t pad_token_id) {
  TORCH_CHECK(input_ids.dim() == 2 && attention_mask.sizes() == input_ids.sizes() &&
                  labels.sizes() == input_ids.sizes(),
              "input_ids, attention_mask and labels must be (B, L), got ", input_ids.sizes(), ", ",
              attention_mask.sizes(), ", ", labels.sizes());
  torch::Tensor ids = input_ids.to(torch::kCPU, torch::kInt64), mask = attention_mask.to(torch::kCPU, torch::kBool),
                lab = labels.to(torch::kCPU, torch::kInt64);
  const int64_t b = ids.size(0), l = ids.size(1);
  std::vector<std::vector<int64_t>> out_ids(b), out_labels(b);
  int64_t longest = 0;
  auto ia = ids.accessor<int64_t, 2>();
  auto la = lab.accessor<int64_t, 2>();
  auto ma = mask.accessor<bool, 2>();
  for (int64_t i = 0; i < b; ++i) {
    int64_t images = 0;
    for (int64_t j = 0; j < l; ++j) {
      if (!ma[i][j]) continue;
      if (ia[i][j] == image_token_index) {
        TORCH_CHECK(++images == 1, "sample ", i, " holds more than one image token");
        out_ids[i].insert(out_ids[i].end(), num_patches, image_token_index);
        out_labels[i].insert(out_labels[i].end(), num_patches, -100);
      } else {
        out_ids[i].push_back(ia[i][j]);
        out_labels[i].push_back(la[i][j]);
      }
    }
    longest = std::max<int64_t>(longest, static_cast<int64_t>(out_ids[i].size()));
  }
  ExpandedInputs out{torch::full({b, longest}, pad_token_id, torch::kInt64), torch::zeros({b, longest}, torch::kInt64),
                     torch::full({b, longest}, -100, torch::kInt64)};
  for (int64_t i = 0; i < b; ++i) {
    int64_t n = static_cast<int64_t>(out_ids[i].size());
    if (n == 0) continue;
    out.input_ids[i].slice(0, 0, n).copy_(torch::tensor(out_ids[i], torch::kInt64));
    out.labels[i].slice(0, 0, n).copy_(torch::tensor(out_labels[i], torch::kInt64));
    out.attention_mask[i].slice(0, 0, n).fill_(1);
  }
  return out;
}

ModelShapes shapes_from_config(const ModelConfig& config) {
  ModelShapes shapes = config.hf_config.empty() ? preset_shapes(config.preset) : shapes_from_hf_config(config.hf_config);
  shapes.moda_aligner = config.moda_aligner;
  return shapes;
}

void initialize_weights(torch::nn::Module& model, double std) {
  torch::NoGradGuard no_grad;
  for (const auto& item : model.named_modules("", /*include_self=*/false)) {
    torch::nn::Module* m = item.value().get();
    if (dynamic_cast<DuplexAlignerImpl*>(m)) {  // gamma 0 and Wf = I: the identity
      auto* a = static_cast<DuplexAlignerImpl*>(m);
      a->gamma.zero_();
      a->wf->weight.copy_(torch::eye(a->wf->weight.size(0)));
    } else if (item.key().find(".aligner.") != std::string::npos) {
      continue;  // the aligner's own layers (set above)
    } else if (auto* l = dynamic_cast<LinearImpl*>(m)) {
      l->weight.normal_(0, std);
      if (l->bias.defined()) l->bias.zero_();
    } else if (auto* c = dynamic_cast<nn::Conv2dImpl*>(m)) {
      c->weight.normal_(0, std);
      if (c->bias.defined()) c->bias.zero_();
    } else if (auto* c3 = dynamic_cast<nn::Conv3dImpl*>(m)) {
      c3->weight.normal_(0, std);
    } else if (auto* qn = dynamic_cast<QwenVisionNormImpl*>(m)) {
      qn->weight.fill_(1);
      if (qn->bias.defined()) qn->bias.zero_();
    } else if (auto* e = dynamic_cast<nn::EmbeddingImpl*>(m)) {
      e->weight.normal_(0, std);
    } else if (auto* ce = dynamic_cast<ClipEmbeddingsImpl*>(m)) {
      ce->class_embedding.normal_(0, std);
    } else if (auto* ln = dynamic_cast<nn::LayerNormImpl*>(m)) {
      ln->weight.fill_(1);
      ln->bias.zero_();
    } else if (auto* rms = dynamic_cast<RmsNormImpl*>(m)) {
      rms->weight.fill_(1);
    }
  }
}

VisionLanguageModel build_model(const ModelConfig& config) {
  VisionLanguageModel model(shapes_from_config(config));
  static constexpr torch::ScalarType kTypes[] = {torch::kFloat32, torch::kBFloat16, torch::kFloat64};
  torch::Device device = config.device == DeviceKind::Cuda ? torch::Device(torch::kCUDA) : torch::Device(torch::kCPU);
  TORCH_CHECK(device.is_cpu() || torch::cuda::is_available(),
              "model.device is cuda but this LibTorch build has no CUDA device available");
  model->to(device, kTypes[static_cast<int>(config.dtype)]);
  return model;
}

}  // namespace modalign
