// libFuzzer target: the LLaVA JSON / JSONL reader must return checked samples (a human turn first, a gpt
// turn last) or throw DataError.
#include "lib/data/dataset.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const bool jsonl = size > 0 && data[0] == '{';  // both formats from one corpus
  const std::string& path = modalign::fuzz::write_input(data, size, jsonl ? ".jsonl" : ".json");
  try {
    for (const auto& e : modalign::load_dataset(path))
      if (e.turns.size() < 2 || !e.turns.front().from_human || e.turns.back().from_human) __builtin_trap();
  } catch (const modalign::DataError&) {
  }
  return 0;
}
