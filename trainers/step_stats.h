// What one optimizer step reports: total loss, real tokens, each loss term's sum and global count, and
// on logging steps the response->image attention share of every decoder layer, summed over the step's
// micro-batches. pack()/unpack() carry the sums through one data-parallel all-reduce (so every rank
// logs, skips and stops alike); means() gives the logged values.
#pragma once
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

namespace modalign {

struct StepStats {
  double loss = 0, grad_norm = 0, tokens = 0, stop = 0;  // stop > 0: a signal reached some rank
  std::vector<std::string> names;                        // loss terms, text_ce first
  std::vector<double> term_sums, term_counts;            // per term (the counts are global already)
  std::vector<int64_t> layers;                           // layers whose visual share is logged
  std::vector<double> share_sums, share_samples;         // per logged layer: sum of M_X, image samples
  bool finite = true;

  std::vector<double> pack() const;  // loss, tokens, stop, term sums, share sums and samples
  void unpack(const std::vector<double>& packed);
  // {term name, mean per counted item} for each term, then {visual_share.l<layer>, mean over image samples}.
  std::vector<std::pair<std::string, double>> means() const;
};

}  // namespace modalign
