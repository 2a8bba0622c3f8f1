// lib/data: image files and preprocessing by hand, chat templates token by token, label masks, the
// tokenisation-mismatch error, truncation, collation, sampler order and cursor restarts, the loader,
// bad data with its messages, and synth determinism.
#include <gtest/gtest.h>
#include <stb_image_write.h>

#include <nlohmann/json.hpp>

#include <map>
#include <set>

#include "lib/data/chat_template.h"
#include "lib/data/dataset.h"
#include "lib/data/image.h"
#include "lib/data/loader.h"
#include "lib/data/processor.h"
#include "lib/data/sampler.h"
#include "lib/data/synth.h"
#include "lib/io/safetensors.h"
#include "test_util.h"

namespace modalign {
namespace {
namespace fs = std::filesystem;

// One small synthetic benchmark (images + tokenizer) shared by the suite.
class Data : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new test::TempDir();
    SynthOptions o;
    o.out_dir = (dir_->path() / "synth").string();
    o.train = 24;
    o.eval = 4;
    o.image_size = 16;
    synthesize(o);
    tokenizer_ = new Tokenizer(o.out_dir + "/tokenizer.model");
  }
  static void TearDownTestSuite() {
    delete tokenizer_;
    delete dir_;
  }
  static std::string synth_dir() { return (dir_->path() / "synth").string(); }
  static DataConfig config() {
    DataConfig c;
    c.tokenizer = synth_dir() + "/tokenizer.model";
    c.image_folder = synth_dir();
    c.model_max_length = 256;
    return c;
  }
  static Example example(std::vector<Turn> turns, std::string image = "images/train_00000.png") {
    Example e;
    e.id = "ex";
    e.where = "test.json[0]";
    if (!image.empty()) e.images = {image};
    e.turns = std::move(turns);
    return e;
  }
  static std::vector<int64_t> enc(const std::string& s) { return tokenizer_->encode(s); }
  static test::TempDir* dir_;
  static Tokenizer* tokenizer_;
};
test::TempDir* Data::dir_ = nullptr;
Tokenizer* Data::tokenizer_ = nullptr;

RgbImage solid(int w, int h, uint8_t r, uint8_t g, uint8_t b) {
  RgbImage img{w, h, {}};
  for (int i = 0; i < w * h; ++i) img.pixels.insert(img.pixels.end(), {r, g, b});
  return img;
}

// ---------------------------------------------------------------- images

TEST_F(Data, PngAndJpegRoundTrips) {
  test::TempDir dir;
  RgbImage img = solid(5, 3, 10, 200, 30);
  img.pixels[0] = 255;  // top-left red channel
  std::string png = (dir.path() / "a.png").string();
  save_png(png, img);
  RgbImage back = load_image(png);
  EXPECT_EQ(back.width, 5);
  EXPECT_EQ(back.height, 3);
  EXPECT_EQ(back.pixels, img.pixels);  // lossless
  std::string jpg = (dir.path() / "a.jpg").string();
  RgbImage flat = solid(16, 16, 120, 60, 200);
  ASSERT_TRUE(stbi_write_jpg(jpg.c_str(), 16, 16, 3, flat.pixels.data(), 95));
  RgbImage j = load_image(jpg);
  ASSERT_EQ(j.pixels.size(), flat.pixels.size());
  for (size_t i = 0; i < j.pixels.size(); ++i) EXPECT_NEAR(j.pixels[i], flat.pixels[i], 3) << i;
}

TEST_F(Data, PadToSquareWithMeanColourAndNormalise) {
  // A 4x2 white image padded to 4x4: rows 0 and 3 take the mean colour int(mean * 255), rows 1-2 white.
  ImageOptions o;
  o.size = 4;
  torch::Tensor x = preprocess_image(solid(4, 2, 255, 255, 255), o);
  ASSERT_EQ(x.sizes(), (std::vector<int64_t>{3, 4, 4}));
  for (int c = 0; c < 3; ++c) {
    double pad = (static_cast<int>(o.mean[c] * 255) / 255.0 - o.mean[c]) / o.std[c];
    double white = (1.0 - o.mean[c]) / o.std[c];
    EXPECT_NEAR(x[c][0][0].item<double>(), pad, 1e-5);
    EXPECT_NEAR(x[c][3][3].item<double>(), pad, 1e-5);
    EXPECT_NEAR(x[c][1][2].item<double>(), white, 1e-5);
  }
}

TEST_F(Data, CenterCropKeepsTheMiddle) {
  // 6x2 image: columns 0-1 black, 2-3 white, 4-5 black. Crop mode resizes the short side (2 -> 2) and
  // keeps the middle 2x2: white. Normalisation with mean 0, std 1 leaves [0, 1] values.
  RgbImage img = solid(6, 2, 0, 0, 0);
  for (int y = 0; y < 2; ++y)
    for (int x = 2; x < 4; ++x)
      for (int c = 0; c < 3; ++c) img.pixels[(y * 6 + x) * 3 + c] = 255;
  ImageOptions o{2, AspectMode::Crop, {0, 0, 0}, {1, 1, 1}};
  torch::Tensor x = preprocess_image(img, o);
  EXPECT_TRUE(torch::allclose(x, torch::ones({3, 2, 2})));
  // Resizing a constant image keeps it constant.
  ImageOptions big{8, AspectMode::Pad, {0, 0, 0}, {1, 1, 1}};
  EXPECT_TRUE(torch::allclose(preprocess_image(solid(3, 3, 51, 102, 204), big)[2], torch::full({8, 8}, 0.8), 0, 1e-6));
}

