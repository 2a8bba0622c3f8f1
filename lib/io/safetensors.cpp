#include "lib/io/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fmt/format.h>
#include <fmt/ranges.h>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>

#include "lib/io/files.h"

namespace modalign {
namespace fs = std::filesystem;
namespace {

struct DtypeInfo {
  const char* name;
  torch::ScalarType type;
  size_t bytes;
};
constexpr DtypeInfo kDtypes[] = {
    {"F64", torch::kFloat64, 8}, {"F32", torch::kFloat32, 4}, {"F16", torch::kFloat16, 2},
    {"BF16", torch::kBFloat16, 2}, {"I64", torch::kInt64, 8}, {"I32", torch::kInt32, 4},
    {"I16", torch::kInt16, 2},   {"I8", torch::kInt8, 1},     {"U8", torch::kUInt8, 1},
    {"BOOL", torch::kBool, 1}};

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes)
    if (name == d.name) return &d;
  return nullptr;
}

const DtypeInfo& dtype_of(torch::ScalarType type, const std::string& tensor) {
  for (const auto& d : kDtypes)
    if (d.type == type) return d;
  throw SafetensorsError(fmt::format("tensor '{}': dtype {} cannot be stored in safetensors", tensor,
                                     c10::toString(type)));
}

std::string errno_text() { return std::strerror(errno); }

// A file written under a temporary name and moved into place only once complete and on disk. Failures
// are std::runtime_error (the disk or folder is the problem, not a file's content).
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)), tmp_(path_ + ".tmp") {
    fd_ = ::open(tmp_.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd_ < 0) throw std::runtime_error(tmp_ + ": cannot create (" + errno_text() + ")");
  }
  ~AtomicFile() {
    if (fd_ >= 0) {
      ::close(fd_);
      ::unlink(tmp_.c_str());
    }
  }
  void write(const void* data, size_t n) {
    const char* p = static_cast<const char*>(data);
    while (n > 0) {
      ssize_t w = ::write(fd_, p, n);
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) throw std::runtime_error(tmp_ + ": write failed (" + errno_text() + ")");
      p += w, n -= static_cast<size_t>(w);
    }
  }
  void commit() {
    if (::fsync(fd_) != 0) throw std::runtime_error(tmp_ + ": fsync failed (" + errno_text() + ")");
    ::close(fd_);
    fd_ = -1;
    if (::rename(tmp_.c_str(), path_.c_str()) != 0)
      throw std::runtime_error(path_ + ": rename failed (" + errno_text() + ")");
    std::string dir = fs::path(path_).parent_path().string();
    int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dfd >= 0) {
      ::fsync(dfd);
      ::close(dfd);
    }
  }

 private:
  std::string path_, tmp_;
  int fd_ = -1;
};

std::vector<int64_t> parse_shape(const nlohmann::json& j, const std::string& where) {
  if (!j.is_array()) throw SafetensorsError(where + ": 'shape' is not a list");
  std::vector<int64_t> shape;
  for (const auto& d : j) {
    if (!d.is_number_integer() || d.get<int64_t>() < 0)
      throw SafetensorsError(where + ": 'shape' holds " + d.dump() + ", not a non-negative integer");
    shape.push_back(d.get<int64_t>());
  }
  return shape;
}

}  // namespace

