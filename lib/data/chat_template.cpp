#include "lib/data/chat_template.h"

#include <fmt/format.h>

#include <algorithm>

namespace modalign {
namespace {

const std::string kEos = "</s>";

// Text with `<image>` and `</s>` markers -> ids (image `next_image`, then the next, ... expanded; EOS for </s>).
std::vector<int64_t> encode_with_specials(const std::string& text, const Tokenizer& tok, const TokenizeOptions& o,
                                          const Example& e, size_t& next_image) {
  std::vector<int64_t> ids;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t img = text.find(kImagePlaceholder, pos), eos = text.find(kEos, pos);
    size_t next = std::min(img, eos);
    std::string chunk = text.substr(pos, next == std::string::npos ? std::string::npos : next - pos);
    if (!chunk.empty())
      for (int64_t id : tok.encode(chunk)) {
        if (id == o.image_token_index)
          throw DataError(fmt::format("{}: the tokenizer gives id {} (the model's image_token_index) for text '{}'",
                                      describe(e), id, chunk.substr(0, 60)));
        ids.push_back(id);
      }
    if (next == std::string::npos) break;
    if (next == img) {
      if (next_image >= o.image_tokens.size())
        throw DataError(fmt::format("{}: the text holds more <image> placeholders than the sample's {} images",
                                    describe(e), o.image_tokens.size()));
      ids.insert(ids.end(), o.image_tokens[next_image++], o.image_token_index);
      pos = img + std::string(kImagePlaceholder).size();
    } else {
      if (tok.eos_id() < 0)
        throw DataError(fmt::format("{}: the template ends turns with </s> but {} names no EOS token (eos_token in "
                                    "tokenizer_config.json)", describe(e), tok.path()));
      ids.push_back(tok.eos_id());
      pos = eos + kEos.size();
    }
  }
  return ids;
}

std::string replace_all(std::string s, const std::string& from, const std::string& to) {
  for (size_t at = s.find(from); at != std::string::npos; at = s.find(from, at + to.size())) s.replace(at, from.size(), to);
  return s;
}

}  // namespace

const char* image_piece(ChatTemplate chat_template) {
  return chat_template == ChatTemplate::Qwen2VL ? "<|image_pad|>" : kImagePlaceholder;
}

std::vector<Segment> render(const Example& e, ChatTemplate chat_template, bool prompt_only) {
  std::vector<Segment> out;
  // The reply a prompt leaves out: the last turn when it is the assistant's (a conversation that ends with
  // a human turn is all prompt).
  const size_t last_reply = !e.turns.empty() && !e.turns.back().from_human ? e.turns.size() - 1 : e.turns.size();
  if (chat_template == ChatTemplate::Plain) {  // LLaVA stage 1: the image, then the first reply
    std::string images;
    for (size_t i = 0; i < e.images.size(); ++i) images += kImagePlaceholder;
    out.push_back({images, false});
    if (!prompt_only) out.push_back({e.turns.at(1).value + kEos, true});
    return out;
  }
  if (chat_template == ChatTemplate::Qwen2VL) {  // ChatML; a turn's "\n" after <|im_end|> opens the next one
    std::string pending = std::string("<|im_start|>system\n") + kQwenSystem + "<|im_end|>\n";
    for (size_t i = 0; i < e.turns.size(); ++i) {
      const Turn& t = e.turns[i];
      if (prompt_only && i == last_reply) break;
      if (t.from_human) {
        const std::string text = replace_all(t.value, kImagePlaceholder, std::string("<|vision_start|>") + kImagePlaceholder + "<|vision_end|>");
        out.push_back({pending + "<|im_start|>user\n" + text + "<|im_end|>\n<|im_start|>assistant\n", false});
      } else {
        out.push_back({t.value + "<|im_end|>", true});
      }
      pending = t.from_human ? "" : "\n";
    }
    if (!pending.empty() && !prompt_only) out.push_back({pending, false});
    return out;
  }
  // vicuna_v1 (LLaVA conv_vicuna_v1, SeparatorStyle.TWO: sep " ", sep2 "</s>")
  std::string pending = std::string(kVicunaSystem) + " ";
  for (size_t i = 0; i < e.turns.size(); ++i) {
    const Turn& t = e.turns[i];
    if (prompt_only && i == last_reply) break;
    if (t.from_human) {
      out.push_back({pending + "USER: " + t.value + " ASSISTANT:", false});
      pending.clear();
    } else {
      out.push_back({" " + t.value + kEos, true});
    }
  }
  return out;
}

TokenizedExample tokenize_example(const Example& e, const Tokenizer& tok, const TokenizeOptions& o) {
  std::vector<Segment> segments = render(e, o.chat_template, o.prompt_only);
  std::string whole;
  for (const auto& s : segments) whole += s.text;
  TokenizedExample out;
  const bool bos = tok.bos_id() >= 0;  // a tokenizer without BOS (Qwen's) starts with the text
  if (bos) out.input_ids.push_back(tok.bos_id());
  size_t images = 0, per_turn_images = 0;
  std::vector<int64_t> all = encode_with_specials(whole, tok, o, e, images);
  if (images != o.image_tokens.size())
    throw DataError(fmt::format("{}: the text holds {} <image> placeholders for {} images", describe(e), images,
                                o.image_tokens.size()));
  out.input_ids.insert(out.input_ids.end(), all.begin(), all.end());
  if (bos) out.labels.push_back(-100);
  size_t per_turn = bos ? 1 : 0;
  for (const auto& s : segments) {
    std::vector<int64_t> ids = encode_with_specials(s.text, tok, o, e, per_turn_images);
    for (int64_t id : ids) out.labels.push_back(s.trained && id != o.image_token_index ? id : -100);
    per_turn += ids.size();
  }
  if (per_turn != out.input_ids.size())
    throw DataError(fmt::format("{}: tokenisation mismatch: the turns give {} tokens, the whole conversation {} "
                                "(a turn boundary falls inside a token)",
                                describe(e), per_turn, out.input_ids.size()));
  for (size_t i = 0; i < out.labels.size(); ++i)  // labels come from the whole tokenisation
    if (out.labels[i] != -100) out.labels[i] = out.input_ids[i];

  const int64_t n = static_cast<int64_t>(out.input_ids.size());
  if (n > o.max_length) {
    auto last_image = std::find(out.input_ids.rbegin(), out.input_ids.rend(), o.image_token_index);
    int64_t image_end = last_image == out.input_ids.rend() ? 0 : n - (last_image - out.input_ids.rbegin());
    if (image_end > o.max_length)
      throw DataError(fmt::format("{}: cannot fit: the image span ends at token {} but model_max_length is {}",
                                  describe(e), image_end, o.max_length));
    if (o.prompt_only)
      throw DataError(fmt::format("{}: the prompt has {} tokens, more than model_max_length {}", describe(e), n, o.max_length));
    out.input_ids.resize(static_cast<size_t>(o.max_length));
    out.labels.resize(static_cast<size_t>(o.max_length));
  }
  if (!o.prompt_only && std::all_of(out.labels.begin(), out.labels.end(), [](int64_t l) { return l == -100; }))
    throw DataError(fmt::format("{}: no trained token left{}", describe(e),
                                n > o.max_length ? fmt::format(" after truncation to model_max_length {}", o.max_length) : ""));
  return out;
}

}  // namespace modalign
