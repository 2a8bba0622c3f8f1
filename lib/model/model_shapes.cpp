#include "lib/model/model_shapes.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <stdexcept>

#include "lib/io/files.h"

namespace modalign {

ModelShapes preset_shapes(const std::string& name) {
  ModelShapes s;
  if (name == "tiny") return s;  // equals ../shared/golden's config
  if (name == "demo") {
    s.vision = {192, 768, 4, 4, 64, 8, 3, 1e-5};
    s.text = {512, 256, 688, 6, 8, 4, 1e-6, 10000.0, true};
    return s;
  }
  if (name == "small") {
    s.vision = {384, 1536, 6, 6, 224, 28, 3, 1e-5};
    s.text = {16000, 768, 2048, 12, 12, 4, 1e-6, 10000.0, true};
    return s;
  }
  if (name == "llava-1.5-7b") {
    s.vision = {1024, 4096, 24, 16, 336, 14, 3, 1e-5};
    s.text = {32064, 4096, 11008, 32, 32, 32, 1e-5, 10000.0, false};
    s.image_token_index = 32000;
    return s;
  }
  throw std::invalid_argument("unknown model preset '" + name + "' (known: tiny, demo, small, llava-1.5-7b)");
}

namespace {

template <class T>
void read(const nlohmann::json& j, const char* key, T& out) {
  if (j.contains(key) && !j[key].is_null()) out = j[key].get<T>();
}

}  // namespace

ModelShapes shapes_from_hf_config(const std::string& path) {
  const std::string text = read_regular_file(path, 16 * kMiB, "cannot open Hugging Face config");
  nlohmann::json j;
  ModelShapes s;
  try {
    j = nlohmann::json::parse(text);
    // Hugging Face defaults where a config leaves a field out (CLIPVisionConfig, LlamaConfig).
    s.vision = {768, 3072, 12, 12, 224, 32, 3, 1e-5};
    s.text = {32000, 4096, 11008, 32, 32, 32, 1e-6, 10000.0, false};
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
    read(t, "vocab_size", s.text.vocab_size);
    read(t, "hidden_size", s.text.hidden_size);
    read(t, "intermediate_size", s.text.intermediate_size);
    read(t, "num_hidden_layers", s.text.num_hidden_layers);
    read(t, "num_attention_heads", s.text.num_attention_heads);
    s.text.num_key_value_heads = s.text.num_attention_heads;
    read(t, "num_key_value_heads", s.text.num_key_value_heads);
    read(t, "rms_norm_eps", s.text.rms_norm_eps);
    read(t, "rope_theta", s.text.rope_theta);
    read(t, "tie_word_embeddings", s.text.tie_word_embeddings);
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

int64_t count_parameters(const ModelShapes& s) {
  const auto& v = s.vision;
  const auto& t = s.text;
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
                       2 * t.hidden_size + aligner;
  int64_t text = t.vocab_size * t.hidden_size * (t.tie_word_embeddings ? 1 : 2) + t.num_hidden_layers * text_layer +
                 t.hidden_size;
  return vision + projector + text;
}

}  // namespace modalign
