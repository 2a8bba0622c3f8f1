// Hyper-parameters of the two model families (LLaVA: CLIP tower, projector, LLaMA decoder; Qwen2-VL /
// Qwen2.5-VL: Qwen vision tower with its patch merger, Qwen2 decoder with M-RoPE), the named presets,
// and reading them from a Hugging Face config.json. Field names follow the Hugging Face configs.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

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

struct QwenVisionShapes {  // Qwen2_5_VLVisionConfig (Qwen2VLVisionConfig: embed_dim, mlp_ratio)
  int64_t depth = 4;
  int64_t hidden_size = 32;
  int64_t intermediate_size = 48;
  int64_t num_heads = 2;
  int64_t in_channels = 3;
  int64_t patch_size = 4;
  int64_t temporal_patch_size = 2;
  int64_t spatial_merge_size = 2;
  int64_t window_size = 16;                        // pixels; 0 = no window attention (Qwen2-VL)
  std::vector<int64_t> fullatt_block_indexes{1, 3};  // blocks with full attention; the others use windows
  int64_t out_hidden_size = 32;                    // the merger's output width (the decoder's)
  int64_t head_dim() const { return hidden_size / num_heads; }
  int64_t patch_dim() const { return in_channels * temporal_patch_size * patch_size * patch_size; }
  int64_t merge_unit() const { return spatial_merge_size * spatial_merge_size; }
};

struct TextShapes {  // LlamaConfig, Qwen2Config
  int64_t vocab_size = 64;
  int64_t hidden_size = 32;
  int64_t intermediate_size = 48;
  int64_t num_hidden_layers = 2;
  int64_t num_attention_heads = 4;
  int64_t num_key_value_heads = 2;
  double rms_norm_eps = 1e-6;
  double rope_theta = 10000.0;
  bool tie_word_embeddings = false;
  bool attention_bias = false;          // q/k/v projections with bias (Qwen2)
  std::vector<int64_t> mrope_section;   // M-RoPE channels per (t, h, w) in half a head; empty = 1-D RoPE
  int64_t head_dim() const { return hidden_size / num_attention_heads; }
};

enum class ProjectorKind { Mlp2xGelu, Linear };

// Llava: `vision` + projector; Qwen2VL (LayerNorm blocks, quick-GELU, no windows) and Qwen2_5VL
// (RMSNorm blocks, SwiGLU, window attention): `qwen_vision`, its merger being the projector.
enum class ModelFamily { Llava, Qwen2VL, Qwen2_5VL };

struct ModelShapes {  // LlavaConfig, Qwen2VLConfig, Qwen2_5_VLConfig
  ModelFamily family = ModelFamily::Llava;
  VisionShapes vision;
  QwenVisionShapes qwen_vision;
  TextShapes text;
  ProjectorKind projector = ProjectorKind::Mlp2xGelu;
  int64_t vision_feature_layer = -2;  // hidden_states index: -2 = output of the second-to-last layer
  int64_t image_token_index = 3;       // Qwen: image_token_id (<|image_pad|>)
  bool moda_aligner = false;
  double initializer_range = 0.02;  // std of the normal(0, std) initial weights (Hugging Face _init_weights)

  bool is_qwen() const { return family != ModelFamily::Llava; }
  // Encoder layers that must run to reach vision_feature_layer (hidden_states[0] is the embeddings).
  int64_t vision_layers_used() const {
    return vision_feature_layer < 0 ? vision.num_hidden_layers + 1 + vision_feature_layer : vision_feature_layer;
  }
};

// "tiny" (tests, the golden file's shapes), "demo" (~6.4 M parameters), "small" (~100 M),
// "llava-1.5-7b" (the real model's shapes); "qwen2_5_vl_tiny" (the Qwen golden file's shapes),
// "qwen2_vl_tiny" (the same sizes in the Qwen2-VL layout), "qwen2_5_vl_demo" (`demo`'s decoder with the
// real Qwen vocabulary, a Qwen2.5-VL tower for the synthetic benchmark), "qwen2_5_vl_3b", "qwen2_5_vl_7b".
// Throws std::invalid_argument listing the presets.
ModelShapes preset_shapes(const std::string& name);

// Reads a Hugging Face config.json. LLaVA (vision_config, text_config, projector_hidden_act,
// vision_feature_layer, image_token_index, initializer_range at the top level or in text_config);
// `model_type` qwen2_vl / qwen2_5_vl: vision_config, the text fields at the top level (older
// transformers) or in text_config (newer), rope_scaling.mrope_section, image_token_id (image spans are
// found by their tokens, so vision_start_token_id is not needed). Unset fields keep the Hugging Face defaults.
ModelShapes shapes_from_hf_config(const std::string& path);

// Rejects inconsistent shapes (heads not dividing the width, odd head dim, feature layer out of range).
void check_shapes(const ModelShapes& shapes);

// Parameters of a model of these shapes, by the parts the trainer freezes separately.
struct ParameterCounts {
  int64_t vision_tower = 0;    // LLaVA `vision_tower`; Qwen `visual` but its merger
  int64_t projector = 0;       // LLaVA `multi_modal_projector`; Qwen `visual.merger`
  int64_t language_model = 0;  // the decoder, its embeddings and head (and the MODA aligners)
  int64_t total() const { return vision_tower + projector + language_model; }
};
ParameterCounts parameter_counts(const ModelShapes& shapes);
int64_t count_parameters(const ModelShapes& shapes);  // parameter_counts(shapes).total()

}  // namespace modalign
