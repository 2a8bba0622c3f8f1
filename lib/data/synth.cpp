#include "lib/data/synth.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <array>
#include <cctype>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
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
    case SynthDifficulty::Easy: return {1, 2, 0.16, 0.24, 0, 0};
    case SynthDifficulty::Medium: return {1, 3, 0.12, 0.20, 25, 12};
    case SynthDifficulty::Hard: return {2, 4, 0.09, 0.15, 45, 25};
  }
  return {};
}

using Placed = SynthObject;

bool inside(int shape, double dx, double dy, double r) {
  switch (shape) {
    case 0: return dx * dx + dy * dy <= r * r;
    case 1: return std::abs(dx) <= r * 0.85 && std::abs(dy) <= r * 0.85;
    case 2: return dy <= r * 0.8 && dy >= -r && std::abs(dx) <= (dy + r) * 0.6;  // apex up
    default: return std::abs(dx) + std::abs(dy) <= r;
  }
}

RgbImage draw(const std::vector<Placed>& shapes, const Level& lv, int size, Rng& rng) {
  const std::vector<int> mask = object_mask(shapes, size);
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
      if (const int object = mask[static_cast<size_t>(y) * size + x]; object > 0) px = colours[static_cast<size_t>(object - 1)];
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
  std::vector<const Placed*> about;  // the shapes whose pixels hold the answer
};

// The benchmark's three questions (ask, dense_questions and the tokenizer corpus use the same texts).
std::string colour_question(const char* shape) { return fmt::format("What colour is the {}?", shape); }
std::string shape_question(const char* colour) { return fmt::format("Which shape is {}?", colour); }
constexpr const char* kCountQuestion = "How many shapes are there?";

Question ask(const std::vector<Placed>& shapes, Rng& rng) {
  int kind = rng.below(10);
  const Placed& target = shapes[rng.below(static_cast<int>(shapes.size()))];
  Question q;
  if (kind < 5) {
    q = {colour_question(kShapes[target.shape]), kColours[target.colour].name, "colour", {}, {&target}};
    for (const auto& c : kColours) q.options.push_back(c.name);
  } else if (kind < 8) {
    q = {shape_question(kColours[target.colour].name), kShapes[target.shape], "shape", {}, {&target}};
    q.options.assign(std::begin(kShapes), std::end(kShapes));
  } else {
    q = {kCountQuestion, kCounts[shapes.size()], "count", {}, {}};
    q.options.assign(kCounts + 1, kCounts + 5);
    for (const auto& s : shapes) q.about.push_back(&s);
  }
  return q;
}

// The bounding box of a placed shape, clipped to the image: [x0, y0, x1, y1] in pixels.
nlohmann::ordered_json box(const Placed& p, int size) {
  auto clip = [size](double v) { return std::clamp(std::round(v * 100) / 100, 0.0, double(size)); };
  return {clip(p.cx - p.radius), clip(p.cy - p.radius), clip(p.cx + p.radius), clip(p.cy + p.radius)};
}

// Where a shape's centre lies on a 3 x 3 grid of the image, as a caption names it.
constexpr const char* kPlaces[] = {"top left", "top", "top right", "left", "centre", "right", "bottom left", "bottom", "bottom right"};
int place_index(const Placed& p, int size) {
  auto third = [size](double v) { return std::clamp(static_cast<int>(3 * v / size), 0, 2); };
  return 3 * third(p.cy) + third(p.cx);
}
constexpr const char* kCaptionPrompt = "Describe the image.";
const char* article(const char* word) { return word[0] == 'o' ? "an" : "a"; }

// The dense caption of an image: its count, then every shape's colour, kind and place in reading order
// (grid row, then left to right), e.g. "Two shapes: a red circle at the top left and an orange square at
// the right."
std::string caption(const std::vector<Placed>& shapes, int size) {
  std::vector<const Placed*> order;
  for (const auto& s : shapes) order.push_back(&s);
  std::stable_sort(order.begin(), order.end(), [size](const Placed* a, const Placed* b) {
    const int ra = place_index(*a, size) / 3, rb = place_index(*b, size) / 3;
    return ra != rb ? ra < rb : a->cx < b->cx;
  });
  std::string count = kCounts[shapes.size()];
  count[0] = static_cast<char>(std::toupper(count[0]));
  std::string text = fmt::format("{} shape{}:", count, shapes.size() == 1 ? "" : "s");
  for (size_t i = 0; i < order.size(); ++i) {
    const char* colour = kColours[order[i]->colour].name;
    text += fmt::format("{} {} {} {} at the {}", i == 0 ? "" : i + 1 == order.size() ? " and" : ",", article(colour),
                        colour, kShapes[order[i]->shape], kPlaces[place_index(*order[i], size)]);
  }
  return text + ".";
}

