// Hyper-parameters of the LLaVA architecture (vision tower, projector, decoder), the named presets,
// and reading them from a Hugging Face LLaVA config.json. Field names follow the Hugging Face configs.
#pragma once
#include <cstdint>
#include <string>

namespace modalign {

struct VisionShapes {  // CLIPVisionConfig
  int64_t hidden_size = 32;
  int64_t intermediate_size = 64;
  int64_t num_hidden_layers = 3;
  int64_t num_attention_heads = 2;
  int64_t image_size = 16;
  int64_t patch_size = 4;
  int64_t num_channels = 3;
  double layer_norm_eps = 1e-5;
  int64_t num_patches() const { return (image_size / patch_size) * (image_size / patch_size); }
};

struct TextShapes {  // LlamaConfig
  int64_t vocab_size = 64;
  int64_t hidden_size = 32;
  int64_t intermediate_size = 48;
  int64_t num_hidden_layers = 2;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

enum class ProjectorKind { Mlp2xGelu, Linear };

struct ModelShapes {  // LlavaConfig
  VisionShapes vision;
  TextShapes text;
  ProjectorKind projector = ProjectorKind::Mlp2xGelu;
  int64_t vision_feature_layer = -2;  // hidden_states index: -2 = output of the second-to-last layer
  int64_t image_token_index = 3;
  bool moda_aligner = false;
  double initializer_range = 0.02;  // std of the normal(0, std) initial weights (Hugging Face _init_weights)

  // Encoder layers that must run to reach vision_feature_layer (hidden_states[0] is the embeddings).
  int64_t vision_layers_used() const {
    return vision_feature_layer < 0 ? vision.num_hidden_layers + 1 + vision_feature_layer : vision_feature_layer;
  }
};

// "tiny" (tests, the golden file's shapes), "demo" (~10 M parameters), "small" (~100 M),
// "llava-1.5-7b" (the real model's shapes). Throws std::invalid_argument listing the presets.
ModelShapes preset_shapes(const std::string& name);

// Reads a Hugging Face LLaVA config.json (vision_config, text_config, projector_hidden_act,
// vision_feature_layer, image_token_index, initializer_range at the top level or in text_config); unset
// fields keep the Hugging Face defaults.
ModelShapes shapes_from_hf_config(const std::string& path);

// Rejects inconsistent shapes (heads not dividing the width, odd head dim, feature layer out of range).
void check_shapes(const ModelShapes& shapes);

// Number of parameters a model of these shapes has.
int64_t count_parameters(const ModelShapes& shapes);

}  // namespace modalign
