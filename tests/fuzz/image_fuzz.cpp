// libFuzzer target: image decoding (stb) and LLaVA preprocessing must give a (3, S, S) tensor or throw
// DataError for any bytes, whatever header sizes they claim.
#include "lib/data/dataset.h"
#include "lib/data/image.h"
#include "tests/fuzz/fuzz_input.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string& path = modalign::fuzz::write_input(data, size, ".img");
  try {
    const modalign::RgbImage image = modalign::load_image(path);
    modalign::ImageOptions options;
    options.size = 28;
    if (modalign::preprocess_image(image, options).sizes() != torch::IntArrayRef{3, 28, 28}) __builtin_trap();
  } catch (const modalign::DataError&) {
  }
  return 0;
}
