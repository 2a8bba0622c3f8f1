// libFuzzer target: the LLaVA JSON / JSONL reader must return checked samples (turns alternating from a
// human one, at least one gpt turn) or throw DataError.
#include "lib/data/dataset.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const bool jsonl = size > 0 && data[0] == '{';  // both formats from one corpus
  const std::string& path = modalign::fuzz::write_input(data, size, jsonl ? ".jsonl" : ".json");
  try {
    for (const auto& e : modalign::load_dataset(path)) {
      // Turns alternate from a human one, and one gpt turn at least (a trailing question is allowed: it is
      // what `generate` answers).
      bool gpt = false;
      for (size_t i = 0; i < e.turns.size(); ++i) {
        if (e.turns[i].from_human != (i % 2 == 0)) __builtin_trap();
        gpt |= !e.turns[i].from_human;
      }
      if (!gpt) __builtin_trap();
    }
  } catch (const modalign::DataError&) {
  }
  return 0;
}
