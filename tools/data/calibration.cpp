#include "tools/data/calibration.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "tensor/error.h"
#include "tools/data/svg_chart.h"

namespace sono::data {

double auroc(const std::vector<double>& scores, const std::vector<bool>& positive) {
  SONO_CHECK(scores.size() == positive.size(), "auroc: ", scores.size(), " scores for ", positive.size(), " labels");
  std::vector<size_t> order(scores.size());
  std::iota(order.begin(), order.end(), 0);
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) { return scores[a] < scores[b]; });
  // Mann-Whitney: the positives' rank sum (tied scores share their mean rank).
  double positive_rank_sum = 0;
  size_t positives = 0;
  for (size_t i = 0; i < order.size();) {
    size_t j = i;
    while (j < order.size() && scores[order[j]] == scores[order[i]]) ++j;
    double mean_rank = (i + 1 + j) / 2.0;
    for (size_t t = i; t < j; ++t)
      if (positive[order[t]]) positive_rank_sum += mean_rank, ++positives;
    i = j;
  }
  size_t negatives = scores.size() - positives;
  if (positives == 0 || negatives == 0) return std::numeric_limits<double>::quiet_NaN();
  double p = static_cast<double>(positives);
  return (positive_rank_sum - p * (p + 1) / 2) / (p * static_cast<double>(negatives));
}

std::vector<ReliabilityBin> reliability_bins(const Rows& probabilities, const std::vector<int>& labels, int bins) {
  SONO_CHECK(probabilities.size() == labels.size(), "reliability_bins: ", probabilities.size(), " rows for ",
             labels.size(), " labels");
  SONO_CHECK(bins >= 1, "reliability_bins: need at least one bin, got ", bins);
  std::vector<ReliabilityBin> out(bins);
  for (size_t i = 0; i < labels.size(); ++i) {
    const auto& row = probabilities[i];
    size_t top = std::max_element(row.begin(), row.end()) - row.begin();
    int b = std::min(bins - 1, static_cast<int>(row[top] * bins));
    out[b].confidence += row[top];
    out[b].accuracy += static_cast<int>(top) == labels[i];
    ++out[b].count;
  }
  for (auto& bin : out)
    if (bin.count) bin.confidence /= bin.count, bin.accuracy /= bin.count;
  return out;
}

double expected_calibration_error(const std::vector<ReliabilityBin>& bins) {
  size_t total = 0;
  for (const auto& b : bins) total += b.count;
  if (total == 0) return std::numeric_limits<double>::quiet_NaN();
  double ece = 0;
  for (const auto& b : bins) ece += static_cast<double>(b.count) / total * std::abs(b.accuracy - b.confidence);
  return ece;
}

std::string reliability_svg(const std::vector<ReliabilityBin>& bins, const std::string& title) {
  Series model{"model", {}, {}}, perfect{"perfect calibration", {0, 1}, {0, 1}};
  for (const auto& b : bins)
    if (b.count) model.x.push_back(b.confidence), model.y.push_back(b.accuracy);
  return line_chart_svg(title, {Panel{"reliability", "confidence", "accuracy", {model, perfect}}});
}

std::vector<double> softmax_row(const std::vector<double>& logits, double temperature) {
  double top = *std::max_element(logits.begin(), logits.end());
  std::vector<double> p(logits.size());
  double sum = 0;
  for (size_t c = 0; c < logits.size(); ++c) sum += p[c] = std::exp((logits[c] - top) / temperature);
  for (double& v : p) v /= sum;
  return p;
}

double mean_nll(const Rows& logits, const std::vector<int>& labels, double temperature) {
  SONO_CHECK(logits.size() == labels.size() && !labels.empty(), "mean_nll: ", logits.size(), " rows for ",
             labels.size(), " labels");
  double sum = 0;
  for (size_t i = 0; i < labels.size(); ++i) {
    const auto& z = logits[i];
    double top = *std::max_element(z.begin(), z.end());
    double log_sum = 0;
    for (double v : z) log_sum += std::exp((v - top) / temperature);
    sum += std::log(log_sum) - (z[labels[i]] - top) / temperature;
  }
  return sum / static_cast<double>(labels.size());
}

bool every_row_right(const Rows& logits, const std::vector<int>& labels) {
  for (size_t i = 0; i < logits.size(); ++i) {
    const double own = logits[i][static_cast<size_t>(labels[i])];
    for (size_t c = 0; c < logits[i].size(); ++c)
      if (static_cast<int>(c) != labels[i] && logits[i][c] >= own) return false;
  }
  return true;
}

double fit_temperature(const Rows& logits, const std::vector<int>& labels) {
  if (every_row_right(logits, labels)) return 1;
  auto nll = [&](double inverse) { return mean_nll(logits, labels, 1 / inverse); };
  const double golden = (std::sqrt(5.0) - 1) / 2;
  double lo = 1 / 20.0, hi = 1 / 0.05;
  double a = hi - golden * (hi - lo), b = lo + golden * (hi - lo);
  double fa = nll(a), fb = nll(b);
  for (int i = 0; i < 80; ++i) {
    if (fa < fb)
      hi = b, b = a, fb = fa, a = hi - golden * (hi - lo), fa = nll(a);
    else
      lo = a, a = b, fa = fb, b = lo + golden * (hi - lo), fb = nll(b);
  }
  return 2 / (lo + hi);
}

void ProbabilityRecord::add_batch(const Tensor& probabilities, const Tensor& labels) {
  SONO_CHECK(probabilities.dim() == 2 && labels.dim() == 1 && probabilities.size(0) == labels.size(0),
             "ProbabilityRecord: probabilities ", shape_str(probabilities.shape()), " must be [B, C] and labels ",
             shape_str(labels.shape()), " [B]");
  std::vector<double> p = probabilities.to_vector();
  std::vector<int64_t> y = labels.to_labels();
  const size_t c = static_cast<size_t>(probabilities.size(1));
  for (size_t i = 0; i < y.size(); ++i) add({p.begin() + i * c, p.begin() + (i + 1) * c}, static_cast<int>(y[i]));
}

void ProbabilityRecord::add(std::vector<double> probabilities, int label) {
  rows_.push_back(std::move(probabilities));
  labels_.push_back(label);
}

double ProbabilityRecord::auroc(int positive_class) const {
  std::vector<double> scores;
  std::vector<bool> positive;
  for (size_t i = 0; i < rows_.size(); ++i) {
    scores.push_back(rows_[i].at(positive_class));
    positive.push_back(labels_[i] == positive_class);
  }
  return data::auroc(scores, positive);
}

double ProbabilityRecord::ece(int bins) const { return expected_calibration_error(reliability_bins(rows_, labels_, bins)); }

}  // namespace sono::data
