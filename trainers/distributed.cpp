#include "trainers/distributed.h"

#include <fmt/format.h>
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#include <torch/csrc/distributed/c10d/TCPStore.hpp>
#ifdef USE_C10D_NCCL
#include <torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp>
#endif

#include <chrono>
#include <cstdlib>
#include <map>

namespace modalign {
namespace {

constexpr int64_t kBucketBytes = 25 << 20;  // as torch DDP's default bucket_cap_mb
constexpr size_t kBucketsInFlight = 4;      // all-reduces launched before the oldest is waited for

}  // namespace

int64_t env_int(const char* name, int64_t fallback) {
  const char* v = std::getenv(name);
  if (!v || !*v) return fallback;
  char* end = nullptr;
  long long x = std::strtoll(v, &end, 10);
  if (*end) throw ConfigError(fmt::format("environment variable {}='{}' is not an integer", name, v));
  return x;
}

WorldInfo world_from_env(const DistributedConfig& config) {
  WorldInfo w;
  w.rank = env_int("RANK", 0);
  w.world_size = env_int("WORLD_SIZE", 1);
  w.local_rank = env_int("LOCAL_RANK", w.rank);
  const char* addr = std::getenv("MASTER_ADDR");
  w.master_addr = addr && *addr ? addr : config.master_addr;
  w.master_port = env_int("MASTER_PORT", config.master_port);
  if (w.world_size < 1 || w.rank < 0 || w.rank >= w.world_size)
    throw ConfigError(fmt::format("RANK={} and WORLD_SIZE={} do not describe a rank of the world", w.rank, w.world_size));
  return w;
}

struct DataParallel::Impl {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::ProcessGroup> group;
};

DataParallel::DataParallel(const DistributedConfig& config, const WorldInfo& world)
    : impl_(std::make_unique<Impl>()), world_(world) {
  const auto timeout = std::chrono::milliseconds(static_cast<int64_t>(config.timeout_s * 1000));
  c10d::TCPStoreOptions o;
  o.port = static_cast<uint16_t>(world.master_port);
  o.isServer = world.rank == 0;
  o.numWorkers = static_cast<size_t>(world.world_size);
  o.timeout = timeout;
  try {
    impl_->store = c10::make_intrusive<c10d::TCPStore>(world.master_addr, o);
    if (config.backend == Backend::Nccl) {
#ifdef USE_C10D_NCCL
      auto opts = c10d::ProcessGroupNCCL::Options::create();
      opts->timeout = timeout;
      impl_->group = c10::make_intrusive<c10d::ProcessGroupNCCL>(impl_->store, world.rank, world.world_size, opts);
#else
      throw ConfigError("distributed.backend nccl: this build's LibTorch has no NCCL (build against a CUDA LibTorch "
                        "with CMAKE_PREFIX_PATH, or use gloo)");
#endif
    } else {
      auto opts = c10d::ProcessGroupGloo::Options::create(timeout);
      opts->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(world.master_addr));
      impl_->group = c10::make_intrusive<c10d::ProcessGroupGloo>(impl_->store, world.rank, world.world_size, opts);
    }
  } catch (const ConfigError&) {
    throw;
  } catch (const std::exception& e) {
    throw std::runtime_error(fmt::format("rank {} of {}: rendezvous at {}:{} failed within {} s: {}", world.rank,
                                         world.world_size, world.master_addr, world.master_port, config.timeout_s,
                                         e.what()));
  }
}

DataParallel::~DataParallel() = default;

namespace {
// Gloo (LibTorch 1.13, CPU) has no bfloat16: such tensors travel as float32, which holds each value exactly
// (sums are then rounded once, at the end).
bool widened(const torch::Tensor& t) { return t.is_cpu() && t.scalar_type() == torch::kBFloat16; }
torch::Tensor wire(const torch::Tensor& t) { return widened(t) ? t.to(torch::kFloat32) : t.contiguous(); }
}  // namespace

