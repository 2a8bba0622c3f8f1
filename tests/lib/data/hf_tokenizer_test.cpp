// lib/data/hf_tokenizer: the real Qwen2 tokenizer.json (cut to what the strings need, ids unchanged; see
// tests/golden/tokenizers/make_subset.py) gives Hugging Face's ids for 46 hard strings; hand-made LLaMA-style
// files (Prepend/Replace or Metaspace, byte_fallback, a BOS template) give ids computed by hand; merge
// priority, added-token stripping, and the errors for what is not supported.
#include "lib/data/hf_tokenizer.h"

#include <gtest/gtest.h>

#include <nlohmann/json.hpp>
#include <sstream>

#include "lib/data/tokenizer.h"
#include "test_util.h"

namespace modalign {
namespace {

using json = nlohmann::json;
const std::string kGolden = std::string(MODALIGN_TEST_DATA_DIR) + "/golden/tokenizers/";
const std::string kSpace = "\xE2\x96\x81";  // ▁

// llama.cpp's vocabulary test format: cases separated by a __ggml_vocab_test__ line; ids one line per case.
std::vector<std::pair<std::string, std::vector<int64_t>>> qwen_cases() {
  const std::string all = test::read_text(kGolden + "encode_cases.inp"), sep = "\n__ggml_vocab_test__\n";
  std::vector<std::string> texts;
  for (size_t p = 0;;) {
    const size_t q = all.find(sep, p);
    texts.push_back(all.substr(p, q == std::string::npos ? std::string::npos : q - p));
    if (q == std::string::npos) break;
    p = q + sep.size();
  }
  std::istringstream out(test::read_text(kGolden + "encode_cases.out"));
  std::vector<std::pair<std::string, std::vector<int64_t>>> cases;
  std::string line;
  for (size_t i = 0; std::getline(out, line); ++i) {
    std::istringstream ids(line);
    std::vector<int64_t> want;
    for (int64_t id; ids >> id;) want.push_back(id);
    cases.emplace_back(texts.at(i), want);
  }
  return cases;
}

TEST(HfTokenizer, QwenMatchesHuggingFaceOnHardStrings) {
  HfTokenizer tok(kGolden + "qwen2_subset.json");
  const auto cases = qwen_cases();
  ASSERT_EQ(cases.size(), 46u);
  for (const auto& [text, want] : cases) {
    EXPECT_EQ(tok.encode(text), want) << "text: '" << text << "'";
    EXPECT_EQ(tok.decode(want), text);
  }
  EXPECT_EQ(tok.vocab_size(), 151669);  // the largest id (an added token) + 1
  EXPECT_EQ(tok.id_to_token(1879), "Ġworld");
  EXPECT_EQ(tok.token_to_id("<|im_end|>"), 151645);
  EXPECT_EQ(tok.token_to_id("no such token"), -1);
  // The cut file has holes (ids of pieces it dropped): has_id says which ids exist, so generation never
  // picks one it could not decode.
  EXPECT_TRUE(tok.has_id(1879));
  EXPECT_TRUE(tok.has_id(151668));
  EXPECT_FALSE(tok.has_id(48331));
  EXPECT_FALSE(tok.has_id(-1));
  EXPECT_FALSE(tok.has_id(151669));
  test::expect_error<TokenizerError>([&] { tok.decode({48331}); }, {"no token has id 48331"});
}

TEST(HfTokenizer, QwenAddedTokensNfcAndDecoding) {
  HfTokenizer tok(kGolden + "qwen2_subset.json");
  // Special tokens are matched before the regex and BPE, wherever they stand.
  const auto ids = tok.encode("<|im_start|>user\nHello world<|im_end|>\n");
  ASSERT_GE(ids.size(), 4u);
  EXPECT_EQ(ids.front(), 151644);
  EXPECT_EQ(ids[ids.size() - 2], 151645);
  std::vector<int64_t> inner(ids.begin() + 1, ids.end() - 2);
  EXPECT_EQ(inner, tok.encode("user\nHello world"));
  EXPECT_EQ(tok.decode(ids), "user\nHello world\n");  // specials left out
  EXPECT_EQ(tok.decode(ids, /*skip_special=*/false), "<|im_start|>user\nHello world<|im_end|>\n");
  // NFC: a decomposed "A" + combining diaeresis encodes as the precomposed "Ä".
  EXPECT_EQ(tok.encode("A\xCC\x88pfel"), tok.encode("\xC3\x84pfel"));
  // A character cut between ids decodes to U+FFFD, the rest intact.
  const auto euro = tok.encode("\xE2\x82\xAC");  // "€": its three byte tokens in this subset
  ASSERT_EQ(euro.size(), 3u);
  EXPECT_EQ(tok.decode({euro[0], euro[1]}), "\xEF\xBF\xBD");
  EXPECT_EQ(tok.decode({euro[0], euro[1], euro[2], euro[0]}), "\xE2\x82\xAC\xEF\xBF\xBD");
  test::expect_error<TokenizerError>([&] { tok.encode("bad \xFF byte"); }, {"qwen2_subset.json", "not valid UTF-8"});
  test::expect_error<TokenizerError>([&] { tok.id_to_token(151700); }, {"no token has id 151700"});
}

// A LLaMA-2 style tokenizer.json: ▁ words, byte fallback, BOS template. Merges (rank order):
// l+l, ▁+h, ▁h+e, ll+o, ▁he+llo.
json llama_style() {
  json vocab = {{"<unk>", 0}, {"<s>", 1}, {"</s>", 2}};
  char name[8];
  for (int b = 0; b < 256; ++b) std::snprintf(name, sizeof name, "<0x%02X>", b), vocab[name] = 3 + b;
  const std::vector<std::string> pieces = {kSpace, "h", "e", "l", "o", kSpace + "h", "ll", kSpace + "he", "llo", kSpace + "hello"};
  for (size_t i = 0; i < pieces.size(); ++i) vocab[pieces[i]] = 259 + static_cast<int>(i);
  json added = json::array();
  for (int id = 0; id < 3; ++id)
    added.push_back({{"id", id}, {"content", id == 0 ? "<unk>" : id == 1 ? "<s>" : "</s>"}, {"single_word", false},
                     {"lstrip", false}, {"rstrip", false}, {"normalized", false}, {"special", true}});
  return {
      {"version", "1.0"},
      {"added_tokens", added},
      {"normalizer", {{"type", "Sequence"}, {"normalizers", {{{"type", "Prepend"}, {"prepend", kSpace}},
                                                             {{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", kSpace}}}}}},
      {"pre_tokenizer", nullptr},
      {"post_processor", {{"type", "TemplateProcessing"},
                          {"single", {{{"SpecialToken", {{"id", "<s>"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
                          {"special_tokens", {{"<s>", {{"id", "<s>"}, {"ids", {1}}, {"tokens", {"<s>"}}}}}}}},
      {"decoder", {{"type", "Sequence"}, {"decoders", {{{"type", "Replace"}, {"pattern", {{"String", kSpace}}}, {"content", " "}},
                                                       {{"type", "ByteFallback"}}, {{"type", "Fuse"}},
                                                       {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
      {"model", {{"type", "BPE"}, {"dropout", nullptr}, {"unk_token", "<unk>"}, {"fuse_unk", true}, {"byte_fallback", true},
                 {"vocab", vocab},
                 {"merges", {"l l", kSpace + " h", kSpace + "h e", "ll o", kSpace + "he llo"}}}}};
}

TEST(HfTokenizer, LlamaStyleByHand) {
  test::TempDir dir;
  HfTokenizer tok(dir.write("tokenizer.json", llama_style().dump()));
  // "▁hello": ▁ h e l l o -> (l,l) -> (▁,h) -> (▁h,e) -> (ll,o) -> (▁he,llo) = ▁hello.
  EXPECT_EQ(tok.encode("hello"), std::vector<int64_t>({268}));
  // "▁hello▁hé": é is not in the vocabulary -> its bytes C3 A9 (ids 3 + byte); the second ▁h stays.
  EXPECT_EQ(tok.encode("hello h\xC3\xA9"), std::vector<int64_t>({268, 264, 3 + 0xC3, 3 + 0xA9}));
  EXPECT_EQ(tok.decode({268, 264, 3 + 0xC3, 3 + 0xA9}), "hello h\xC3\xA9");
  EXPECT_EQ(tok.encode("hello", /*add_special=*/true), std::vector<int64_t>({1, 268}));
  // </s> is cut out before normalisation; Prepend then applies to each remaining piece, as in HF.
  EXPECT_EQ(tok.encode("hello</s>hello"), std::vector<int64_t>({268, 2, 268}));
  EXPECT_EQ(tok.decode({1, 268, 2}), "hello");
  EXPECT_EQ(tok.unk_id(), 0);
}

TEST(HfTokenizer, MetaspacePrependsFirstOnlyAndStripsAroundAddedTokens) {
  json j = llama_style();
  j["normalizer"] = nullptr;
  j["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", kSpace}, {"prepend_scheme", "first"}, {"split", true}};
  j["decoder"] = {{"type", "Metaspace"}, {"replacement", kSpace}, {"prepend_scheme", "first"}, {"split", true}};
  j["model"]["vocab"]["<x>"] = 269;
  j["added_tokens"].push_back({{"id", 269}, {"content", "<x>"}, {"single_word", false}, {"lstrip", true}, {"rstrip", true},
                               {"normalized", false}, {"special", false}});
  test::TempDir dir;
  HfTokenizer tok(dir.write("tokenizer.json", j.dump()));
  EXPECT_EQ(tok.encode("hello hello"), std::vector<int64_t>({268, 268}));  // split before each ▁
  EXPECT_EQ(tok.decode({268, 268}), "hello hello");
  // After an added token the text is not at the start: no ▁ -> h e llo. lstrip/rstrip take the spaces.
  EXPECT_EQ(tok.encode("</s>hello"), std::vector<int64_t>({2, 260, 261, 267}));
  EXPECT_EQ(tok.encode("hello <x> hello"), std::vector<int64_t>({268, 269, 260, 261, 267}));
  EXPECT_EQ(tok.decode({268, 269}), "hello<x>");  // a non-special added token is kept
}

// vocab a b c ab bc aa; the rank of a merge, not its position in the word, decides what merges first.
json tiny_bpe(const std::vector<std::string>& merges) {
  return {{"model", {{"type", "BPE"}, {"vocab", {{"a", 0}, {"b", 1}, {"c", 2}, {"ab", 3}, {"bc", 4}, {"aa", 5}}}, {"merges", merges}}}};
}

TEST(HfTokenizer, MergesApplyByRankThenLeftmost) {
  test::TempDir dir;
  HfTokenizer bc_first(dir.write("a/tokenizer.json", tiny_bpe({"b c", "a b", "a a"}).dump()));
  HfTokenizer ab_first(dir.write("b/tokenizer.json", tiny_bpe({"a b", "b c", "a a"}).dump()));
  EXPECT_EQ(bc_first.encode("abc"), std::vector<int64_t>({0, 4}));
  EXPECT_EQ(ab_first.encode("abc"), std::vector<int64_t>({3, 2}));
  EXPECT_EQ(ab_first.encode("aaa"), std::vector<int64_t>({5, 0}));  // leftmost pair first
  EXPECT_EQ(ab_first.decode({5, 0}), "aa a");  // no decoder: Hugging Face joins tokens with spaces
  EXPECT_EQ(ab_first.encode("abz"), std::vector<int64_t>({3}));  // no unk_token: z is dropped, as in HF
}

TEST(HfTokenizer, UnsupportedOrBrokenFilesAreErrorsNamingThePart) {
  test::TempDir dir;
  json lower = tiny_bpe({"a b"});
  lower["normalizer"] = {{"type", "Lowercase"}};
  test::expect_error<TokenizerError>([&] { HfTokenizer t(dir.write("l/tokenizer.json", lower.dump())); },
                                     {"l/tokenizer.json", "unsupported normalizer 'Lowercase'"});
  json digits = tiny_bpe({"a b"});
  digits["pre_tokenizer"] = {{"type", "Digits"}, {"individual_digits", true}};
  test::expect_error<TokenizerError>([&] { HfTokenizer t(dir.write("d/tokenizer.json", digits.dump())); },
                                     {"unsupported pre_tokenizer 'Digits'"});
  test::expect_error<TokenizerError>([&] { HfTokenizer t(dir.write("m/tokenizer.json", tiny_bpe({"a b", "c z"}).dump())); },
                                     {"merge 1 ('c' 'z') uses a token missing from the vocabulary"});
  json huge = tiny_bpe({"a b"});
  huge["model"]["vocab"]["z"] = 1 << 30;  // would size the id table at 2^30 strings
  test::expect_error<TokenizerError>([&] { HfTokenizer t(dir.write("h/tokenizer.json", huge.dump())); },
                                     {"token id 1073741824 of 'z' is outside [0, 2^22)"});
  json real = tiny_bpe({"a b"});
  real["model"]["vocab"]["z"] = 1.2e20;  // nlohmann's get<int> on this is undefined behaviour (found by fuzzing)
  test::expect_error<TokenizerError>([&] { HfTokenizer t(dir.write("f/tokenizer.json", real.dump())); },
                                     {"model: the id of 'z' must be an integer in [0, 2147483647], not 1.2e+20"});
  json bos = llama_style();
  bos["post_processor"]["special_tokens"]["<s>"]["ids"] = {4000};
  test::expect_error<TokenizerError>([&] { HfTokenizer t(dir.write("p/tokenizer.json", bos.dump())); },
                                     {"post_processor: <s> has id 4000, which names no token"});
  json regex = tiny_bpe({"a b"});
  regex["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}, {"invert", false}};
  test::expect_error<TokenizerError>([&] { HfTokenizer t(dir.write("r/tokenizer.json", regex.dump())); },
                                     {"pre_tokenizer Split", "(unclosed", "does not compile"});
  test::expect_error<TokenizerError>([&] { HfTokenizer t(dir.write("x/tokenizer.json", "{\"model\": {\"type\": \"BPE\", \"vocab\": {")); },
                                     {"x/tokenizer.json: not valid JSON"});
  dir.write("c/tokenizer_config.json", R"({"eos_token": {"content": "</s>"}})");
  test::expect_error<TokenizerError>([&] { HfTokenizer t(dir.write("c/tokenizer.json", tiny_bpe({"a b"}).dump())); },
                                     {"tokenizer_config.json: eos_token '</s>' is not a token"});
}

TEST(HfTokenizer, TokenizerTakesAFolderAndReadsSpecialIdsFromItsConfig) {
  test::TempDir dir;
  dir.write("qwen/tokenizer.json", test::read_text(kGolden + "qwen2_subset.json"));
  dir.write("qwen/tokenizer_config.json", R"({"bos_token": null, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>"})");
  Tokenizer tok((dir.path() / "qwen").string());
  EXPECT_EQ(tok.bos_id(), -1);
  EXPECT_EQ(tok.eos_id(), 151645);
  EXPECT_EQ(tok.pad_id(), 151643);
  EXPECT_EQ(tok.vocab_size(), 151669);
  EXPECT_EQ(tok.id_to_piece(1879), "Ġworld");
  EXPECT_EQ(tok.piece_to_id("Ġworld"), 1879);
  EXPECT_EQ(tok.decode(tok.encode("Hello world")), "Hello world");
  EXPECT_EQ(tok.encode("Hello world", /*add_special=*/true), tok.encode("Hello world"));  // ByteLevel adds nothing
}

}  // namespace
}  // namespace modalign
