// Images for the vision tower: decoding with stb_image (PNG, JPEG, BMP, ...), then LLaVA's
// preprocessing: pad to a square with the mean colour (`pad`) or resize the short side and centre-crop
// (`crop`), resize to the tower's size (bicubic, antialiased), scale to [0, 1], normalise per channel.
#pragma once
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "lib/config/run_config.h"

namespace modalign {

struct RgbImage {
  int width = 0, height = 0;
  std::vector<uint8_t> pixels;  // height * width * 3, row-major RGB
};

// Largest side and most elongated shape decoded (Qwen2-VL's processor refuses the same ratio); a file claiming
// more is refused before any pixel is decoded, so pad/crop intermediates stay under ~1 GB.
inline constexpr int kMaxImageSide = 8192;
inline constexpr int kMaxAspectRatio = 200;

// Throws DataError naming the file and stb's reason for a missing, unreadable, corrupt or too large image.
RgbImage load_image(const std::string& path);

struct ImageOptions {
  int64_t size = 336;
  AspectMode aspect = AspectMode::Pad;
  std::vector<double> mean{0.48145466, 0.4578275, 0.40821073};
  std::vector<double> std{0.26862954, 0.26130258, 0.27577711};
};

// -> (3, size, size) float32, normalised.
torch::Tensor preprocess_image(const RgbImage& image, const ImageOptions& options);

// Where preprocess_image moves a point of a width x height image: out = in * scale - offset, per axis.
struct ImageGeometry {
  double scale_x = 1, scale_y = 1, offset_x = 0, offset_y = 0;
};
ImageGeometry image_geometry(int width, int height, const ImageOptions& options);

// Boxes (x0, y0, x1, y1 in the original image's pixels) -> (grid * grid) float32 target over the image
// tokens, row-major like the patches: the share of each patch's area that the union of the boxes covers
// after preprocessing (pad/crop/resize move them with the pixels), normalised to sum 1. All zeros when no
// box reaches the preprocessed image.
torch::Tensor region_target(const std::vector<std::array<double, 4>>& boxes, int width, int height,
                            const ImageOptions& options, int64_t grid);

// Writes an RGB image as PNG (synthetic data and tests); throws DataError on failure.
void save_png(const std::string& path, const RgbImage& image);

}  // namespace modalign
