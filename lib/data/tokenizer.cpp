#include "lib/data/tokenizer.h"

#include <dlfcn.h>
#include <link.h>
#include <unistd.h>

#include <filesystem>
#include <mutex>

#include "lib/data/hf_tokenizer.h"
#include "lib/io/files.h"

namespace modalign {
namespace fs = std::filesystem;
namespace {

// The shim's C functions, resolved once in their own link-map namespace.
struct ShimApi {
  void* (*load)(const char*, char*, int);
  void (*free)(void*);
  int (*encode)(void*, const char*, int*, int);
  int (*decode)(void*, const int*, int, char*, int);
  int (*piece_to_id)(void*, const char*);
  int (*id_to_piece)(void*, int, char*, int);
  int (*info)(void*, int);
  int (*train)(const char*, const char*, const char*, char*, int);
};

template <class F>
void resolve(void* lib, const char* name, F& fn) {
  fn = reinterpret_cast<F>(dlsym(lib, name));
  if (!fn) throw TokenizerError(std::string("SentencePiece shim lacks symbol ") + name);
}

const ShimApi& shim() {
  static std::once_flag once;
  static ShimApi api{};
  std::call_once(once, [] {
    std::string path = spm_shim_path();
    void* lib = dlmopen(LM_ID_NEWLM, path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!lib) throw TokenizerError("cannot load the SentencePiece shim " + path + ": " + dlerror());
    resolve(lib, "spm_load", api.load);
    resolve(lib, "spm_free", api.free);
    resolve(lib, "spm_encode", api.encode);
    resolve(lib, "spm_decode", api.decode);
    resolve(lib, "spm_piece_to_id", api.piece_to_id);
    resolve(lib, "spm_id_to_piece", api.id_to_piece);
    resolve(lib, "spm_info", api.info);
    resolve(lib, "spm_train", api.train);
  });
  if (!api.load) throw TokenizerError("the SentencePiece shim failed to load earlier in this process");
  return api;
}

}  // namespace

std::string spm_shim_path() {
  const char* name = "libmodalign_spm.so";
  if (const char* env = std::getenv("MODALIGN_SPM_SHIM")) return env;
  std::error_code ec;
  fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  std::vector<fs::path> candidates;
  if (!ec) candidates = {exe.parent_path() / name, exe.parent_path().parent_path() / name,
                         exe.parent_path().parent_path() / "lib" / name};
  candidates.push_back(fs::path(MODALIGN_SPM_SHIM_BUILD_DIR) / name);
  candidates.push_back(fs::path(MODALIGN_SPM_SHIM_INSTALL_DIR) / name);
  for (const auto& c : candidates)
    if (fs::exists(c)) return c.string();
  throw TokenizerError(std::string("cannot find ") + name + " (looked next to the executable, in " +
                       MODALIGN_SPM_SHIM_BUILD_DIR + " and " + MODALIGN_SPM_SHIM_INSTALL_DIR +
                       "; set MODALIGN_SPM_SHIM to its path)");
}

Tokenizer::Tokenizer(const std::string& path) : path_(path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    for (const char* name : {"tokenizer.json", "tokenizer.model"})
      if (fs::exists(fs::path(path) / name, ec)) {
        path_ = (fs::path(path) / name).string();
        break;
      }
    if (path_ == path) throw TokenizerError(path + ": a folder without tokenizer.json or tokenizer.model");
  }
  const std::string problem = file_problem(path_, 1024 * kMiB);
  if (problem == "no such file") throw TokenizerError(path_ + ": tokenizer file not found");
  if (!problem.empty()) throw TokenizerError(path_ + ": cannot read the tokenizer: " + problem);
  if (fs::path(path_).extension() == ".json") {
    hf_ = std::make_unique<HfTokenizer>(path_);
    vocab_size_ = hf_->vocab_size(), bos_ = hf_->bos_id(), eos_ = hf_->eos_id(), pad_ = hf_->pad_id(), unk_ = hf_->unk_id();
    return;
  }
  char err[512] = {0};
  handle_ = shim().load(path_.c_str(), err, sizeof err);
  if (!handle_) throw TokenizerError(path_ + ": not a SentencePiece model (" + err + ")");
  vocab_size_ = shim().info(handle_, 0);
  bos_ = shim().info(handle_, 1);
  eos_ = shim().info(handle_, 2);
  pad_ = shim().info(handle_, 3);
  unk_ = shim().info(handle_, 4);
}