TEST_F(Data, RegionsBecomeTargetsMovedLikeThePixels) {
  // An 8x4 image, boxes A = [0, 0, 4, 2] and B = [2, 0, 8, 4], a 4x4 model image of 2x2 patches (2 px).
  const std::vector<std::array<double, 4>> boxes{{0, 0, 4, 2}, {2, 0, 8, 4}};
  ImageOptions pad{4, AspectMode::Pad, {0, 0, 0}, {1, 1, 1}};
  // Pad: pasted at rows 2-5 of an 8x8 square, halved: A -> [0, 1, 2, 2], B -> [1, 1, 4, 3]. Covered area
  // per patch (union; A and B overlap on [1, 2] x [1, 2]): top-left 2, top-right 2, bottom-left 1,
  // bottom-right 2, of 1.75 x 4 in all.
  torch::Tensor t = region_target(boxes, 8, 4, pad, 2);
  EXPECT_TRUE(torch::allclose(t, torch::tensor({2.0, 2.0, 1.0, 2.0}) / 7.0, 0, 1e-6)) << t;
  // Crop: the short side stays 4, columns 2-5 are kept: A -> [-2, 0, 2, 2] (top-left patch, whole),
  // B -> [0, 0, 6, 4] (everything). Union per patch: 4, 4, 4, 4.
  ImageOptions crop{4, AspectMode::Crop, {0, 0, 0}, {1, 1, 1}};
  EXPECT_TRUE(torch::allclose(region_target(boxes, 8, 4, crop, 2), torch::full({4}, 0.25), 0, 1e-6));
  EXPECT_TRUE(torch::allclose(region_target({{0, 0, 4, 2}}, 8, 4, crop, 2), torch::tensor({1.0, 0.0, 0.0, 0.0}), 0, 1e-6));
  // A box the crop cuts away gives no target.
  EXPECT_EQ(region_target({{6, 2, 8, 4}}, 8, 4, crop, 2).sum().item<double>(), 0.0);

  // Through the processor and collator: the synth image is 16x16 (no move), 4x4 patches of 4 px.
  Processor processor(config(), ModelInterface{16, 16, 3, 512});
  Example e = example({{true, "<image>\nWhat colour is the circle?"}, {false, "red"}});
  e.regions = {{4, 4, 8, 12}};  // patches (1, 1) and (2, 1)
  Sample with = processor.process(e);
  Sample without = processor.process(example({{true, "<image>\nWhat colour is the circle?"}, {false, "red"}}));
  EXPECT_FALSE(without.region_target.defined());
  Batch b = processor.collate({without, with});
  torch::Tensor expected = torch::zeros({16});
  expected[5] = 0.5, expected[9] = 0.5;
  EXPECT_TRUE(torch::allclose(b.region_target[1], expected, 0, 1e-6));
  EXPECT_EQ(b.region_target[0].sum().item<double>(), 0.0);
  e.regions = {{20, 20, 30, 30}};
  test::expect_error<DataError>([&] { processor.process(e); }, {"(id ex)", "no region lies inside the 16x16 image"});
}

// ---------------------------------------------------------------- templates and labels

TEST_F(Data, VicunaTemplateStringAndLabelsTokenByToken) {
  Example e = example({{true, "<image>\nWhat colour is the circle?"}, {false, "red"}, {true, "And the square?"}, {false, "blue"}});
  std::string text;
  for (const auto& s : render(e, ChatTemplate::VicunaV1)) text += s.text;
  EXPECT_EQ(text, std::string(kVicunaSystem) +
                      " USER: <image>\nWhat colour is the circle? ASSISTANT: red</s>USER: And the square? ASSISTANT: blue</s>");
  TokenizeOptions o{ChatTemplate::VicunaV1, 3, {16}, 512, false};
  TokenizedExample t = tokenize_example(e, *tokenizer_, o);
  std::vector<int64_t> expected{1};
  std::vector<int64_t> labels{-100};
  auto add = [&](const std::vector<int64_t>& ids, bool trained) {
    for (int64_t id : ids) expected.push_back(id), labels.push_back(trained ? id : -100);
  };
  add(enc(std::string(kVicunaSystem) + " USER: "), false);
  add(std::vector<int64_t>(16, 3), false);
  add(enc("\nWhat colour is the circle? ASSISTANT:"), false);
  add(enc(" red"), true);
  add({2}, true);
  add(enc("USER: And the square? ASSISTANT:"), false);
  add(enc(" blue"), true);
  add({2}, true);
  EXPECT_EQ(t.input_ids, expected);
  EXPECT_EQ(t.labels, labels);
  std::vector<int64_t> trained;
  for (int64_t l : t.labels)
    if (l >= 0 && l != 2) trained.push_back(l);
  EXPECT_EQ(tokenizer_->decode(trained), "red blue");
  // prompt_only: everything up to the final reply, nothing trained.
  o.prompt_only = true;
  TokenizedExample p = tokenize_example(e, *tokenizer_, o);
  EXPECT_EQ(p.input_ids, std::vector<int64_t>(expected.begin(), expected.end() - static_cast<long>(enc(" blue").size()) - 1));
}

// ChatML with the real Qwen2 vocabulary: the system turn, the vision span and the role tokens are the ids
// Qwen2-VL's processor gives; only "red<|im_end|>" and "two<|im_end|>" are trained; no BOS.
TEST_F(Data, Qwen2VlTemplateWithTheQwenTokenizer) {
  Tokenizer qwen(std::string(MODALIGN_TEST_DATA_DIR) + "/golden/tokenizers/qwen2_subset.json");
  Example e = example({{true, "<image>\nWhat colour is the circle?"}, {false, "red"}, {true, "How many shapes are there?"}, {false, "two"}});
  TokenizeOptions o{ChatTemplate::Qwen2VL, 151655, {4}, 512, false};
  TokenizedExample t = tokenize_example(e, qwen, o);
  std::vector<int64_t> expected, labels;
  auto add = [&](const std::vector<int64_t>& ids, bool trained) {
    for (int64_t id : ids) expected.push_back(id), labels.push_back(trained ? id : -100);
  };
  add({151644, 8948, 198, 2610, 525, 264, 10950, 17847, 13, 151645, 198, 151644, 872, 198, 151652}, false);
  add(std::vector<int64_t>(4, 151655), false);
  add({151653, 198}, false);
  add(qwen.encode("What colour is the circle?"), false);
  add({151645, 198, 151644, 77091, 198}, false);
  add({1151, 151645}, true);  // "red"
  add({198, 151644, 872, 198}, false);
  add(qwen.encode("How many shapes are there?"), false);
  add({151645, 198, 151644, 77091, 198}, false);
  add(qwen.encode("two"), true);
  add({151645}, true);
  add({198}, false);
  EXPECT_EQ(t.input_ids, expected);
  EXPECT_EQ(t.labels, labels);
  // prompt_only ends with "<|im_start|>assistant\n", where generation starts.
  o.prompt_only = true;
  TokenizedExample p = tokenize_example(e, qwen, o);
  EXPECT_EQ(std::vector<int64_t>(p.input_ids.end() - 3, p.input_ids.end()), std::vector<int64_t>({151644, 77091, 198}));
  EXPECT_EQ(p.input_ids.size(), expected.size() - qwen.encode("two").size() - 2);
  // A SentencePiece model without the ChatML tokens cannot serve this template.
  DataConfig c = config();
  c.chat_template = ChatTemplate::Qwen2VL;
  test::expect_error<DataError>([&] { Processor pr(c, ModelInterface{16, 16, 3, 512}); },
                                {"chat_template qwen2_vl needs the token <|im_start|>"});
}

TEST_F(Data, PlainTemplate) {
  Example e = example({{true, "<image>\nDescribe."}, {false, "a red circle"}});
  TokenizedExample t = tokenize_example(e, *tokenizer_, {ChatTemplate::Plain, 3, {16}, 512, false});
  std::vector<int64_t> expected{1};
  expected.insert(expected.end(), 16, 3);
  std::vector<int64_t> caption = enc("a red circle");
  expected.insert(expected.end(), caption.begin(), caption.end());
  expected.push_back(2);
  EXPECT_EQ(t.input_ids, expected);
  for (size_t i = 0; i < 17; ++i) EXPECT_EQ(t.labels[i], -100);
  for (size_t i = 17; i < expected.size(); ++i) EXPECT_EQ(t.labels[i], expected[i]);
}

