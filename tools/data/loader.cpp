#include "tools/data/loader.h"

#include <algorithm>
#include <numeric>
#include <optional>

#include "tensor/error.h"
#include "tools/data/seeding.h"

namespace sono::data {

Batch make_batch(const SampleCache& cache, const std::vector<size_t>& samples, InputKind kind,
                 const AugmentOptions* options, uint64_t seed, int epoch) {
  const int64_t b = static_cast<int64_t>(samples.size()), s = cache.size(), channels = input_channels(kind);
  Batch batch;
  batch.images = Tensor::empty({b, s, s, channels});
  batch.masks = Tensor::empty({b, s, s, 1});
  batch.samples = samples;
  std::vector<int64_t> labels;
  float* images = batch.images.data<float>();
  float* masks = batch.masks.data<float>();
  std::optional<AugmentOptions> augmentation;
  if (options) augmentation = *options;
  if (augmentation && kind == InputKind::rgb_lesion_probability) augmentation->lesion_level = kLesionLevel;
  for (size_t i = 0; i < samples.size(); ++i) {
    Image image = cache.image(samples[i]);
    Mask mask = cache.mask(samples[i]);
    if (augmentation) {
      Generator gen(mix_seed({seed, static_cast<uint64_t>(epoch), samples[i]}));
      augment(image, mask, *augmentation, gen);
    }
    write_input(image, mask, kind, kImagenet, images + i * s * s * channels);
    std::transform(mask.values.begin(), mask.values.end(), masks + i * s * s, [](uint8_t v) { return float(v); });
    labels.push_back(cache.label(samples[i]));
  }
  batch.labels = Tensor::from_labels(labels);
  return batch;
}

std::pair<size_t, size_t> rank_share(size_t n, int rank, int ranks) {
  return {n * rank / ranks, n * (rank + 1) / ranks};
}

Loader::Loader(std::shared_ptr<const SampleCache> cache, std::vector<size_t> samples, LoaderOptions options)
    : cache_(std::move(cache)), samples_(std::move(samples)), options_(options) {
  SONO_CHECK(cache_, "Loader: no sample cache");
  SONO_CHECK(options_.batch_size > 0, "batch size must be positive, got ", options_.batch_size);
  SONO_CHECK(options_.ranks >= 1 && options_.rank >= 0 && options_.rank < options_.ranks, "Loader: rank ",
             options_.rank, " of ", options_.ranks);
  SONO_CHECK(!samples_.empty(), "Loader: no samples to load");
  for (size_t i : samples_) SONO_CHECK(i < cache_->count(), "Loader: sample ", i, " is not in the cache");
  if (options_.drop_last)
    SONO_CHECK(batches_per_epoch() > 0, "batch size ", options_.batch_size, " exceeds the ", samples_.size(),
               " samples and drop_last leaves no batch");
}

Loader::~Loader() { stop_workers(); }

size_t Loader::batches_per_epoch() const {
  size_t b = static_cast<size_t>(options_.batch_size);
  return options_.drop_last ? samples_.size() / b : (samples_.size() + b - 1) / b;
}

std::vector<size_t> Loader::balanced_draw(Generator& gen) const {
  std::map<int, size_t> class_size;
  for (size_t i : samples_) ++class_size[cache_->label(i)];
  std::vector<double> cumulative;
  double total = 0;
  for (size_t i : samples_) cumulative.push_back(total += 1.0 / class_size[cache_->label(i)]);
  std::vector<size_t> order;
  for (size_t n = 0; n < samples_.size(); ++n) {
    size_t at = std::upper_bound(cumulative.begin(), cumulative.end(), uniform(gen, 0, total)) - cumulative.begin();
    order.push_back(samples_[std::min(at, samples_.size() - 1)]);
  }
  return order;
}

std::vector<size_t> Loader::epoch_order(int epoch) const {
  std::vector<size_t> order = samples_;
  Generator gen(mix_seed({options_.seed, static_cast<uint64_t>(epoch), 0x5eed0f0dull}));
  if (options_.balanced)
    order = balanced_draw(gen);
  else if (options_.shuffle)
    seeded_shuffle(order, gen);
  return order;
}

void Loader::stop_workers() {
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  consumed_.notify_all();
  for (auto& t : workers_) t.join();
  workers_.clear();
}

void Loader::start_epoch(int epoch) {
  stop_workers();
  epoch_ = epoch;
  order_ = epoch_order(epoch);
  batches_ = batches_per_epoch();
  next_to_make_ = next_to_take_ = 0;
  ready_.clear();
  error_ = nullptr;
  stopping_ = false;
  started_ = true;
  for (int w = 0; w < std::max(options_.workers, 1); ++w) workers_.emplace_back([this] { work(); });
}

void Loader::work() {
  const size_t b = static_cast<size_t>(options_.batch_size);
  const size_t prefetch = static_cast<size_t>(std::max(options_.prefetch, 1));
  while (true) {
    size_t k;
    {
      std::unique_lock lock(mutex_);
      consumed_.wait(lock, [&] { return stopping_ || next_to_make_ < next_to_take_ + prefetch; });
      if (stopping_ || error_ || next_to_make_ >= batches_) return;
      k = next_to_make_++;
    }
    const size_t first = k * b, global_images = std::min(order_.size(), (k + 1) * b) - first;
    auto [from, to] = rank_share(global_images, options_.rank, options_.ranks);
    std::vector<size_t> samples(order_.begin() + first + from, order_.begin() + first + to);
    try {
      Batch batch = make_batch(*cache_, samples, options_.input, options_.augment ? &options_.augmentation : nullptr,
                               options_.seed, epoch_);
      batch.global_images = global_images;
      std::lock_guard lock(mutex_);
      ready_.emplace(k, std::move(batch));
    } catch (...) {
      std::lock_guard lock(mutex_);
      error_ = std::current_exception();
    }
    produced_.notify_all();
  }
}

std::optional<Batch> Loader::next() {
  SONO_CHECK(started_, "Loader::next() called before start_epoch()");
  std::unique_lock lock(mutex_);
  if (next_to_take_ >= batches_) return std::nullopt;
  produced_.wait(lock, [&] { return error_ || ready_.count(next_to_take_); });
  if (error_) std::rethrow_exception(error_);
  auto node = ready_.extract(next_to_take_++);
  lock.unlock();
  consumed_.notify_all();
  return std::move(node.mapped());
}

}  // namespace sono::data
