#include "lib/data/image.h"

#include <fmt/format.h>
#include <stb_image.h>
#include <stb_image_write.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <limits>
#include <filesystem>

#include "lib/data/dataset.h"
#include "lib/io/files.h"

namespace modalign {
namespace F = torch::nn::functional;

namespace {

// The formats accepted, by their first bytes: stb_image also guesses TGA for any unknown bytes, and its less
// used decoders are where its bugs are.
const char* image_format(const std::string& b) {
  if (b.compare(0, 3, "\xFF\xD8\xFF") == 0) return "JPEG";
  if (b.compare(0, 8, "\x89PNG\r\n\x1A\n") == 0) return "PNG";
  if (b.compare(0, 2, "BM") == 0) return "BMP";
  if (b.compare(0, 4, "GIF8") == 0) return "GIF";
  return nullptr;
}

// stb_image 2.27 (Debian 12) writes past its Huffman tables when a JPEG's DHT segment declares more than
// 256 codes (found by tests/fuzz/image_fuzz; stb 2.28 checks this). Every DHT table stb could read is checked
// here first, walking the file as stb does: bytes that are not a marker are skipped one by one (so the
// entropy-coded data after a scan is crossed too), a segment is skipped by its length, and a DHT segment's
// tables are read until its length is used up. "" when every table declares at most 256 codes.
std::string jpeg_problem(const std::string& b) {
  auto byte = [&](size_t i) { return i < b.size() ? static_cast<unsigned>(static_cast<unsigned char>(b[i])) : 0u; };
  for (size_t i = 2; i + 1 < b.size();) {
    const unsigned marker = byte(i + 1);
    if (byte(i) != 0xFF || marker == 0xFF) { ++i; continue; }
    if (marker == 0x00 || marker == 0x01 || marker == 0xD8 || (marker >= 0xD0 && marker <= 0xD7)) { i += 2; continue; }
    if (marker == 0xD9) return "";  // end of image
    const int64_t length = byte(i + 2) << 8 | byte(i + 3);
    if (marker != 0xC4) { i += 2 + static_cast<size_t>(length); continue; }
    size_t t = i + 4;  // DHT: per table a class/id byte, 16 code counts, then the symbols
    for (int64_t left = length - 2; left > 0;) {
      size_t codes = 0;
      for (size_t k = 1; k <= 16; ++k) codes += byte(t + k);
      if (codes > 256) return fmt::format("a Huffman table declares {} codes (at most 256)", codes);
      t += 17 + codes;
      left -= static_cast<int64_t>(17 + codes);
    }
    i = std::max(t, i + 2);
  }
  return "";
}

// stb_image 2.27 copies a zero-length IDAT chunk that comes before any image data with memcpy from
// a null buffer (undefined behaviour; found by tests/fuzz/image_fuzz). Such a chunk carries nothing: it is
// dropped before stb sees the file. Chunks are walked by their lengths; a malformed length ends the walk
// and leaves the rest to stb's own errors.
void drop_empty_png_idat(std::string& b) {
  auto be32 = [&](size_t i) {
    return static_cast<uint64_t>(static_cast<unsigned char>(b[i])) << 24 | static_cast<unsigned char>(b[i + 1]) << 16 |
           static_cast<unsigned char>(b[i + 2]) << 8 | static_cast<unsigned char>(b[i + 3]);
  };
  for (size_t i = 8; i + 12 <= b.size();) {
    const uint64_t length = be32(i);
    if (length > b.size() - i - 12) return;
    if (length == 0 && b.compare(i + 4, 4, "IDAT") == 0) {
      b.erase(i, 12);  // length, type, CRC
      continue;
    }
    i += 12 + static_cast<size_t>(length);
  }
}

}  // namespace

namespace {

// The file's bytes, its format checked; `w`, `h` from its header (when stb can read one) checked against
// the size limits before any pixel is decoded.
std::string read_image_file(const std::string& path, int& w, int& h) {
  std::string problem;
  std::string bytes = try_read_regular_file(path, 256 * kMiB, problem);
  if (problem == "no such file") throw DataError(path + ": image file not found");
  if (!problem.empty()) throw DataError(path + ": cannot read image: " + problem);
  const char* format = image_format(bytes);
  if (!format) throw DataError(path + ": not a JPEG, PNG, BMP or GIF image");
  if (std::string(format) == "JPEG")
    if (std::string p = jpeg_problem(bytes); !p.empty()) throw DataError(path + ": corrupt JPEG: " + p);
  if (std::string(format) == "PNG") drop_empty_png_idat(bytes);
  const auto* raw = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int n = static_cast<int>(bytes.size());
  int channels = 0;
  w = 0, h = 0;
  // A small file may claim a huge image (a decompression bomb), and a very thin one becomes a huge square
  // when padded or a huge strip when its short side is resized: both are checked before decoding.
  if (stbi_info_from_memory(raw, n, &w, &h, &channels)) {
    // stb reports a top-down BMP's height as negative.
    const int64_t aw = std::llabs(static_cast<int64_t>(w)), ah = std::llabs(static_cast<int64_t>(h));
    const int64_t lo = std::min(aw, ah), hi = std::max(aw, ah);
    if (lo <= 0) throw DataError(fmt::format("{}: image of {} x {} pixels is empty", path, aw, ah));
    if (hi > kMaxImageSide)
      throw DataError(fmt::format("{}: image of {} x {} pixels has a side above the limit of {}", path, aw, ah, kMaxImageSide));
    if (hi > kMaxAspectRatio * lo)
      throw DataError(fmt::format("{}: image of {} x {} pixels has an aspect ratio above {}", path, aw, ah, kMaxAspectRatio));
    w = static_cast<int>(aw), h = static_cast<int>(ah);
  }
  return bytes;
}

}  // namespace

std::pair<int, int> read_image_size(const std::string& path) {
  int w = 0, h = 0;
  read_image_file(path, w, h);
  if (w <= 0 || h <= 0) throw DataError(path + ": cannot read the image size from its header");
  return {w, h};
}

RgbImage load_image(const std::string& path) {
  int w = 0, h = 0, channels = 0;
  const std::string bytes = read_image_file(path, w, h);
  const char* format = image_format(bytes);
  const auto* raw = reinterpret_cast<const stbi_uc*>(bytes.data());
  const int n = static_cast<int>(bytes.size());
  unsigned char* data = stbi_load_from_memory(raw, n, &w, &h, &channels, 3);
  if (!data) throw DataError(fmt::format("{}: cannot decode {} image ({})", path, format, stbi_failure_reason()));
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

ImageGeometry image_geometry(int width, int height, const ImageOptions& o) {
  const int64_t h = height, w = width, s = o.size;
  if (o.aspect == AspectMode::Pad) {  // pasted centred on a square of side max(h, w), resized to s
    const int64_t side = std::max(h, w);
    const double k = static_cast<double>(s) / static_cast<double>(side);
    return {k, k, -static_cast<double>((side - w) / 2) * k, -static_cast<double>((side - h) / 2) * k};
  }
  // shortest side to s, then a centred crop of s x s
  const int64_t nh = h <= w ? s : static_cast<int64_t>(std::lround(static_cast<double>(s) * h / w));
  const int64_t nw = w <= h ? s : static_cast<int64_t>(std::lround(static_cast<double>(s) * w / h));
  return {static_cast<double>(nw) / w, static_cast<double>(nh) / h, static_cast<double>(std::lround((nw - s) / 2.0)),
          static_cast<double>(std::lround((nh - s) / 2.0))};
}

torch::Tensor preprocess_image(const RgbImage& image, const ImageOptions& o) {
  TORCH_CHECK(image.width > 0 && image.height > 0, "empty image");
  torch::Tensor x = torch::from_blob(const_cast<uint8_t*>(image.pixels.data()), {image.height, image.width, 3}, torch::kUInt8)
                        .permute({2, 0, 1})
                        .to(torch::kFloat32);  // (3, H, W) in [0, 255]
  const int64_t h = image.height, w = image.width, s = o.size;
  const ImageGeometry g = image_geometry(image.width, image.height, o);
  if (o.aspect == AspectMode::Pad) {  // LLaVA expand2square: paste centred on a mean-colour square
    const int64_t side = std::max(h, w);
    torch::Tensor square = torch::empty({3, side, side});
    for (int c = 0; c < 3; ++c) square[c].fill_(static_cast<double>(static_cast<int>(o.mean[c] * 255)));
    const int64_t top = (side - h) / 2, left = (side - w) / 2;
    square.slice(1, top, top + h).slice(2, left, left + w).copy_(x);
    x = resize(square, s, s);
  } else {  // CLIP: shortest side to s, then centre crop
    const int64_t nh = std::lround(g.scale_y * h), nw = std::lround(g.scale_x * w);
    x = resize(x, nh, nw);
    const int64_t top = static_cast<int64_t>(g.offset_y), left = static_cast<int64_t>(g.offset_x);
    x = x.slice(1, top, top + s).slice(2, left, left + s);
  }
  torch::Tensor mean = torch::tensor(o.mean, torch::kFloat64).to(torch::kFloat32).view({3, 1, 1});
  torch::Tensor stdev = torch::tensor(o.std, torch::kFloat64).to(torch::kFloat32).view({3, 1, 1});
  return ((x / 255.0 - mean) / stdev).contiguous();  // (3, s, s)
}

namespace {

// Area of the union of `boxes` inside the cell [x0, x1) x [y0, y1): strips between box edges, in each
// the merged length of the y-intervals of the boxes spanning it.
double covered_area(const std::vector<std::array<double, 4>>& boxes, double x0, double y0, double x1, double y1) {
  std::vector<std::array<double, 4>> clipped;
  std::vector<double> xs{x0, x1};
  for (const auto& b : boxes) {
    std::array<double, 4> c{std::max(b[0], x0), std::max(b[1], y0), std::min(b[2], x1), std::min(b[3], y1)};
    if (c[0] >= c[2] || c[1] >= c[3]) continue;
    clipped.push_back(c);
    xs.push_back(c[0]), xs.push_back(c[2]);
  }
  std::sort(xs.begin(), xs.end());
  double area = 0;
  for (size_t i = 0; i + 1 < xs.size(); ++i) {
    const double a = xs[i], b = xs[i + 1];
    if (b <= a) continue;
    std::vector<std::pair<double, double>> spans;
    for (const auto& c : clipped)
      if (c[0] <= a && c[2] >= b) spans.emplace_back(c[1], c[3]);
    std::sort(spans.begin(), spans.end());
    double length = 0, end = -std::numeric_limits<double>::infinity();
    for (const auto& [lo, hi] : spans) {
      length += std::max(0.0, hi - std::max(lo, end));
      end = std::max(end, hi);
    }
    area += length * (b - a);
  }
  return area;
}

// Boxes moved by `g`, covered share of each cell of a rows x cols grid of cell x cell pixels, row-major,
// normalised to sum 1 (all zeros when nothing is covered).
torch::Tensor grid_target(const std::vector<std::array<double, 4>>& boxes, const ImageGeometry& g, int64_t rows,
                          int64_t cols, double cell) {
  std::vector<std::array<double, 4>> moved;
  for (const auto& b : boxes)
    moved.push_back({b[0] * g.scale_x - g.offset_x, b[1] * g.scale_y - g.offset_y, b[2] * g.scale_x - g.offset_x,
                     b[3] * g.scale_y - g.offset_y});
  torch::Tensor target = torch::zeros({rows * cols}, torch::kFloat64);
  auto t = target.accessor<double, 1>();
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c)
      t[r * cols + c] = covered_area(moved, c * cell, r * cell, (c + 1) * cell, (r + 1) * cell) / (cell * cell);
  const double total = target.sum().item<double>();
  return (total > 0 ? target / total : target).to(torch::kFloat32);
}

}  // namespace

torch::Tensor region_target(const std::vector<std::array<double, 4>>& boxes, int width, int height,
                            const ImageOptions& o, int64_t grid) {
  TORCH_CHECK(grid > 0 && o.size % grid == 0, "region_target: image size ", o.size, " is not a multiple of the ", grid,
              " patch grid");
  return grid_target(boxes, image_geometry(width, height, o), grid, grid, static_cast<double>(o.size / grid));
}

std::pair<int64_t, int64_t> smart_resize(int64_t height, int64_t width, const QwenImageOptions& o) {
  const int64_t factor = o.patch_size * o.merge_size;
  TORCH_CHECK(height > 0 && width > 0, "smart_resize: empty image");
  // Python's round(): halves to even (std::nearbyint in the default rounding mode).
  auto round_to = [&](double x) { return std::max<int64_t>(factor, static_cast<int64_t>(std::nearbyint(x / factor)) * factor); };
  int64_t h = round_to(static_cast<double>(height)), w = round_to(static_cast<double>(width));
  const double area = static_cast<double>(height) * static_cast<double>(width);
  if (h * w > o.max_pixels) {
    const double beta = std::sqrt(area / static_cast<double>(o.max_pixels));
    h = std::max<int64_t>(factor, static_cast<int64_t>(std::floor(height / beta / factor)) * factor);
    w = std::max<int64_t>(factor, static_cast<int64_t>(std::floor(width / beta / factor)) * factor);
  } else if (h * w < o.min_pixels) {
    const double beta = std::sqrt(static_cast<double>(o.min_pixels) / area);
    h = static_cast<int64_t>(std::ceil(height * beta / factor)) * factor;
    w = static_cast<int64_t>(std::ceil(width * beta / factor)) * factor;
  }
  return {h, w};
}

torch::Tensor qwen_patches(const torch::Tensor& frame, const QwenImageOptions& o) {
  TORCH_CHECK(frame.dim() == 3 && frame.size(1) % (o.patch_size * o.merge_size) == 0 &&
                  frame.size(2) % (o.patch_size * o.merge_size) == 0,
              "qwen_patches: a (C, H, W) frame with H and W multiples of ", o.patch_size * o.merge_size, " expected, got ",
              frame.sizes());
  const int64_t c = frame.size(0), p = o.patch_size, m = o.merge_size, tp = o.temporal_patch_size;
  const int64_t gh = frame.size(1) / p, gw = frame.size(2) / p;
  // (tp, C, gh/m, m, p, gw/m, m, p) -> (gh/m, gw/m, m, m, C, tp, p, p): merge blocks, their patches, then
  // channel, frame, pixel row, pixel column.
  return frame.unsqueeze(0)
      .expand({tp, c, frame.size(1), frame.size(2)})
      .reshape({tp, c, gh / m, m, p, gw / m, m, p})
      .permute({2, 5, 3, 6, 1, 0, 4, 7})
      .reshape({gh * gw, c * tp * p * p})
      .contiguous();
}

QwenPixels preprocess_qwen_image(const RgbImage& image, const QwenImageOptions& o,
                                 const std::vector<std::array<double, 4>>& boxes) {
  TORCH_CHECK(image.width > 0 && image.height > 0, "empty image");
  auto [h, w] = smart_resize(image.height, image.width, o);
  torch::Tensor x = torch::from_blob(const_cast<uint8_t*>(image.pixels.data()), {image.height, image.width, 3}, torch::kUInt8)
                        .permute({2, 0, 1})
                        .to(torch::kFloat32);  // (3, H, W) in [0, 255]
  x = resize(x, h, w);
  torch::Tensor mean = torch::tensor(o.mean, torch::kFloat64).to(torch::kFloat32).view({3, 1, 1});
  torch::Tensor stdev = torch::tensor(o.std, torch::kFloat64).to(torch::kFloat32).view({3, 1, 1});
  QwenPixels out;
  out.patches = qwen_patches((x / 255.0 - mean) / stdev, o);
  out.grid_thw = {1, h / o.patch_size, w / o.patch_size};
  if (!boxes.empty()) {
    const ImageGeometry g{static_cast<double>(w) / image.width, static_cast<double>(h) / image.height, 0, 0};
    const int64_t cell = o.patch_size * o.merge_size;
    out.region_target = grid_target(boxes, g, h / cell, w / cell, static_cast<double>(cell));
  }
  return out;
}

}  // namespace modalign