SafetensorsFile::SafetensorsFile(const std::string& path) : path_(path) {
  const std::string problem = file_problem(path, UINT64_MAX);
  if (!problem.empty()) throw SafetensorsError(path + ": cannot open: " + problem);
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) throw SafetensorsError(path + ": cannot open (" + errno_text() + ")");
  struct stat st {};
  ::fstat(fd, &st);
  size_ = static_cast<size_t>(st.st_size);
  if (size_ > 0) map_ = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
  ::close(fd);
  if (map_ == MAP_FAILED) {
    map_ = nullptr;
    throw SafetensorsError(path + ": mmap failed (" + errno_text() + ")");
  }
  auto fail = [&](const std::string& msg) {
    if (map_) ::munmap(map_, size_);
    map_ = nullptr;
    throw SafetensorsError(path + ": " + msg);
  };
  const char* bytes = static_cast<const char*>(map_);
  if (size_ < 8) fail(fmt::format("truncated: {} bytes, less than the 8-byte header length", size_));
  uint64_t header_len = 0;
  std::memcpy(&header_len, bytes, 8);  // little-endian on every platform LibTorch supports here
  if (header_len > kMaxSafetensorsHeader)
    fail(fmt::format("header length {} exceeds the {} byte limit", header_len, kMaxSafetensorsHeader));
  if (header_len > size_ - 8)
    fail(fmt::format("header length {} runs past the end of the {}-byte file (truncated?)", header_len, size_));
  data_start_ = 8 + header_len;
  const size_t data_size = size_ - data_start_;

  // Parse with a callback so that a repeated top-level name is an error, not a silent overwrite.
  std::set<std::string> top_keys;
  std::string duplicate;
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(
        bytes + 8, bytes + data_start_,
        [&](int depth, nlohmann::json::parse_event_t event, nlohmann::json& parsed) {
          if (depth == 1 && event == nlohmann::json::parse_event_t::key && !top_keys.insert(parsed.get<std::string>()).second)
            duplicate = parsed.get<std::string>();
          return true;
        });
  } catch (const nlohmann::json::exception& e) {
    fail(std::string("header is not valid JSON: ") + e.what());
  }
  if (!duplicate.empty()) fail("tensor '" + duplicate + "' appears twice in the header");
  if (!header.is_object()) fail("header is not a JSON object");

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const auto& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail("__metadata__ is not an object of strings");
      for (auto m = v.begin(); m != v.end(); ++m) {
        if (!m.value().is_string()) fail("__metadata__ value of '" + m.key() + "' is not a string");
        metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    std::string where = "tensor '" + name + "'";
    if (!v.is_object() || !v.contains("dtype") || !v.contains("shape") || !v.contains("data_offsets"))
      fail(where + ": needs dtype, shape and data_offsets");
    if (!v["dtype"].is_string()) fail(where + ": dtype is not a string");
    TensorEntry e;
    e.name = name;
    e.dtype = v["dtype"].get<std::string>();
    const DtypeInfo* dt = find_dtype(e.dtype);
    if (!dt) fail(where + ": unknown dtype '" + e.dtype + "'");
    try {
      e.shape = parse_shape(v["shape"], where);
    } catch (const SafetensorsError& err) {
      fail(err.what());
    }
    const auto& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(where + ": data_offsets must be two non-negative integers [begin, end]");
    e.begin = off[0].get<size_t>();
    e.end = off[1].get<size_t>();
    if (e.begin > e.end) fail(fmt::format("{}: data_offsets [{}, {}] end before they begin", where, e.begin, e.end));
    if (e.end > data_size)
      fail(fmt::format("{}: data_offsets [{}, {}] run past the end of the {}-byte data area", where, e.begin,
                       e.end, data_size));
    size_t numel = 1;
    for (int64_t d : e.shape) numel *= static_cast<size_t>(d);
    if (numel * dt->bytes != e.end - e.begin)
      fail(fmt::format("{}: shape [{}] of {} needs {} bytes but data_offsets span {}", where,
                       fmt::join(e.shape, ", "), e.dtype, numel * dt->bytes, e.end - e.begin));
    entries_.push_back(std::move(e));
  }
  std::sort(entries_.begin(), entries_.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  size_t expected = 0;
  for (size_t i = 0; i < entries_.size(); ++i) {
    const TensorEntry& e = entries_[i];
    if (e.begin < expected)
      fail(fmt::format("tensors '{}' and '{}' overlap in the data area", entries_[i - 1].name, e.name));
    if (e.begin > expected)
      fail(fmt::format("tensor '{}': {} unclaimed bytes before it in the data area", e.name, e.begin - expected));
    expected = e.end;
    index_[e.name] = i;
  }
  if (expected != data_size)
    fail(fmt::format("{} bytes after the last tensor are not claimed by the header", data_size - expected));
}

SafetensorsFile::~SafetensorsFile() {
  if (map_) ::munmap(map_, size_);
}