// The shape-first list of an image in drawing order, e.g. "circle red, square orange.": each kind directly
// followed by its colour, so the token that predicts a colour is the shape's own and the decoder learns to
// find patches by their shape (the caption, colour first, only teaches it to find them by colour: without
// this list "What colour is the square?" stayed at a present colour at random, docs/efficacy.md). Its
// words are the captions' own, so the tokenizer corpus needs nothing new.
constexpr const char* kShapeListPrompt = "Describe the shapes.";
std::string shape_list(const std::vector<Placed>& shapes) {
  std::string text;
  for (const Placed& p : shapes)
    text += fmt::format("{}{} {}", text.empty() ? "" : ", ", kShapes[p.shape], kColours[p.colour].name);
  return text + ".";
}

// Every text the benchmark can produce (the template's words, each question with each hint, each
// answer, the caption's words), so that the tokenizer depends on nothing but the vocabulary size: two
// benchmarks made with other seeds, hint settings or difficulties share it, and a model trained on one
// reads the other.
std::string tokenizer_corpus() {
  std::string corpus = std::string(kVicunaSystem) + "\nUSER: ASSISTANT:\n";
  std::vector<std::pair<std::string, std::vector<std::string>>> questions;  // text, options
  std::vector<std::string> colours, shapes(std::begin(kShapes), std::end(kShapes)), counts(kCounts + 1, kCounts + 5);
  for (const auto& c : kColours) colours.push_back(c.name);
  for (const char* shape : kShapes) questions.push_back({colour_question(shape), colours});
  for (const auto& c : kColours) questions.push_back({shape_question(c.name), shapes});
  questions.push_back({kCountQuestion, counts});
  for (const auto& [text, options] : questions) {
    corpus += "<image>\n" + text + "\n";
    for (const auto& option : options) corpus += "<image>\n" + text + " Hint: it is probably " + option + ".\n" + option + "\n";
  }
  // Captions: each count word, each colour with each shape at each place, in every list position.
  corpus += std::string("<image>\n") + kCaptionPrompt + "\n";
  for (int n = 1; n <= 4; ++n) {
    std::vector<Placed> shapes;
    for (int i = 0; i < n; ++i) shapes.push_back({i % kNumShapes, i, 0.5 + i, 0.5, 0.1});
    corpus += caption(shapes, 3 * n) + "\n";
  }
  for (int c = 0; c < kNumColours; ++c)
    for (int k = 0; k < kNumShapes; ++k)
      for (int place = 0; place < 9; ++place)
        corpus += caption({{k, c, (place % 3) + 0.5, (place / 3) + 0.5, 0.1}, {(k + 1) % kNumShapes, (c + 1) % kNumColours, 2.5, 2.5, 0.1}}, 3) + "\n";
  return corpus;
}

enum class HintMode { Train, Aligned, Conflict, None };

nlohmann::ordered_json regions(const std::vector<const Placed*>& about, int size) {
  nlohmann::ordered_json out = nlohmann::json::array();
  for (const Placed* p : about) out.push_back(box(*p, size));
  return out;
}

// One sample in LLaVA's format with the benchmark's fields; `turns` alternate human and gpt.
nlohmann::ordered_json sample(const std::string& id, const std::string& image, nlohmann::ordered_json turns,
                              const std::string& answer, const std::string& hint, const std::string& type,
                              nlohmann::ordered_json boxes) {
  nlohmann::ordered_json j;
  j["id"] = id;
  j["image"] = image;
  j["conversations"] = std::move(turns);
  j["answer"] = answer;
  j["hint"] = hint;
  j["type"] = type;
  j["regions"] = std::move(boxes);
  return j;
}

// Every question about one image in one conversation, without hints: each shape's colour, each colour's
// shape and the count, in an order shuffled by its own generator (seeded by the image), so that the other
// splits' samples do not depend on it. The stage-1 split that teaches the decoder to bind (docs/efficacy.md).
nlohmann::ordered_json dense_questions(const std::vector<Placed>& shapes, const std::string& image, int64_t i,
                                       uint64_t seed) {
  std::vector<std::pair<std::string, std::string>> qa;  // question, answer
  for (const auto& p : shapes) {
    qa.push_back({colour_question(kShapes[p.shape]), kColours[p.colour].name});
    qa.push_back({shape_question(kColours[p.colour].name), kShapes[p.shape]});
  }
  qa.push_back({kCountQuestion, kCounts[shapes.size()]});
  std::mt19937_64 order(seed * 7919 + static_cast<uint64_t>(i));
  std::shuffle(qa.begin(), qa.end(), order);
  nlohmann::ordered_json turns = nlohmann::ordered_json::array();
  for (size_t k = 0; k < qa.size(); ++k) {
    turns.push_back({{"from", "human"}, {"value", (k == 0 ? "<image>\n" : "") + qa[k].first}});
    turns.push_back({{"from", "gpt"}, {"value", qa[k].second}});
  }
  return sample(fmt::format("qa-{:05d}", i), image, std::move(turns), qa.front().second, "", "qa",
                nlohmann::ordered_json::array());
}

