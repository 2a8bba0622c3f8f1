// Opening what users name: only regular files, of at most a given size. A FIFO, device or directory
// would block or abort a reader (stb, SentencePiece, an ifstream), so each reader checks first and
// reports the path and the problem instead; limits keep a wrong path from exhausting memory.
#pragma once
#include <cstdint>
#include <stdexcept>
#include <string>

namespace modalign {

inline constexpr uint64_t kMiB = uint64_t{1} << 20;

// "" when `path` is a regular file of at most max_bytes, else what is wrong with it ("no such file",
// "is a directory", "is a FIFO", "is a device or socket", "is 5.0 GiB, more than the 1.0 GiB limit").
std::string file_problem(const std::string& path, uint64_t max_bytes);

// The whole content of a regular file of at most max_bytes; otherwise "" with `problem` set to what is
// wrong (as file_problem says, or why it could not be read).
std::string try_read_regular_file(const std::string& path, uint64_t max_bytes, std::string& problem);

// The same, throwing Error("<path>: <what>: <problem>") (or "<path>: <problem>" without `what`).
template <class Error = std::runtime_error>
std::string read_regular_file(const std::string& path, uint64_t max_bytes, const std::string& what = "") {
  std::string problem;
  std::string content = try_read_regular_file(path, max_bytes, problem);
  if (!problem.empty()) throw Error(path + ": " + (what.empty() ? "" : what + ": ") + problem);
  return content;
}

}  // namespace modalign
