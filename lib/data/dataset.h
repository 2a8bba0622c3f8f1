// LLaVA-format datasets: a JSON array or JSONL of {"id", "image" (optional: a path relative to the image
// folder, or a list of paths for a sample with several images; "images" is accepted for the list too),
// "conversations": [{"from": "human"|"gpt", "value": ...}, ...]}, checked on load so that a bad record is
// reported with its file, line and id before training starts. Optional fields: "regions" (boxes [x0, y0,
// x1, y1] in the image's pixels: where the answer is, for attention_kl; single-image samples only),
// "hint" (the answer the prompt's text suggests) and "type" (question type, for accuracy per type).
#pragma once
#include <array>
#include <stdexcept>
#include <string>
#include <vector>

namespace modalign {

// A bad file or sample; the message names the file, the line or record, the sample id and the reason.
struct DataError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

inline constexpr const char* kImagePlaceholder = "<image>";

struct Turn {
  bool from_human = true;
  std::string value;
};

struct Example {
  std::string id;
  std::vector<std::string> images;  // relative to data.image_folder; empty for a text-only sample
  std::vector<Turn> turns;  // human, gpt, human, gpt, ...; one `<image>` per image, in image order
  std::string where;        // "file:line" (JSONL) or "file[record]" (JSON array), for messages
  std::string hint;         // optional "hint": the answer the prompt's text suggests (modalign synth)
  std::string type;         // optional "type": the question type (eval reports accuracy per type)
  std::vector<std::array<double, 4>> regions;  // optional "regions": boxes x0, y0, x1, y1 in image pixels
};

// How messages name a sample: "file:line (id X)", or without the id when it has none.
std::string describe(const Example& e);

// Reads and checks one dataset file. Alternating human/gpt turns starting with human, at least one gpt
// turn. One image: at most one `<image>`, only in the first human turn (moved to its start, followed by a
// newline, as LLaVA does; added there when the text has none). Several images: exactly one `<image>` per
// image in the human turns, left where they are (the i-th placeholder is the i-th image). Empty files are
// errors.
std::vector<Example> load_dataset(const std::string& path);

// Several dataset files concatenated in order (samples numbered file by file, as the sampler expects),
// with each file's sample count appended to `sizes`.
std::vector<Example> load_datasets(const std::vector<std::string>& paths, std::vector<int64_t>& sizes);

}  // namespace modalign
