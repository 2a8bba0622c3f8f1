// SIGINT/SIGTERM during training: the handler only records the signal; the trainer finishes the step,
// saves a checkpoint and returns (data-parallel ranks agree through the step's all-reduce).
#pragma once

namespace modalign {

// Installs the handlers for its lifetime (and clears any earlier request); restores the previous ones.
class StopSignalScope {
 public:
  StopSignalScope();
  ~StopSignalScope();
  StopSignalScope(const StopSignalScope&) = delete;
  StopSignalScope& operator=(const StopSignalScope&) = delete;

 private:
  void (*old_int_)(int);
  void (*old_term_)(int);
};

// Whether SIGINT or SIGTERM arrived since the innermost StopSignalScope was installed.
bool stop_requested();

}  // namespace modalign
