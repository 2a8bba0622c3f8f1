// Data parallel on LibTorch's own c10d: a TCPStore rendezvous and a ProcessGroupGloo (NCCL in builds
// against a CUDA LibTorch). No model code here: the trainer asks for gradients summed over ranks, the
// loss counts summed, parameters broadcast from rank 0, and barriers around rank 0's checkpoints; the
// sharded optimizer (GroupedAdamW::shard) all-gathers the parameter ranges each rank updated.
//
// Each collective is bounded by distributed.timeout_s, so a dead or hung peer ends the run with an
// error instead of a hang (Gloo also fails at once when a peer's socket closes).
#pragma once
#include <memory>
#include <string>
#include <vector>

#include <torch/torch.h>

#include "lib/config/run_config.h"

namespace modalign {

// Who this process is. torchrun's variables win over the config: RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT. Without RANK/WORLD_SIZE this is the single process (rank 0 of 1).
struct WorldInfo {
  int64_t rank = 0, world_size = 1, local_rank = 0;
  std::string master_addr = "127.0.0.1";
  int64_t master_port = 29500;
  bool distributed() const { return world_size > 1; }
};
WorldInfo world_from_env(const DistributedConfig& config);
// An integer environment variable, `fallback` when unset or empty; ConfigError when it is not an integer.
int64_t env_int(const char* name, int64_t fallback);

class DataParallel {
 public:
  // Rendezvous of world.world_size processes; throws naming the address when peers do not arrive
  // within the timeout.
  DataParallel(const DistributedConfig& config, const WorldInfo& world);
  ~DataParallel();

  int64_t rank() const { return world_.rank; }
  int64_t world_size() const { return world_.world_size; }

  // Copies rank 0's values into every rank's tensors (in place).
  void broadcast(const std::vector<torch::Tensor>& tensors);
  // Sums in place over ranks. Tensors are flattened into buckets of one dtype and ~25 MB (a larger tensor
  // is a bucket of its own), one collective per bucket, at most 4 in flight (so at most 4 buckets' copies).
  void all_reduce_sum(const std::vector<torch::Tensor>& tensors);
  // Sums the gradients of `params` over ranks. A parameter without a gradient on this rank takes part
  // with zeros; one without a gradient on every rank keeps none (as a single process would).
  void all_reduce_grads(const std::vector<torch::Tensor>& params);
  // Every rank's `t` (same shape and dtype everywhere), in rank order.
  std::vector<torch::Tensor> all_gather(const torch::Tensor& t);
  void barrier();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  WorldInfo world_;
};

}  // namespace modalign
