// lib/io/safetensors: round trips of every dtype, sharded checkpoints, the writer's layout, and malformed
// files rejected with errors that say what is wrong.
#include "lib/io/safetensors.h"

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include "test_util.h"

namespace modalign {
namespace {

// A file from a header (JSON text) and a data area, exactly as given.
std::string raw_file(const test::TempDir& dir, const std::string& header, const std::string& data,
                     int64_t header_len = -1) {
  uint64_t len = header_len < 0 ? header.size() : static_cast<uint64_t>(header_len);
  std::string bytes(reinterpret_cast<const char*>(&len), 8);
  return dir.write("bad.safetensors", bytes + header + data);
}

void expect_rejected(const test::TempDir& dir, const std::string& header, const std::string& data,
                     std::initializer_list<std::string> pieces, int64_t header_len = -1) {
  std::string path = raw_file(dir, header, data, header_len);
  test::expect_error<SafetensorsError>([&] { SafetensorsFile file(path); }, pieces);
}

TEST(Safetensors, RoundTripEveryDtype) {
  test::TempDir dir;
  torch::manual_seed(0);
  NamedTensors tensors = {
      {"f64", torch::randn({2, 3}, torch::kFloat64)},      {"f32", torch::randn({4}, torch::kFloat32)},
      {"f16", torch::randn({3, 1}).to(torch::kFloat16)},    {"bf16", torch::randn({5}).to(torch::kBFloat16)},
      {"i64", torch::tensor({-1L, 1L << 40})},              {"i32", torch::tensor({-7, 9}, torch::kInt32)},
      {"i16", torch::tensor({-300, 300}, torch::kInt16)},   {"i8", torch::tensor({-5, 5}, torch::kInt8)},
      {"u8", torch::tensor({0, 255}, torch::kUInt8)},       {"bool", torch::tensor({true, false, true})},
      {"scalar", torch::tensor(3.5)},                       {"empty", torch::zeros({0, 4})},
      {"strided", torch::arange(12, torch::kFloat32).view({3, 4}).t()}};
  std::string path = (dir.path() / "all.safetensors").string();
  save_safetensors(path, tensors, {{"format", "pt"}, {"note", "round trip"}});
  SafetensorsFile file(path);
  EXPECT_EQ(file.metadata().at("note"), "round trip");
  ASSERT_EQ(file.entries().size(), tensors.size());
  for (const auto& [name, t] : tensors) {
    torch::Tensor back = file.tensor(name);
    EXPECT_EQ(back.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(back.sizes(), t.sizes()) << name;
    EXPECT_TRUE(torch::equal(back, t)) << name;
  }
  EXPECT_EQ(file.entry("bf16").dtype, "BF16");
  // Writer layout: 8-byte aligned header padded with spaces; no temp file left behind.
  std::string bytes = test::read_text(path);
  uint64_t len = 0;
  std::memcpy(&len, bytes.data(), 8);
  EXPECT_EQ(len % 8, 0u);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_FALSE(std::filesystem::exists(path + ".tmp"));
  test::expect_error<SafetensorsError>([&] { file.tensor("nope"); }, {"no tensor named 'nope'"});
}

TEST(Safetensors, ShardedIndexRoundTrip) {
  test::TempDir dir;
  NamedTensors tensors;
  for (int i = 0; i < 5; ++i) tensors.emplace_back("layer." + std::to_string(i), torch::full({10}, i, torch::kFloat32));
  save_sharded((dir.path() / "ckpt").string(), tensors, /*max_shard_bytes=*/80);  // two tensors per shard
  EXPECT_TRUE(std::filesystem::exists(dir.path() / "ckpt/model-00003-of-00003.safetensors"));
  auto index = nlohmann::json::parse(test::read_text((dir.path() / "ckpt/model.safetensors.index.json").string()));
  EXPECT_EQ(index["metadata"]["total_size"], 200);
  EXPECT_EQ(index["weight_map"]["layer.4"], "model-00003-of-00003.safetensors");
  for (const std::string& path : {(dir.path() / "ckpt").string(), (dir.path() / "ckpt/model.safetensors.index.json").string()}) {
    NamedTensors back = load_tensors(path);
    ASSERT_EQ(back.size(), 5u);
    for (int i = 0; i < 5; ++i) {
      EXPECT_EQ(back[i].first, "layer." + std::to_string(i));
      EXPECT_TRUE(torch::equal(back[i].second, tensors[i].second));
    }
  }
  std::string text = describe_safetensors((dir.path() / "ckpt/model.safetensors.index.json").string());
  EXPECT_NE(text.find("layer.3"), std::string::npos);
  EXPECT_NE(text.find("F32   [10] 40 bytes"), std::string::npos) << text;
  // An index naming a tensor its shard lacks is an error.
  auto broken = index;
  broken["weight_map"]["ghost"] = "model-00001-of-00003.safetensors";
  std::string broken_path = dir.write("ckpt2/model.safetensors.index.json", broken.dump());
  std::filesystem::copy(dir.path() / "ckpt/model-00001-of-00003.safetensors", dir.path() / "ckpt2");
  std::filesystem::copy(dir.path() / "ckpt/model-00002-of-00003.safetensors", dir.path() / "ckpt2");
  std::filesystem::copy(dir.path() / "ckpt/model-00003-of-00003.safetensors", dir.path() / "ckpt2");
  test::expect_error<SafetensorsError>([&] { load_tensors(broken_path); }, {"tensor 'ghost' is missing from shard"});
  test::expect_error<SafetensorsError>([&] { load_tensors(dir.path().string()); },
                                       {"neither model.safetensors nor model.safetensors.index.json"});
}

TEST(Safetensors, WriterRejectsDuplicateNames) {
  test::TempDir dir;
  test::expect_error<SafetensorsError>(
      [&] { save_safetensors((dir.path() / "d.safetensors").string(), {{"a", torch::ones(1)}, {"a", torch::ones(1)}}); },
      {"tensor 'a' given twice"});
  EXPECT_FALSE(std::filesystem::exists(dir.path() / "d.safetensors.tmp"));
}

const std::string k8Bytes(8, '\0');

TEST(SafetensorsMalformed, Truncated) {
  test::TempDir dir;
  std::string path = dir.write("bad.safetensors", "abc");
  test::expect_error<SafetensorsError>([&] { SafetensorsFile f(path); }, {"truncated: 3 bytes"});
}

TEST(SafetensorsMalformed, HeaderTooLarge) {
  test::TempDir dir;
  expect_rejected(dir, "{}", "", {"header length 200000000 exceeds the 100000000 byte limit"}, 200'000'000);
}

TEST(SafetensorsMalformed, HeaderPastEndOfFile) {
  test::TempDir dir;
  expect_rejected(dir, "{}", "", {"header length 50 runs past the end of the 10-byte file"}, 50);
}

TEST(SafetensorsMalformed, BadJson) {
  test::TempDir dir;
  expect_rejected(dir, "{\"a\": {\"dtype\": ", "", {"header is not valid JSON"});
  expect_rejected(dir, "[1, 2]", "", {"header is not a JSON object"});
}

TEST(SafetensorsMalformed, UnknownDtype) {
  test::TempDir dir;
  expect_rejected(dir, R"({"a": {"dtype": "F8", "shape": [1], "data_offsets": [0, 1]}})", "x",
                  {"tensor 'a': unknown dtype 'F8'"});
}

TEST(SafetensorsMalformed, SizeMismatch) {
  test::TempDir dir;
  expect_rejected(dir, R"({"a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 20]}})", std::string(20, 'x'),
                  {"tensor 'a': shape [2, 3] of F32 needs 24 bytes but data_offsets span 20"});
}