TEST_F(Data, TokenisationMismatchIsAnError) {
  // A tokenizer whose pieces may span spaces merges across the "ASSISTANT:" | " yes" turn boundary.
  test::TempDir dir;
  std::string corpus;
  for (int i = 0; i < 200; ++i) corpus += "USER: is it? ASSISTANT: yes\n";
  std::string path = dir.write("c.txt", corpus);
  Tokenizer::TrainOptions o;
  o.vocab_size = 80;
  o.pieces_may_span_words = true;
  Tokenizer::train(path, (dir.path() / "t.model").string(), o);
  Tokenizer merging((dir.path() / "t.model").string());
  Example e = example({{true, "is it?"}, {false, "yes"}}, "");
  test::expect_error<DataError>([&] { tokenize_example(e, merging, {ChatTemplate::VicunaV1, 3, {}, 512, false}); },
                                {"test.json[0] (id ex)", "tokenisation mismatch"});
}

TEST_F(Data, TruncationNeverCutsTheImageSpan) {
  Example e = example({{true, "<image>\nWhat colour is the circle?"}, {false, "red and blue and green and yellow"}});
  TokenizeOptions o{ChatTemplate::Plain, 3, {16}, 512, false};
  size_t full = tokenize_example(e, *tokenizer_, o).input_ids.size();
  o.max_length = static_cast<int64_t>(full) - 2;  // cuts the caption: fine
  TokenizedExample t = tokenize_example(e, *tokenizer_, o);
  EXPECT_EQ(t.input_ids.size(), full - 2);
  o.max_length = 10;  // inside the image span (positions 1..16): error
  test::expect_error<DataError>([&] { tokenize_example(e, *tokenizer_, o); },
                                {"(id ex)", "cannot fit: the image span ends at token 17 but model_max_length is 10"});
  o.max_length = 17;  // image fits, no caption token left
  test::expect_error<DataError>([&] { tokenize_example(e, *tokenizer_, o); }, {"no trained token left after truncation"});
}

// ---------------------------------------------------------------- dataset files: bad data

class BadData : public ::testing::Test {
 protected:
  void expect_bad(const std::string& name, const std::string& text, std::initializer_list<std::string> pieces) {
    std::string path = dir_.write(name, text);
    test::expect_error<DataError>([&] { load_dataset(path); }, pieces);
  }
  test::TempDir dir_;
};

TEST_F(BadData, Messages) {
  expect_bad("a.json", "[{\"id\": \"x\", \"conversations\": [}]", {"a.json:1: invalid JSON"});
  expect_bad("b.jsonl", "{\"id\": \"1\", \"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}, {\"from\": \"gpt\", \"value\": \"yo\"}]}\n{bad\n",
             {"b.jsonl:2: invalid JSON"});
  // A number beyond double range is nlohmann's out_of_range, not a parse_error (found by the fuzzer).
  expect_bad("big.json", "[{\"id\": 1e999}]", {"big.json: invalid JSON", "number overflow"});
  expect_bad("big.jsonl", "{\"id\": 1e999}\n", {"big.jsonl:1: invalid JSON", "number overflow"});
  expect_bad("c.json", "[{\"id\": \"s1\", \"conversations\": [{\"from\": \"human\", \"value\": \"hi\"}]}]",
             {"c.json[0] (id s1): the conversation has no assistant (gpt) turn"});
  expect_bad("d.json", "[{\"id\": \"s2\"}]", {"d.json[0] (id s2)", "missing \"conversations\""});
  expect_bad("e.json", "[{\"id\": \"s3\", \"conversations\": [{\"from\": \"gpt\", \"value\": \"a\"}]}]",
             {"(id s3): turn 0 is from gpt; turns must alternate"});
  expect_bad("f.json", "[{\"id\": \"s4\", \"conversations\": [{\"from\": \"robot\", \"value\": \"a\"}]}]",
             {"(id s4): turn from 'robot'"});
  expect_bad("g.json", "[{\"id\": \"s5\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image> hi\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}]",
             {"(id s5): the text holds <image> but the sample has no \"image\""});
  expect_bad("h.json", "[{\"id\": \"s6\", \"image\": \"x.png\", \"conversations\": [{\"from\": \"human\", \"value\": \"<image><image>\"}, {\"from\": \"gpt\", \"value\": \"a\"}]}]",
             {"(id s6): <image> appears more than once"});
  expect_bad("i.json", "[]", {"i.json: the dataset holds no samples"});
  expect_bad("k.json", "[{\"id\": \"s7\", \"hint\": 3, \"conversations\": [{\"from\": \"human\", \"value\": \"a\"}, {\"from\": \"gpt\", \"value\": \"b\"}]}]",
             {"(id s7): \"hint\" must be a string"});
  expect_bad("j.json", "  \n", {"j.json: empty dataset file"});
  const std::string turns = "\"conversations\": [{\"from\": \"human\", \"value\": \"a\"}, {\"from\": \"gpt\", \"value\": \"b\"}]";
  expect_bad("l.json", "[{\"id\": \"s8\", \"regions\": [[0, 0, 1, 1]], " + turns + "}]",
             {"(id s8): \"regions\" given but the sample has no \"image\""});
  expect_bad("m.json", "[{\"id\": \"s9\", \"image\": \"a.png\", \"regions\": [[0, 0, 1]], " + turns + "}]",
             {"(id s9): each region must be [x0, y0, x1, y1]", "[0,0,1]"});
  expect_bad("n.json", "[{\"id\": \"s10\", \"image\": \"a.png\", \"regions\": [[5, 0, 2, 1]], " + turns + "}]",
             {"(id s10): region [5,0,2,1] is empty"});
  test::expect_error<DataError>([&] { load_dataset((dir_.path() / "none.json").string()); }, {"none.json: cannot open"});
}