Tokenizer::~Tokenizer() {
  if (handle_) shim().free(handle_);
}

std::vector<int64_t> Tokenizer::encode(const std::string& text, bool add_special) const {
  if (hf_) return hf_->encode(text, add_special);
  std::vector<int> ids(text.size() + 8);
  int n = shim().encode(handle_, text.c_str(), ids.data(), static_cast<int>(ids.size()));
  if (n > static_cast<int>(ids.size())) {
    ids.resize(static_cast<size_t>(n));
    n = shim().encode(handle_, text.c_str(), ids.data(), n);
  }
  if (n < 0) throw TokenizerError(path_ + ": encoding failed for '" + text.substr(0, 80) + "'");
  std::vector<int64_t> out;
  if (add_special && bos_ >= 0) out.push_back(bos_);
  out.insert(out.end(), ids.begin(), ids.begin() + n);
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids) const {
  if (hf_) return hf_->decode(ids);
  std::vector<int> in(ids.begin(), ids.end());
  for (int id : in)
    if (id < 0 || id >= vocab_size_) throw TokenizerError(path_ + ": cannot decode id " + std::to_string(id));
  std::string out(16 * in.size() + 16, '\0');
  int n = shim().decode(handle_, in.data(), static_cast<int>(in.size()), out.data(), static_cast<int>(out.size()));
  if (n >= static_cast<int>(out.size())) {
    out.assign(static_cast<size_t>(n) + 1, '\0');
    n = shim().decode(handle_, in.data(), static_cast<int>(in.size()), out.data(), static_cast<int>(out.size()));
  }
  if (n < 0) throw TokenizerError(path_ + ": decoding failed");
  out.resize(static_cast<size_t>(n));
  return out;
}

int64_t Tokenizer::piece_to_id(const std::string& piece) const {
  if (hf_) {
    const int64_t id = hf_->token_to_id(piece);
    return id >= 0 ? id : unk_;
  }
  return shim().piece_to_id(handle_, piece.c_str());
}

bool Tokenizer::has_id(int64_t id) const { return hf_ ? hf_->has_id(id) : id >= 0 && id < vocab_size_; }

std::string Tokenizer::id_to_piece(int64_t id) const {
  if (hf_) return hf_->id_to_token(id);
  char piece[256] = {0};
  const int n = id >= 0 && id < vocab_size_ ? shim().id_to_piece(handle_, static_cast<int>(id), piece, sizeof piece) : -1;
  if (n < 0 || n >= static_cast<int>(sizeof piece)) throw TokenizerError(path_ + ": no piece has id " + std::to_string(id));
  return piece;
}

void Tokenizer::train(const std::string& corpus_path, const std::string& model_path, const TrainOptions& o) {
  std::string symbols;
  for (const auto& s : o.user_defined_symbols) symbols += (symbols.empty() ? "" : ",") + s;
  std::string flags = "--vocab_size=" + std::to_string(o.vocab_size) + " --model_type=" + o.model_type +
                      " --character_coverage=" + std::to_string(o.character_coverage) +
                      " --pad_id=0 --bos_id=1 --eos_id=2 --unk_id=4 --num_threads=1 --minloglevel=2" +
                      " --hard_vocab_limit=false --shuffle_input_sentence=false --input_sentence_size=0" +
                      (o.pieces_may_span_words ? " --split_by_whitespace=false --split_by_unicode_script=false" : "") +
                      (symbols.empty() ? "" : " --user_defined_symbols=" + symbols);
  std::string tmp = model_path + ".tmp";
  char err[1024] = {0};
  if (shim().train(flags.c_str(), corpus_path.c_str(), tmp.c_str(), err, sizeof err) != 0) {
    fs::remove(tmp);
    throw TokenizerError("training a tokenizer from " + corpus_path + " failed: " + err);
  }
  fs::rename(tmp, model_path);
}

}  // namespace modalign
