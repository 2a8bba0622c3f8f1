// The tiny model and benchmark that the trainer, probe and data-parallel suites train (the C++ twin of
// tiny_fixture in tests/tools/lib.sh).
#pragma once
#include <string>

#include "lib/data/synth.h"
#include "test_util.h"

namespace modalign::test {

// Hugging Face config.json of the golden shapes with a vocabulary of 300 (room for the synthetic
// benchmark's 200-piece tokenizer): the model the trainer, probe and data-parallel tests train.
inline constexpr const char* kTinyHfConfig = R"({"vision_config": {"hidden_size": 32, "intermediate_size": 64,
  "num_hidden_layers": 3, "num_attention_heads": 2, "image_size": 16, "patch_size": 4}, "text_config": {"vocab_size": 300,
  "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 2, "num_attention_heads": 4,
  "num_key_value_heads": 2}, "image_token_index": 3})";

// Writes dir/data (the synthetic benchmark: 16-pixel images, a 200-piece tokenizer) and dir/config.json
// (kTinyHfConfig); returns the config.json path.
inline std::string tiny_fixture(const TempDir& dir, int64_t train, int64_t eval) {
  SynthOptions o;
  o.out_dir = (dir.path() / "data").string();
  o.train = train, o.eval = eval, o.image_size = 16, o.vocab_size = 200;
  synthesize(o);
  return dir.write("config.json", kTinyHfConfig);
}

}  // namespace modalign::test