// A one-turn description sample (`prompt` answered by `text`) of an image, its regions every shape's box.
nlohmann::ordered_json description(const std::string& id, const std::string& image, const char* prompt,
                                   const std::string& text, const char* type, const std::vector<Placed>& shapes, int size) {
  std::vector<const Placed*> all;
  for (const auto& s : shapes) all.push_back(&s);
  return sample(id, image, {{{"from", "human"}, {"value", std::string("<image>\n") + prompt}}, {{"from", "gpt"}, {"value", text}}},
                text, "", type, regions(all, size));
}

// The stage-1 samples of one training image (docs/efficacy.md): its caption, its shape list, its dense questions.
struct Stage1Samples {
  nlohmann::ordered_json caption, shape_list, dense;
};

// One QA sample of `split`; `stage1`, when given, receives the stage-1 samples of the same image.
nlohmann::ordered_json make_sample(const std::string& split, int64_t i, const SynthOptions& o, HintMode mode, Rng& rng,
                                   Stage1Samples* stage1) {
  Level lv = level(o.difficulty);
  std::vector<Placed> shapes = place(lv, static_cast<int>(o.image_size), rng);
  RgbImage img = draw(shapes, lv, static_cast<int>(o.image_size), rng);
  std::string image = fmt::format("images/{}_{:05d}.png", split, i);
  save_png((fs::path(o.out_dir) / image).string(), img);
  Question q = ask(shapes, rng);
  std::string hint;
  auto any_option = [&] { return q.options[static_cast<size_t>(rng.below(static_cast<int>(q.options.size())))]; };
  if (mode == HintMode::Train && o.chance_hints) {  // no information: an option drawn uniformly, or none as often
    const int pick = rng.below(static_cast<int>(q.options.size()) + 1);
    if (pick < static_cast<int>(q.options.size())) hint = q.options[static_cast<size_t>(pick)];
  } else if (mode != HintMode::None) {
    bool agree = mode == HintMode::Aligned || (mode == HintMode::Train && rng.uniform() < o.hint_agreement);
    hint = q.answer;
    while (!agree && hint == q.answer) hint = any_option();
  }
  std::string human = "<image>\n" + q.text + (hint.empty() ? "" : " Hint: it is probably " + hint + ".");
  nlohmann::ordered_json j = sample(fmt::format("{}-{:05d}", split, i), image,
                                    {{{"from", "human"}, {"value", human}}, {{"from", "gpt"}, {"value", q.answer}}}, q.answer,
                                    hint, q.type, regions(q.about, static_cast<int>(o.image_size)));
  if (stage1) {
    const int size = static_cast<int>(o.image_size);
    nlohmann::ordered_json& c = stage1->caption =
        description(fmt::format("caption-{:05d}", i), image, kCaptionPrompt, caption(shapes, size), "caption", shapes, size);
    c["objects"] = nlohmann::json::array();  // in drawing order: what pretrain-tower's patch labels come from
    for (const auto& s : shapes)
      c["objects"].push_back({{"shape", kShapes[s.shape]}, {"colour", kColours[s.colour].name},
                              {"centre", {s.cx, s.cy}}, {"radius", s.radius}});
    stage1->shape_list = description(fmt::format("shapes-{:05d}", i), image, kShapeListPrompt, shape_list(shapes),
                                     "shape_list", shapes, size);
    stage1->dense = dense_questions(shapes, image, i, o.seed);
  }
  return j;
}

}  // namespace

std::vector<int> object_mask(const std::vector<SynthObject>& objects, int size) {
  std::vector<int> mask(static_cast<size_t>(size) * size, 0);
  for (int y = 0; y < size; ++y)
    for (int x = 0; x < size; ++x)
      for (size_t i = 0; i < objects.size(); ++i)
        if (inside(objects[i].shape, x + 0.5 - objects[i].cx, y + 0.5 - objects[i].cy, objects[i].radius))
          mask[static_cast<size_t>(y) * size + x] = static_cast<int>(i) + 1;
  return mask;
}

const std::vector<std::string>& synth_colours() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> out;
    for (const auto& c : kColours) out.push_back(c.name);
    return out;
  }();
  return names;
}

const std::vector<std::string>& synth_shapes() {
  static const std::vector<std::string> names(std::begin(kShapes), std::end(kShapes));
  return names;
}

