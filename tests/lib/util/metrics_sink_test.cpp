// lib/util/metrics_sink: records read back as JSON lines, non-finite values as null, appends on reopen.
#include "lib/util/metrics_sink.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cmath>
#include <sstream>

#include "test_util.h"

namespace modalign {
namespace {

std::vector<nlohmann::json> read_lines(const std::string& path) {
  std::stringstream in(test::read_text(path));
  std::vector<nlohmann::json> out;
  for (std::string line; std::getline(in, line);) out.push_back(nlohmann::json::parse(line));
  return out;
}

TEST(MetricsSink, WritesOneFlushedObjectPerLineAndAppends) {
  test::TempDir dir;
  std::string path = (dir.path() / "run/metrics.jsonl").string();
  {
    MetricsSink sink(path);
    sink.write("train", 1, {{"loss", 2.5}});
    auto lines = read_lines(path);  // flushed before the sink is closed
    ASSERT_EQ(lines.size(), 1u);
    EXPECT_EQ(lines[0]["kind"], "train");
    EXPECT_DOUBLE_EQ(lines[0]["loss"].get<double>(), 2.5);
  }
  MetricsSink again(path);
  again.write("eval", 2, {{"loss", std::nan("")}, {"acc", INFINITY}});
  auto lines = read_lines(path);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[1]["kind"], "eval");
  EXPECT_TRUE(lines[1]["loss"].is_null());
  EXPECT_TRUE(lines[1]["acc"].is_null());
  EXPECT_TRUE(lines[1]["step"].is_number_integer());  // "step": 2, not 2.0
  EXPECT_EQ(lines[1]["step"].get<int>(), 2);
}

TEST(MetricsSink, UnwritablePathIsAClearError) {
  test::TempDir dir;
  std::string blocker = dir.write("file", "x");
  test::expect_error<std::exception>([&] { MetricsSink sink(blocker + "/metrics.jsonl"); }, {"file"});
}

}  // namespace
}  // namespace modalign