const TensorEntry& SafetensorsFile::entry(const std::string& name) const {
  auto it = index_.find(name);
  if (it == index_.end()) throw SafetensorsError(path_ + ": no tensor named '" + name + "'");
  return entries_[it->second];
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const TensorEntry& e = entry(name);
  const DtypeInfo* dt = find_dtype(e.dtype);
  torch::Tensor out = torch::empty(e.shape, torch::TensorOptions().dtype(dt->type));
  if (e.end > e.begin) std::memcpy(out.data_ptr(), static_cast<const char*>(map_) + data_start_ + e.begin, e.end - e.begin);
  return out;
}

void save_safetensors(const std::string& path, const NamedTensors& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header;
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<torch::Tensor> data;
  std::set<std::string> names;
  size_t offset = 0;
  for (const auto& [name, t] : tensors) {
    if (!names.insert(name).second) throw SafetensorsError(path + ": tensor '" + name + "' given twice");
    const DtypeInfo& dt = dtype_of(t.scalar_type(), name);
    torch::Tensor c = t.detach().to(torch::kCPU).contiguous();
    size_t n = static_cast<size_t>(c.numel()) * dt.bytes;
    header[name] = {{"dtype", dt.name}, {"shape", c.sizes().vec()}, {"data_offsets", {offset, offset + n}}};
    offset += n;
    data.push_back(c);
  }
  std::string text = header.dump();
  text.append((8 - text.size() % 8) % 8, ' ');  // data area starts 8-byte aligned
  uint64_t len = text.size();
  AtomicFile file(path);
  file.write(&len, 8);
  file.write(text.data(), text.size());
  for (const auto& c : data)
    if (c.numel() > 0) file.write(c.data_ptr(), static_cast<size_t>(c.numel()) * c.element_size());
  file.commit();
}

void write_file_atomic(const std::string& path, const std::string& bytes) {
  AtomicFile file(path);
  file.write(bytes.data(), bytes.size());
  file.commit();
}

namespace {

constexpr const char* kIndexName = "model.safetensors.index.json";

// The shard files an index names, in order, with the index's own view of which tensor lives where.
std::vector<std::string> index_shards(const std::string& index_path, std::map<std::string, std::string>& weight_map) {
  const std::string text = read_regular_file<SafetensorsError>(index_path, 256 * kMiB, "cannot open");
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& e) {
    throw SafetensorsError(index_path + ": not valid JSON: " + e.what());
  }
  if (!j.is_object() || !j.contains("weight_map") || !j["weight_map"].is_object())
    throw SafetensorsError(index_path + ": no \"weight_map\" object");
  std::vector<std::string> shards;
  for (auto it = j["weight_map"].begin(); it != j["weight_map"].end(); ++it) {
    if (!it.value().is_string()) throw SafetensorsError(index_path + ": weight_map['" + it.key() + "'] is not a file name");
    std::string shard = it.value().get<std::string>();
    weight_map[it.key()] = shard;
    if (std::find(shards.begin(), shards.end(), shard) == shards.end()) shards.push_back(shard);
  }
  return shards;
}

bool is_index(const std::string& path) { return path.size() >= 5 && path.substr(path.size() - 5) == ".json"; }

}  // namespace

std::string read_latest_pointer(const std::string& run_dir) {
  const fs::path pointer = fs::path(run_dir) / "latest";
  if (!fs::is_regular_file(pointer)) return "";
  std::ifstream in(pointer);
  std::string name;
  std::getline(in, name);
  name.erase(name.find_last_not_of(" \n\r\t") + 1);
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..")
    throw SafetensorsError(pointer.string() + ": names '" + name + "', not a checkpoint folder inside " + run_dir);
  return (fs::path(run_dir) / name).string();
}

std::string resolve_model_path(const std::string& path) {
  if (fs::path(path).filename() == "latest" && fs::is_regular_file(path))
    return resolve_model_path(fs::path(path).parent_path().string());
  if (!fs::is_directory(path)) return path;
  for (const char* name : {"model.safetensors", kIndexName})
    if (fs::exists(fs::path(path) / name)) return (fs::path(path) / name).string();
  const std::string checkpoint = read_latest_pointer(path);
  if (!checkpoint.empty()) {
    if (!fs::is_directory(checkpoint))
      throw SafetensorsError(path + "/latest: names " + checkpoint + ", which does not exist");
    return resolve_model_path(checkpoint);
  }
  throw SafetensorsError(path + ": folder holds neither model.safetensors nor " + kIndexName +
                         " nor a `latest` checkpoint pointer");
}

