// Console and file logging for a run: spdlog to the console and to `output_dir/train.log`.
#pragma once
#include <string>

#include "lib/config/run_config.h"

namespace modalign {

// Installs the default logger: console (stderr) plus `log_file` when not empty (appended, so a resumed
// run continues the same file). Safe to call again; the last call wins.
void setup_logging(LogLevel level, const std::string& log_file = "");

}  // namespace modalign
