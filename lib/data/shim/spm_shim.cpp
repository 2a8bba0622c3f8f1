// A C API over SentencePiece, built as its own shared library. modalign loads it with
// dlmopen(LM_ID_NEWLM) because libsentencepiece bundles a protobuf that clashes with LibTorch's: in a
// separate link-map namespace each keeps its own copy. Only C types cross this boundary.
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>

#include <cstring>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

namespace {
void set_error(char* err, int len, const std::string& msg) {
  if (err && len > 0) {
    std::strncpy(err, msg.c_str(), static_cast<size_t>(len) - 1);
    err[len - 1] = '\0';
  }
}

// Runs `f`; an exception (SentencePiece and its protobuf may throw) becomes `failed` and a message in
// `err`, never an unwind across the C boundary into another link-map namespace (that aborts).
template <class R, class F>
R guarded(R failed, char* err, int err_len, F&& f) noexcept {
  try {
    return f();
  } catch (const std::exception& e) {
    set_error(err, err_len, e.what());
  } catch (...) {
    set_error(err, err_len, "unknown exception in SentencePiece");
  }
  return failed;
}

// spm_train without the exception guard.
int train(const char* flags, const char* corpus_path, const char* out_path, char* err, int err_len) {
  class Lines : public sentencepiece::SentenceIterator {
   public:
    explicit Lines(const char* path) : in_(path) {
      if (!in_) status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound,
                                                     std::string(path) + ": cannot read corpus");
      Next();
    }
    bool done() const override { return done_; }
    void Next() override { done_ = !in_ || !std::getline(in_, line_); }
    const std::string& value() const override { return line_; }
    sentencepiece::util::Status status() const override { return status_; }

   private:
    std::ifstream in_;
    std::string line_;
    bool done_ = false;
    sentencepiece::util::Status status_;
  };
  Lines lines(corpus_path);
  if (!lines.status().ok()) {
    set_error(err, err_len, lines.status().ToString());
    return 1;
  }
  std::string proto;
  auto status = sentencepiece::SentencePieceTrainer::Train(flags, &lines, &proto);
  if (!status.ok()) {
    set_error(err, err_len, status.ToString());
    return 1;
  }
  std::ofstream out(out_path, std::ios::binary);
  out << proto;
  if (!out.flush()) {
    set_error(err, err_len, std::string(out_path) + ": cannot write the trained model");
    return 1;
  }
  return 0;
}
}  // namespace

extern "C" {

void* spm_load(const char* model_path, char* err, int err_len) {
  return guarded<void*>(nullptr, err, err_len, [&]() -> void* {
    auto sp = std::make_unique<sentencepiece::SentencePieceProcessor>();
    auto status = sp->Load(model_path);
    if (!status.ok()) {
      set_error(err, err_len, status.ToString());
      return nullptr;
    }
    return sp.release();
  });
}

void spm_free(void* handle) { delete static_cast<sentencepiece::SentencePieceProcessor*>(handle); }

// Writes up to `max_ids` ids; returns how many the text needs (call again with a larger buffer when
// that exceeds max_ids), or -1 on error.
int spm_encode(void* handle, const char* text, int* ids, int max_ids) {
  return guarded(-1, nullptr, 0, [&] {
    std::vector<int> out;
    if (!static_cast<sentencepiece::SentencePieceProcessor*>(handle)->Encode(text, &out).ok()) return -1;
    for (size_t i = 0; i < out.size() && static_cast<int>(i) < max_ids; ++i) ids[i] = out[i];
    return static_cast<int>(out.size());
  });
}

// Writes the decoded text (NUL terminated) if it fits; returns its length, or -1 on error.
int spm_decode(void* handle, const int* ids, int n, char* text, int max_len) {
  return guarded(-1, nullptr, 0, [&] {
    std::string out;
    std::vector<int> in(ids, ids + n);
    if (!static_cast<sentencepiece::SentencePieceProcessor*>(handle)->Decode(in, &out).ok()) return -1;
    if (static_cast<int>(out.size()) < max_len) std::memcpy(text, out.c_str(), out.size() + 1);
    return static_cast<int>(out.size());
  });
}

int spm_piece_to_id(void* handle, const char* piece) {
  return guarded(-1, nullptr, 0, [&] { return static_cast<sentencepiece::SentencePieceProcessor*>(handle)->PieceToId(piece); });
}

// Writes the piece of `id` (NUL terminated) if it fits; returns its length, or -1 for a bad id.
int spm_id_to_piece(void* handle, int id, char* piece, int max_len) {
  return guarded(-1, nullptr, 0, [&] {
    auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(handle);
    if (id < 0 || id >= sp->GetPieceSize()) return -1;
    const std::string& out = sp->IdToPiece(id);
    if (static_cast<int>(out.size()) < max_len) std::memcpy(piece, out.c_str(), out.size() + 1);
    return static_cast<int>(out.size());
  });
}

// which: 0 vocab size, 1 bos, 2 eos, 3 pad, 4 unk
int spm_info(void* handle, int which) {
  return guarded(-1, nullptr, 0, [&] {
    auto* sp = static_cast<sentencepiece::SentencePieceProcessor*>(handle);
    switch (which) {
      case 0: return sp->GetPieceSize();
      case 1: return sp->bos_id();
      case 2: return sp->eos_id();
      case 3: return sp->pad_id();
      case 4: return sp->unk_id();
    }
    return -1;
  });
}

// Trains a model from the lines of `corpus_path` with SentencePiece trainer `flags` (no --input or
// --model_prefix) and writes the serialized model to `out_path`; 0 on success. Feeding sentences
// through an iterator keeps file paths out of the model, so the same corpus gives the same bytes.
int spm_train(const char* flags, const char* corpus_path, const char* out_path, char* err, int err_len) {
  return guarded(1, err, err_len, [&] { return train(flags, corpus_path, out_path, err, err_len); });
}
}

