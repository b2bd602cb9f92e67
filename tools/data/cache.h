#pragma once
// Every sample decoded once and kept in memory at training size, so an epoch only augments:
// BUSI at 256 px is 624 x 192 KiB of 8-bit RGB plus masks, about 160 MiB.
#include <cstdint>
#include <functional>
#include <vector>

#include "tools/data/dataset.h"
#include "tools/data/image.h"
#include "tools/data/parallel.h"

namespace sono::data {

class SampleCache {
 public:
  // Decodes all samples on `threads` threads: image resized to size x size (bilinear,
  // antialiased; aspect ratio not kept), masks unioned and resized (nearest), and the pHash
  // of the original image for the split. The first failing file's error is rethrown.
  SampleCache(Dataset dataset, int size, int threads = default_threads());

  const Dataset& dataset() const { return dataset_; }
  int size() const { return size_; }
  size_t count() const { return masks_.size(); }
  int label(size_t i) const { return dataset_.samples[i].label; }
  Image image(size_t i) const;  // RGB 0..1, size x size
  const Mask& mask(size_t i) const { return masks_[i]; }
  // Replaces a sample's mask (size x size), e.g. by a segmentation model's prediction.
  void set_mask(size_t i, Mask mask);
  // Makes every sample `size` x size: `view` changes each cached image and mask alike (a crop:
  // cls_train --lesion-view decodes larger and crops), then both are resized as the
  // constructor resizes.
  void reframe(int size, const std::function<void(Image&, Mask&)>& view, int threads = default_threads());
  const std::vector<uint64_t>& hashes() const { return hashes_; }
  ImageSize original_size(size_t i) const { return original_sizes_[i]; }

 private:
  // Sample i from an image and a mask of one size, resized to `size`.
  void store(size_t i, const Image& image, const Mask& mask, int size);

  Dataset dataset_;
  int size_;
  std::vector<std::vector<uint8_t>> pixels_;  // RGB 8-bit: a quarter of float's memory
  std::vector<Mask> masks_;
  std::vector<uint64_t> hashes_;
  std::vector<ImageSize> original_sizes_;
};

}  // namespace sono::data
