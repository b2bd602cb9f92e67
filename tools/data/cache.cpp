#include "tools/data/cache.h"

#include <algorithm>

#include "tensor/error.h"
#include "tools/data/split.h"

namespace sono::data {

SampleCache::SampleCache(Dataset dataset, int size, int threads)
    : dataset_(std::move(dataset)), size_(size) {
  SONO_CHECK(size > 0, "image size must be positive, got ", size);
  size_t n = dataset_.samples.size();
  pixels_.resize(n);
  masks_.resize(n);
  hashes_.resize(n);
  original_sizes_.resize(n);
  parallel_for(n, threads, [&](size_t i) {
    const Sample& s = dataset_.samples[i];
    Image image = load_image(s.image);
    Mask mask = s.masks.empty() ? Mask(image.height, image.width) : load_mask(s.masks);
    if (!s.masks.empty())
      check_mask_size(s.masks[0], {mask.height, mask.width}, s.image, {image.height, image.width});
    hashes_[i] = perceptual_hash(image);
    original_sizes_[i] = {image.height, image.width};
    store(i, image, mask, size);
  });
}

void SampleCache::store(size_t i, const Image& image, const Mask& mask, int size) {
  Image small = resize_bilinear(image, size, size);
  pixels_[i].resize(small.pixels.size());
  std::transform(small.pixels.begin(), small.pixels.end(), pixels_[i].begin(), to_byte);
  masks_[i] = resize_nearest(mask, size, size);
}

void SampleCache::reframe(int size, const std::function<void(Image&, Mask&)>& view, int threads) {
  SONO_CHECK(size > 0, "image size must be positive, got ", size);
  // Sample i is read at the old size before it is stored at the new one, by the same thread.
  parallel_for(count(), threads, [&](size_t i) {
    Image image_i = image(i);
    Mask mask_i = masks_[i];
    view(image_i, mask_i);
    store(i, image_i, mask_i, size);
  });
  size_ = size;
}

Image SampleCache::image(size_t i) const {
  Image out(size_, size_, 3);
  std::transform(pixels_[i].begin(), pixels_[i].end(), out.pixels.begin(), [](uint8_t v) { return v / 255.0f; });
  return out;
}

void SampleCache::set_mask(size_t i, Mask mask) {
  SONO_CHECK(mask.height == size_ && mask.width == size_, "SampleCache::set_mask: mask is ", mask.height,
             "x", mask.width, ", the cache holds ", size_, "x", size_);
  masks_.at(i) = std::move(mask);
}

}  // namespace sono::data
