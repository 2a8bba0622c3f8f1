#include "lib/data/processor.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <filesystem>

namespace modalign {

Batch Batch::to(torch::Device device) const {
  Batch b = *this;
  for (torch::Tensor* t : {&b.input_ids, &b.labels, &b.attention_mask, &b.visual_mask, &b.pixel_values, &b.region_target,
                           &b.image_grid_thw})
    if (t->defined()) *t = t->to(device);
  return b;
}

Processor::Processor(const DataConfig& config, const ModelInterface& model)
    : config_(config),
      model_(model),
      image_options_{model.image_size, config.image_aspect_ratio, config.image_mean, config.image_std},
      qwen_options_{model.qwen_patch_size, model.qwen_merge_size, model.qwen_temporal_patch_size, config.image_min_pixels,
                    config.image_max_pixels, config.image_mean, config.image_std} {
  if (config.tokenizer.empty()) throw DataError("data.tokenizer is not set (a SentencePiece .model, a tokenizer.json or its folder)");
  tokenizer_ = std::make_shared<Tokenizer>(config.tokenizer);
  if (config.chat_template == ChatTemplate::Qwen2VL)
    for (const char* piece : {"<|im_start|>", "<|im_end|>", "<|vision_start|>", "<|vision_end|>", "<|image_pad|>"})
      if (const int64_t id = tokenizer_->piece_to_id(piece); id < 0 || id == tokenizer_->unk_id())
        throw DataError(fmt::format("{}: chat_template qwen2_vl needs the token {}, which this tokenizer lacks (use the "
                                    "model's tokenizer.json)", config.tokenizer, piece));
  if (tokenizer_->vocab_size() > model.vocab_size)
    throw DataError(fmt::format("{}: the tokenizer has {} pieces but the model's vocabulary has {}", config.tokenizer,
                                tokenizer_->vocab_size(), model.vocab_size));
  const char* image = image_piece(config.chat_template);
  if (model.image_token_index < tokenizer_->vocab_size() && tokenizer_->piece_to_id(image) != model.image_token_index)
    throw DataError(fmt::format("{}: id {} (the model's image_token_index) is not this tokenizer's {} (a SentencePiece "
                                "model needs {} as a user-defined symbol at that id)",
                                config.tokenizer, model.image_token_index, image, image));
}

Sample Processor::process(const Example& example) const { return make_sample(example, false, nullptr); }

Sample Processor::prompt(const Example& example, const Sample* full) const { return make_sample(example, true, full); }

Sample Processor::make_sample(const Example& example, bool prompt_only, const Sample* full) const {
  Sample s;
  s.id = example.id;
  if (full) {
    s.pixel_values = full->pixel_values, s.region_target = full->region_target, s.image_grid_thw = full->image_grid_thw;
  } else if (!example.images.empty()) {
    load_pixels(example, s);
  }
  std::vector<int64_t> tokens(example.images.size(), model_.num_patches);
  if (s.image_grid_thw.defined()) {
    torch::Tensor merged = s.image_grid_thw.prod(1).div(model_.qwen_merge_size * model_.qwen_merge_size, "floor").contiguous();
    tokens.assign(merged.data_ptr<int64_t>(), merged.data_ptr<int64_t>() + merged.numel());
  }
  TokenizeOptions options{config_.chat_template, model_.image_token_index, tokens, config_.model_max_length, prompt_only};
  TokenizedExample t = tokenize_example(example, *tokenizer_, options);
  s.input_ids = std::move(t.input_ids), s.labels = std::move(t.labels);
  return s;
}

std::vector<int64_t> Processor::image_tokens(const Example& example) const {
  std::vector<int64_t> tokens(example.images.size(), model_.num_patches);
  if (!model_.qwen()) return tokens;
  for (size_t i = 0; i < tokens.size(); ++i) {
    try {
      auto [w, h] = read_image_size(image_path(example, i));
      auto [rh, rw] = smart_resize(h, w, qwen_options_);
      const int64_t cell = model_.qwen_patch_size * model_.qwen_merge_size;
      tokens[i] = (rh / cell) * (rw / cell);
    } catch (const DataError& e) {
      throw DataError(fmt::format("{}: {}", describe(example), e.what()));
    }
  }
  return tokens;
}

int64_t Processor::length(const Example& example) const {
  TokenizeOptions options{config_.chat_template, model_.image_token_index, image_tokens(example), config_.model_max_length,
                          false};
  return static_cast<int64_t>(tokenize_example(example, *tokenizer_, options).input_ids.size());
}

std::string Processor::image_path(const Example& example, size_t image) const {
  const std::string& file = example.images.at(image);
  namespace fs = std::filesystem;
  // Lexically (`..` and absolute paths), not through links: a folder may link to where its images live.
  fs::path folder = fs::absolute(config_.image_folder.empty() ? "." : config_.image_folder).lexically_normal();
  if (folder.filename().empty()) folder = folder.parent_path();  // "/data/" is "/data"
  const fs::path resolved = (folder / file).lexically_normal();
  const std::string path = (fs::path(config_.image_folder) / file).string();
  auto [end, ignored] = std::mismatch(folder.begin(), folder.end(), resolved.begin(), resolved.end());
  if (end != folder.end() && !config_.allow_paths_outside_image_folder)
    throw DataError(fmt::format("{}: image '{}' resolves to {}, outside data.image_folder {} (set "
                                "data.allow_paths_outside_image_folder: true to allow it)",
                                describe(example), file,
                                resolved.string(), folder.string()));
  return path;
}

void Processor::load_pixels(const Example& example, Sample& s) const {
  std::vector<torch::Tensor> pixels, grids;
  for (size_t i = 0; i < example.images.size(); ++i) {
    const std::string path = image_path(example, i);
    try {
      const RgbImage image = load_image(path);
      if (model_.qwen()) {
        QwenPixels px = preprocess_qwen_image(image, qwen_options_, example.regions);
        pixels.push_back(px.patches), grids.push_back(torch::tensor(px.grid_thw, torch::kInt64));
        if (!example.regions.empty()) s.region_target = px.region_target;
      } else {
        if (!example.regions.empty()) {
          const auto grid = static_cast<int64_t>(std::lround(std::sqrt(static_cast<double>(model_.num_patches))));
          s.region_target = region_target(example.regions, image.width, image.height, image_options_, grid);
        }
        pixels.push_back(preprocess_image(image, image_options_).unsqueeze(0));
      }
      if (s.region_target.defined() && s.region_target.sum().item<double>() <= 0)  // regions: one image only
        throw DataError(fmt::format("{}: no region lies inside the {}x{} image", path, image.width, image.height));
    } catch (const DataError& e) {
      throw DataError(fmt::format("{}: {}", describe(example), e.what()));
    }
  }
  s.pixel_values = torch::cat(pixels);
  if (!grids.empty()) s.image_grid_thw = torch::stack(grids);
}

Batch Processor::collate(const std::vector<Sample>& samples) const {
  return modalign::collate(samples, std::max<int64_t>(tokenizer_->pad_id(), 0), model_);
}

Batch collate(const std::vector<Sample>& samples, int64_t pad_id, const ModelInterface& model) {
  const int64_t image_token_index = model.image_token_index;
  Batch b;
  const int64_t n = static_cast<int64_t>(samples.size());
  int64_t t = 0, nv = model.qwen() ? 0 : model.num_patches;  // Nv: image tokens of the sample holding most
  for (const auto& s : samples) {
    t = std::max<int64_t>(t, static_cast<int64_t>(s.input_ids.size()));
    nv = std::max<int64_t>(nv, std::count(s.input_ids.begin(), s.input_ids.end(), image_token_index));
  }
  b.input_ids = torch::full({n, t}, pad_id, torch::kInt64);
  b.labels = torch::full({n, t}, -100, torch::kInt64);
  b.attention_mask = torch::zeros({n, t}, torch::kBool);
  b.region_target = torch::zeros({n, nv}, torch::kFloat32);
  std::vector<torch::Tensor> images, grids;
  for (int64_t i = 0; i < n; ++i) {
    const Sample& s = samples[i];
    const int64_t len = static_cast<int64_t>(s.input_ids.size());
    b.input_ids[i].slice(0, 0, len).copy_(torch::tensor(s.input_ids, torch::kInt64));
    b.labels[i].slice(0, 0, len).copy_(torch::tensor(s.labels, torch::kInt64));
    b.attention_mask[i].slice(0, 0, len).fill_(true);
    bool has_image_tokens = std::find(s.input_ids.begin(), s.input_ids.end(), image_token_index) != s.input_ids.end();
    TORCH_CHECK(has_image_tokens == s.pixel_values.defined(), "sample ", s.id,
                has_image_tokens ? " holds image tokens but no image" : " has an image but no image tokens");
    if (s.pixel_values.defined()) images.push_back(s.pixel_values);
    if (s.image_grid_thw.defined()) grids.push_back(s.image_grid_thw);
    if (s.region_target.defined()) b.region_target[i].slice(0, 0, s.region_target.size(0)).copy_(s.region_target);
    b.ids.push_back(s.id);
  }
  b.visual_mask = (b.input_ids == image_token_index) & b.attention_mask;
  if (model.qwen()) {
    const int64_t k = 3 * model.qwen_temporal_patch_size * model.qwen_patch_size * model.qwen_patch_size;
    TORCH_CHECK(grids.size() == images.size(), "every image of a Qwen batch needs its image_grid_thw");
    b.pixel_values = images.empty() ? torch::zeros({0, k}) : torch::cat(images);
    b.image_grid_thw = grids.empty() ? torch::zeros({0, 3}, torch::kInt64) : torch::cat(grids);
  } else {
    b.pixel_values = images.empty() ? torch::zeros({0, 3, model.image_size, model.image_size}) : torch::cat(images);
  }
  return b;
}

}  // namespace modalign
