#include "trainers/checkpoint.h"

#include <fcntl.h>
#include <fmt/chrono.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>
#include <random>
#include <filesystem>
#include <fmt/format.h>
#include <fstream>
#include <sstream>

#include "lib/io/files.h"

namespace modalign {
namespace fs = std::filesystem;
namespace {

constexpr const char* kFiles[] = {"model.safetensors", "optimizer.safetensors", "trainer_state.json", "config.yaml"};

void fsync_path(const fs::path& p, bool directory) {
  int fd = ::open(p.c_str(), (directory ? O_RDONLY | O_DIRECTORY : O_RDONLY) | O_CLOEXEC);
  if (fd >= 0) {
    ::fsync(fd);
    ::close(fd);
  }
}

std::string read_all(const fs::path& p) { return read_regular_file(p.string(), 256 * kMiB); }

// step-000200 -> 200, or -1 for anything else (including step-000200.tmp).
int64_t step_of(const fs::path& p) {
  std::string name = p.filename().string();
  if (name.rfind("step-", 0) != 0 || name.find('.') != std::string::npos) return -1;
  try {
    return std::stoll(name.substr(5));
  } catch (const std::exception&) {
    return -1;
  }
}

// The checkpoint folders (step-N, not .tmp) of output_dir, newest first.
std::vector<std::pair<int64_t, fs::path>> steps_newest_first(const std::string& output_dir) {
  std::vector<std::pair<int64_t, fs::path>> all;
  for (const auto& e : fs::directory_iterator(output_dir))
    if (e.is_directory() && step_of(e.path()) >= 0) all.emplace_back(step_of(e.path()), e.path());
  std::sort(all.rbegin(), all.rend());
  return all;
}

}  // namespace

std::vector<uint8_t> cpu_rng_state() {
  torch::Tensor state = at::detail::getDefaultCPUGenerator().get_state();
  return std::vector<uint8_t>(state.data_ptr<uint8_t>(), state.data_ptr<uint8_t>() + state.numel());
}

void set_cpu_rng_state(const std::vector<uint8_t>& bytes) {
  torch::Tensor state = torch::tensor(std::vector<int64_t>(bytes.begin(), bytes.end())).to(torch::kUInt8);
  at::Generator generator = at::detail::getDefaultCPUGenerator();  // a handle to the shared generator
  generator.set_state(state);
}

void TrainerState::record_loss(double loss) {
  losses.push_back(loss);
  if (losses.size() > kLossHistory) losses.erase(losses.begin(), losses.end() - static_cast<std::ptrdiff_t>(kLossHistory));
}

nlohmann::json TrainerState::to_json() const {
  return {{"step", step},
          {"epoch", cursor.epoch},
          {"data_cursor", {{"epoch", cursor.epoch}, {"batch", cursor.batch}}},
          {"skipped_samples", skipped_samples},
          {"nonfinite_total", nonfinite_total},
          {"nonfinite_streak", nonfinite_streak},
          {"losses", losses},
          {"seed", seed},
          {"global_batch", global_batch},
          {"cpu_rng_state", cpu_rng_state},
          {"run_id", run_id}};
}

TrainerState TrainerState::from_json(const nlohmann::json& j, const std::string& where) {
  TrainerState s;
  auto read = [&](const char* key, auto& out) {
    try {
      out = j.at(nlohmann::json::json_pointer(key)).get<std::decay_t<decltype(out)>>();
    } catch (const nlohmann::json::exception&) {
      throw std::runtime_error(fmt::format("{}: '{}' is missing or malformed", where, std::string(key).substr(1)));
    }
  };
  read("/step", s.step);
  read("/data_cursor/epoch", s.cursor.epoch);
  read("/data_cursor/batch", s.cursor.batch);
  read("/skipped_samples", s.skipped_samples);
  read("/nonfinite_total", s.nonfinite_total);
  read("/nonfinite_streak", s.nonfinite_streak);
  read("/losses", s.losses);
  read("/seed", s.seed);
  read("/global_batch", s.global_batch);
  read("/cpu_rng_state", s.cpu_rng_state);
  if (j.contains("run_id")) read("/run_id", s.run_id);  // absent in checkpoints of earlier versions
  return s;
}

std::string save_checkpoint(const std::string& output_dir, int64_t step, const CheckpointContents& c, int64_t keep,
                            const std::string& protect) {
  fs::create_directories(output_dir);
  const fs::path final_dir = fs::path(output_dir) / fmt::format("step-{:06d}", step);
  const fs::path tmp = fs::path(output_dir) / fmt::format("step-{:06d}.tmp", step);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  save_safetensors((tmp / "model.safetensors").string(), c.model, {{"format", "pt"}});
  save_safetensors((tmp / "optimizer.safetensors").string(), c.optimizer);
  write_file_atomic((tmp / "trainer_state.json").string(), c.trainer_state.to_json().dump(2) + "\n");
  write_file_atomic((tmp / "config.yaml").string(), c.config_yaml);
  fsync_path(tmp, true);
  fs::remove_all(final_dir);  // a re-save of the same step replaces it
  fs::rename(tmp, final_dir);
  fsync_path(output_dir, true);
  write_file_atomic((fs::path(output_dir) / "latest").string(), final_dir.filename().string() + "\n");
  if (keep > 0) {  // this run's checkpoints, newest first
    std::vector<fs::path> own;
    for (const auto& [step, dir] : steps_newest_first(output_dir)) {
      try {
        if (nlohmann::json::parse(read_all(dir / "trainer_state.json")).value("run_id", "") == c.trainer_state.run_id)
          own.push_back(dir);
      } catch (const std::exception&) {  // unreadable: not provably this run's, so kept
      }
    }
    for (size_t i = static_cast<size_t>(keep); i < own.size(); ++i)
      if (own[i] != final_dir && (protect.empty() || !fs::equivalent(own[i], protect))) fs::remove_all(own[i]);
  }
  return final_dir.string();
}

std::vector<std::string> checkpoint_folders(const std::string& output_dir) {
  std::vector<std::pair<int64_t, std::string>> found;
  if (fs::is_directory(output_dir))
    for (const auto& e : fs::directory_iterator(output_dir)) {
      if (e.path().filename().string().rfind("step-", 0) != 0) continue;
      fs::path name = e.path().filename();
      if (name.extension() == ".tmp") name.replace_extension();  // a leftover sorts with its step
      found.emplace_back(step_of(name), e.path().string());
    }
  std::sort(found.begin(), found.end());
  std::vector<std::string> out;
  for (auto& f : found) out.push_back(std::move(f.second));
  return out;
}

std::string new_run_id() {
  std::random_device rd;
  return fmt::format("{:%Y%m%d-%H%M%S}-{}-{:08x}", fmt::localtime(std::time(nullptr)), ::getpid(), rd());
}

OutputDirLock::OutputDirLock(const std::string& output_dir) : path_((fs::path(output_dir) / ".modalign.lock").string()) {
  fs::create_directories(output_dir);
  for (int attempt = 0; attempt < 2; ++attempt) {
    int fd = ::open(path_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd >= 0) {
      const std::string pid = std::to_string(::getpid()) + "\n";
      const bool written = ::write(fd, pid.data(), pid.size()) == static_cast<ssize_t>(pid.size());
      ::close(fd);
      if (!written) throw std::runtime_error(path_ + ": cannot write the lock file");
      return;
    }
    if (errno != EEXIST) throw std::runtime_error(path_ + ": cannot create the lock file (" + std::strerror(errno) + ")");
    long holder = 0;
    try {
      holder = std::stol(read_all(path_));
    } catch (const std::exception&) {  // empty or garbled: a crash while writing it; stale
    }
    if (holder > 0 && holder != ::getpid() && (::kill(static_cast<pid_t>(holder), 0) == 0 || errno == EPERM))
      throw std::runtime_error(fmt::format("{} is in use by another run (process {} holds {}); wait for it, stop it, or "
                                           "pick another train.output_dir",
                                           output_dir, holder, path_));
    fs::remove(path_);  // stale: its process is gone
  }
  throw std::runtime_error(path_ + ": another run took the lock at the same moment");
}

OutputDirLock::~OutputDirLock() {
  std::error_code ignored;
  fs::remove(path_, ignored);
}

std::string checkpoint_problem(const std::string& dir) {
  if (!fs::is_directory(dir)) return fs::exists(dir) ? "not a folder" : "no such folder";
  for (const char* f : kFiles)
    if (!fs::is_regular_file(fs::path(dir) / f)) return std::string("lacks ") + f;
  try {
    if (!nlohmann::json::parse(read_all(fs::path(dir) / "trainer_state.json")).contains("step"))
      return "trainer_state.json has no \"step\"";
    SafetensorsFile model((fs::path(dir) / "model.safetensors").string());
    SafetensorsFile optimizer((fs::path(dir) / "optimizer.safetensors").string());
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

bool checkpoint_complete(const std::string& dir) { return checkpoint_problem(dir).empty(); }

std::optional<std::string> find_latest_checkpoint(const std::string& output_dir) {
  if (!fs::is_directory(output_dir)) return std::nullopt;
  std::string pointed;
  try {
    pointed = read_latest_pointer(output_dir);
  } catch (const SafetensorsError&) {  // a broken pointer: fall back to the newest complete folder
  }
  if (!pointed.empty() && step_of(pointed) >= 0 && checkpoint_complete(pointed)) return pointed;
  for (const auto& [step, dir] : steps_newest_first(output_dir))
    if (checkpoint_complete(dir.string())) return dir.string();
  return std::nullopt;
}

std::string resolve_checkpoint(const std::string& path) {
  std::string dir = path;
  if (fs::path(path).filename() == "latest" && fs::is_regular_file(path)) dir = fs::path(path).parent_path().string();
  if (!fs::is_regular_file(fs::path(dir) / "trainer_state.json")) {
    const std::string pointed = read_latest_pointer(dir);
    if (!pointed.empty()) dir = pointed;
  }
  const std::string problem = checkpoint_problem(dir);
  if (!problem.empty())
    throw std::runtime_error(fmt::format("{}: not a complete checkpoint (nor a run folder whose `latest` names one): {}{}",
                                         path, dir == path ? "" : dir + ": ", problem));
  return dir;
}

CheckpointContents load_checkpoint(const std::string& dir) {
  for (const char* f : kFiles)
    if (!fs::is_regular_file(fs::path(dir) / f)) throw std::runtime_error(dir + ": checkpoint lacks " + f);
  CheckpointContents c;
  c.model = load_tensors((fs::path(dir) / "model.safetensors").string());
  c.optimizer = load_tensors((fs::path(dir) / "optimizer.safetensors").string());
  const std::string state_path = (fs::path(dir) / "trainer_state.json").string();
  nlohmann::json state;
  try {
    state = nlohmann::json::parse(read_all(state_path));
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(state_path + ": not valid JSON: " + e.what());
  }
  c.trainer_state = TrainerState::from_json(state, state_path);
  c.config_yaml = read_all(fs::path(dir) / "config.yaml");
  return c;
}

}  // namespace modalign
