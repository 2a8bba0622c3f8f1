#include "lib/data/image.h"

#include <stb_image.h>
#include <stb_image_write.h>

#include <cmath>
#include <filesystem>

#include "lib/data/dataset.h"

namespace modalign {
namespace F = torch::nn::functional;

RgbImage load_image(const std::string& path) {
  if (!std::filesystem::exists(path)) throw DataError(path + ": image file not found");
  int w = 0, h = 0, channels = 0;
  unsigned char* data = stbi_load(path.c_str(), &w, &h, &channels, 3);
  if (!data) throw DataError(path + ": cannot decode image (" + stbi_failure_reason() + ")");
  RgbImage image{w, h, std::vector<uint8_t>(data, data + static_cast<size_t>(w) * h * 3)};
  stbi_image_free(data);
  return image;
}

void save_png(const std::string& path, const RgbImage& image) {
  if (!stbi_write_png(path.c_str(), image.width, image.height, 3, image.pixels.data(), image.width * 3))
    throw DataError(path + ": cannot write PNG");
}

namespace {

// (3, H, W) float in [0, 255] -> (3, h, w), bicubic with antialiasing, rounded like 8-bit images.
torch::Tensor resize(const torch::Tensor& x, int64_t h, int64_t w) {
  if (x.size(1) == h && x.size(2) == w) return x;
  torch::Tensor y = F::interpolate(x.unsqueeze(0), F::InterpolateFuncOptions()
                                                       .size(std::vector<int64_t>{h, w})
                                                       .mode(torch::kBicubic)
                                                       .align_corners(false)
                                                       .antialias(true));
  return y.squeeze(0).clamp(0, 255).round();
}

}  // namespace

torch::Tensor preprocess_image(const RgbImage& image, const ImageOptions& o) {
  TORCH_CHECK(image.width > 0 && image.height > 0, "empty image");
  torch::Tensor x = torch::from_blob(const_cast<uint8_t*>(image.pixels.data()), {image.height, image.width, 3}, torch::kUInt8)
                        .permute({2, 0, 1})
                        .to(torch::kFloat32);  // (3, H, W) in [0, 255]
  const int64_t h = image.height, w = image.width, s = o.size;
  if (o.aspect == AspectMode::Pad) {  // LLaVA expand2square: paste centred on a mean-colour square
    const int64_t side = std::max(h, w);
    torch::Tensor square = torch::empty({3, side, side});
    for (int c = 0; c < 3; ++c) square[c].fill_(static_cast<double>(static_cast<int>(o.mean[c] * 255)));
    const int64_t top = (side - h) / 2, left = (side - w) / 2;
    square.slice(1, top, top + h).slice(2, left, left + w).copy_(x);
    x = resize(square, s, s);
  } else {  // CLIP: shortest side to s, then centre crop
    const int64_t nh = h <= w ? s : static_cast<int64_t>(std::lround(static_cast<double>(s) * h / w));
    const int64_t nw = w <= h ? s : static_cast<int64_t>(std::lround(static_cast<double>(s) * w / h));
    x = resize(x, nh, nw);
    const int64_t top = static_cast<int64_t>(std::lround((nh - s) / 2.0)), left = static_cast<int64_t>(std::lround((nw - s) / 2.0));
    x = x.slice(1, top, top + s).slice(2, left, left + s);
  }
  torch::Tensor mean = torch::tensor(o.mean, torch::kFloat64).to(torch::kFloat32).view({3, 1, 1});
  torch::Tensor stdev = torch::tensor(o.std, torch::kFloat64).to(torch::kFloat32).view({3, 1, 1});
  return ((x / 255.0 - mean) / stdev).contiguous();  // (3, s, s)
}

}  // namespace modalign
