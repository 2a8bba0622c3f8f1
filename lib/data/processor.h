// Processor: one dataset Example -> one model-ready Sample (token ids and labels through the chat
// template, the image decoded and preprocessed), and Collator: Samples -> a right-padded Batch.
//
// Batch layout (B batch, T tokens, N images in the batch, S image side, Nv image tokens of the sample
// holding most): input_ids, labels, attention_mask, visual_mask (B, T); pixel_values (N, 3, S, S), the
// images of the samples in batch order and within a sample in text order (text-only samples have none)
// — for a Qwen model the patch rows of those images one after another (sum of t h w, K) with
// image_grid_thw (N, 3), each image its own size and number of tokens; region_target (B, Nv), a sample's
// "regions" as a distribution over its image tokens (a zero row when it has none, zero past its image tokens).
#pragma once
#include <torch/torch.h>

#include <memory>
#include <string>
#include <vector>

#include "lib/config/run_config.h"
#include "lib/data/chat_template.h"
#include "lib/data/dataset.h"
#include "lib/data/image.h"
#include "lib/data/tokenizer.h"

namespace modalign {

struct Sample {
  std::vector<int64_t> input_ids, labels;
  torch::Tensor pixel_values;  // (n, 3, S, S) (Qwen: (sum of t h w, K) patch rows), undefined for a text-only sample
  std::string id;
  torch::Tensor region_target;  // (Nv) float32 summing to 1, undefined without "regions"
  torch::Tensor image_grid_thw;  // Qwen: (n, 3) int64, the (t, h, w) patches of each image
};

struct Batch {
  torch::Tensor input_ids, labels, attention_mask, visual_mask;  // (B, T)
  torch::Tensor pixel_values;                                     // (N, 3, S, S); Qwen: (patches, K)
  torch::Tensor image_grid_thw;                                   // Qwen: (N, 3) int64; else undefined
  torch::Tensor region_target;                                    // (B, Nv) float32, zero rows = none
  std::vector<std::string> ids;
  int64_t skipped = 0;  // bad samples dropped from this batch (on_bad_sample: skip)
  int64_t size() const { return input_ids.defined() ? input_ids.size(0) : 0; }
  Batch to(torch::Device device) const;  // every tensor moved to `device`
};

// What the data side needs to know about the model. qwen_patch_size > 0: a Qwen model, whose images
// keep their size (smart_resize) and take t h w / merge^2 image tokens each.
struct ModelInterface {
  int64_t image_size = 16;
  int64_t num_patches = 16;
  int64_t image_token_index = 3;
  int64_t vocab_size = 64;
  int64_t qwen_patch_size = 0, qwen_merge_size = 2, qwen_temporal_patch_size = 2;
  bool qwen() const { return qwen_patch_size > 0; }
};

class Processor {
 public:
  // Loads the tokenizer named by config.tokenizer; checks it fits the model (vocabulary size, no
  // ordinary piece on the image token id).
  Processor(const DataConfig& config, const ModelInterface& model);

  // Throws DataError naming the sample (and the image file) when it cannot be used.
  Sample process(const Example& example) const;
  // The prompt of `example` (everything before its final reply, if it ends with one), reusing `full`'s
  // preprocessed image when given (else the image is loaded here).
  Sample prompt(const Example& example, const Sample* full = nullptr) const;
  // The tokenised length of `example` (image span included) without decoding its image: what
  // data.group_by_length sorts by.
  int64_t length(const Example& example) const;
  // Right-pads samples into a Batch with this tokenizer's pad id and the model's image token.
  Batch collate(const std::vector<Sample>& samples) const;

  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const ModelInterface& model() const { return model_; }

 private:
  // Tokenised with the example's image span, its image preprocessed (and regions' target) into `s`.
  Sample make_sample(const Example& example, bool prompt_only, const Sample* full) const;
  // The example's `image`-th image file, confined to data.image_folder unless allowed otherwise.
  std::string image_path(const Example& example, size_t image) const;
  // The example's images preprocessed into s.pixel_values (s.region_target when it has regions,
  // s.image_grid_thw for Qwen).
  void load_pixels(const Example& example, Sample& s) const;
  // Image tokens each of the example's images takes (Qwen: from the file header's size; LLaVA: num_patches).
  std::vector<int64_t> image_tokens(const Example& example) const;
  DataConfig config_;
  ModelInterface model_;
  std::shared_ptr<Tokenizer> tokenizer_;
  ImageOptions image_options_;
  QwenImageOptions qwen_options_;
};

Batch collate(const std::vector<Sample>& samples, int64_t pad_id, const ModelInterface& model);

}  // namespace modalign
