// Model weights <-> safetensors by parameter name: a Hugging Face LLaVA or Qwen2(.5)-VL checkpoint loads into
// VisionLanguageModel by a name-checked copy, and our saves are readable by Hugging Face.
#pragma once
#include <torch/torch.h>

#include <map>
#include <string>
#include <vector>

#include "lib/io/safetensors.h"

namespace modalign {

struct LoadReport {
  std::vector<std::string> missing;     // in the model, not in the file
  std::vector<std::string> unexpected;  // in the file, not in the model
  std::vector<std::string> mismatched;  // same name, other shape ("name: file [..] vs model [..]")
  size_t loaded = 0;
};

// Copies every tensor of `path` (file, index or folder; see load_tensors) into the parameters and
// buffers of `module` with the same name, converted to their dtype and device. Qwen2-VL / Qwen2.5-VL Hub
// names (`model.*`, `lm_head.*`, newer transformers' `model.language_model.*`, `model.visual.*`) are
// read as the model's (`language_model.model.*`, `language_model.lm_head.*`, `visual.*`). Names the model never
// stores are ignored (`*.rotary_emb.inv_freq`; `lm_head.weight` when the model ties embeddings).
// strict: any missing, unexpected or mismatched name is an error listing all three lists, and nothing is
// copied; otherwise the matching tensors are copied and the lists are logged as a warning and returned.
LoadReport load_weights(torch::nn::Module& module, const std::string& path, bool strict = true);
// The same from tensors already read; `source` names them in messages.
LoadReport load_weights(torch::nn::Module& module, const NamedTensors& tensors, const std::string& source,
                        bool strict = true);

// A Qwen model's parameter name as the original Hub checkpoints spell it (`language_model.model.*` ->
// `model.*`, `language_model.lm_head.*` -> `lm_head.*`, `visual.*` unchanged): what `convert` writes.
std::string qwen_hub_name(const std::string& name);

// Every parameter and buffer of `module` (CPU, contiguous) under its name.
std::vector<std::pair<std::string, torch::Tensor>> named_state(const torch::nn::Module& module);

void save_weights(const torch::nn::Module& module, const std::string& path,
                  const std::map<std::string, std::string>& metadata = {});

}  // namespace modalign