std::map<std::string, double> chance_levels(SynthDifficulty difficulty) {
  const Level lv = level(difficulty);
  return {{"colour", 1.0 / kNumColours}, {"shape", 1.0 / kNumShapes}, {"count", 1.0 / (lv.shapes_max - lv.shapes_min + 1)}};
}

std::string synthesize(const SynthOptions& o) {
  if (o.out_dir.empty()) throw std::invalid_argument("synth: --out is required");
  if (o.train < 1 || o.eval < 1 || o.image_size < 16 || o.hint_agreement < 0 || o.hint_agreement > 1)
    throw std::invalid_argument("synth: need train >= 1, eval >= 1, image size >= 16 and hint agreement in [0, 1]");
  if (o.image_size > 4096) throw std::invalid_argument("synth: --image-size above 4096 is not supported");
  struct Split {
    const char* name;
    int64_t count;
    HintMode mode;
  };
  const Split splits[] = {{"train", o.train, HintMode::Train},
                          {"eval_aligned", o.eval, HintMode::Aligned},
                          {"eval_conflict", o.eval, HintMode::Conflict},
                          {"eval_nohint", o.eval, HintMode::None}};
  // The train split's stage-1 companions, in the order they are written.
  static constexpr const char* kStage1Files[] = {"captions.json", "shape_list.json", "qa_dense.json"};
  if (fs::exists(o.out_dir) && !fs::is_empty(o.out_dir)) {
    if (!o.force)
      throw std::invalid_argument("synth: " + o.out_dir + " is not empty; pick an empty folder or pass --force to replace "
                                  "the benchmark there");
    std::vector<std::string> outputs = {"images", "tokenizer.model", "synth.json"};  // everything written below
    for (const Split& split : splits) outputs.push_back(std::string(split.name) + ".json");
    outputs.insert(outputs.end(), std::begin(kStage1Files), std::end(kStage1Files));
    for (const std::string& name : outputs) fs::remove_all(fs::path(o.out_dir) / name);
  }
  fs::create_directories(fs::path(o.out_dir) / "images");
  for (size_t s = 0; s < std::size(splits); ++s) {
    Rng rng{std::mt19937_64(o.seed * 1000003 + s)};
    nlohmann::ordered_json samples = nlohmann::ordered_json::array(), captions = nlohmann::ordered_json::array(),
                           lists = nlohmann::ordered_json::array(), dense = nlohmann::ordered_json::array();
    const bool train = splits[s].mode == HintMode::Train;
    for (int64_t i = 0; i < splits[s].count; ++i) {
      Stage1Samples one;
      samples.push_back(make_sample(splits[s].name, i, o, splits[s].mode, rng, train ? &one : nullptr));
      if (train)
        captions.push_back(std::move(one.caption)), lists.push_back(std::move(one.shape_list)), dense.push_back(std::move(one.dense));
    }
    write_file_atomic((fs::path(o.out_dir) / (std::string(splits[s].name) + ".json")).string(), samples.dump(1) + "\n");
    if (train) {
      const nlohmann::ordered_json* stage1[] = {&captions, &lists, &dense};
      for (size_t f = 0; f < std::size(kStage1Files); ++f)
        write_file_atomic((fs::path(o.out_dir) / kStage1Files[f]).string(), stage1[f]->dump(1) + "\n");
    }
  }
  std::string corpus_path = (fs::path(o.out_dir) / "tokenizer_corpus.txt").string();
  write_file_atomic(corpus_path, tokenizer_corpus());
  Tokenizer::TrainOptions topt;
  topt.vocab_size = o.vocab_size;
  Tokenizer::train(corpus_path, (fs::path(o.out_dir) / "tokenizer.model").string(), topt);
  fs::remove(corpus_path);
  static constexpr const char* kDifficulty[] = {"easy", "medium", "hard"};
  const Level lv = level(o.difficulty);
  nlohmann::ordered_json meta = {{"train", o.train}, {"eval", o.eval}, {"image_size", o.image_size}, {"seed", o.seed},
                                 {"hint_agreement", o.hint_agreement}, {"chance_hints", o.chance_hints},
                                 {"difficulty", kDifficulty[static_cast<int>(o.difficulty)]}, {"vocab_size", o.vocab_size},
                                 {"shapes", {lv.shapes_min, lv.shapes_max}}, {"chance", chance_levels(o.difficulty)}};
  write_file_atomic((fs::path(o.out_dir) / "synth.json").string(), meta.dump(2) + "\n");
  return fmt::format("synth: wrote {} train samples with their captions, shape lists and dense questions and 3 x {} eval samples ({}, {}x{} images, training hints {}) and a tokenizer to {}",
                     o.train, o.eval, kDifficulty[static_cast<int>(o.difficulty)], o.image_size, o.image_size,
                     o.chance_hints ? std::string("at chance") : fmt::format("right {:g}", o.hint_agreement), o.out_dir);
}

}  // namespace modalign