TEST_F(BadData, SeveralImagesNeedOnePlaceholderEachInHumanTurns) {
  const std::string two = "\"conversations\": [{\"from\": \"human\", \"value\": \"<image> left\"}, {\"from\": \"gpt\", "
                          "\"value\": \"a\"}, {\"from\": \"human\", \"value\": \"and <image>?\"}, {\"from\": \"gpt\", \"value\": \"b\"}]";
  std::string path = dir_.write("multi.json", "[{\"id\": \"m\", \"image\": [\"a.png\", \"b.png\"], " + two + "},"
                                              " {\"id\": \"n\", \"images\": [\"c.png\"], " + two.substr(0, two.find(", {\"from\": \"human\", \"value\": \"and")) + "]}]");
  auto examples = load_dataset(path);
  EXPECT_EQ(examples[0].images, (std::vector<std::string>{"a.png", "b.png"}));
  EXPECT_EQ(examples[0].turns[0].value, "<image> left");  // several images: placeholders stay where they are
  EXPECT_EQ(examples[0].turns[2].value, "and <image>?");
  EXPECT_EQ(examples[1].images, (std::vector<std::string>{"c.png"}));
  EXPECT_EQ(examples[1].turns[0].value, "<image>\nleft");  // one image: moved to the start, as LLaVA does
  expect_bad("p.json", "[{\"id\": \"s11\", \"image\": [\"a.png\", \"b.png\", \"c.png\"], " + two + "}]",
             {"(id s11): the sample has 3 images but its text holds 2 <image> placeholders"});
  expect_bad("q.json", "[{\"id\": \"s12\", \"image\": [\"a.png\", \"b.png\"], \"regions\": [[0, 0, 1, 1]], " + two + "}]",
             {"(id s12): \"regions\" given for a sample with 2 images"});
  expect_bad("r.json", "[{\"id\": \"s13\", \"image\": \"a.png\", \"images\": [\"b.png\"], " + two + "}]",
             {"(id s13): give either \"image\" or \"images\""});
  expect_bad("s.json", "[{\"id\": \"s14\", \"image\": [\"a.png\", 3], " + two + "}]",
             {"(id s14): \"image\" must be a path or a list of paths, got 3"});
  expect_bad("t.json", "[{\"id\": \"s15\", \"image\": [\"a.png\", \"b.png\"], \"conversations\": [{\"from\": \"human\", "
                       "\"value\": \"<image>\"}, {\"from\": \"gpt\", \"value\": \"<image>\"}]}]",
             {"(id s15): <image> appears in turn 1; only human turns may hold it"});
}

TEST_F(BadData, PlaceholderMovesToTheStart) {
  std::string path = dir_.write("ok.jsonl",
                                "{\"id\": 7, \"image\": \"a.png\", \"conversations\": [{\"from\": \"human\", \"value\": \"Look <image> here\"}, {\"from\": \"gpt\", \"value\": \"ok\"}]}\n\n"
                                "{\"id\": \"t\", \"hint\": \"red\", \"image\": \"b.png\", \"conversations\": [{\"from\": \"human\", \"value\": \"No tag\"}, {\"from\": \"gpt\", \"value\": \"ok\"}]}\n");
  auto examples = load_dataset(path);
  ASSERT_EQ(examples.size(), 2u);
  EXPECT_EQ(examples[0].id, "7");
  EXPECT_EQ(examples[0].turns[0].value, "<image>\nLook  here");
  EXPECT_EQ(examples[1].turns[0].value, "<image>\nNo tag");
  EXPECT_EQ(examples[1].where, path + ":3");
  EXPECT_EQ(examples[0].hint, "");
  EXPECT_EQ(examples[1].hint, "red");
}

TEST_F(Data, MissingAndCorruptImagesNameSampleAndFile) {
  Processor processor(config(), ModelInterface{16, 16, 3, 512});
  Example missing = example({{true, "<image>\nWhat?"}, {false, "red"}}, "images/nope.png");
  test::expect_error<DataError>([&] { processor.process(missing); }, {"test.json[0] (id ex)", "nope.png: image file not found"});
  std::string junk = (fs::path(synth_dir()) / "images" / "junk.png").string();
  std::ofstream(junk) << "not a png";
  Example corrupt = example({{true, "<image>\nWhat?"}, {false, "red"}}, "images/junk.png");
  test::expect_error<DataError>([&] { processor.process(corrupt); }, {"(id ex)", "junk.png: not a JPEG, PNG, BMP or GIF image"});
  std::string truncated = (fs::path(synth_dir()) / "images" / "truncated.png").string();
  std::ofstream(truncated) << std::string("\x89PNG\r\n\x1A\n\0\0\0\x0DIHDR", 16);
  test::expect_error<DataError>([&] { load_image(truncated); }, {"truncated.png: cannot decode PNG image ("});
  test::expect_error<DataError>([&] { Processor p(config(), ModelInterface{16, 16, 3, 32}); },
                                {"tokenizer has", "but the model's vocabulary has 32"});
  test::expect_error<DataError>([&] { Processor p(config(), ModelInterface{16, 16, 7, 512}); },
                                {"id 7 (the model's image_token_index) is not this tokenizer's <image>"});
}

// stb_image 2.27 writes out of bounds on this JPEG (found by tests/fuzz/image_fuzz): refused before decoding.
TEST_F(Data, JpegWithAnOversizedHuffmanTableIsRefusedBeforeDecoding) {
  const std::string path = std::string(MODALIGN_TEST_DATA_DIR) + "/fuzz/corpus/image/jpeg-dht-overflow.jpg";
  test::expect_error<DataError>([&] { load_image(path); }, {"jpeg-dht-overflow.jpg: corrupt JPEG: a Huffman table declares"});
  // The same checks pass a good JPEG and PNG through.
  const RgbImage jpeg = load_image(std::string(MODALIGN_TEST_DATA_DIR) + "/fuzz/corpus/image/small.jpg");
  const RgbImage png = load_image(std::string(MODALIGN_TEST_DATA_DIR) + "/fuzz/corpus/image/small.png");
  EXPECT_EQ(jpeg.width, 12);
  EXPECT_EQ(jpeg.height, 9);
  EXPECT_EQ(png.pixels[0], 0);  // (0, 0) is green in small.png
  EXPECT_EQ(png.pixels[1], 255);
  EXPECT_EQ(png.pixels[3 * 5], 200);  // (5, 0) is the red background
}

// ---------------------------------------------------------------- collation, sampler, loader

TEST_F(Data, CollatorPadsRightAndMarksImages) {
  Processor processor(config(), ModelInterface{16, 16, 3, 512});
  Sample with = processor.process(example({{true, "<image>\nWhat colour is the circle?"}, {false, "red"}}));
  Sample without = processor.process(example({{true, "Say hi"}, {false, "hi"}}, ""));
  Batch b = collate({without, with}, 0, ModelInterface{16, 16, 3, 512});
  const int64_t t = static_cast<int64_t>(std::max(with.input_ids.size(), without.input_ids.size()));
  EXPECT_EQ(b.input_ids.sizes(), (std::vector<int64_t>{2, t}));
  EXPECT_EQ(b.pixel_values.sizes(), (std::vector<int64_t>{1, 3, 16, 16}));
  EXPECT_EQ(b.attention_mask[0].sum().item<int64_t>(), static_cast<int64_t>(without.input_ids.size()));
  EXPECT_EQ(b.visual_mask[0].sum().item<int64_t>(), 0);
  EXPECT_EQ(b.visual_mask[1].sum().item<int64_t>(), 16);
  const int64_t first = 1 + static_cast<int64_t>(enc(std::string(kVicunaSystem) + " USER: ").size());  // after BOS and system
  EXPECT_TRUE(b.visual_mask[1].slice(0, first, first + 16).all().item<bool>());
  int64_t n0 = static_cast<int64_t>(without.input_ids.size());
  EXPECT_TRUE((b.input_ids[0].slice(0, n0) == 0).all().item<bool>());
  EXPECT_TRUE((b.labels[0].slice(0, n0) == -100).all().item<bool>());
}

