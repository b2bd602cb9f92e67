#pragma once
// Validation figures. Segmentation: Dice and IoU per image, averaged over images, both over
// all images and over lesion images only; and, since a lesion missed outright and a lesion
// outlined loosely call for different fixes, the share of lesions found at all, the Dice of
// those found, and the share of lesion-free scans left empty. Classification: accuracy,
// macro-F1, per-class recall and the confusion matrix.
#include <cstdint>
#include <string>
#include <vector>

#include "tensor/tensor.h"
#include "tools/data/image.h"

namespace sono::data {

struct Overlap {
  double dice = 0, iou = 0;
};

// An empty target scores 1 when the prediction is empty too and 0 otherwise (Dice's 0/0 is
// otherwise undefined; BUSI's normal images have empty targets).
Overlap overlap(const uint8_t* prediction, const uint8_t* target, size_t pixels);
Overlap overlap(const Mask& prediction, const Mask& target);

class SegmentationMetrics {
 public:
  void add(const Mask& prediction, const Mask& target);
  // logits [B, H, W, 1] on any device (prediction: logit > 0), targets [B, H, W, 1] 0/1.
  void add_batch(const Tensor& logits, const Tensor& targets);

  size_t images() const { return images_; }
  size_t lesion_images() const { return lesion_images_; }
  double dice() const;  // mean over all images; NaN before any image
  double iou() const;
  double lesion_dice() const;  // mean over images whose target is not empty; NaN if none
  double lesion_iou() const;
  double lesions_found() const;      // share of lesion images whose prediction overlaps the lesion; NaN if none
  double found_lesion_dice() const;  // mean Dice over those images; NaN if none
  double empty_kept_empty() const;   // share of lesion-free images predicted empty; NaN if none

 private:
  void add(const uint8_t* prediction, const uint8_t* target, size_t pixels);
  size_t images_ = 0, lesion_images_ = 0, found_lesions_ = 0, empty_images_ = 0, empty_kept_ = 0;
  double dice_ = 0, iou_ = 0, lesion_dice_ = 0, lesion_iou_ = 0, found_lesion_dice_ = 0;
};

// One image's figures for a per-image table (seg_train's out-of-fold CSV): its overlap as
// SegmentationMetrics counts it, the share of the image the prediction and the target mark, and
// the highest lesion probability of the map before any empty-image threshold emptied it (how near
// a missed lesion came).
struct ImageSegmentation {
  Overlap overlap;
  double predicted_share = 0, target_share = 0, peak_probability = 0;
};

// logits, uncalibrated and targets [B, H, W, 1] on any device: the prediction is logits > 0, the
// peak sigmoid(max of uncalibrated).
std::vector<ImageSegmentation> image_segmentations(const Tensor& logits, const Tensor& uncalibrated,
                                                   const Tensor& targets);

class ClassificationMetrics {
 public:
  explicit ClassificationMetrics(int classes);
  void add(int truth, int predicted);
  // logits [B, C] on any device (prediction: argmax), labels int64 [B].
  void add_batch(const Tensor& logits, const Tensor& labels);

  size_t count() const;
  double accuracy() const;
  // As sklearn: a class's recall or F1 with a zero denominator is 0; macro-F1 averages the
  // classes that occur in the labels or the predictions.
  double recall(int c) const;
  double precision(int c) const;
  double f1(int c) const;
  double macro_f1() const;
  // confusion()[truth][predicted]
  const std::vector<std::vector<int64_t>>& confusion() const { return confusion_; }
  // Rows "truth \ predicted" with the class names, recall per row.
  std::string confusion_table(const std::vector<std::string>& names) const;

 private:
  int64_t row_sum(int c) const;
  int64_t column_sum(int c) const;
  std::vector<std::vector<int64_t>> confusion_;
};

}  // namespace sono::data
