#include "lib/io/files.h"

#include <fmt/format.h>
#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

namespace modalign {
namespace {

std::string size_text(uint64_t bytes) {
  if (bytes >= (uint64_t{1} << 30)) return fmt::format("{:.1f} GiB", static_cast<double>(bytes) / (uint64_t{1} << 30));
  if (bytes >= kMiB) return fmt::format("{:.1f} MiB", static_cast<double>(bytes) / kMiB);
  return fmt::format("{} bytes", bytes);
}

}  // namespace

std::string file_problem(const std::string& path, uint64_t max_bytes) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return errno == ENOENT ? "no such file" : std::strerror(errno);
  if (S_ISDIR(st.st_mode)) return "is a directory, not a file";
  if (S_ISFIFO(st.st_mode)) return "is a FIFO, not a regular file";
  if (!S_ISREG(st.st_mode)) return "is a device or socket, not a regular file";
  if (static_cast<uint64_t>(st.st_size) > max_bytes)
    return fmt::format("is {}, more than the {} limit", size_text(static_cast<uint64_t>(st.st_size)), size_text(max_bytes));
  return "";
}

std::string try_read_regular_file(const std::string& path, uint64_t max_bytes, std::string& problem) {
  problem = file_problem(path, max_bytes);
  if (!problem.empty()) return "";
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    problem = fmt::format("cannot open ({})", std::strerror(errno));
    return "";
  }
  std::stringstream s;
  s << in.rdbuf();
  return s.str();
}

}  // namespace modalign