TEST(Sampler, OrderIsAPureFunctionOfSeedAndEpoch) {
  SamplerOptions o{{10, 5}, {}, 7, 4, {}, 0, 1};
  Sampler a(o), b(o);
  EXPECT_EQ(a.epoch_batches(3), b.epoch_batches(3));
  EXPECT_NE(a.epoch_batches(0), a.epoch_batches(1));
  EXPECT_EQ(a.batches_per_epoch(), 4);
  std::vector<int64_t> seen;
  for (const auto& batch : a.epoch_batches(0)) seen.insert(seen.end(), batch.begin(), batch.end());
  std::sort(seen.begin(), seen.end());
  std::vector<int64_t> all(15);
  std::iota(all.begin(), all.end(), 0);
  EXPECT_EQ(seen, all);  // every sample once per epoch
  o.seed = 8;
  EXPECT_NE(Sampler(o).epoch_batches(0), a.epoch_batches(0));
}

TEST(Sampler, MixingWeightsRanksAndLengthGrouping) {
  SamplerOptions o{{100, 100}, {3, 1}, 1, 10, {}, 0, 1};
  Sampler mixed(o);
  int64_t first = 0, total = 0;
  for (const auto& batch : mixed.epoch_batches(0))
    for (int64_t i : batch) first += i < 100, ++total;
  EXPECT_EQ(total, 200);
  EXPECT_EQ(first, 150);
  // Two ranks split each global batch of the single-rank order with batch 2x.
  SamplerOptions one{{37}, {}, 5, 8, {}, 0, 1}, r0{{37}, {}, 5, 4, {}, 0, 2}, r1{{37}, {}, 5, 4, {}, 1, 2};
  auto g = Sampler(one).epoch_batches(2), a = Sampler(r0).epoch_batches(2), b = Sampler(r1).epoch_batches(2);
  ASSERT_EQ(g.size(), a.size());
  for (size_t k = 0; k < g.size(); ++k) {
    std::vector<int64_t> merged = a[k];
    merged.insert(merged.end(), b[k].begin(), b[k].end());
    std::sort(merged.begin(), merged.end());
    std::vector<int64_t> global = g[k];
    std::sort(global.begin(), global.end());
    EXPECT_EQ(merged, global) << k;
  }
  std::vector<int64_t> lengths(30);
  for (int i = 0; i < 30; ++i) lengths[i] = (i * 7) % 30;
  auto grouped = Sampler(SamplerOptions{{30}, {}, 3, 3, lengths, 0, 1}).epoch_batches(0);
  std::vector<int64_t> flat;
  for (const auto& batch : grouped) flat.insert(flat.end(), batch.begin(), batch.end());
  for (size_t i = 1; i < flat.size(); ++i) EXPECT_GE(lengths[flat[i - 1]], lengths[flat[i]]);
}

TEST_F(Data, LoaderIsDeterministicAndRestartsFromItsCursor) {
  auto examples = std::make_shared<std::vector<Example>>(load_dataset(synth_dir() + "/train.json"));
  auto processor = std::make_shared<Processor>(config(), ModelInterface{16, 16, 3, 512});
  SamplerOptions so{{static_cast<int64_t>(examples->size())}, {}, 11, 5, {}, 0, 1};
  auto run = [&](DataCursor start, int batches, int64_t workers, DataCursor* end) {
    DataLoader loader(examples, processor, Sampler(so), LoaderOptions{BadSamplePolicy::Error, workers, 3, start});
    std::vector<std::vector<std::string>> ids;
    for (int i = 0; i < batches; ++i) ids.push_back(loader.next().ids);
    if (end) *end = loader.cursor();
    return ids;
  };
  DataCursor mid;
  auto straight = run({}, 12, 2, nullptr);  // 24 samples / 5 = 5 batches per epoch: crosses two epochs
  auto first = run({}, 7, 0, &mid);
  EXPECT_EQ(mid, (DataCursor{1, 2}));
  auto rest = run(mid, 5, 3, nullptr);
  first.insert(first.end(), rest.begin(), rest.end());
  EXPECT_EQ(first, straight);
  EXPECT_EQ(straight[4].size(), 4u);  // the last batch of an epoch holds the remainder
}

TEST_F(Data, LoaderSkipsAndCountsOrFailsOnBadSamples) {
  auto examples = std::make_shared<std::vector<Example>>(load_dataset(synth_dir() + "/train.json"));
  (*examples)[3].images = {"images/missing.png"};
  auto processor = std::make_shared<Processor>(config(), ModelInterface{16, 16, 3, 512});
  SamplerOptions so{{static_cast<int64_t>(examples->size())}, {}, 11, 4, {}, 0, 1};
  DataLoader skipping(examples, processor, Sampler(so), LoaderOptions{BadSamplePolicy::Skip, 2, 2, {}});
  int64_t seen = 0;
  for (int i = 0; i < 6; ++i) seen += skipping.next().size();
  EXPECT_EQ(skipping.skipped(), 1);
  EXPECT_EQ(seen, 23);
  DataLoader strict(examples, processor, Sampler(so), LoaderOptions{BadSamplePolicy::Error, 2, 2, {}});
  test::expect_error<DataError>([&] { for (int i = 0; i < 6; ++i) strict.next(); }, {"train.json[3] (id train-00003)", "missing.png"});
}

// ---------------------------------------------------------------- synth

TEST_F(Data, SynthIsDeterministicAndConflictHintsDisagree) {
  test::TempDir a, b;
  for (auto* d : {&a, &b}) {
    SynthOptions o;
    o.out_dir = (d->path() / "s").string();
    o.train = 20;
    o.eval = 10;
    o.image_size = 16;
    o.seed = 3;
    synthesize(o);
  }
  size_t files = 0;
  for (const auto& entry : fs::recursive_directory_iterator(a.path() / "s")) {
    if (!entry.is_regular_file()) continue;
    fs::path rel = fs::relative(entry.path(), a.path());
    EXPECT_TRUE(test::read_text(entry.path().string()) == test::read_text((b.path() / rel).string())) << rel;
    ++files;
  }
  EXPECT_EQ(files, 20u + 30u + 9u);  // images, 4 splits, captions, shape lists, dense questions, tokenizer, synth.json
  auto conflict = nlohmann::json::parse(test::read_text((a.path() / "s/eval_conflict.json").string()));
  auto aligned = nlohmann::json::parse(test::read_text((a.path() / "s/eval_aligned.json").string()));
  auto nohint = nlohmann::json::parse(test::read_text((a.path() / "s/eval_nohint.json").string()));
  for (const auto& s : conflict) EXPECT_NE(s["hint"], s["answer"]);
  for (const auto& s : aligned) EXPECT_EQ(s["hint"], s["answer"]);
  for (const auto& s : nohint) EXPECT_EQ(s["conversations"][0]["value"].get<std::string>().find("Hint"), std::string::npos);
  std::set<std::string> answers;
  for (const auto& s : load_dataset((a.path() / "s/train.json").string())) answers.insert(s.turns[1].value);
  EXPECT_GE(answers.size(), 6u);
}

