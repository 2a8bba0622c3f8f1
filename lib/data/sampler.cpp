#include "lib/data/sampler.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>
#include <stdexcept>

namespace modalign {
namespace {

// Fisher-Yates with a fixed generator and our own bounded draw, so orders do not depend on the
// standard library's shuffle or distribution implementations.
void shuffle(std::vector<int64_t>& v, std::mt19937_64& rng) {
  for (size_t i = v.size(); i > 1; --i) {
    const uint64_t bound = i, limit = UINT64_MAX - UINT64_MAX % bound;
    uint64_t r;
    do r = rng(); while (r >= limit);
    std::swap(v[i - 1], v[r % bound]);
  }
}

std::mt19937_64 generator(uint64_t seed, int64_t epoch, uint64_t stream) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(epoch),
                    static_cast<uint32_t>(stream)};
  return std::mt19937_64(seq);
}

}  // namespace

Sampler::Sampler(SamplerOptions options) : o_(std::move(options)) {
  if (o_.dataset_sizes.empty()) throw std::invalid_argument("sampler: no datasets");
  if (o_.batch_size < 1 || o_.world_size < 1 || o_.rank < 0 || o_.rank >= o_.world_size)
    throw std::invalid_argument("sampler: bad batch size, rank or world size");
  int64_t total = std::accumulate(o_.dataset_sizes.begin(), o_.dataset_sizes.end(), int64_t{0});
  if (total <= 0) throw std::invalid_argument("sampler: the datasets hold no samples");
  if (!o_.lengths.empty() && static_cast<int64_t>(o_.lengths.size()) != total)
    throw std::invalid_argument("sampler: one length per sample expected");
  if (!o_.mixing_weights.empty() && o_.mixing_weights.size() != o_.dataset_sizes.size())
    throw std::invalid_argument("sampler: one mixing weight per dataset expected");
  epoch_size_ = o_.mixing_weights.empty() ? total : static_cast<int64_t>(epoch_order(0).size());
}

std::vector<int64_t> Sampler::epoch_order(int64_t epoch) const {
  std::vector<int64_t> order;
  const int64_t total = std::accumulate(o_.dataset_sizes.begin(), o_.dataset_sizes.end(), int64_t{0});
  if (o_.mixing_weights.empty()) {
    order.resize(static_cast<size_t>(total));
    std::iota(order.begin(), order.end(), 0);
  } else {  // dataset i contributes round(w_i / sum(w) * total) samples, cycling through its own shuffle
    double sum = std::accumulate(o_.mixing_weights.begin(), o_.mixing_weights.end(), 0.0);
    int64_t offset = 0;
    for (size_t d = 0; d < o_.dataset_sizes.size(); ++d) {
      int64_t size = o_.dataset_sizes[d];
      int64_t take = std::llround(o_.mixing_weights[d] / sum * static_cast<double>(total));
      std::vector<int64_t> own(static_cast<size_t>(size));
      std::iota(own.begin(), own.end(), offset);
      auto rng = generator(o_.seed, epoch, 1000 + d);
      for (int64_t i = 0; i < take; ++i) {
        if (i % size == 0) shuffle(own, rng);
        order.push_back(own[static_cast<size_t>(i % size)]);
      }
      offset += size;
    }
  }
  auto rng = generator(o_.seed, epoch, 0);
  shuffle(order, rng);
  if (!o_.lengths.empty()) {  // sort mega-batches of 50 global batches by length, longest first
    const size_t mega = static_cast<size_t>(o_.batch_size * o_.world_size * 50);
    for (size_t start = 0; start < order.size(); start += mega) {
      auto end = order.begin() + static_cast<std::ptrdiff_t>(std::min(order.size(), start + mega));
      std::stable_sort(order.begin() + static_cast<std::ptrdiff_t>(start), end,
                       [&](int64_t a, int64_t b) { return o_.lengths[a] > o_.lengths[b]; });
    }
  }
  return order;
}

int64_t Sampler::batches_per_epoch() const {
  const int64_t global = o_.batch_size * o_.world_size;
  return (epoch_size_ + global - 1) / global;
}

std::vector<std::vector<int64_t>> Sampler::epoch_batches(int64_t epoch) const {
  std::vector<int64_t> order = epoch_order(epoch);
  const size_t global = static_cast<size_t>(o_.batch_size * o_.world_size);
  std::vector<std::vector<int64_t>> batches;
  for (size_t start = 0; start < order.size(); start += global) {
    std::vector<int64_t> mine;  // rank r takes positions r, r + world, r + 2 world, ... of the global batch
    for (size_t i = start + static_cast<size_t>(o_.rank); i < std::min(order.size(), start + global);
         i += static_cast<size_t>(o_.world_size))
      mine.push_back(order[i]);
    batches.push_back(std::move(mine));
  }
  return batches;
}

}  // namespace modalign
