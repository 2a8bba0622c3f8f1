#include "lib/model/model_shapes.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <stdexcept>

#include "lib/io/files.h"

namespace modalign {

ModelShapes preset_shapes(const std::string& name) {
  ModelShapes s;
  if (name == "tiny") return s;  // equals the golden file's config (tests/golden/README.md)
  if (name == "demo") {
    s.vision = {192, 768, 4, 4, 64, 8, 3, 1e-5};
    s.text = {512, 256, 688, 6, 8, 4, 1e-6, 10000.0, true, false, {}};
    return s;
  }
  if (name == "small") {
    s.vision = {384, 1536, 6, 6, 224, 28, 3, 1e-5};
    s.text = {16000, 768, 2048, 12, 12, 4, 1e-6, 10000.0, true, false, {}};
    return s;
  }
  if (name == "llava-1.5-7b") {
    s.vision = {1024, 4096, 24, 16, 336, 14, 3, 1e-5};
    s.text = {32064, 4096, 11008, 32, 32, 32, 1e-5, 10000.0, false, false, {}};
    s.image_token_index = 32000;
    return s;
  }
  if (name == "qwen2_5_vl_tiny" || name == "qwen2_vl_tiny") {  // tests/golden/QWEN.md's config
    s.family = name == "qwen2_vl_tiny" ? ModelFamily::Qwen2VL : ModelFamily::Qwen2_5VL;
    if (s.family == ModelFamily::Qwen2VL) s.qwen_vision.window_size = 0, s.qwen_vision.fullatt_block_indexes = {};
    s.text = {96, 32, 64, 2, 4, 2, 1e-6, 1e6, false, true, {1, 1, 2}};
    s.image_token_index = 5;
    return s;
  }
  if (name == "qwen2_5_vl_demo") {  // the `demo` decoder with the real Qwen vocabulary (151,936 rows, tied) and a
    s.family = ModelFamily::Qwen2_5VL;  // Qwen2.5-VL tower: 8-pixel patches, 2 x 2 windows
    s.qwen_vision = {4, 192, 512, 4, 3, 8, 2, 2, 32, {1, 3}, 256};
    s.text = {151936, 256, 688, 6, 8, 4, 1e-6, 1e6, true, true, {4, 6, 6}};
    s.image_token_index = 151655;  // <|image_pad|>
    return s;
  }
  if (name == "qwen2_5_vl_3b" || name == "qwen2_5_vl_7b") {  // the released models' config.json shapes
    s.family = ModelFamily::Qwen2_5VL;
    const bool big = name == "qwen2_5_vl_7b";
    s.qwen_vision = {32, 1280, 3420, 16, 3, 14, 2, 2, 112, {7, 15, 23, 31}, big ? 3584 : 2048};
    s.text = big ? TextShapes{152064, 3584, 18944, 28, 28, 4, 1e-6, 1e6, false, true, {16, 24, 24}}
                 : TextShapes{151936, 2048, 11008, 36, 16, 2, 1e-6, 1e6, true, true, {16, 24, 24}};
    s.image_token_index = 151655;
    return s;
  }
  throw std::invalid_argument("unknown model preset '" + name +
                              "' (known: tiny, demo, small, llava-1.5-7b, qwen2_5_vl_tiny, qwen2_vl_tiny, "
                              "qwen2_5_vl_demo, qwen2_5_vl_3b, qwen2_5_vl_7b)");
}

namespace {

template <class T>
void read(const nlohmann::json& j, const char* key, T& out) {
  if (j.contains(key) && !j[key].is_null()) out = j[key].get<T>();
}

void read_text(const nlohmann::json& t, TextShapes& s) {
  read(t, "vocab_size", s.vocab_size);
  read(t, "hidden_size", s.hidden_size);
  read(t, "intermediate_size", s.intermediate_size);
  read(t, "num_hidden_layers", s.num_hidden_layers);
  if (t.contains("num_attention_heads")) {
    read(t, "num_attention_heads", s.num_attention_heads);
    s.num_key_value_heads = s.num_attention_heads;
  }
  read(t, "num_key_value_heads", s.num_key_value_heads);
  read(t, "rms_norm_eps", s.rms_norm_eps);
  read(t, "rope_theta", s.rope_theta);
  read(t, "tie_word_embeddings", s.tie_word_embeddings);
}

// Qwen2-VL / Qwen2.5-VL: the text fields at the top level (older transformers) or in text_config.
void read_qwen(const nlohmann::json& j, ModelShapes& s) {
  const nlohmann::json v = j.value("vision_config", nlohmann::json::object());
  QwenVisionShapes& q = s.qwen_vision;
  read(v, "depth", q.depth);
  read(v, "num_heads", q.num_heads);
  read(v, "in_channels", q.in_channels);
  read(v, "in_chans", q.in_channels);
  read(v, "patch_size", q.patch_size);
  read(v, "temporal_patch_size", q.temporal_patch_size);
  read(v, "spatial_merge_size", q.spatial_merge_size);
  if (s.family == ModelFamily::Qwen2VL) {  // embed_dim is the width, hidden_size the merger's output
    read(v, "embed_dim", q.hidden_size);
    read(v, "hidden_size", q.out_hidden_size);
    double ratio = 4;
    read(v, "mlp_ratio", ratio);
    q.intermediate_size = static_cast<int64_t>(q.hidden_size * ratio);
    q.window_size = 0, q.fullatt_block_indexes.clear();
    std::string act = v.value("hidden_act", std::string("quick_gelu"));
    if (act != "quick_gelu") throw std::runtime_error("vision_config.hidden_act '" + act + "' is not supported (qwen2_vl: quick_gelu)");
  } else {
    read(v, "hidden_size", q.hidden_size);
    read(v, "intermediate_size", q.intermediate_size);
    read(v, "out_hidden_size", q.out_hidden_size);
    read(v, "window_size", q.window_size);
    read(v, "fullatt_block_indexes", q.fullatt_block_indexes);
    std::string act = v.value("hidden_act", std::string("silu"));
    if (act != "silu") throw std::runtime_error("vision_config.hidden_act '" + act + "' is not supported (qwen2_5_vl: silu)");
  }
  s.text = {152064, 3584, 18944, 28, 28, 4, 1e-6, 1e6, false, true, {16, 24, 24}};
  read_text(j, s.text);
  const nlohmann::json t = j.value("text_config", nlohmann::json::object());
  read_text(t, s.text);
  for (const nlohmann::json* src : {&j, &t})
    if (src->contains("rope_scaling") && (*src)["rope_scaling"].is_object())
      read((*src)["rope_scaling"], "mrope_section", s.text.mrope_section);
  s.image_token_index = 151655;
  for (const nlohmann::json* src : {&j, &t}) {
    read(*src, "image_token_id", s.image_token_index);
    read(*src, "initializer_range", s.initializer_range);
  }
}

}  // namespace

ModelShapes shapes_from_hf_config(const std::string& path) {
  const std::string text = read_regular_file(path, 16 * kMiB, "cannot open Hugging Face config");
  nlohmann::json j;
  ModelShapes s;
  try {
    j = nlohmann::json::parse(text);
    const std::string type = j.value("model_type", std::string("llava"));
    if (type == "qwen2_vl" || type == "qwen2_5_vl") {
      s.family = type == "qwen2_vl" ? ModelFamily::Qwen2VL : ModelFamily::Qwen2_5VL;
      read_qwen(j, s);
      check_shapes(s);
      return s;
    }
    if (type != "llava") throw std::runtime_error("model_type '" + type + "' is not supported (llava, qwen2_vl, qwen2_5_vl)");
    // Hugging Face defaults where a config leaves a field out (CLIPVisionConfig, LlamaConfig).
    s.vision = {768, 3072, 12, 12, 224, 32, 3, 1e-5};
    s.text = {32000, 4096, 11008, 32, 32, 32, 1e-6, 10000.0, false, false, {}};
    s.image_token_index = 32000;
    const nlohmann::json v = j.value("vision_config", nlohmann::json::object());
    read(v, "hidden_size", s.vision.hidden_size);
    read(v, "intermediate_size", s.vision.intermediate_size);
    read(v, "num_hidden_layers", s.vision.num_hidden_layers);
    read(v, "num_attention_heads", s.vision.num_attention_heads);
    read(v, "image_size", s.vision.image_size);
    read(v, "patch_size", s.vision.patch_size);
    read(v, "num_channels", s.vision.num_channels);
    read(v, "layer_norm_eps", s.vision.layer_norm_eps);
    const nlohmann::json t = j.value("text_config", nlohmann::json::object());
    read_text(t, s.text);
    read(j, "vision_feature_layer", s.vision_feature_layer);
    read(j, "image_token_index", s.image_token_index);
    read(t, "initializer_range", s.initializer_range);
    read(j, "initializer_range", s.initializer_range);
    std::string act = j.value("projector_hidden_act", std::string("gelu"));
    if (act != "gelu") throw std::runtime_error("projector_hidden_act '" + act + "' is not supported (only gelu)");
    std::string select = j.value("vision_feature_select_strategy", std::string("default"));
    if (select != "default")
      throw std::runtime_error("vision_feature_select_strategy '" + select + "' is not supported (only default)");
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  } catch (const std::runtime_error& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  check_shapes(s);
  return s;
}

void check_shapes(const ModelShapes& s) {
  auto require = [](bool ok, const std::string& msg) {
    if (!ok) throw std::invalid_argument("model shapes: " + msg);
  };
  require(s.vision.hidden_size % s.vision.num_attention_heads == 0, "vision hidden_size not divisible by heads");
  require(s.vision.image_size % s.vision.patch_size == 0, "vision image_size not divisible by patch_size");
  require(s.text.hidden_size % s.text.num_attention_heads == 0, "text hidden_size not divisible by heads");
  int64_t section = 0;
  for (int64_t c : s.text.mrope_section) section += c;
  require(s.text.mrope_section.empty() || (s.text.mrope_section.size() == 3 && 2 * section == s.text.head_dim()),
          fmt::format("rope_scaling.mrope_section must be 3 numbers adding up to half the head dim ({})",
                      s.text.head_dim() / 2));
  if (s.is_qwen()) {
    const QwenVisionShapes& q = s.qwen_vision;
    require(q.hidden_size % q.num_heads == 0 && q.head_dim() % 4 == 0,
            "vision hidden_size / num_heads must be a multiple of 4 (2-D rotary positions)");
    require(q.out_hidden_size == s.text.hidden_size, "vision out_hidden_size must equal the text hidden_size");
    require(s.text.mrope_section.size() == 3, "a Qwen model needs rope_scaling.mrope_section");
    require(q.window_size == 0 || q.window_size % (q.patch_size * q.spatial_merge_size) == 0,
            "vision window_size must be a multiple of patch_size x spatial_merge_size");
    for (int64_t b : q.fullatt_block_indexes)
      require(b >= 0 && b < q.depth, fmt::format("fullatt_block_indexes holds {}, outside the {} blocks", b, q.depth));
    require(s.image_token_index >= 0 && s.image_token_index < s.text.vocab_size, "image_token_id out of range");
    require(s.initializer_range > 0, "initializer_range must be positive");
    return;
  }
  require(s.text.num_attention_heads % s.text.num_key_value_heads == 0,
          "num_attention_heads not a multiple of num_key_value_heads");
  require(s.text.head_dim() % 2 == 0, "text head dim must be even for RoPE");
  require(s.vision_layers_used() >= 1 && s.vision_layers_used() <= s.vision.num_hidden_layers,
          fmt::format("vision_feature_layer {} is outside the {} vision layers", s.vision_feature_layer,
                      s.vision.num_hidden_layers));
  require(s.image_token_index >= 0 && s.image_token_index < s.text.vocab_size + 1024,
          "image_token_index out of range");
  require(s.initializer_range > 0, "initializer_range must be positive");
}

ParameterCounts parameter_counts(const ModelShapes& s) {
  const auto& v = s.vision;
  const auto& t = s.text;
  const auto& q = s.qwen_vision;
  const int64_t qd = q.hidden_size, qi = q.intermediate_size, merged = qd * q.merge_unit();
  // Qwen2-VL blocks: LayerNorms with bias, fc1/fc2; Qwen2.5-VL: RMSNorms, gate/up/down with bias.
  const int64_t qwen_block = 3 * qd * qd + 3 * qd + qd * qd + qd +
                             (s.family == ModelFamily::Qwen2VL ? 2 * qd * qi + qi + qd + 4 * qd : 3 * qd * qi + 2 * qi + qd + 2 * qd);
  const int64_t qwen_tower = qd * q.patch_dim() + q.depth * qwen_block;
  const int64_t qwen_merger = (s.family == ModelFamily::Qwen2VL ? 2 * qd : qd) + merged * merged + merged +
                              merged * q.out_hidden_size + q.out_hidden_size;
  int64_t vis_layer = 4 * (v.hidden_size * v.hidden_size + v.hidden_size) + 2 * v.hidden_size * v.intermediate_size +
                      v.intermediate_size + v.hidden_size + 4 * v.hidden_size;
  int64_t vision = v.hidden_size * v.num_channels * v.patch_size * v.patch_size + v.hidden_size +
                   (v.num_patches() + 1) * v.hidden_size + 4 * v.hidden_size + v.num_hidden_layers * vis_layer;
  int64_t projector = s.projector == ProjectorKind::Linear
                          ? v.hidden_size * t.hidden_size + t.hidden_size
                          : v.hidden_size * t.hidden_size + t.hidden_size + t.hidden_size * t.hidden_size + t.hidden_size;
  int64_t kv = t.num_key_value_heads * t.head_dim();
  int64_t aligner = s.moda_aligner ? t.head_dim() * t.head_dim() + t.head_dim() : 0;
  int64_t text_layer = 2 * t.hidden_size * t.hidden_size + 2 * t.hidden_size * kv + 3 * t.hidden_size * t.intermediate_size +
                       2 * t.hidden_size + aligner + (t.attention_bias ? t.hidden_size + 2 * kv : 0);
  int64_t text = t.vocab_size * t.hidden_size * (t.tie_word_embeddings ? 1 : 2) + t.num_hidden_layers * text_layer +
                 t.hidden_size;
  return s.is_qwen() ? ParameterCounts{qwen_tower, qwen_merger, text} : ParameterCounts{vision, projector, text};
}

int64_t count_parameters(const ModelShapes& s) { return parameter_counts(s).total(); }

}  // namespace modalign
