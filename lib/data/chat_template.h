// Chat templates and label masks: `plain` (LLaVA stage 1: image then caption), `vicuna_v1` (LLaVA stage 2:
// system line, "USER: ... ASSISTANT: ...</s>" rounds) and `qwen2_vl` (ChatML as Qwen2-VL / Qwen2.5-VL train:
// <|im_start|>role\n ... <|im_end|>\n, the image as <|vision_start|> image pads <|vision_end|>). Only
// assistant replies and their end token are trained on; everything else is -100.
//
// The whole conversation is tokenised once and each turn separately; if the per-turn counts do not add
// up to the whole, the sample is an error (LLaVA silently masks such samples). The i-th `<image>` becomes
// image_tokens[i] copies of the model's image token; `</s>` the tokenizer's EOS.
#pragma once
#include <string>
#include <vector>

#include "lib/config/run_config.h"
#include "lib/data/dataset.h"
#include "lib/data/tokenizer.h"

namespace modalign {

inline constexpr const char* kVicunaSystem =
    "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
    "detailed, and polite answers to the user's questions.";

inline constexpr const char* kQwenSystem = "You are a helpful assistant.";

// The tokenizer piece whose id is the model's image token under this template: "<image>" (LLaVA) or
// "<|image_pad|>" (Qwen2-VL).
const char* image_piece(ChatTemplate chat_template);

// One piece of the rendered conversation; `trained` pieces are assistant replies.
struct Segment {
  std::string text;
  bool trained = false;
};

// The conversation as the template renders it (concatenating the texts gives LLaVA's prompt string).
// With `prompt_only`, the final assistant reply (if the conversation ends with one) is left out: what a
// model sees when asked to answer.
std::vector<Segment> render(const Example& example, ChatTemplate chat_template, bool prompt_only = false);

struct TokenizeOptions {
  ChatTemplate chat_template = ChatTemplate::VicunaV1;
  int64_t image_token_index = 3;
  std::vector<int64_t> image_tokens;  // tokens of each image in order (LLaVA: num_patches each)
  int64_t max_length = 512;
  bool prompt_only = false;
};

struct TokenizedExample {
  std::vector<int64_t> input_ids;  // BOS first (when the tokenizer has one); image span expanded
  std::vector<int64_t> labels;     // aligned with input_ids; -100 where not trained
};

// Throws DataError naming the sample on a tokenisation mismatch, an image token id produced for text,
// an image span that does not fit in max_length, or nothing left to train on after truncation.
TokenizedExample tokenize_example(const Example& example, const Tokenizer& tokenizer, const TokenizeOptions& options);

}  // namespace modalign
