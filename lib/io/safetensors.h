// Safetensors files (https://huggingface.co/docs/safetensors): a strict memory-mapped reader, an
// atomic writer, and sharded `model.safetensors.index.json` checkpoints as Hugging Face writes them.
//
// Layout: u64 little-endian header length N, N bytes of JSON {name: {dtype, shape, data_offsets}, and
// optional "__metadata__": {str: str}}, then the data area. The reader rejects anything off-spec with a
// SafetensorsError that names the file and the tensor.
#pragma once
#include <torch/torch.h>

#include <map>
#include <memory>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace modalign {

struct SafetensorsError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct TensorEntry {
  std::string name;
  std::string dtype;  // F64 F32 F16 BF16 I64 I32 I16 I8 U8 BOOL
  std::vector<int64_t> shape;
  size_t begin = 0;  // byte offsets inside the data area
  size_t end = 0;
};

// Maximum header size accepted (the format's reference reader uses the same bound).
inline constexpr size_t kMaxSafetensorsHeader = 100'000'000;

class SafetensorsFile {
 public:
  // Maps and validates the whole header; throws SafetensorsError.
  explicit SafetensorsFile(const std::string& path);
  ~SafetensorsFile();
  SafetensorsFile(const SafetensorsFile&) = delete;
  SafetensorsFile& operator=(const SafetensorsFile&) = delete;

  const std::string& path() const { return path_; }
  const std::vector<TensorEntry>& entries() const { return entries_; }  // in data order
  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  bool contains(const std::string& name) const { return index_.count(name) > 0; }
  const TensorEntry& entry(const std::string& name) const;
  // A copy of the tensor, owned by torch (the mapping may be closed afterwards).
  torch::Tensor tensor(const std::string& name) const;

 private:
  std::string path_;
  void* map_ = nullptr;
  size_t size_ = 0;
  size_t data_start_ = 0;
  std::vector<TensorEntry> entries_;
  std::map<std::string, size_t> index_;
  std::map<std::string, std::string> metadata_;
};

using NamedTensors = std::vector<std::pair<std::string, torch::Tensor>>;

// Writes `tensors` (any device/dtype of the list above, made contiguous on CPU) with an 8-byte aligned,
// space-padded header. Written to `path.tmp`, fsynced, then renamed over `path`; a failure to write is a
// std::runtime_error naming the file (SafetensorsError is for bad content).
void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata = {});

// Every tensor of a safetensors file, a `*.safetensors.index.json`, or a folder holding either
// `model.safetensors` or `model.safetensors.index.json`; a training run's folder or its `latest` pointer
// file stand for the checkpoint `latest` names (resolve_model_path). Names are checked unique across shards.
NamedTensors load_tensors(const std::string& path);

// The file load_tensors reads for `path`: the path itself (a file), a folder's model.safetensors or
// model.safetensors.index.json, or, for a run folder or its `latest` file, the same inside the checkpoint
// folder `latest` names. Throws SafetensorsError naming the path when it is none of these.
std::string resolve_model_path(const std::string& path);

// The checkpoint folder a run folder's `latest` pointer names (a child folder of `run_dir`), or "" when
// there is no pointer. Throws SafetensorsError when the pointer names something outside the run folder.
std::string read_latest_pointer(const std::string& run_dir);

// Splits into shards of at most `max_shard_bytes` (a larger tensor gets a shard of its own), named
// model-00001-of-0000N.safetensors, plus model.safetensors.index.json, all inside `dir`.
void save_sharded(const std::string& dir, const NamedTensors& tensors, size_t max_shard_bytes,
                  const std::map<std::string, std::string>& metadata = {});

// Writes `bytes` to `path` atomically: `path.tmp`, fsync, rename, fsync of the folder (std::runtime_error
// naming the file when that fails).
void write_file_atomic(const std::string& path, const std::string& bytes);

// `modalign inspect`: one line per tensor (name, dtype, shape, bytes) and the metadata of a file,
// index or folder.
std::string describe_safetensors(const std::string& path);

}  // namespace modalign
