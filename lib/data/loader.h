// DataLoader: batches in the Sampler's order, prepared by background threads into a bounded prefetch
// queue and handed out strictly in order, so the result does not depend on thread timing. A bad
// sample is an error naming it, or (on_bad_sample: skip) dropped from its batch and counted.
#pragma once
#include <condition_variable>
#include <exception>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "lib/data/processor.h"
#include "lib/data/sampler.h"

namespace modalign {

struct LoaderOptions {
  BadSamplePolicy on_bad_sample = BadSamplePolicy::Error;
  int64_t num_workers = 2;  // 0 = prepare batches in the calling thread
  int64_t prefetch = 4;     // batches prepared ahead at most
  DataCursor start;
};

class DataLoader {
 public:
  DataLoader(std::shared_ptr<const std::vector<Example>> examples, std::shared_ptr<const Processor> processor,
             Sampler sampler, LoaderOptions options);
  ~DataLoader();
  DataLoader(const DataLoader&) = delete;
  DataLoader& operator=(const DataLoader&) = delete;

  // The next batch (epochs roll over); rethrows a DataError from its preparation. With on_bad_sample:
  // skip, a whole epoch without one usable sample is a DataError (never an endless loop).
  Batch next();
  // Where the next call to next() continues: save it to resume exactly.
  DataCursor cursor() const;
  int64_t skipped() const;  // bad samples skipped in the batches handed out so far
  const Sampler& sampler() const { return sampler_; }

 private:
  struct Prepared {
    Batch batch;
    std::exception_ptr error;
    std::string skip_reason;  // the last bad sample's problem (on_bad_sample: skip)
  };
  DataCursor job_cursor(int64_t job) const;
  Prepared prepare(int64_t job);
  void work();

  std::shared_ptr<const std::vector<Example>> examples_;
  std::shared_ptr<const Processor> processor_;
  Sampler sampler_;
  LoaderOptions options_;
  int64_t per_epoch_;

  mutable std::mutex mutex_;
  std::condition_variable ready_cv_, space_cv_;
  std::map<int64_t, Prepared> ready_;
  std::map<int64_t, std::vector<std::vector<int64_t>>> epochs_;  // epoch -> batches, cached
  int64_t next_job_ = 0, consumed_ = 0, skipped_ = 0;
  int64_t empty_batches_ = 0;  // batches in a row whose samples were all skipped (next() only)
  bool stop_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace modalign
