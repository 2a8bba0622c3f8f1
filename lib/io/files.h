// Opening what users name: only regular files, of at most a given size. A FIFO, device or directory
// would block or abort a reader (stb, SentencePiece, an ifstream), so each reader checks first and
// reports the path and the problem instead; limits keep a wrong path from exhausting memory.
#pragma once
#include <cstdint>
#include <string>

namespace modalign {

inline constexpr uint64_t kMiB = uint64_t{1} << 20;

// "" when `path` is a regular file of at most max_bytes, else what is wrong with it ("no such file",
// "is a directory", "is a FIFO", "is a device or socket", "is 5.0 GiB, more than the 1.0 GiB limit").
std::string file_problem(const std::string& path, uint64_t max_bytes);

// The whole content of a regular file of at most max_bytes; throws std::runtime_error "<path>: <problem>".
std::string read_regular_file(const std::string& path, uint64_t max_bytes);

}  // namespace modalign
