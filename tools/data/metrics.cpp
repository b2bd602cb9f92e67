#include "tools/data/metrics.h"

#include <algorithm>
#include <cmath>
#include <iomanip>
#include <limits>
#include <sstream>

#include "tensor/error.h"

namespace sono::data {

namespace {

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

double mean_or_nan(double sum, size_t n) { return n ? sum / static_cast<double>(n) : kNaN; }

double ratio_or_zero(double num, double den) { return den > 0 ? num / den : 0.0; }

}  // namespace

Overlap overlap(const uint8_t* prediction, const uint8_t* target, size_t pixels) {
  size_t both = 0, predicted = 0, truth = 0;
  for (size_t i = 0; i < pixels; ++i) {
    bool p = prediction[i] != 0, t = target[i] != 0;
    both += p && t;
    predicted += p;
    truth += t;
  }
  if (truth == 0) return predicted == 0 ? Overlap{1, 1} : Overlap{0, 0};
  double dice = 2.0 * both / static_cast<double>(predicted + truth);
  double iou = both / static_cast<double>(predicted + truth - both);
  return {dice, iou};
}

Overlap overlap(const Mask& prediction, const Mask& target) {
  SONO_CHECK(prediction.height == target.height && prediction.width == target.width, "overlap: prediction is ",
             prediction.width, "x", prediction.height, " but target is ", target.width, "x", target.height);
  return overlap(prediction.values.data(), target.values.data(), target.values.size());
}

void SegmentationMetrics::add(const uint8_t* prediction, const uint8_t* target, size_t pixels) {
  Overlap o = overlap(prediction, target, pixels);
  ++images_;
  dice_ += o.dice;
  iou_ += o.iou;
  if (std::none_of(target, target + pixels, [](uint8_t v) { return v != 0; })) {
    ++empty_images_;
    empty_kept_ += o.dice == 1;
    return;
  }
  ++lesion_images_;
  lesion_dice_ += o.dice;
  lesion_iou_ += o.iou;
  if (o.dice > 0) {
    ++found_lesions_;
    found_lesion_dice_ += o.dice;
  }
}

void SegmentationMetrics::add(const Mask& prediction, const Mask& target) {
  SONO_CHECK(prediction.height == target.height && prediction.width == target.width,
             "SegmentationMetrics: prediction is ", prediction.width, "x", prediction.height, " but target is ",
             target.width, "x", target.height);
  add(prediction.values.data(), target.values.data(), target.values.size());
}

namespace {

// A batch's predictions (logit > 0) and targets (> 0.5) as 0/1 bytes, image after image.
struct BatchMasks {
  std::vector<uint8_t> predicted, target;
  size_t per_image = 0;
};

BatchMasks batch_masks(const Tensor& logits, const Tensor& targets, const char* caller) {
  SONO_CHECK(logits.shape() == targets.shape() && logits.dim() == 4 && logits.size(3) == 1, caller, ": logits ",
             shape_str(logits.shape()), " and targets ", shape_str(targets.shape()), " must both be [B, H, W, 1]");
  const std::vector<double> l = logits.to_vector(), t = targets.to_vector();
  BatchMasks m{std::vector<uint8_t>(l.size()), std::vector<uint8_t>(t.size()),
               l.size() / static_cast<size_t>(logits.size(0))};
  std::transform(l.begin(), l.end(), m.predicted.begin(), [](double v) { return uint8_t(v > 0); });
  std::transform(t.begin(), t.end(), m.target.begin(), [](double v) { return uint8_t(v > 0.5); });
  return m;
}

double share_marked(const uint8_t* mask, size_t pixels) {
  return static_cast<double>(std::count(mask, mask + pixels, uint8_t{1})) / static_cast<double>(pixels);
}

}  // namespace

void SegmentationMetrics::add_batch(const Tensor& logits, const Tensor& targets) {
  const BatchMasks m = batch_masks(logits, targets, "SegmentationMetrics");
  for (size_t i = 0; i < m.predicted.size(); i += m.per_image) add(&m.predicted[i], &m.target[i], m.per_image);
}

std::vector<ImageSegmentation> image_segmentations(const Tensor& logits, const Tensor& uncalibrated,
                                                   const Tensor& targets) {
  const BatchMasks m = batch_masks(logits, targets, "image_segmentations");
  SONO_CHECK(uncalibrated.shape() == logits.shape(), "image_segmentations: uncalibrated logits ",
             shape_str(uncalibrated.shape()), " and logits ", shape_str(logits.shape()), " differ");
  const std::vector<double> raw = uncalibrated.to_vector();
  std::vector<ImageSegmentation> images;
  for (size_t i = 0; i < m.predicted.size(); i += m.per_image) {
    const double peak = *std::max_element(raw.begin() + i, raw.begin() + i + m.per_image);
    images.push_back({overlap(&m.predicted[i], &m.target[i], m.per_image), share_marked(&m.predicted[i], m.per_image),
                      share_marked(&m.target[i], m.per_image), 1 / (1 + std::exp(-peak))});
  }
  return images;
}

double SegmentationMetrics::dice() const { return mean_or_nan(dice_, images_); }
double SegmentationMetrics::iou() const { return mean_or_nan(iou_, images_); }
double SegmentationMetrics::lesion_dice() const { return mean_or_nan(lesion_dice_, lesion_images_); }
double SegmentationMetrics::lesion_iou() const { return mean_or_nan(lesion_iou_, lesion_images_); }
double SegmentationMetrics::lesions_found() const { return mean_or_nan(double(found_lesions_), lesion_images_); }
double SegmentationMetrics::found_lesion_dice() const { return mean_or_nan(found_lesion_dice_, found_lesions_); }
double SegmentationMetrics::empty_kept_empty() const { return mean_or_nan(double(empty_kept_), empty_images_); }

ClassificationMetrics::ClassificationMetrics(int classes)
    : confusion_(std::max(classes, 0), std::vector<int64_t>(std::max(classes, 0), 0)) {
  SONO_CHECK(classes > 0, "ClassificationMetrics: need at least one class, got ", classes);
}

void ClassificationMetrics::add(int truth, int predicted) {
  int n = static_cast<int>(confusion_.size());
  SONO_CHECK(truth >= 0 && truth < n && predicted >= 0 && predicted < n, "ClassificationMetrics: label ", truth,
             " or prediction ", predicted, " outside 0..", n - 1);
  ++confusion_[truth][predicted];
}

void ClassificationMetrics::add_batch(const Tensor& logits, const Tensor& labels) {
  SONO_CHECK(logits.dim() == 2 && labels.dim() == 1 && logits.size(0) == labels.size(0),
             "ClassificationMetrics: logits ", shape_str(logits.shape()), " must be [B, C] and labels ",
             shape_str(labels.shape()), " [B]");
  std::vector<double> l = logits.to_vector();
  std::vector<int64_t> y = labels.to_labels();
  size_t c = static_cast<size_t>(logits.size(1));
  for (size_t i = 0; i < y.size(); ++i) {
    auto row = l.begin() + i * c;
    add(static_cast<int>(y[i]), static_cast<int>(std::max_element(row, row + c) - row));
  }
}

int64_t ClassificationMetrics::row_sum(int c) const {
  int64_t s = 0;
  for (int64_t v : confusion_[c]) s += v;
  return s;
}

int64_t ClassificationMetrics::column_sum(int c) const {
  int64_t s = 0;
  for (const auto& row : confusion_) s += row[c];
  return s;
}

size_t ClassificationMetrics::count() const {
  int64_t s = 0;
  for (size_t c = 0; c < confusion_.size(); ++c) s += row_sum(static_cast<int>(c));
  return static_cast<size_t>(s);
}

double ClassificationMetrics::accuracy() const {
  int64_t right = 0;
  for (size_t c = 0; c < confusion_.size(); ++c) right += confusion_[c][c];
  return count() ? static_cast<double>(right) / count() : kNaN;
}

double ClassificationMetrics::recall(int c) const { return ratio_or_zero(confusion_[c][c], row_sum(c)); }
double ClassificationMetrics::precision(int c) const { return ratio_or_zero(confusion_[c][c], column_sum(c)); }

double ClassificationMetrics::f1(int c) const {
  return ratio_or_zero(2.0 * confusion_[c][c], static_cast<double>(row_sum(c) + column_sum(c)));
}

double ClassificationMetrics::macro_f1() const {
  double sum = 0;
  int classes = 0;
  for (int c = 0; c < static_cast<int>(confusion_.size()); ++c)
    if (row_sum(c) + column_sum(c) > 0) sum += f1(c), ++classes;
  return classes ? sum / classes : kNaN;
}

std::string ClassificationMetrics::confusion_table(const std::vector<std::string>& names) const {
  SONO_CHECK(names.size() == confusion_.size(), "confusion_table: ", names.size(), " names for ",
             confusion_.size(), " classes");
  size_t width = 9;
  for (const auto& n : names) width = std::max(width, n.size() + 1);
  std::ostringstream os;
  os << std::left << std::setw(width) << "true\\pred";
  for (const auto& n : names) os << std::right << std::setw(width) << n;
  os << std::right << std::setw(9) << "recall" << "\n";
  for (size_t r = 0; r < names.size(); ++r) {
    os << std::left << std::setw(width) << names[r] << std::right;
    for (int64_t v : confusion_[r]) os << std::setw(width) << v;
    os << std::setw(9) << std::fixed << std::setprecision(3) << recall(static_cast<int>(r)) << "\n";
  }
  return os.str();
}

}  // namespace sono::data
