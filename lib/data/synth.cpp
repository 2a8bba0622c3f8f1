#include "lib/data/synth.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <random>

#include "lib/data/chat_template.h"
#include "lib/data/image.h"
#include "lib/data/tokenizer.h"
#include "lib/io/safetensors.h"

namespace modalign {
namespace fs = std::filesystem;
namespace {

struct Colour {
  const char* name;
  int r, g, b;
};
constexpr Colour kColours[] = {{"red", 220, 40, 40},    {"green", 40, 170, 60},  {"blue", 40, 80, 220},
                               {"yellow", 230, 210, 40}, {"purple", 140, 60, 180}, {"orange", 240, 140, 30},
                               {"cyan", 40, 200, 210},  {"pink", 240, 120, 180}};
constexpr const char* kShapes[] = {"circle", "square", "triangle", "diamond"};
constexpr const char* kCounts[] = {"zero", "one", "two", "three", "four"};
constexpr int kNumColours = 8, kNumShapes = 4;

// Deterministic draws that do not depend on the standard library's distributions.
struct Rng {
  std::mt19937_64 engine;
  double uniform() { return static_cast<double>(engine() >> 11) * 0x1.0p-53; }
  int below(int n) { return static_cast<int>(uniform() * n); }
  double normal() { return std::sqrt(-2 * std::log(1 - uniform())) * std::cos(2 * M_PI * uniform()); }
};

struct Level {
  int shapes_min, shapes_max;
  double size_min, size_max;  // radius as a share of the image side
  double colour_jitter, noise;
};
Level level(SynthDifficulty d) {
  switch (d) {
    case SynthDifficulty::Easy: return {1, 1, 0.22, 0.30, 0, 0};
    case SynthDifficulty::Medium: return {2, 2, 0.12, 0.20, 25, 12};
    case SynthDifficulty::Hard: return {3, 3, 0.09, 0.15, 45, 25};
  }
  return {};
}

struct Placed {
  int shape, colour;
  double cx, cy, radius;
};

bool inside(int shape, double dx, double dy, double r) {
  switch (shape) {
    case 0: return dx * dx + dy * dy <= r * r;
    case 1: return std::abs(dx) <= r * 0.85 && std::abs(dy) <= r * 0.85;
    case 2: return dy <= r * 0.8 && dy >= -r && std::abs(dx) <= (dy + r) * 0.6;  // apex up
    default: return std::abs(dx) + std::abs(dy) <= r;
  }
}

RgbImage draw(const std::vector<Placed>& shapes, const Level& lv, int size, Rng& rng) {
  RgbImage img{size, size, std::vector<uint8_t>(static_cast<size_t>(size) * size * 3)};
  int bg = 200 + rng.below(40);
  std::vector<std::array<double, 3>> colours;
  for (const auto& s : shapes) {
    const Colour& c = kColours[s.colour];
    colours.push_back({c.r + lv.colour_jitter * (2 * rng.uniform() - 1), c.g + lv.colour_jitter * (2 * rng.uniform() - 1),
                       c.b + lv.colour_jitter * (2 * rng.uniform() - 1)});
  }
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x) {
      std::array<double, 3> px{double(bg), double(bg), double(bg)};
      for (size_t i = 0; i < shapes.size(); ++i)
        if (inside(shapes[i].shape, x + 0.5 - shapes[i].cx, y + 0.5 - shapes[i].cy, shapes[i].radius)) px = colours[i];
      for (int c = 0; c < 3; ++c) {
        double v = px[c] + (lv.noise > 0 ? lv.noise * rng.normal() : 0.0);
        img.pixels[(static_cast<size_t>(y) * size + x) * 3 + c] = static_cast<uint8_t>(std::clamp(std::lround(v), 0L, 255L));
      }
    }
  return img;
}

// Non-overlapping shapes with distinct kinds and colours.
std::vector<Placed> place(const Level& lv, int size, Rng& rng) {
  int n = lv.shapes_min + rng.below(lv.shapes_max - lv.shapes_min + 1);
  std::vector<int> kinds{0, 1, 2, 3}, colours{0, 1, 2, 3, 4, 5, 6, 7};
  std::vector<Placed> out;
  for (int i = 0; i < n; ++i) {
    std::swap(kinds[i], kinds[i + rng.below(kNumShapes - i)]);
    std::swap(colours[i], colours[i + rng.below(kNumColours - i)]);
    for (int attempt = 0; attempt < 200; ++attempt) {
      double r = size * (lv.size_min + (lv.size_max - lv.size_min) * rng.uniform());
      double cx = r + (size - 2 * r) * rng.uniform(), cy = r + (size - 2 * r) * rng.uniform();
      bool clear = true;
      for (const auto& p : out) clear &= std::hypot(p.cx - cx, p.cy - cy) > p.radius + r + 1;
      if (clear || attempt == 199) {
        out.push_back({kinds[i], colours[i], cx, cy, r});
        break;
      }
    }
  }
  return out;
}

struct Question {
  std::string text, answer, type;
  std::vector<std::string> options;  // every answer of this type, for wrong hints
};

Question ask(const std::vector<Placed>& shapes, Rng& rng) {
  int kind = rng.below(10);
  const Placed& target = shapes[rng.below(static_cast<int>(shapes.size()))];
  Question q;
  if (kind < 5) {
    q = {fmt::format("What colour is the {}?", kShapes[target.shape]), kColours[target.colour].name, "colour", {}};
    for (const auto& c : kColours) q.options.push_back(c.name);
  } else if (kind < 8) {
    q = {fmt::format("Which shape is {}?", kColours[target.colour].name), kShapes[target.shape], "shape", {}};
    q.options.assign(std::begin(kShapes), std::end(kShapes));
  } else {
    q = {"How many shapes are there?", kCounts[shapes.size()], "count", {}};
    q.options.assign(kCounts + 1, kCounts + 5);
  }
  return q;
}

enum class HintMode { Train, Aligned, Conflict, None };

nlohmann::ordered_json make_sample(const std::string& split, int64_t i, const SynthOptions& o, HintMode mode, Rng& rng) {
  Level lv = level(o.difficulty);
  std::vector<Placed> shapes = place(lv, static_cast<int>(o.image_size), rng);
  RgbImage img = draw(shapes, lv, static_cast<int>(o.image_size), rng);
  std::string image = fmt::format("images/{}_{:05d}.png", split, i);
  save_png((fs::path(o.out_dir) / image).string(), img);
  Question q = ask(shapes, rng);
  bool agree = mode == HintMode::Aligned || (mode == HintMode::Train && rng.uniform() < o.hint_agreement);
  std::string hint;
  if (mode != HintMode::None) {
    hint = q.answer;
    while (!agree && hint == q.answer) hint = q.options[static_cast<size_t>(rng.below(static_cast<int>(q.options.size())))];
  }
  std::string human = "<image>\n" + q.text + (hint.empty() ? "" : " Hint: it is probably " + hint + ".");
  nlohmann::ordered_json j;
  j["id"] = fmt::format("{}-{:05d}", split, i);
  j["image"] = image;
  j["conversations"] = {{{"from", "human"}, {"value", human}}, {{"from", "gpt"}, {"value", q.answer}}};
  j["answer"] = q.answer;
  j["hint"] = hint;
  j["question_type"] = q.type;
  return j;
}

}  // namespace

