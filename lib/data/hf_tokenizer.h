// Hugging Face `tokenizer.json` for the BPE tokenizers vision-language models ship: byte-level BPE
// (Qwen2 / Qwen2.5-VL, Llama-3, GPT-2: a Split regex and/or ByteLevel pre-tokenizer) and SentencePiece-
// style BPE (LLaMA, Mistral: Metaspace or Prepend/Replace normalizers, byte_fallback). Added tokens are
// matched before the model (leftmost-longest, lstrip/rstrip/single_word, normalized or not) as in
// Hugging Face `tokenizers`; regexes run on PCRE2 (`\p{L}`, look-ahead), Unicode normalisation on
// utf8proc. A component this reader does not implement is an error naming it, never an approximation.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace modalign {

class HfTokenizer {
 public:
  // Reads `path` (a tokenizer.json) and, when one lies beside it, tokenizer_config.json for the names of
  // the bos / eos / pad / unk tokens. Throws TokenizerError naming the file and the field at fault.
  explicit HfTokenizer(const std::string& path);
  ~HfTokenizer();
  HfTokenizer(const HfTokenizer&) = delete;
  HfTokenizer& operator=(const HfTokenizer&) = delete;

  // Added tokens, normaliser, pre-tokeniser, BPE; with add_special, the post-processor's template
  // (TemplateProcessing's `single`, e.g. LLaMA's BOS) around the ids. Throws on text that is not UTF-8.
  std::vector<int64_t> encode(const std::string& text, bool add_special = false) const;
  // The decoder chain over the tokens of `ids`; special added tokens are left out when skip_special.
  // Invalid UTF-8 (a character cut between ids) becomes U+FFFD, as in Hugging Face.
  std::string decode(const std::vector<int64_t>& ids, bool skip_special = true) const;
  std::string id_to_token(int64_t id) const;  // the vocabulary's string ("Ġworld"); throws for unknown ids
  bool has_id(int64_t id) const;
  int64_t token_to_id(const std::string& token) const;  // -1 when absent

  int64_t vocab_size() const;  // largest id + 1 (model vocabulary and added tokens)
  int64_t bos_id() const;      // -1 when tokenizer_config.json names none
  int64_t eos_id() const;
  int64_t pad_id() const;
  int64_t unk_id() const;  // the model's unk_token, else tokenizer_config.json's, else -1

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace modalign
