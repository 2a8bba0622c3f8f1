// Images for the vision tower: decoding with stb_image (PNG, JPEG, BMP, ...), then LLaVA's
// preprocessing: pad to a square with the mean colour (`pad`) or resize the short side and centre-crop
// (`crop`), resize to the tower's size (bicubic, antialiased), scale to [0, 1], normalise per channel;
// or Qwen2-VL's: any size, resized to multiples of patch x merge (smart_resize), as rows of patches.
#pragma once
#include <torch/torch.h>

#include <array>
#include <cstdint>
#include <string>
#include <utility>
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
// (width, height) from the file's header, without decoding (the same checks and errors as load_image).
std::pair<int, int> read_image_size(const std::string& path);

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

// Qwen2-VL / Qwen2.5-VL image processing (Qwen2VLImageProcessor).
struct QwenImageOptions {
  int64_t patch_size = 14, merge_size = 2, temporal_patch_size = 2;
  int64_t min_pixels = 56 * 56, max_pixels = 12845056;  // Qwen2.5-VL's preprocessor_config.json
  std::vector<double> mean{0.48145466, 0.4578275, 0.40821073};
  std::vector<double> std{0.26862954, 0.26130258, 0.27577711};
};

// Qwen's smart_resize: (height, width) rounded to multiples of patch x merge (at least one), scaled
// down to at most max_pixels or up to at least min_pixels, aspect ratio kept as well as rounding allows.
// As in Hugging Face, a very elongated image whose short side stays one patch x merge may exceed max_pixels.
std::pair<int64_t, int64_t> smart_resize(int64_t height, int64_t width, const QwenImageOptions& options);

// A normalised frame (C, H, W) -> patch rows (H/p * W/p, C * temporal_patch_size * p * p) in the image
// processor's order: 2x2 merge blocks row-major, the patches of a block row-major; columns channel,
// frame (the image repeated temporal_patch_size times), pixel row, pixel column.
torch::Tensor qwen_patches(const torch::Tensor& frame, const QwenImageOptions& options);

struct QwenPixels {
  torch::Tensor patches;                 // (t h w, K) float32
  std::vector<int64_t> grid_thw;         // (1, H/p, W/p)
  torch::Tensor region_target;           // (h/m * w/m) over the merged tokens, when boxes were given
};
// smart_resize, bicubic resize, scale, normalise, patches; `boxes` (original pixels) -> region_target over
// the merged tokens in raster order (the resize moves them with the pixels).
QwenPixels preprocess_qwen_image(const RgbImage& image, const QwenImageOptions& options,
                                 const std::vector<std::array<double, 4>>& boxes = {});

// Writes an RGB image as PNG (synthetic data and tests); throws DataError on failure.
void save_png(const std::string& path, const RgbImage& image);

}  // namespace modalign