NamedTensors load_tensors(const std::string& path_in) {
  std::string path = resolve_model_path(path_in);
  NamedTensors out;
  if (!is_index(path)) {
    SafetensorsFile file(path);
    for (const auto& e : file.entries()) out.emplace_back(e.name, file.tensor(e.name));
    return out;
  }
  std::map<std::string, std::string> weight_map;
  std::set<std::string> seen;
  for (const auto& shard : index_shards(path, weight_map)) {
    std::string shard_path = (fs::path(path).parent_path() / shard).string();
    SafetensorsFile file(shard_path);
    for (const auto& e : file.entries()) {
      auto it = weight_map.find(e.name);
      if (it == weight_map.end() || it->second != shard)
        throw SafetensorsError(shard_path + ": tensor '" + e.name + "' is not assigned to this shard by " + path);
      if (!seen.insert(e.name).second) throw SafetensorsError(path + ": tensor '" + e.name + "' appears in two shards");
      out.emplace_back(e.name, file.tensor(e.name));
    }
  }
  for (const auto& [name, shard] : weight_map)
    if (!seen.count(name)) throw SafetensorsError(path + ": tensor '" + name + "' is missing from shard " + shard);
  return out;
}

void save_sharded(const std::string& dir, const NamedTensors& tensors, size_t max_shard_bytes,
                  const std::map<std::string, std::string>& metadata) {
  fs::create_directories(dir);
  std::vector<NamedTensors> shards(1);
  size_t shard_bytes = 0, total = 0;
  for (const auto& nt : tensors) {
    size_t n = static_cast<size_t>(nt.second.numel()) * nt.second.element_size();
    if (!shards.back().empty() && shard_bytes + n > max_shard_bytes) shards.emplace_back(), shard_bytes = 0;
    shards.back().push_back(nt);
    shard_bytes += n, total += n;
  }
  nlohmann::ordered_json index;
  index["metadata"] = {{"total_size", total}};
  nlohmann::ordered_json weight_map = nlohmann::ordered_json::object();
  for (size_t i = 0; i < shards.size(); ++i) {
    std::string name = fmt::format("model-{:05d}-of-{:05d}.safetensors", i + 1, shards.size());
    save_safetensors((fs::path(dir) / name).string(), shards[i], metadata);
    for (const auto& nt : shards[i]) weight_map[nt.first] = name;
  }
  index["weight_map"] = weight_map;
  write_file_atomic((fs::path(dir) / kIndexName).string(), index.dump(2) + "\n");
}

std::string describe_safetensors(const std::string& path) {
  std::vector<std::string> files;
  if (fs::is_directory(path)) {
    for (const auto& entry : fs::directory_iterator(path))
      if (entry.path().extension() == ".safetensors") files.push_back(entry.path().string());
    std::sort(files.begin(), files.end());
    if (files.empty()) throw SafetensorsError(path + ": no .safetensors files in this folder");
  } else if (is_index(path)) {
    std::map<std::string, std::string> weight_map;
    for (const auto& shard : index_shards(path, weight_map)) files.push_back((fs::path(path).parent_path() / shard).string());
  } else {
    files.push_back(path);
  }
  std::ostringstream out;
  for (const auto& f : files) {
    SafetensorsFile file(f);
    size_t total = 0;
    out << f << "\n";
    for (const auto& [key, value] : file.metadata()) {
      std::string shown = value.size() > 200 ? value.substr(0, 200) + "..." : value;
      out << fmt::format("  metadata {}: {}\n", key, shown);
    }
    for (const auto& e : file.entries()) {
      out << fmt::format("  {:<64} {:<5} [{}] {} bytes\n", e.name, e.dtype, fmt::join(e.shape, ", "), e.end - e.begin);
      total += e.end - e.begin;
    }
    out << fmt::format("  {} tensors, {} bytes\n", file.entries().size(), total);
  }
  return out.str();
}

}  // namespace modalign