void DataParallel::broadcast(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  for (const torch::Tensor& t : tensors) {
    std::vector<at::Tensor> one{wire(t)};
    impl_->group->broadcast(one)->wait();
    if (!one[0].is_same(t)) t.copy_(one[0]);
  }
}

void DataParallel::all_reduce_sum(const std::vector<torch::Tensor>& tensors) {
  torch::NoGradGuard no_grad;
  // Buckets of one dtype and device, in the given order (the same on every rank).
  std::vector<std::vector<torch::Tensor>> buckets;
  std::vector<int64_t> bytes;                                      // per bucket
  std::map<std::pair<c10::ScalarType, std::string>, size_t> open;  // (dtype, device) -> bucket being filled
  for (const torch::Tensor& t : tensors) {
    const int64_t n = static_cast<int64_t>(t.nbytes());
    auto it = open.find({t.scalar_type(), t.device().str()});
    if (it == open.end() || bytes[it->second] + n > kBucketBytes) {
      buckets.emplace_back();
      bytes.push_back(0);
      it = open.insert_or_assign({t.scalar_type(), t.device().str()}, buckets.size() - 1).first;
    }
    buckets[it->second].push_back(t);
    bytes[it->second] += n;
  }
  // At most kBucketsInFlight flat copies exist at a time (a 7B model's gradients would otherwise be copied
  // whole before the first wait).
  std::vector<std::vector<at::Tensor>> flat(buckets.size());
  std::vector<c10::intrusive_ptr<c10d::Work>> works(buckets.size());
  auto finish = [&](size_t b) {
    works[b]->wait();
    int64_t offset = 0;
    for (const auto& t : buckets[b]) {
      t.copy_(flat[b][0].slice(0, offset, offset + t.numel()).view(t.sizes()));
      offset += t.numel();
    }
    flat[b].clear();
  };
  for (size_t b = 0; b < buckets.size(); ++b) {
    std::vector<torch::Tensor> parts;
    for (const auto& t : buckets[b]) parts.push_back(t.reshape({-1}));
    flat[b] = {wire(torch::cat(parts))};
    works[b] = impl_->group->allreduce(flat[b]);
    if (b >= kBucketsInFlight) finish(b - kBucketsInFlight);
  }
  for (size_t b = buckets.size() > kBucketsInFlight ? buckets.size() - kBucketsInFlight : 0; b < buckets.size(); ++b)
    finish(b);
}

void DataParallel::all_reduce_grads(const std::vector<torch::Tensor>& params) {
  // has[i] = 1 where this rank has a gradient; summed with the gradients so that "none anywhere" survives.
  torch::Tensor has = torch::zeros({static_cast<int64_t>(params.size())}, torch::kFloat32);
  std::vector<torch::Tensor> grads;
  for (size_t i = 0; i < params.size(); ++i) {
    torch::Tensor p = params[i];
    if (p.grad().defined()) has[static_cast<int64_t>(i)] = 1;
    else p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.grad());
  }
  grads.push_back(has.to(params.empty() ? torch::kCPU : params.front().device()));
  all_reduce_sum(grads);
  torch::Tensor anywhere = grads.back().cpu();
  for (size_t i = 0; i < params.size(); ++i)
    if (anywhere[static_cast<int64_t>(i)].item<float>() == 0) params[i].mutable_grad() = torch::Tensor();
}

std::vector<torch::Tensor> DataParallel::all_gather(const torch::Tensor& t) {
  torch::NoGradGuard no_grad;
  std::vector<at::Tensor> in{wire(t)};
  std::vector<std::vector<at::Tensor>> out(1);
  for (int64_t r = 0; r < world_.world_size; ++r) out[0].push_back(torch::empty_like(in[0], torch::MemoryFormat::Contiguous));
  impl_->group->allgather(out, in)->wait();
  if (widened(t))
    for (auto& part : out[0]) part = part.to(t.scalar_type());
  return out[0];
}

void DataParallel::barrier() { impl_->group->barrier()->wait(); }

}  // namespace modalign