TEST_F(Data, SynthWritesTypesRegionsChanceHintsAndOneTokenizer) {
  test::TempDir dir;
  SynthOptions o;
  o.out_dir = (dir.path() / "chance").string();
  o.train = 400, o.eval = 4, o.image_size = 32, o.seed = 5, o.chance_hints = true;
  synthesize(o);
  int right = 0, none = 0;
  std::map<std::string, int> types;
  for (const auto& e : load_dataset(o.out_dir + "/train.json")) {
    ++types[e.type];
    right += e.hint == e.turns[1].value;
    none += e.hint.empty();
    EXPECT_EQ(e.turns[0].value.find("Hint") == std::string::npos, e.hint.empty()) << e.id;
    // A count asks about every shape (medium: 1 to 3), the other questions about one.
    if (e.type == "count") {
      const std::vector<std::string> words{"one", "two", "three"};
      auto it = std::find(words.begin(), words.end(), e.turns[1].value);
      ASSERT_NE(it, words.end()) << e.id;
      EXPECT_EQ(e.regions.size(), static_cast<size_t>(it - words.begin()) + 1) << e.id;
    } else {
      ASSERT_EQ(e.regions.size(), 1u) << e.id;
    }
    for (const auto& box : e.regions) EXPECT_TRUE(box[0] >= 0 && box[1] >= 0 && box[2] <= 32 && box[3] <= 32) << e.id;
  }
  EXPECT_EQ(types.size(), 3u);
  EXPECT_TRUE(types.count("colour") && types.count("shape") && types.count("count"));
  // Right as often as absent, at chance: 1/9 for colours, 1/5 for shapes and counts, about 0.15 in all
  // (0.98 without the flag).
  EXPECT_GT(right, 30);
  EXPECT_LT(right, 95);
  EXPECT_GT(none, 30);
  EXPECT_LT(none, 95);
  // The tokenizer depends on nothing but the vocabulary size, so stage-1 and stage-2 data share it.
  o.out_dir = (dir.path() / "other").string();
  o.seed = 9, o.chance_hints = false, o.train = 10;
  synthesize(o);
  EXPECT_EQ(test::read_text((dir.path() / "chance/tokenizer.model").string()),
            test::read_text((dir.path() / "other/tokenizer.model").string()));
}

TEST_F(Data, SynthCountsVaryPerDifficultyAndTheChanceLevelsAreWritten) {
  // The count answer must need the image: every difficulty draws a varying number of shapes.
  struct Level {
    SynthDifficulty difficulty;
    size_t lo, hi;
  };
  test::TempDir dir;
  for (const Level& l : {Level{SynthDifficulty::Easy, 1, 2}, Level{SynthDifficulty::Medium, 1, 3}, Level{SynthDifficulty::Hard, 2, 4}}) {
    SynthOptions o;
    o.out_dir = (dir.path() / std::to_string(l.lo * 10 + l.hi)).string();
    o.train = 150, o.eval = 2, o.image_size = 48, o.difficulty = l.difficulty;
    synthesize(o);
    std::map<size_t, int> seen;
    for (const auto& c : nlohmann::json::parse(test::read_text(o.out_dir + "/captions.json"))) ++seen[c["objects"].size()];
    ASSERT_EQ(seen.size(), l.hi - l.lo + 1) << o.out_dir;  // every count occurs, and no other
    EXPECT_EQ(seen.begin()->first, l.lo);
    EXPECT_EQ(seen.rbegin()->first, l.hi);
    auto meta = nlohmann::json::parse(test::read_text(o.out_dir + "/synth.json"));
    EXPECT_DOUBLE_EQ(meta["chance"]["count"].get<double>(), 1.0 / double(l.hi - l.lo + 1));
    EXPECT_DOUBLE_EQ(meta["chance"]["colour"].get<double>(), 1.0 / 8);
    EXPECT_DOUBLE_EQ(meta["chance"]["shape"].get<double>(), 1.0 / 4);
  }
}

