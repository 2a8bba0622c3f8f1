// The local launcher behind `modalign train --nproc N` (torchrun's job on one machine): starts N copies
// of this executable with the same arguments and torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK,
// MASTER_ADDR, MASTER_PORT), forwards SIGINT/SIGTERM to them, and when one worker fails stops the
// others, so a run never lingers with a dead rank.
//
// Several machines: run the same command on each with NNODES and NODE_RANK set (and MASTER_ADDR/PORT
// naming node 0); ranks are NODE_RANK * N + local rank.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace modalign {

struct LaunchOptions {
  int64_t nproc = 1;
  std::string master_addr = "127.0.0.1";  // resolved by world_from_env (MASTER_ADDR/PORT over the config)
  int64_t master_port = 29500;
  double grace_s = 10;  // after a failure, how long the others get to exit before SIGKILL
};

// argv: this process's command line (argv[0] is replaced by /proc/self/exe). Returns 0 when every
// worker succeeded, else the first failure's exit code (128 + signal for a killed worker), after
// printing which rank failed.
int launch_workers(const std::vector<std::string>& argv, const LaunchOptions& options);

}  // namespace modalign
