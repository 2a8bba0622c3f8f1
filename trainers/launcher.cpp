#include "trainers/launcher.h"

#include "trainers/distributed.h"

#include <fmt/format.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace modalign {
namespace {

std::atomic<int> g_forward{0};
extern "C" void remember_signal(int sig) { g_forward = sig; }

int exit_code(int status) { return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status); }

std::string describe(int status) {
  return WIFEXITED(status) ? fmt::format("exited with code {}", WEXITSTATUS(status))
                           : fmt::format("was killed by signal {} ({})", WTERMSIG(status), strsignal(WTERMSIG(status)));
}

}  // namespace

int launch_workers(const std::vector<std::string>& argv, const LaunchOptions& o) {
  const int64_t nnodes = env_int("NNODES", 1), node_rank = env_int("NODE_RANK", 0);
  const int64_t world = nnodes * o.nproc;
  std::vector<pid_t> pids(static_cast<size_t>(o.nproc), -1);
  std::vector<bool> running(pids.size(), false);
  auto old_int = std::signal(SIGINT, remember_signal), old_term = std::signal(SIGTERM, remember_signal);
  const pid_t launcher = getpid();
  for (int64_t local = 0; local < o.nproc; ++local) {
    pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("launcher: fork failed");
    if (pid == 0) {
      // A worker stops with its launcher, kill -9 of the launcher included: SIGTERM (it survives exec)
      // makes the ranks agree to finish the step, save and exit.
      prctl(PR_SET_PDEATHSIG, SIGTERM);
      if (getppid() != launcher) _exit(1);  // the launcher died before prctl took effect
      setenv("RANK", std::to_string(node_rank * o.nproc + local).c_str(), 1);
      setenv("LOCAL_RANK", std::to_string(local).c_str(), 1);
      setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      setenv("MASTER_ADDR", o.master_addr.c_str(), 1);
      setenv("MASTER_PORT", std::to_string(o.master_port).c_str(), 1);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv("/proc/self/exe", args.data());
      std::fprintf(stderr, "launcher: cannot execute /proc/self/exe\n");
      _exit(127);
    }
    pids[static_cast<size_t>(local)] = pid;
    running[static_cast<size_t>(local)] = true;
  }
  int result = 0;
  size_t alive = pids.size();
  std::chrono::steady_clock::time_point kill_at{};
  bool stopping = false;
  while (alive > 0) {
    if (int sig = g_forward.exchange(0)) {  // the user stopped the launcher: the workers save and exit
      for (size_t i = 0; i < pids.size(); ++i)
        if (running[i]) kill(pids[i], sig);
    }
    int status = 0;
    pid_t done = waitpid(-1, &status, WNOHANG);
    if (done > 0) {
      for (size_t i = 0; i < pids.size(); ++i) {
        if (pids[i] != done || !running[i]) continue;
        running[i] = false;
        --alive;
        if (exit_code(status) != 0 && !stopping) {
          std::fprintf(stderr, "modalign: worker rank %lld %s; stopping the other %zu worker(s)\n",
                       static_cast<long long>(node_rank * o.nproc + static_cast<int64_t>(i)), describe(status).c_str(), alive);
          result = exit_code(status);
          stopping = true;
          kill_at = std::chrono::steady_clock::now() + std::chrono::milliseconds(static_cast<int64_t>(o.grace_s * 1000));
          for (size_t j = 0; j < pids.size(); ++j)
            if (running[j]) kill(pids[j], SIGTERM);
        }
      }
      continue;
    }
    if (stopping && std::chrono::steady_clock::now() > kill_at)
      for (size_t j = 0; j < pids.size(); ++j)
        if (running[j]) kill(pids[j], SIGKILL);
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  std::signal(SIGINT, old_int);
  std::signal(SIGTERM, old_term);
  return result;
}

}  // namespace modalign