TEST_F(Data, SynthCaptionsDescribeEveryShapeOfTheirImage) {
  test::TempDir dir;
  SynthOptions o;
  o.out_dir = (dir.path() / "s").string();
  o.train = 60, o.eval = 2, o.image_size = 60, o.seed = 4;
  synthesize(o);
  auto captions = nlohmann::json::parse(test::read_text(o.out_dir + "/captions.json"));
  auto train = nlohmann::json::parse(test::read_text(o.out_dir + "/train.json"));
  ASSERT_EQ(captions.size(), train.size());
  const std::vector<std::string> counts{"One shape:", "Two shapes:", "Three shapes:"};
  const char* places[3][3] = {{"top left", "top", "top right"}, {"left", "centre", "right"}, {"bottom left", "bottom", "bottom right"}};
  for (size_t i = 0; i < captions.size(); ++i) {
    const auto& c = captions[i];
    EXPECT_EQ(c["image"], train[i]["image"]);  // one caption per training image
    EXPECT_EQ(c["type"], "caption");
    EXPECT_EQ(c["conversations"][0]["value"], "<image>\nDescribe the image.");
    const std::string text = c["conversations"][1]["value"];
    EXPECT_EQ(text, c["answer"]);
    const auto& objects = c["objects"];
    EXPECT_EQ(text.rfind(counts[objects.size() - 1], 0), 0u) << text;
    EXPECT_EQ(c["regions"].size(), objects.size());
    size_t listed = 0;
    for (size_t k = 0; k < text.size(); ++k) listed += text.compare(k, 4, " at ") == 0;
    EXPECT_EQ(listed, objects.size()) << text;
    for (const auto& obj : objects) {  // "<article> <colour> <shape> at the <place>", place from the centre's third
      const double x = obj["centre"][0], y = obj["centre"][1];
      const std::string place = places[std::min(2, int(3 * y / 60))][std::min(2, int(3 * x / 60))];
      const std::string colour = obj["colour"], shape = obj["shape"];
      const std::string phrase = (colour == "orange" ? "an " : "a ") + colour + " " + shape + " at the " + place;
      EXPECT_NE(text.find(phrase), std::string::npos) << text << " lacks " << phrase;
    }
  }
  // shape_list.json: per training image, each object's kind then its colour, in drawing order.
  auto lists = nlohmann::json::parse(test::read_text(o.out_dir + "/shape_list.json"));
  ASSERT_EQ(lists.size(), train.size());
  for (size_t i = 0; i < lists.size(); ++i) {
    std::string expected;
    for (const auto& obj : captions[i]["objects"])
      expected += (expected.empty() ? "" : ", ") + obj["shape"].get<std::string>() + " " + obj["colour"].get<std::string>();
    EXPECT_EQ(lists[i]["image"], train[i]["image"]);
    EXPECT_EQ(lists[i]["conversations"][0]["value"], "<image>\nDescribe the shapes.");
    EXPECT_EQ(lists[i]["conversations"][1]["value"], expected + ".");
    EXPECT_EQ(lists[i]["regions"], captions[i]["regions"]);
  }
  // qa_dense.json: per training image, every question about it once (each shape's colour, each colour's
  // shape, the count), answered from the caption's objects, no hints.
  auto dense = nlohmann::json::parse(test::read_text(o.out_dir + "/qa_dense.json"));
  ASSERT_EQ(dense.size(), train.size());
  const std::vector<std::string> count_words{"zero", "one", "two", "three", "four"};
  for (size_t i = 0; i < dense.size(); ++i) {
    const auto& d = dense[i];
    const auto& objects = captions[i]["objects"];
    EXPECT_EQ(d["image"], train[i]["image"]);
    EXPECT_EQ(d["hint"], "");
    std::map<std::string, std::string> expected{{"How many shapes are there?", count_words[objects.size()]}};
    for (const auto& obj : objects) {
      expected["What colour is the " + obj["shape"].get<std::string>() + "?"] = obj["colour"];
      expected["Which shape is " + obj["colour"].get<std::string>() + "?"] = obj["shape"];
    }
    const auto& turns = d["conversations"];
    ASSERT_EQ(turns.size(), 2 * expected.size());
    std::map<std::string, std::string> asked;
    for (size_t k = 0; k < turns.size(); k += 2) {
      std::string q = turns[k]["value"];
      if (k == 0) {
        ASSERT_EQ(q.rfind("<image>\n", 0), 0u);
        q = q.substr(8);
      }
      asked[q] = turns[k + 1]["value"];
    }
    EXPECT_EQ(asked, expected);
    EXPECT_EQ(d["answer"], turns[1]["value"]);
  }
  // By hand: object_mask draws the shapes synth draws (last over first, pixel centres at +0.5).
  std::vector<SynthObject> two{{1, 0, 4.0, 4.0, 2.0}, {0, 2, 6.0, 4.0, 1.5}};  // a square, then a circle over it
  std::vector<int> mask = object_mask(two, 8);
  EXPECT_EQ(mask[4 * 8 + 3], 1);  // (3.5, 4.5): inside the square (|d| <= 1.7), outside the circle
  EXPECT_EQ(mask[4 * 8 + 5], 2);  // (5.5, 4.5): both; the circle is drawn last
  EXPECT_EQ(mask[0], 0);
  EXPECT_EQ(mask[4 * 8 + 7], 0);  // (7.5, 4.5): 1.58 from the circle's centre
}

// ---------------------------------------------------------------- Qwen images: any size, patch rows

namespace qwen {

TEST(QwenImages, PngWithAnEmptyFirstIdatDecodesLikeWithout) {
  // A zero-length IDAT chunk before the image data made stb 2.27 memcpy from a null pointer (found by
  // image_fuzz; this test catches it under `make test-sanitize`); it carries nothing and is dropped before decoding.
  test::TempDir dir;
  RgbImage image{3, 2, {10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120, 130, 140, 150, 160, 170, 180}};
  const std::string plain = (dir.path() / "plain.png").string();
  save_png(plain, image);
  std::string bytes = test::read_text(plain);
  const size_t idat = bytes.find("IDAT") - 4;
  bytes.insert(idat, std::string("\0\0\0\0IDAT\x35\xAF\x06\x1E", 12));
  const std::string with_empty = dir.write("empty_idat.png", bytes);
  RgbImage decoded = load_image(with_empty);
  EXPECT_EQ(decoded.pixels, image.pixels);
  EXPECT_EQ(read_image_size(with_empty), (std::pair<int, int>{3, 2}));
}

TEST(QwenImages, SmartResizeByHand) {
  QwenImageOptions o;  // factor 28, min 3136
  o.max_pixels = 28 * 28 * 100;
  EXPECT_EQ(smart_resize(100, 200, o), (std::pair<int64_t, int64_t>{112, 196}));  // round(3.57)=4, round(7.14)=7
  // 1008 x 1988 is above 78,400 pixels: beta = sqrt(2e6 / 78400) = 5.05; floor(7.07) = 7, floor(14.1) = 14.
  EXPECT_EQ(smart_resize(1000, 2000, o), (std::pair<int64_t, int64_t>{196, 392}));
  // 28 x 28 is below 3,136: beta = sqrt(3136 / 200) = 3.96; ceil(1.41) = 2, ceil(2.83) = 3.
  EXPECT_EQ(smart_resize(10, 20, o), (std::pair<int64_t, int64_t>{56, 84}));
  // Halves round to even like Python's round(): 52 / 8 = 6.5 -> 6, 60 / 8 = 7.5 -> 8.
  QwenImageOptions small{4, 2, 2, 64, 1000000, {0, 0, 0}, {1, 1, 1}};
  EXPECT_EQ(smart_resize(52, 60, small), (std::pair<int64_t, int64_t>{48, 64}));
}

TEST(QwenImages, PatchRowsInTheProcessorOrder) {
  // The golden file's two normalised frames, flattened by hand in its generator, are its pixel_values.
  SafetensorsFile golden(test::qwen_golden_path());
  QwenImageOptions o{4, 2, 2, 64, 1000000, {0, 0, 0}, {1, 1, 1}};
  torch::Tensor rows = torch::cat({qwen_patches(golden.tensor("golden.images.0"), o),
                                   qwen_patches(golden.tensor("golden.images.1"), o)});
  EXPECT_TRUE(torch::equal(rows, golden.tensor("golden.pixel_values")));
}

TEST(QwenImages, PreprocessKeepsTheShapeAndMovesRegions) {
  // A 60 x 30 two-colour image (left half red, right half blue); factor 8: 32 x 64 pixels, 8 x 16 patches,
  // 4 x 8 merged tokens.
  RgbImage image{60, 30, std::vector<uint8_t>(60 * 30 * 3, 0)};
  for (int y = 0; y < 30; ++y)
    for (int x = 0; x < 60; ++x) image.pixels[(y * 60 + x) * 3 + (x < 30 ? 0 : 2)] = 255;
  QwenImageOptions o{4, 2, 2, 64, 1000000, {0.5, 0.5, 0.5}, {0.5, 0.5, 0.5}};
  QwenPixels px = preprocess_qwen_image(image, o, {{0, 0, 30, 30}});
  EXPECT_EQ(px.grid_thw, (std::vector<int64_t>{1, 8, 16}));
  ASSERT_EQ(px.patches.sizes(), (std::vector<int64_t>{128, 96}));
  // Row 0 is the top-left patch: red channel 1, green and blue -1 (both frames, every pixel).
  torch::Tensor first = px.patches[0].view({3, 2, 4, 4});
  EXPECT_TRUE(torch::allclose(first[0], torch::ones({2, 4, 4}), 0, 1e-6));
  EXPECT_TRUE(torch::allclose(first[2], -torch::ones({2, 4, 4}), 0, 1e-6));
  // The last row is the bottom-right patch: blue.
  EXPECT_TRUE(torch::allclose(px.patches[127].view({3, 2, 4, 4})[2], torch::ones({2, 4, 4}), 0, 1e-6));
  // The box over the left half covers merged columns 0-3 of each of the 4 rows: 1/16 each.
  torch::Tensor expected = torch::zeros({4, 8});
  expected.slice(1, 0, 4).fill_(1.0 / 16);
  EXPECT_TRUE(torch::allclose(px.region_target, expected.flatten(), 0, 1e-6));
}

}  // namespace qwen

