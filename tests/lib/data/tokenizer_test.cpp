// lib/data/tokenizer: a tokenizer trained on the fly, in a process that also runs LibTorch (the shim
// keeps SentencePiece's protobuf apart), round trips text and keeps the reserved ids.
#include "lib/data/tokenizer.h"

#include <gtest/gtest.h>
#include <torch/torch.h>

#include "test_util.h"

namespace modalign {
namespace {

std::string corpus(const test::TempDir& dir) {
  std::string text;
  const char* colours[] = {"red", "green", "blue", "yellow", "purple", "orange"};
  const char* shapes[] = {"circle", "square", "triangle"};
  for (int i = 0; i < 300; ++i)
    text += std::string("What colour is the ") + shapes[i % 3] + "? It is " + colours[(i * 7) % 6] + ". Hint: it is probably " +
            colours[i % 6] + ".\n";
  return dir.write("corpus.txt", text);
}

TEST(Tokenizer, TrainEncodeDecodeBesideTorch) {
  test::TempDir dir;
  std::filesystem::create_directories(dir.path() / "sub");
  Tokenizer::TrainOptions options;
  options.vocab_size = 120;
  Tokenizer::train(corpus(dir), (dir.path() / "tok.model").string(), options);
  Tokenizer tok((dir.path() / "tok.model").string());
  EXPECT_EQ(tok.pad_id(), 0);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.piece_to_id("<image>"), 3);
  EXPECT_EQ(tok.unk_id(), 4);
  EXPECT_LE(tok.vocab_size(), 120);
  std::string text = "What colour is the square? It is purple.";
  std::vector<int64_t> ids = tok.encode(text);
  EXPECT_GT(ids.size(), 3u);
  for (int64_t id : ids) EXPECT_GT(id, 4);  // no special or reserved id inside ordinary text
  EXPECT_EQ(tok.decode(ids), text);
  std::vector<int64_t> with_bos = tok.encode(text, /*add_special=*/true);
  ASSERT_EQ(with_bos.size(), ids.size() + 1);
  EXPECT_EQ(with_bos[0], tok.bos_id());
  EXPECT_EQ(tok.id_to_piece(3), "<image>");
  EXPECT_EQ(tok.piece_to_id(tok.id_to_piece(ids[0])), ids[0]);
  EXPECT_THROW(tok.id_to_piece(tok.vocab_size()), TokenizerError);
  torch::Tensor t = torch::tensor(ids);  // LibTorch works in the same process
  EXPECT_EQ(t.numel(), static_cast<int64_t>(ids.size()));
  // Same corpus, same options, another folder: a byte-identical model.
  Tokenizer::train(corpus(dir), (dir.path() / "sub" / "tok2.model").string(), options);
  EXPECT_TRUE(test::read_text((dir.path() / "tok.model").string()) == test::read_text((dir.path() / "sub/tok2.model").string()));
}

TEST(Tokenizer, ErrorsNameTheFile) {
  test::TempDir dir;
  test::expect_error<TokenizerError>([&] { Tokenizer t((dir.path() / "none.model").string()); },
                                     {"none.model: tokenizer file not found"});
  std::string junk = dir.write("junk.model", "not a model");
  test::expect_error<TokenizerError>([&] { Tokenizer t(junk); }, {"junk.model: not a SentencePiece model"});
  test::expect_error<TokenizerError>([&] { Tokenizer::train((dir.path() / "nope.txt").string(), (dir.path() / "x.model").string(), {}); },
                                     {"nope.txt"});
}

}  // namespace
}  // namespace modalign
