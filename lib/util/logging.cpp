#include "lib/util/logging.h"

#include <spdlog/sinks/basic_file_sink.h>
#include <spdlog/sinks/stdout_color_sinks.h>
#include <spdlog/spdlog.h>

#include <filesystem>

namespace modalign {

void setup_logging(LogLevel level, const std::string& log_file) {
  std::vector<spdlog::sink_ptr> sinks{std::make_shared<spdlog::sinks::stderr_color_sink_mt>()};
  if (!log_file.empty()) {
    std::filesystem::path parent = std::filesystem::path(log_file).parent_path();
    if (!parent.empty()) std::filesystem::create_directories(parent);
    sinks.push_back(std::make_shared<spdlog::sinks::basic_file_sink_mt>(log_file, /*truncate=*/false));
  }
  auto logger = std::make_shared<spdlog::logger>("modalign", sinks.begin(), sinks.end());
  logger->set_pattern("%Y-%m-%d %H:%M:%S %^%l%$ %v");
  static constexpr spdlog::level::level_enum kLevels[] = {spdlog::level::debug, spdlog::level::info,
                                                          spdlog::level::warn, spdlog::level::err};
  logger->set_level(kLevels[static_cast<int>(level)]);
  logger->flush_on(spdlog::level::info);
  spdlog::set_default_logger(logger);
}

}  // namespace modalign
