// Helpers shared by the tests: a scratch folder that removes itself, file writing, and a matcher-free
// way to assert that a call throws an exception whose message contains given pieces.
#pragma once
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <initializer_list>
#include <random>
#include <string>

namespace modalign::test {

class TempDir {
 public:
  TempDir() {
    std::random_device rd;
    path_ = std::filesystem::temp_directory_path() / ("modalign_test_" + std::to_string(rd()) + std::to_string(rd()));
    std::filesystem::create_directories(path_);
  }
  ~TempDir() { std::filesystem::remove_all(path_); }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  // Writes `text` to path()/name (creating folders) and returns the full path.
  std::string write(const std::string& name, const std::string& text) const {
    std::filesystem::path p = path_ / name;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }

 private:
  std::filesystem::path path_;
};

inline std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Runs f, expects an exception of type E whose what() contains every piece.
template <class E = std::exception, class F>
void expect_error(F&& f, std::initializer_list<std::string> pieces) {
  try {
    f();
  } catch (const E& e) {
    std::string msg = e.what();
    for (const auto& piece : pieces) EXPECT_NE(msg.find(piece), std::string::npos) << "missing '" << piece << "' in: " << msg;
    return;
  }
  ADD_FAILURE() << "expected an exception mentioning '" << *pieces.begin() << "'";
}

inline std::string golden_path() { return std::string(MODALIGN_TEST_DATA_DIR) + "/golden/llava_tiny_golden.safetensors"; }
inline std::string qwen_golden_path() {
  return std::string(MODALIGN_TEST_DATA_DIR) + "/golden/qwen2_5_vl_tiny_golden.safetensors";
}

}  // namespace modalign::test
