// libFuzzer target: the tokenizer.json reader must load a file or throw TokenizerError; a tokenizer it
// loads encodes texts (added tokens, whitespace runs, accents, digits) to ids inside its vocabulary, and
// decodes any of its ids, or throws TokenizerError — never another exception, a crash or a hang.
#include <algorithm>

#include "fuzz_input.h"
#include "lib/data/hf_tokenizer.h"
#include "lib/data/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = modalign::fuzz::write_input(data, size, "-tokenizer.json");
  try {
    const modalign::HfTokenizer tok(path);
    for (const char* text : {"Hello, world! 12 h\xC3\xA9llo \t\n  x", "<|im_start|>a<s>b</s>", "", "   "}) {
      const std::vector<int64_t> ids = tok.encode(text, /*add_special=*/true);
      for (int64_t id : ids)
        if (id < 0 || id >= tok.vocab_size()) __builtin_trap();
      try {
        tok.decode(ids, false);
      } catch (const modalign::TokenizerError&) {  // a template id that names no token
      }
    }
    for (int64_t id = 0; id < std::min<int64_t>(tok.vocab_size(), 300); ++id) {
      try {
        tok.decode({id});
      } catch (const modalign::TokenizerError&) {  // an id between entries
      }
    }
  } catch (const modalign::TokenizerError&) {
  }
  return 0;
}
