// libFuzzer target: image decoding (stb), LLaVA preprocessing and Qwen's (smart_resize, patch rows) must give
// their shapes or throw DataError for any bytes, whatever header sizes they claim.
#include <algorithm>

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
    // Qwen: any size becomes whole merge blocks of patches (max_pixels can be passed by elongated images
    // whose short side stays one merge block, as in Hugging Face's smart_resize).
    modalign::QwenImageOptions qwen{4, 2, 2, 64, 4096, {0.5, 0.5, 0.5}, {0.5, 0.5, 0.5}};
    modalign::QwenPixels px = modalign::preprocess_qwen_image(image, qwen);
    const int64_t gh = px.grid_thw[1], gw = px.grid_thw[2];
    if (px.patches.size(0) != gh * gw || px.patches.size(1) != 96 || gh % 2 != 0 || gw % 2 != 0 ||
        (gh * gw * 16 > 4096 && std::min(gh, gw) != 2))
      __builtin_trap();
  } catch (const modalign::DataError&) {
  }
  return 0;
}
