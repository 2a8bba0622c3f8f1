// The tokenizer a model was trained with, from what `data.tokenizer` names: a SentencePiece `.model`
// (LLaVA / LLaMA-2), a Hugging Face `tokenizer.json` (Qwen2-VL, Llama-3, ...; see hf_tokenizer.h) or a
// folder holding one. Encode, decode, special ids, and training a SentencePiece model for the synthetic
// data. SentencePiece runs isolated from LibTorch: the real libsentencepiece lives in a small shim
// library loaded with dlmopen(LM_ID_NEWLM), because the protobuf it bundles clashes with LibTorch's in
// one namespace (the process segfaults at start).
#pragma once
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

namespace modalign {

struct TokenizerError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

class HfTokenizer;

class Tokenizer {
 public:
  // Loads `path`: a file ending in .json is a Hugging Face tokenizer.json, any other file a SentencePiece
  // model; a folder is read through its tokenizer.json, else its tokenizer.model. Throws TokenizerError
  // naming the file.
  explicit Tokenizer(const std::string& path);
  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // Without add_special nothing is added; with it, SentencePiece puts BOS first and a tokenizer.json
  // applies its post-processor template.
  std::vector<int64_t> encode(const std::string& text, bool add_special = false) const;
  std::string decode(const std::vector<int64_t>& ids) const;  // special tokens left out
  int64_t piece_to_id(const std::string& piece) const;        // unk_id() when absent
  std::string id_to_piece(int64_t id) const;                  // "▁Hello", "Ġworld"; throws for a bad id
  bool has_id(int64_t id) const;  // a piece or added token has this id (a cut tokenizer.json has holes)
  int64_t vocab_size() const { return vocab_size_; }
  int64_t bos_id() const { return bos_; }
  int64_t eos_id() const { return eos_; }
  int64_t pad_id() const { return pad_; }  // -1 when the model has none
  int64_t unk_id() const { return unk_; }
  const std::string& path() const { return path_; }

  struct TrainOptions {
    int64_t vocab_size = 1000;
    std::string model_type = "bpe";
    std::vector<std::string> user_defined_symbols{"<image>"};
    double character_coverage = 1.0;
    bool pieces_may_span_words = false;  // true: pieces may cross spaces and script changes
  };
  // Trains a model from a text file (one sentence per line) and writes it to `model_path`. Ids: pad 0,
  // bos 1, eos 2, unk 4; user-defined symbols fill the free ids from 3, so `<image>` is 3 (the tiny
  // preset's image_token_index). The same corpus and options give a byte-identical file.
  static void train(const std::string& corpus_path, const std::string& model_path, const TrainOptions& options);

 private:
  std::string path_;
  void* handle_ = nullptr;              // SentencePiece, through the shim
  std::unique_ptr<HfTokenizer> hf_;     // or tokenizer.json
  int64_t vocab_size_ = 0, bos_ = -1, eos_ = -1, pad_ = -1, unk_ = -1;
};

// Where the shim library is looked for: $MODALIGN_SPM_SHIM, then next to the running executable, then
// the build and install folders recorded at compile time.
std::string spm_shim_path();

}  // namespace modalign
