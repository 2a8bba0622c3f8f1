#include "trainers/probe.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

#include <filesystem>
#include <nlohmann/json.hpp>

#include "lib/io/safetensors.h"
#include "losses/attention_stats.h"

namespace modalign {
namespace {

constexpr int64_t kGroups = 3;  // image, system, text
constexpr int64_t kSets = 2;    // response, last_prompt

GroupShares shares(const torch::Tensor& mass, const torch::Tensor& keys) {  // (3), (3) means over samples
  GroupShares g;
  g.image = mass[0].item<double>(), g.system = mass[1].item<double>(), g.text = mass[2].item<double>();
  g.keys_image = keys[0].item<double>(), g.keys_system = keys[1].item<double>(), g.keys_text = keys[2].item<double>();
  g.indices = dominance_indices(g.image, g.keys_image, g.system + g.text, g.keys_system + g.keys_text);
  return g;
}

nlohmann::ordered_json to_json(const GroupShares& g) {
  return {{"image", g.image},           {"system", g.system},           {"text", g.text},
          {"keys_image", g.keys_image}, {"keys_system", g.keys_system}, {"keys_text", g.keys_text},
          {"mdi", g.indices.mdi},       {"aei_image", g.indices.aei_image}, {"aei_text", g.indices.aei_text}};
}

}  // namespace

torch::Tensor probe_key_groups(const torch::Tensor& attention_mask, const torch::Tensor& visual_mask) {
  TORCH_CHECK(attention_mask.dim() == 2 && visual_mask.sizes() == attention_mask.sizes(),
              "probe_key_groups expects attention_mask and visual_mask (B, T), got ", attention_mask.sizes(), " and ",
              visual_mask.sizes());
  torch::Tensor real = attention_mask.to(torch::kBool);
  torch::Tensor image = visual_mask.to(torch::kBool) & real;
  torch::Tensor before = image.to(torch::kInt64).cumsum(1) == 0;  // (B, T): no image token at or before t
  torch::Tensor system = real & ~image & before, text = real & ~image & ~before;
  return torch::stack({image, system, text}, -1).to(torch::kFloat32);  // (B, T, 3)
}

torch::Tensor last_prompt_queries(const torch::Tensor& labels) {
  torch::Tensor r = response_queries(labels);  // (B, T)
  return r & (r.to(torch::kInt64).cumsum(1) == 1);
}

ProbeReport probe(VisionLanguageModel& model, const Processor& processor, const std::vector<Example>& examples,
                  int64_t batch_size) {
  TORCH_CHECK(batch_size > 0, "probe: batch size must be positive, got ", batch_size);
  torch::NoGradGuard no_grad;
  const bool was_training = model->is_training();
  model->eval();
  const torch::Device device = model->parameters().front().device();
  const int64_t layers = model->shapes.text.num_hidden_layers;
  torch::Tensor mass = torch::zeros({layers, kSets, kGroups}, torch::kFloat64);  // sums of per-sample means
  torch::Tensor keys = torch::zeros_like(mass);
  torch::Tensor counted = torch::zeros({kSets}, torch::kFloat64);
  TapRequest request;
  for (int64_t l = 0; l < layers; ++l) request.layers.push_back(l);

  for (size_t start = 0; start < examples.size(); start += static_cast<size_t>(batch_size)) {
    std::vector<Sample> samples;
    for (size_t i = start; i < std::min(examples.size(), start + static_cast<size_t>(batch_size)); ++i)
      samples.push_back(processor.process(examples[i]));
    Batch b = processor.collate(samples).to(device);
    request.key_masks = probe_key_groups(b.attention_mask, b.visual_mask);  // (B, T, 3)
    ModelOutput out = model->forward(b.input_ids, b.attention_mask, b.pixel_values, request, {},
                                     prompt_mask_from_labels(b.labels), b.image_grid_thw);
    const torch::Tensor sets[kSets] = {response_queries(b.labels) & b.attention_mask.to(torch::kBool),
                                       last_prompt_queries(b.labels) & b.attention_mask.to(torch::kBool)};
    for (int64_t s = 0; s < kSets; ++s) {
      // (B, 1): samples with an image and at least one query of this set (the same for every layer)
      torch::Tensor keep = (sets[s].any(1) & has_image(b.visual_mask)).to(torch::kCPU, torch::kFloat64).unsqueeze(-1);
      counted[s] += keep.sum();
      for (const LayerTap& tap : out.taps) {
        GroupAttention g = group_attention(tap.key_mass, sets[s], request.key_masks);
        mass[tap.layer][s] += (g.mass.to(torch::kCPU, torch::kFloat64) * keep).sum(0);
        keys[tap.layer][s] += (g.keys.to(torch::kCPU, torch::kFloat64) * keep).sum(0);
      }
    }
    spdlog::debug("probe: {}/{} samples", start + samples.size(), examples.size());
  }
  if (was_training) model->train();

  ProbeReport report;
  report.samples = static_cast<int64_t>(counted[0].item<double>());
  if (report.samples == 0)
    throw DataError(fmt::format("probe: none of the {} samples holds an image and an answer token: nothing to measure",
                                examples.size()));
  for (int64_t l = 0; l < layers; ++l) {
    ProbeLayer p{l, {}, {}};
    p.response = shares(mass[l][0] / counted[0], keys[l][0] / counted[0]);
    p.last_prompt = shares(mass[l][1] / counted[1], keys[l][1] / counted[1]);
    report.layers.push_back(p);
  }
  return report;
}

void write_probe(const std::vector<ProbeReport>& reports, const std::string& out_dir) {
  std::filesystem::create_directories(out_dir);
  nlohmann::ordered_json all = nlohmann::ordered_json::array();
  std::string csv = "checkpoint,split,layer,queries,image,system,text,keys_image,keys_system,keys_text,mdi,aei_image,aei_text\n";
  for (const auto& r : reports) {
    nlohmann::ordered_json j = {{"checkpoint", r.checkpoint}, {"split", r.split}, {"samples", r.samples}};
    j["layers"] = nlohmann::ordered_json::array();
    for (const auto& l : r.layers) {
      j["layers"].push_back({{"layer", l.layer}, {"response", to_json(l.response)}, {"last_prompt", to_json(l.last_prompt)}});
      for (const auto& [name, g] : {std::pair{"response", &l.response}, std::pair{"last_prompt", &l.last_prompt}})
        csv += fmt::format("{},{},{},{},{:.6f},{:.6f},{:.6f},{:.3f},{:.3f},{:.3f},{:.6f},{:.6f},{:.6f}\n", r.checkpoint,
                           r.split, l.layer, name, g->image, g->system, g->text, g->keys_image, g->keys_system,
                           g->keys_text, g->indices.mdi, g->indices.aei_image, g->indices.aei_text);
    }
    all.push_back(j);
  }
  write_file_atomic(out_dir + "/probe.json", all.dump(1) + "\n");
  write_file_atomic(out_dir + "/probe.csv", csv);
}

std::string format_probe(const ProbeReport& r) {
  std::string s = fmt::format("{} on {} ({} samples with an image)\n", r.checkpoint, r.split, r.samples);
  s += fmt::format("{:>5} | {:>7} {:>7} {:>7} {:>7} {:>7} | {:>7} {:>7}\n", "layer", "VR", "system", "text", "MDI",
                   "AEI_img", "VR_last", "MDI_last");
  for (const auto& l : r.layers)
    s += fmt::format("{:>5} | {:>7.3f} {:>7.3f} {:>7.3f} {:>7.2f} {:>7.2f} | {:>7.3f} {:>7.2f}\n", l.layer,
                     l.response.image, l.response.system, l.response.text, l.response.indices.mdi,
                     l.response.indices.aei_image, l.last_prompt.image, l.last_prompt.indices.mdi);
  return s;
}

}  // namespace modalign
