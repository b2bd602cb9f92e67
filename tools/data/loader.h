#pragma once
// Batches as tensors, prepared ahead by worker threads from the in-memory SampleCache.
#include <condition_variable>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <thread>
#include <utility>
#include <vector>

#include "tensor/tensor.h"
#include "tools/data/augment.h"
#include "tools/data/cache.h"
#include "tools/data/model_input.h"

namespace sono::data {

struct Batch {
  Tensor images;                // [B, S, S, 3 or 4] float32, normalised with kImagenet
  Tensor masks;                 // [B, S, S, 1] float32, 0/1
  Tensor labels;                // [B] int64
  std::vector<size_t> samples;  // dataset indices
  size_t global_images = 0;     // of the whole step, over all ranks (data-parallel training)
  // Set where mix_batch mixed the images (cls_train --mixup / --cutmix): the labels of each
  // row's partner, and the weight of the row's own labels.
  Tensor mix_labels;
  double mix_weight = 1;
};

// Rows [first, second) of an n-row batch that `rank` of `ranks` takes: even shares, the larger
// ones last (2 ranks split 5 rows 2 + 3, 1 row 0 + 1).
std::pair<size_t, size_t> rank_share(size_t n, int rank, int ranks);

// A batch of the given samples, augmented (when `options` is given) with a generator per
// sample seeded from (seed, epoch, sample index).
Batch make_batch(const SampleCache& cache, const std::vector<size_t>& samples, InputKind kind,
                 const AugmentOptions* options, uint64_t seed, int epoch);

struct LoaderOptions {
  int64_t batch_size = 8;
  InputKind input = InputKind::rgb;
  bool shuffle = true;  // a new order each epoch
  // Instead of each sample once: as many draws with replacement, every class equally likely,
  // so a rare class (BUSI's normal: 17%) is seen as often as a common one.
  bool balanced = false;
  bool augment = true;
  AugmentOptions augmentation{};
  bool drop_last = false;  // drop a last, smaller batch
  int workers = 2;
  int prefetch = 4;  // batches prepared ahead of the consumer (the queue bound)
  uint64_t seed = 0;
  // Data-parallel training: every rank draws the same global order and batches and takes its
  // rank_share of each batch, so each sample is seen once per epoch over all ranks.
  int rank = 0, ranks = 1;
};

// Yields the given samples once per epoch in batches (this rank's share of each). Order and augmentation depend only on
// (seed, epoch): workers may finish batches in any order, next() hands them out in sequence.
//   loader.start_epoch(e);
//   while (auto batch = loader.next()) train_step(*batch);
class Loader {
 public:
  Loader(std::shared_ptr<const SampleCache> cache, std::vector<size_t> samples, LoaderOptions options);
  ~Loader();
  Loader(const Loader&) = delete;
  Loader& operator=(const Loader&) = delete;

  size_t size() const { return samples_.size(); }
  size_t batches_per_epoch() const;
  const LoaderOptions& options() const { return options_; }

  // Stops any epoch in progress and starts preparing `epoch`.
  void start_epoch(int epoch);
  // The epoch's next batch; nullopt after its last. Rethrows a worker's error.
  std::optional<Batch> next();

 private:
  void stop_workers();
  void work();
  std::vector<size_t> epoch_order(int epoch) const;
  std::vector<size_t> balanced_draw(Generator& gen) const;

  std::shared_ptr<const SampleCache> cache_;
  std::vector<size_t> samples_;
  LoaderOptions options_;

  // The epoch in progress; guarded by mutex_.
  std::mutex mutex_;
  std::condition_variable produced_, consumed_;
  int epoch_ = 0;
  std::vector<size_t> order_;
  size_t batches_ = 0, next_to_make_ = 0, next_to_take_ = 0;
  std::map<size_t, Batch> ready_;
  std::exception_ptr error_;
  bool stopping_ = false, started_ = false;
  std::vector<std::thread> workers_;
};

}  // namespace sono::data
