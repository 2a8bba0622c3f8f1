// The built-in modality-conflict benchmark: images of simple coloured shapes, questions about them,
// and a text hint ("Hint: it is probably red.") that agrees with the image in most training samples.
// A model that reads the hint instead of the image scores near 0 on the conflict split; one that looks
// scores near 100. Output is a pure function of the options: the same seed gives identical bytes.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

namespace modalign {

enum class SynthDifficulty { Easy, Medium, Hard };

struct SynthOptions {
  std::string out_dir;
  int64_t train = 2000;            // samples in train.json
  int64_t eval = 200;              // samples in each eval split
  int64_t image_size = 64;
  uint64_t seed = 0;
  double hint_agreement = 0.98;    // probability that a training hint names the right answer
  bool chance_hints = false;       // training hints carry no information: a uniform option, or none as often
  SynthDifficulty difficulty = SynthDifficulty::Medium;
  int64_t vocab_size = 256;        // tokenizer pieces (at most)
  bool force = false;              // replace what an earlier benchmark left in out_dir
};

// A non-empty out_dir is an error unless `force`, which first removes the files a benchmark writes.
// Writes out_dir/{train,eval_aligned,eval_conflict,eval_nohint}.json, out_dir/images/*.png,
// out_dir/tokenizer.model and out_dir/synth.json (the options, shape counts and chance levels). Each
// sample also carries "answer", "hint", "type" (colour, shape or count) and "regions" (the boxes of the
// shapes the question is about: the asked-about shape, or every shape for a count).
// out_dir/captions.json holds one caption sample per training image ("Describe the image." answered by
// the count and every shape's colour, kind and place on a 3 x 3 grid; type "caption", every shape's box
// as regions, and "objects": each shape's kind, colour, centre and radius in drawing order, for
// object_mask): a stage-1 (feature alignment) set in LLaVA's format. out_dir/shape_list.json asks the same
// images "Describe the shapes." and answers each shape's kind followed by its colour ("circle red, square
// orange."); out_dir/qa_dense.json asks every question about each image in one conversation, without hints.
// Returns a one-line summary.
std::string synthesize(const SynthOptions& options);

// One drawn shape: indices into synth_shapes() and synth_colours(), centre and radius in pixels.
struct SynthObject {
  int shape, colour;
  double cx, cy, radius;
};
// Which object covers each pixel of a size x size image (row-major): 0 = background, i + 1 = objects[i],
// later objects over earlier ones, exactly as synth draws them (pixel centres at +0.5).
std::vector<int> object_mask(const std::vector<SynthObject>& objects, int size);
const std::vector<std::string>& synth_colours();  // red, green, blue, yellow, purple, orange, cyan, pink
const std::vector<std::string>& synth_shapes();   // circle, square, triangle, diamond

// Accuracy of a uniform guess per question type: colour 1/8, shape 1/4, count 1/(possible counts).
// Shapes per image: easy 1-2, medium 1-3, hard 2-4.
std::map<std::string, double> chance_levels(SynthDifficulty difficulty);

}  // namespace modalign