TEST(SafetensorsMalformed, OffsetsOutOfRange) {
  test::TempDir dir;
  expect_rejected(dir, R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})", k8Bytes,
                  {"tensor 'a': data_offsets [0, 16] run past the end of the 8-byte data area"});
  expect_rejected(dir, R"({"a": {"dtype": "U8", "shape": [0], "data_offsets": [5, 3]}})", k8Bytes,
                  {"data_offsets [5, 3] end before they begin"});
  expect_rejected(dir, R"({"a": {"dtype": "U8", "shape": [1], "data_offsets": [-1, 0]}})", k8Bytes,
                  {"data_offsets must be two non-negative integers"});
}

TEST(SafetensorsMalformed, Overlapping) {
  test::TempDir dir;
  expect_rejected(dir,
                  R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},
                      "b": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})",
                  k8Bytes, {"tensors 'a' and 'b' overlap"});
}

TEST(SafetensorsMalformed, GapsAndTrailingBytes) {
  test::TempDir dir;
  expect_rejected(dir, R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [4, 8]}})", k8Bytes,
                  {"tensor 'a': 4 unclaimed bytes before it"});
  expect_rejected(dir, R"({"a": {"dtype": "F32", "shape": [1], "data_offsets": [0, 4]}})", k8Bytes,
                  {"4 bytes after the last tensor are not claimed"});
}

TEST(SafetensorsMalformed, DuplicateKey) {
  test::TempDir dir;
  expect_rejected(dir,
                  R"({"a": {"dtype": "U8", "shape": [4], "data_offsets": [0, 4]},
                      "a": {"dtype": "U8", "shape": [4], "data_offsets": [4, 8]}})",
                  k8Bytes, {"tensor 'a' appears twice in the header"});
}

TEST(SafetensorsMalformed, BadShapeAndFields) {
  test::TempDir dir;
  expect_rejected(dir, R"({"a": {"dtype": "U8", "shape": [-2], "data_offsets": [0, 0]}})", "",
                  {"tensor 'a': 'shape' holds -2"});
  expect_rejected(dir, R"({"a": {"dtype": "U8", "data_offsets": [0, 0]}})", "", {"tensor 'a': needs dtype, shape and data_offsets"});
  expect_rejected(dir, R"({"__metadata__": {"k": 1}})", "", {"__metadata__ value of 'k' is not a string"});
}

TEST(SafetensorsMalformed, MissingFile) {
  test::expect_error<SafetensorsError>([] { SafetensorsFile f("/nonexistent/x.safetensors"); },
                                       {"/nonexistent/x.safetensors: cannot open"});
}

}  // namespace
}  // namespace modalign
