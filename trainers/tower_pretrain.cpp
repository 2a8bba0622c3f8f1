#include "trainers/tower_pretrain.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <numeric>
#include <random>

#include "lib/data/dataset.h"
#include "lib/data/image.h"
#include "lib/io/files.h"
#include "lib/io/weights.h"
#include "trainers/components.h"
#include "trainers/optimizer.h"

namespace modalign {
namespace {

// One sample of the pre-stage: its image file and objects in the tower's pixel coordinates.
struct TowerSample {
  std::string image, where;
  std::vector<SynthObject> objects;
};

int index_of(const std::vector<std::string>& names, const std::string& name, const std::string& where, const char* what) {
  auto it = std::find(names.begin(), names.end(), name);
  if (it == names.end()) throw DataError(fmt::format("{}: unknown {} '{}' in \"objects\"", where, what, name));
  return static_cast<int>(it - names.begin());
}

std::vector<TowerSample> read_samples(const RunConfig& config, const ImageOptions& options) {
  if (config.data.train_files.empty()) throw ConfigError("pretrain-tower: data.train_files is empty (name a synth captions.json)");
  const std::string& path = config.data.train_files.front();
  const std::vector<Example> examples = load_dataset(path);
  nlohmann::json records;
  try {
    records = nlohmann::json::parse(read_regular_file(path, 1LL << 32, "cannot open dataset"));
  } catch (const nlohmann::json::exception& e) {
    throw DataError(path + ": " + e.what());
  }
  if (!records.is_array() || records.size() != examples.size())
    throw DataError(path + ": pretrain-tower reads a JSON array (a synth captions.json), not JSON lines");
  std::vector<TowerSample> out;
  for (size_t i = 0; i < examples.size(); ++i) {
    const Example& e = examples[i];
    const nlohmann::json& r = records[i];
    if (e.images.size() != 1 || !r.contains("objects") || !r["objects"].is_array())
      throw DataError(describe(e) + ": pretrain-tower needs one image and \"objects\" per sample (modalign synth's "
                                    "captions.json)");
    const std::string image = (std::filesystem::path(config.data.image_folder) / e.images[0]).string();
    const auto [width, height] = read_image_size(image);
    const ImageGeometry g = image_geometry(width, height, options);
    TowerSample s{image, describe(e), {}};
    try {
      for (const auto& o : r["objects"]) {
        const auto centre = o.at("centre").get<std::vector<double>>();
        if (centre.size() != 2) throw DataError(describe(e) + ": an object's \"centre\" needs 2 numbers");
        s.objects.push_back({index_of(synth_shapes(), o.at("shape").get<std::string>(), s.where, "shape"),
                             index_of(synth_colours(), o.at("colour").get<std::string>(), s.where, "colour"),
                             centre[0] * g.scale_x - g.offset_x, centre[1] * g.scale_y - g.offset_y,
                             o.at("radius").get<double>() * g.scale_x});
      }
    } catch (const nlohmann::json::exception& ex) {
      throw DataError(describe(e) + ": bad \"objects\": " + ex.what());
    }
    out.push_back(std::move(s));
  }
  return out;
}

struct Heads {
  torch::nn::Linear colour{nullptr}, shape{nullptr};
};

struct TowerBatch {
  torch::Tensor pixels;          // (N, 3, S, S)
  torch::Tensor colour, shape;   // (N, P) int64
};

TowerBatch load_batch(const std::vector<TowerSample>& samples, const std::vector<int64_t>& indices,
                      const ImageOptions& options, int patch, const torch::Device& device) {
  std::vector<torch::Tensor> pixels, colour, shape;
  for (int64_t i : indices) {
    const TowerSample& s = samples[static_cast<size_t>(i)];
    pixels.push_back(preprocess_image(load_image(s.image), options));
    PatchLabels l = patch_labels(s.objects, static_cast<int>(options.size), patch);
    colour.push_back(l.colour), shape.push_back(l.shape);
  }
  return {torch::stack(pixels).to(device), torch::stack(colour).to(device), torch::stack(shape).to(device)};
}

TowerAccuracy evaluate(VisionTower& tower, Heads& heads, const std::vector<TowerSample>& samples, int64_t from,
                       const ImageOptions& options, int patch, const torch::Device& device, torch::ScalarType dtype) {
  torch::NoGradGuard no_grad;
  tower->eval();
  TowerAccuracy a;
  int64_t patches = 0;
  double colour_right = 0, shape_right = 0, object_colour = 0, object_shape = 0;
  for (int64_t start = from; start < static_cast<int64_t>(samples.size()); start += 64) {
    std::vector<int64_t> idx(static_cast<size_t>(std::min<int64_t>(64, static_cast<int64_t>(samples.size()) - start)));
    std::iota(idx.begin(), idx.end(), start);
    TowerBatch b = load_batch(samples, idx, options, patch, device);
    torch::Tensor features = tower(b.pixels.to(dtype));                               // (N, P, D)
    torch::Tensor colour = heads.colour(features).argmax(-1), shape = heads.shape(features).argmax(-1);  // (N, P)
    torch::Tensor object = b.colour > 0;
    patches += object.sum().item<int64_t>();
    colour_right += (colour == b.colour).logical_and(object).sum().item<double>();
    shape_right += (shape == b.shape).logical_and(object).sum().item<double>();
    for (int64_t n = 0; n < b.colour.size(0); ++n)  // an object = the patches labelled with its colour
      for (int64_t c = 1; c <= static_cast<int64_t>(synth_colours().size()); ++c) {
        torch::Tensor mine = b.colour[n] == c;
        if (!mine.any().item<bool>()) continue;
        ++a.objects;
        object_colour += std::get<0>(torch::mode(colour[n].index({mine}))).item<int64_t>() == c;
        object_shape += std::get<0>(torch::mode(shape[n].index({mine}))).item<int64_t>() ==
                        b.shape[n].index({mine})[0].item<int64_t>();
      }
  }
  tower->train();
  a.patch_colour = colour_right / std::max<int64_t>(1, patches);
  a.patch_shape = shape_right / std::max<int64_t>(1, patches);
  a.object_colour = object_colour / static_cast<double>(std::max<int64_t>(1, a.objects));
  a.object_shape = object_shape / static_cast<double>(std::max<int64_t>(1, a.objects));
  return a;
}

}  // namespace

PatchLabels patch_labels(const std::vector<SynthObject>& objects, int size, int patch) {
  TORCH_CHECK(patch > 0 && size % patch == 0, "patch_labels: image size ", size, " is not a multiple of the patch ", patch);
  const std::vector<int> mask = object_mask(objects, size);
  const int grid = size / patch;
  PatchLabels out{torch::zeros({grid * grid}, torch::kInt64), torch::zeros({grid * grid}, torch::kInt64)};
  std::vector<int> covered(objects.size() + 1);
  for (int gy = 0; gy < grid; ++gy)
    for (int gx = 0; gx < grid; ++gx) {
      std::fill(covered.begin(), covered.end(), 0);
      for (int y = gy * patch; y < (gy + 1) * patch; ++y)
        for (int x = gx * patch; x < (gx + 1) * patch; ++x) ++covered[static_cast<size_t>(mask[static_cast<size_t>(y) * size + x])];
      const auto best = std::max_element(covered.begin() + 1, covered.end());
      if (best == covered.end() || 4 * *best < patch * patch) continue;
      const SynthObject& o = objects[static_cast<size_t>(best - covered.begin() - 1)];
      out.colour[gy * grid + gx] = o.colour + 1;
      out.shape[gy * grid + gx] = o.shape + 1;
    }
  return out;
}

TowerPretrainResult pretrain_tower(const RunConfig& config, const std::string& out, int64_t holdout) {
  const TrainConfig& t = config.train;
  setup_runtime(t);
  VisionLanguageModel model = build_model(config);
  if (model->shapes.is_qwen()) throw ConfigError("pretrain-tower trains a CLIP tower (LLaVA family); this model is Qwen");
  const VisionShapes& v = model->shapes.vision;
  const ImageOptions options{v.image_size, config.data.image_aspect_ratio, config.data.image_mean, config.data.image_std};
  const std::vector<TowerSample> samples = read_samples(config, options);
  const int64_t train_count = static_cast<int64_t>(samples.size()) - holdout;
  if (holdout < 1 || train_count < t.per_device_train_batch_size)
    throw ConfigError(fmt::format("pretrain-tower: {} holds {} samples; it needs {} held out plus at least one batch ({})",
                                  config.data.train_files.front(), samples.size(), holdout, t.per_device_train_batch_size));
  const torch::Device device = model->parameters().front().device();
  const torch::ScalarType dtype = model->parameters().front().scalar_type();
  const int patch = static_cast<int>(v.patch_size);

  torch::manual_seed(t.seed);
  VisionTower tower = model->vision_tower;
  Heads heads{torch::nn::Linear(v.hidden_size, static_cast<int64_t>(synth_colours().size()) + 1),
              torch::nn::Linear(v.hidden_size, static_cast<int64_t>(synth_shapes().size()) + 1)};
  for (auto* head : {&heads.colour, &heads.shape}) {
    torch::NoGradGuard no_grad;
    (*head)->weight.normal_(0, model->shapes.initializer_range);
    (*head)->bias.zero_();
    (*head)->to(device, dtype);
  }
  std::vector<torch::Tensor> params = tower->parameters();
  for (auto* head : {&heads.colour, &heads.shape})
    for (const auto& p : (*head)->parameters()) params.push_back(p);
  const double lr = t.vision_lr.value_or(t.learning_rate);
  torch::optim::AdamW optimizer(params, torch::optim::AdamWOptions(lr).betas({t.adam_beta1, t.adam_beta2})
                                            .eps(t.adam_epsilon).weight_decay(t.weight_decay));
  const int64_t total = t.max_steps > 0 ? t.max_steps : 1000;
  std::mt19937_64 order_rng(t.seed);
  std::vector<int64_t> order(static_cast<size_t>(train_count));
  std::iota(order.begin(), order.end(), 0);
  size_t cursor = order.size();
  spdlog::info("pretrain-tower: {} steps of {} images ({} train, {} held out from {}), lr {:g}", total,
               t.per_device_train_batch_size, train_count, holdout, config.data.train_files.front(), lr);
  TowerPretrainResult result;
  const auto started = std::chrono::steady_clock::now();
  for (int64_t step = 0; step < total; ++step) {
    std::vector<int64_t> idx;
    while (static_cast<int64_t>(idx.size()) < t.per_device_train_batch_size) {
      if (cursor == order.size()) std::shuffle(order.begin(), order.end(), order_rng), cursor = 0;
      idx.push_back(order[cursor++]);
    }
    TowerBatch b = load_batch(samples, idx, options, patch, device);
    torch::Tensor features = tower(b.pixels.to(dtype));  // (N, P, D)
    torch::Tensor loss =
        torch::nn::functional::cross_entropy(heads.colour(features).flatten(0, 1), b.colour.flatten()) +
        torch::nn::functional::cross_entropy(heads.shape(features).flatten(0, 1), b.shape.flatten());
    for (auto& group : optimizer.param_groups())
      static_cast<torch::optim::AdamWOptions&>(group.options()).lr(lr * lr_multiplier(t, step, total));
    optimizer.zero_grad();
    loss.backward();
    if (t.max_grad_norm > 0) torch::nn::utils::clip_grad_norm_(params, t.max_grad_norm);
    optimizer.step();
    const double value = loss.item<double>();
    if (!std::isfinite(value))
      throw std::runtime_error(fmt::format("pretrain-tower: non-finite loss at step {}; lower train.learning_rate", step + 1));
    result.losses.push_back(value);
    const int64_t done = step + 1;
    if (done % config.logging.logging_steps == 0 || done == total) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      spdlog::info("pretrain-tower step {}/{} | loss {:.4f} | ETA {:.0f} s", done, total, value,
                   seconds / static_cast<double>(done) * static_cast<double>(total - done));
    }
    if ((t.eval_steps > 0 && done % t.eval_steps == 0) || done == total) {
      result.accuracy = evaluate(tower, heads, samples, train_count, options, patch, device, dtype);
      spdlog::info("pretrain-tower eval at step {}: patches colour {:.3f} shape {:.3f}; {} objects colour {:.3f} shape {:.3f}",
                   done, result.accuracy.patch_colour, result.accuracy.patch_shape, result.accuracy.objects,
                   result.accuracy.object_colour, result.accuracy.object_shape);
    }
  }
  result.steps = total;
  result.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
  save_weights(*model, out, {{"modalign.pretrain_tower", fmt::format("{} steps on {}", total, config.data.train_files.front())}});
  spdlog::info("pretrain-tower: wrote {} ({:.0f} s); name it as model.weights of the stage-1 config", out, result.seconds);
  return result;
}

}  // namespace modalign
