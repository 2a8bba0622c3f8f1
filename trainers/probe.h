// `modalign probe`: where a checkpoint's attention goes on a split's real samples. For every decoder
// layer, averaged over heads, queries and samples that hold an image, two query sets:
//   response     the positions that predict answer tokens (labels[t+1] != -100)
//   last_prompt  the position that predicts the first answer token (the last prompt position, the
//                query arXiv 2505.21523 measures)
// and three key groups that partition what a query can see:
//   image   the image tokens
//   system  real tokens before the image span (BOS, system prompt, "USER:")
//   text    real tokens after it (the question, role markers, answer tokens generated so far)
// The image share is the visual attention ratio VR; MDI and AEI compare image with all text (system +
// text) tokens (losses/modality_shares.h).
#pragma once
#include <string>
#include <vector>

#include "lib/data/dataset.h"
#include "lib/data/processor.h"
#include "lib/model/vision_language_model.h"
#include "losses/modality_shares.h"

namespace modalign {

struct GroupShares {
  double image = 0, system = 0, text = 0;                 // attention shares; they sum to 1
  double keys_image = 0, keys_system = 0, keys_text = 0;  // mean visible keys of each group
  DominanceIndices indices;
};

struct ProbeLayer {
  int64_t layer = 0;
  GroupShares response, last_prompt;
};

struct ProbeReport {
  std::string checkpoint, split;
  int64_t samples = 0;  // samples with an image that were measured
  std::vector<ProbeLayer> layers;
};

// (B, T, 3) float key groups {image, system, text} of a batch; attention_mask, visual_mask (B, T).
torch::Tensor probe_key_groups(const torch::Tensor& attention_mask, const torch::Tensor& visual_mask);
// (B, T) bool: per sample, the position that predicts its first supervised token (none if no label).
torch::Tensor last_prompt_queries(const torch::Tensor& labels);

// Runs the model (no gradients, eval mode) over `examples` in batches. Throws DataError naming the
// split when no sample holds an image.
ProbeReport probe(VisionLanguageModel& model, const Processor& processor, const std::vector<Example>& examples,
                  int64_t batch_size);

// probe.json (all reports) and probe.csv (one row per checkpoint, layer and query set) in out_dir.
void write_probe(const std::vector<ProbeReport>& reports, const std::string& out_dir);
// The console table of one report.
std::string format_probe(const ProbeReport& report);

}  // namespace modalign