std::string synthesize(const SynthOptions& o) {
  if (o.out_dir.empty()) throw std::invalid_argument("synth: --out is required");
  if (o.train < 1 || o.eval < 1 || o.image_size < 16 || o.hint_agreement < 0 || o.hint_agreement > 1)
    throw std::invalid_argument("synth: need train >= 1, eval >= 1, image size >= 16 and hint agreement in [0, 1]");
  fs::create_directories(fs::path(o.out_dir) / "images");
  std::string corpus = std::string(kVicunaSystem) + "\nUSER: ASSISTANT:\n";
  struct Split {
    const char* name;
    int64_t count;
    HintMode mode;
  };
  const Split splits[] = {{"train", o.train, HintMode::Train},
                          {"eval_aligned", o.eval, HintMode::Aligned},
                          {"eval_conflict", o.eval, HintMode::Conflict},
                          {"eval_nohint", o.eval, HintMode::None}};
  for (size_t s = 0; s < std::size(splits); ++s) {
    Rng rng{std::mt19937_64(o.seed * 1000003 + s)};
    nlohmann::ordered_json samples = nlohmann::ordered_json::array();
    for (int64_t i = 0; i < splits[s].count; ++i) {
      samples.push_back(make_sample(splits[s].name, i, o, splits[s].mode, rng));
      if (splits[s].mode == HintMode::Train)
        for (const auto& turn : samples.back()["conversations"]) corpus += turn["value"].get<std::string>() + "\n";
    }
    write_file_atomic((fs::path(o.out_dir) / (std::string(splits[s].name) + ".json")).string(), samples.dump(1) + "\n");
  }
  for (const auto& c : kColours) corpus += std::string("It is probably ") + c.name + ". " + c.name + "\n";
  for (const char* shape : kShapes) corpus += std::string(shape) + "\n";
  for (const char* count : kCounts) corpus += std::string(count) + "\n";
  std::string corpus_path = (fs::path(o.out_dir) / "tokenizer_corpus.txt").string();
  write_file_atomic(corpus_path, corpus);
  Tokenizer::TrainOptions topt;
  topt.vocab_size = o.vocab_size;
  Tokenizer::train(corpus_path, (fs::path(o.out_dir) / "tokenizer.model").string(), topt);
  fs::remove(corpus_path);
  static constexpr const char* kDifficulty[] = {"easy", "medium", "hard"};
  nlohmann::ordered_json meta = {{"train", o.train}, {"eval", o.eval}, {"image_size", o.image_size}, {"seed", o.seed},
                                 {"hint_agreement", o.hint_agreement},
                                 {"difficulty", kDifficulty[static_cast<int>(o.difficulty)]}, {"vocab_size", o.vocab_size}};
  write_file_atomic((fs::path(o.out_dir) / "synth.json").string(), meta.dump(2) + "\n");
  return fmt::format("synth: wrote {} train and 3 x {} eval samples ({}, {}x{} images, hint agreement {}) and a tokenizer to {}",
                     o.train, o.eval, kDifficulty[static_cast<int>(o.difficulty)], o.image_size, o.image_size,
                     o.hint_agreement, o.out_dir);
}

}  // namespace modalign
