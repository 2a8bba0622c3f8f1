#include "lib/data/loader.h"

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace modalign {

DataLoader::DataLoader(std::shared_ptr<const std::vector<Example>> examples, std::shared_ptr<const Processor> processor,
                       Sampler sampler, LoaderOptions options)
    : examples_(std::move(examples)),
      processor_(std::move(processor)),
      sampler_(std::move(sampler)),
      options_(options),
      per_epoch_(sampler_.batches_per_epoch()) {
  for (int64_t i = 0; i < options_.num_workers; ++i) workers_.emplace_back([this] { work(); });
}

DataLoader::~DataLoader() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  space_cv_.notify_all();
  for (auto& w : workers_) w.join();
}

DataCursor DataLoader::job_cursor(int64_t job) const {
  int64_t flat = options_.start.epoch * per_epoch_ + options_.start.batch + job;
  return {flat / per_epoch_, flat % per_epoch_};
}

DataCursor DataLoader::cursor() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return job_cursor(consumed_);
}

int64_t DataLoader::skipped() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return skipped_;
}

DataLoader::Prepared DataLoader::prepare(int64_t job) {
  DataCursor c = job_cursor(job);
  std::vector<int64_t> indices;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = epochs_.find(c.epoch);
    if (it == epochs_.end()) {
      it = epochs_.emplace(c.epoch, sampler_.epoch_batches(c.epoch)).first;
      while (epochs_.size() > 2) epochs_.erase(epochs_.begin());
    }
    indices = it->second.at(static_cast<size_t>(c.batch));
  }
  Prepared out;
  try {
    std::vector<Sample> samples;
    for (int64_t i : indices) {
      try {
        samples.push_back(processor_->process((*examples_)[static_cast<size_t>(i)]));
      } catch (const DataError& e) {
        if (options_.on_bad_sample == BadSamplePolicy::Error) throw;
        out.skip_reason = e.what();
        ++out.batch.skipped;
      }
    }
    if (!samples.empty()) {
      int64_t skipped = out.batch.skipped;
      out.batch = processor_->collate(samples);
      out.batch.skipped = skipped;
    }
  } catch (...) {
    out.error = std::current_exception();
  }
  return out;
}

void DataLoader::work() {
  while (true) {
    int64_t job;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      space_cv_.wait(lock, [&] { return stop_ || next_job_ < consumed_ + options_.prefetch; });
      if (stop_) return;
      job = next_job_++;
    }
    Prepared p = prepare(job);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ready_.emplace(job, std::move(p));
    }
    ready_cv_.notify_all();
  }
}

Batch DataLoader::next() {
  while (true) {
    Prepared p;
    if (workers_.empty()) {
      p = prepare(consumed_);
    } else {
      std::unique_lock<std::mutex> lock(mutex_);
      ready_cv_.wait(lock, [&] { return ready_.count(consumed_) > 0; });
      p = std::move(ready_[consumed_]);
      ready_.erase(consumed_);
    }
    int64_t skipped_before = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      ++consumed_;
      skipped_before = skipped_;
      skipped_ += p.batch.skipped;
    }
    space_cv_.notify_all();
    if (p.error) std::rethrow_exception(p.error);
    // The first few skips are listed with their reason; the rest are counted (the trainer reports them).
    constexpr int64_t kListed = 5;
    if (p.batch.skipped > 0 && skipped_before < kListed)
      spdlog::warn("skipping bad sample{}: {}", skipped_before + p.batch.skipped >= kListed ? " (further ones are counted, not listed)" : "",
                   p.skip_reason);
    if (p.batch.size() > 0) {
      empty_batches_ = 0;
      return p.batch;
    }
    // A batch whose samples were all skipped is passed over; a whole epoch of them is an error.
    if (++empty_batches_ >= per_epoch_)
      throw DataError(fmt::format("data.on_bad_sample is skip, but a whole epoch ({} batches) gave no usable sample; "
                                  "the last problem: {}", per_epoch_, p.skip_reason));
  }
}

}  // namespace modalign
