// The order samples are seen in: a pure function of (seed, epoch), so a run resumed from a cursor
// (epoch, batch) sees exactly the batches an uninterrupted run would. Several datasets mix by weight;
// length grouping sorts each mega-batch by length; data-parallel ranks take strided slices of the same
// global batches.
#pragma once
#include <cstdint>
#include <vector>

namespace modalign {

struct DataCursor {
  int64_t epoch = 0;
  int64_t batch = 0;  // index of the next batch within the epoch
  bool operator==(const DataCursor& o) const { return epoch == o.epoch && batch == o.batch; }
};

struct SamplerOptions {
  std::vector<int64_t> dataset_sizes;  // samples are numbered dataset by dataset
  std::vector<double> mixing_weights;  // empty = each dataset once per epoch
  uint64_t seed = 42;
  int64_t batch_size = 1;              // per rank
  std::vector<int64_t> lengths;        // per sample; non-empty = group by length
  int64_t rank = 0;
  int64_t world_size = 1;
};

class Sampler {
 public:
  explicit Sampler(SamplerOptions options);
  // This rank's batches of global sample indices for `epoch` (the last one may be smaller).
  std::vector<std::vector<int64_t>> epoch_batches(int64_t epoch) const;
  int64_t batches_per_epoch() const;
  int64_t samples_per_epoch() const { return epoch_size_; }

 private:
  std::vector<int64_t> epoch_order(int64_t epoch) const;
  SamplerOptions o_;
  int64_t epoch_size_ = 0;
};

}  // namespace modalign