TEST_F(Data, QwenProcessorGivesEachImageItsOwnSpan) {
  // A Qwen model interface (patch 4, merge 2): the 16 x 16 synth image takes 2 x 2 = 4 image tokens
  // (factor 8, min_pixels 64), a 40 x 24 one 5 x 3 = 15; the batch pads region targets to the longest span.
  DataConfig c = config();
  c.image_min_pixels = 64;
  const ModelInterface qwen{0, 0, 3, 512, 4, 2, 2};
  Processor processor(c, qwen);
  RgbImage wide{40, 24, std::vector<uint8_t>(40 * 24 * 3, 128)};
  save_png(synth_dir() + "/images/wide.png", wide);
  Example a = example({{true, "<image>\nWhat colour is the circle?"}, {false, "red"}});
  Example b = example({{true, "<image>\nWhat colour is the circle?"}, {false, "red"}}, "images/wide.png");
  b.regions = {{0, 0, 40, 24}};
  Sample sa = processor.process(a), sb = processor.process(b);
  auto count = [](const Sample& s) { return std::count(s.input_ids.begin(), s.input_ids.end(), 3); };
  EXPECT_EQ(count(sa), 4);
  EXPECT_EQ(count(sb), 15);
  EXPECT_EQ(processor.length(b), static_cast<int64_t>(sb.input_ids.size()));  // from the header only
  EXPECT_TRUE(torch::equal(sb.image_grid_thw, torch::tensor({{1, 6, 10}})));
  Batch batch = processor.collate({sa, processor.process(example({{true, "Hello"}, {false, "hi"}}, "")), sb});
  EXPECT_EQ(batch.pixel_values.sizes(), (std::vector<int64_t>{16 + 60, 96}));
  EXPECT_TRUE(torch::equal(batch.image_grid_thw, torch::tensor({{1, 4, 4}, {1, 6, 10}})));
  ASSERT_EQ(batch.region_target.sizes(), (std::vector<int64_t>{3, 15}));
  EXPECT_NEAR(batch.region_target[2].sum().item<double>(), 1.0, 1e-6);
  EXPECT_EQ(batch.region_target[0].sum().item<double>(), 0.0);
  // An image whose span cannot fit model_max_length is an error naming the sample.
  c.model_max_length = 20;
  Processor tight(c, qwen);
  test::expect_error<DataError>([&] { tight.process(b); }, {"(id ex)"});
}

// A sample with two images of different sizes: each placeholder becomes its own image's span, in text order,
// the patch rows and grids follow that order, and the batch concatenates them sample by sample.
TEST_F(Data, SeveralImagesInOneSampleKeepTheirOrder) {
  DataConfig c = config();
  c.image_min_pixels = 64;
  const ModelInterface qwen{0, 0, 3, 512, 4, 2, 2};
  Processor processor(c, qwen);
  save_png(synth_dir() + "/images/wide.png", RgbImage{40, 24, std::vector<uint8_t>(40 * 24 * 3, 128)});
  Example two = example({{true, "<image>\nWhat colour is the circle?"}, {false, "red"}, {true, "And here <image>?"}, {false, "blue"}});
  two.images = {"images/wide.png", "images/train_00000.png"};
  Sample s = processor.process(two);
  EXPECT_TRUE(torch::equal(s.image_grid_thw, torch::tensor({{1, 6, 10}, {1, 4, 4}})));
  EXPECT_EQ(s.pixel_values.size(0), 60 + 16);
  // The spans: 15 image tokens in the first human turn, 4 in the second, with text between them.
  std::vector<std::pair<size_t, size_t>> spans;  // (start, length)
  for (size_t i = 0; i < s.input_ids.size(); ++i)
    if (s.input_ids[i] == 3 && (i == 0 || s.input_ids[i - 1] != 3)) spans.emplace_back(i, 0);
    else if (s.input_ids[i] != 3 && i > 0 && s.input_ids[i - 1] == 3) spans.back().second = i - spans.back().first;
  ASSERT_EQ(spans.size(), 2u);
  EXPECT_EQ(spans[0].second, 15u);
  EXPECT_EQ(spans[1].second, 4u);
  EXPECT_EQ(processor.length(two), static_cast<int64_t>(s.input_ids.size()));
  // The first span's first patch row is the grey image's, the second's the synth image's.
  Example grey = example({{true, "<image>\nWhat?"}, {false, "red"}}, "images/wide.png");
  Example synth = example({{true, "<image>\nWhat?"}, {false, "red"}});
  EXPECT_TRUE(torch::equal(s.pixel_values.slice(0, 0, 60), processor.process(grey).pixel_values));
  EXPECT_TRUE(torch::equal(s.pixel_values.slice(0, 60), processor.process(synth).pixel_values));
  Batch batch = processor.collate({processor.process(synth), s});
  EXPECT_TRUE(torch::equal(batch.image_grid_thw, torch::tensor({{1, 4, 4}, {1, 6, 10}, {1, 4, 4}})));
  EXPECT_EQ(batch.visual_mask.sum(1)[1].item<int64_t>(), 19);

  // LLaVA: every image takes num_patches tokens; pixel_values stack the images in the same order.
  Processor llava(config(), ModelInterface{16, 16, 3, 512});
  Sample l = llava.process(two);
  ASSERT_EQ(l.pixel_values.sizes(), (std::vector<int64_t>{2, 3, 16, 16}));
  EXPECT_TRUE(torch::equal(l.pixel_values[1], llava.process(synth).pixel_values[0]));
  EXPECT_EQ(std::count(l.input_ids.begin(), l.input_ids.end(), 3), 32);
  Batch lb = llava.collate({llava.process(synth), l});
  EXPECT_EQ(lb.pixel_values.size(0), 3);
  // A template sample with fewer placeholders than images is an error naming it.
  Example short_text = two;
  short_text.turns[2].value = "And here?";
  test::expect_error<DataError>([&] { llava.process(short_text); }, {"(id ex)", "1 <image> placeholders for 2 images"});
}

}  // namespace
}  // namespace modalign
