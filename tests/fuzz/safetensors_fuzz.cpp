// libFuzzer target: the safetensors reader must accept a well-formed file or throw SafetensorsError,
// never crash, hang or read outside the mapping; every accepted tensor is read back whole.
#include "lib/io/safetensors.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = modalign::fuzz::write_input(data, size, ".safetensors");
  try {
    modalign::SafetensorsFile file(path);
    for (const auto& e : file.entries()) (void)file.tensor(e.name).sum();
  } catch (const modalign::SafetensorsError&) {
  }
  return 0;
}
