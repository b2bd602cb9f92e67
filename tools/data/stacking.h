#pragma once
// Stacked generalisation (Wolpert, 1992) of a classifier with further evidence per image: a
// multinomial logistic regression whose inputs are each class's log-probability from the
// classifier and the logit of each extra score (here the mean malignancy a segmenter trained with
// --malignancy-map gives the lesion it marks). Fitted on out-of-fold rows only, so it learns how
// far to trust each source on images neither model trained on.
#include <string>
#include <vector>

namespace sono::data {

using Rows = std::vector<std::vector<double>>;

struct Stacking {
  // One row per class: a weight per class log-probability, then one per extra score.
  Rows weights;
  std::vector<double> bias;

  size_t classes() const { return bias.size(); }
  size_t scores() const { return weights.empty() ? 0 : weights[0].size() - classes(); }
  // The stacked class probabilities of one image.
  std::vector<double> probabilities(const std::vector<double>& class_probabilities,
                                    const std::vector<double>& scores) const;
};

// Fitted as scikit-learn's LogisticRegression(C=c, class_weight="balanced") fits it: the mean
// cross-entropy weighted so each class counts alike, times c, plus half the squared weights (the
// biases unpenalised), minimised by Newton's method. Every class must have rows.
Stacking fit_stacking(const Rows& class_probabilities, const Rows& scores, const std::vector<int>& labels,
                      double c = 1);

}  // namespace sono::data
