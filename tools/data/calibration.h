#pragma once
// How far a classifier's probabilities can be trusted: AUROC of one class against the rest,
// the expected calibration error with its reliability diagram, and temperature scaling
// (Guo et al., "On Calibration of Modern Neural Networks", 2017), which divides the logits by
// one T fitted on validation data: the predicted class stays, the confidence becomes honest.
#include <cstddef>
#include <string>
#include <vector>

#include "tensor/tensor.h"

namespace sono::data {

using Rows = std::vector<std::vector<double>>;  // one row of logits or probabilities per image

// The probability that a random positive scores above a random negative (ties count half),
// i.e. the area under the ROC curve. NaN without positives or without negatives.
double auroc(const std::vector<double>& scores, const std::vector<bool>& positive);

struct ReliabilityBin {
  double confidence = 0, accuracy = 0;  // means over the bin's images
  size_t count = 0;
};

// `bins` equal-width bins of the top-class probability over [0, 1] (a confidence of exactly 1
// goes into the last bin).
std::vector<ReliabilityBin> reliability_bins(const Rows& probabilities, const std::vector<int>& labels, int bins = 10);
// sum over bins of |accuracy - confidence| weighted by the bin's share of the images.
double expected_calibration_error(const std::vector<ReliabilityBin>& bins);
// Accuracy against confidence per non-empty bin, beside the diagonal of perfect calibration.
std::string reliability_svg(const std::vector<ReliabilityBin>& bins, const std::string& title);

std::vector<double> softmax_row(const std::vector<double>& logits, double temperature = 1);
// Mean negative log-likelihood of the labels under softmax(logits / temperature).
double mean_nll(const Rows& logits, const std::vector<int>& labels, double temperature);
// Whether each row's largest logit is its label's alone.
bool every_row_right(const Rows& logits, const std::vector<int>& labels);
// The temperature in [0.05, 20] that minimises mean_nll: golden-section search over 1/T, in
// which the NLL is convex. 1 where every_row_right: the NLL then falls without end as T
// shrinks, so such a split says nothing of how far to sharpen (the fit would sit at 0.05 and
// give every image a confidence of ~1).
double fit_temperature(const Rows& logits, const std::vector<int>& labels);

// Probabilities gathered image by image, and the figures above over them.
class ProbabilityRecord {
 public:
  // probabilities [B, C] (any device), labels int64 [B].
  void add_batch(const Tensor& probabilities, const Tensor& labels);
  void add(std::vector<double> probabilities, int label);
  size_t count() const { return labels_.size(); }
  double auroc(int positive_class) const;  // that class's probability, it against the rest
  double ece(int bins = 10) const;
  std::vector<ReliabilityBin> bins(int bins = 10) const { return reliability_bins(rows_, labels_, bins); }
  const Rows& rows() const { return rows_; }  // in the order added

 private:
  Rows rows_;
  std::vector<int> labels_;
};

}  // namespace sono::data
