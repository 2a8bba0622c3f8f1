#include "trainers/stop_signal.h"

#include <atomic>
#include <csignal>

namespace modalign {
namespace {

std::atomic<int> g_signal{0};
extern "C" void on_signal(int sig) { g_signal = sig; }

}  // namespace

StopSignalScope::StopSignalScope() {
  g_signal = 0;
  old_int_ = std::signal(SIGINT, on_signal);
  old_term_ = std::signal(SIGTERM, on_signal);
}

StopSignalScope::~StopSignalScope() {
  std::signal(SIGINT, old_int_);
  std::signal(SIGTERM, old_term_);
}

bool stop_requested() { return g_signal != 0; }

}  // namespace modalign
