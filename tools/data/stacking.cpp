#include "tools/data/stacking.h"

#include <algorithm>
#include <cmath>

#include "tensor/error.h"
#include "tools/data/calibration.h"

namespace sono::data {

namespace {

// Probabilities of exactly 0 or 1 would give infinite inputs; 1e-6 is far below any a
// calibrated classifier reports.
constexpr double kClip = 1e-6;

std::vector<double> stacking_inputs(const std::vector<double>& class_probabilities, const std::vector<double>& scores) {
  std::vector<double> x;
  for (double p : class_probabilities) x.push_back(std::log(std::clamp(p, kClip, 1.0)));
  for (double s : scores) {
    const double q = std::clamp(s, kClip, 1 - kClip);
    x.push_back(std::log(q / (1 - q)));
  }
  return x;
}

// Solves A x = b for a symmetric positive definite A (row-major, n x n) by Cholesky.
std::vector<double> solve_positive_definite(std::vector<double> a, std::vector<double> b) {
  const size_t n = b.size();
  for (size_t j = 0; j < n; ++j) {
    for (size_t k = 0; k < j; ++k) a[j * n + j] -= a[j * n + k] * a[j * n + k];
    SONO_CHECK(a[j * n + j] > 0, "fit_stacking: the Hessian is not positive definite");
    a[j * n + j] = std::sqrt(a[j * n + j]);
    for (size_t i = j + 1; i < n; ++i) {
      for (size_t k = 0; k < j; ++k) a[i * n + j] -= a[i * n + k] * a[j * n + k];
      a[i * n + j] /= a[j * n + j];
    }
  }
  for (size_t i = 0; i < n; ++i) {
    for (size_t k = 0; k < i; ++k) b[i] -= a[i * n + k] * b[k];
    b[i] /= a[i * n + i];
  }
  for (size_t i = n; i-- > 0;) {
    for (size_t k = i + 1; k < n; ++k) b[i] -= a[k * n + i] * b[k];
    b[i] /= a[i * n + i];
  }
  return b;
}

// The objective over parameters laid out class by class: that class's input weights, then its bias.
struct Objective {
  const Rows& x;
  const std::vector<int>& labels;
  std::vector<double> sample_weight;  // c times the class's balancing weight
  size_t classes, inputs;

  size_t width() const { return inputs + 1; }
  double weight(const std::vector<double>& theta, size_t k, size_t a) const { return theta[k * width() + a]; }

  std::vector<double> probabilities(const std::vector<double>& theta, size_t i) const {
    std::vector<double> z(classes);
    for (size_t k = 0; k < classes; ++k) {
      z[k] = weight(theta, k, inputs);
      for (size_t a = 0; a < inputs; ++a) z[k] += weight(theta, k, a) * x[i][a];
    }
    return softmax_row(z);
  }

  double value(const std::vector<double>& theta) const {
    double f = 0;
    for (size_t k = 0; k < classes; ++k)
      for (size_t a = 0; a < inputs; ++a) f += 0.5 * weight(theta, k, a) * weight(theta, k, a);
    for (size_t i = 0; i < x.size(); ++i)
      f -= sample_weight[i] * std::log(std::max(probabilities(theta, i)[static_cast<size_t>(labels[i])], 1e-300));
    return f;
  }

  // Gradient and Hessian, the Hessian with a tiny ridge: shifting every bias alike changes
  // nothing, so it is singular along that direction, where the gradient is zero anyway.
  void derivatives(const std::vector<double>& theta, std::vector<double>& g, std::vector<double>& h) const {
    const size_t n = classes * width();
    g.assign(n, 0);
    h.assign(n * n, 0);
    for (size_t k = 0; k < classes; ++k)
      for (size_t a = 0; a < inputs; ++a) g[k * width() + a] = weight(theta, k, a), h[(k * width() + a) * (n + 1)] = 1;
    for (size_t i = 0; i < n; ++i) h[i * (n + 1)] += 1e-9;
    std::vector<double> xi(x[0].size() + 1, 1);
    for (size_t i = 0; i < x.size(); ++i) {
      std::copy(x[i].begin(), x[i].end(), xi.begin());
      const std::vector<double> p = probabilities(theta, i);
      for (size_t k = 0; k < classes; ++k) {
        const double residual = p[k] - (static_cast<int>(k) == labels[i] ? 1 : 0);
        for (size_t a = 0; a <= inputs; ++a) g[k * width() + a] += sample_weight[i] * residual * xi[a];
        for (size_t l = 0; l < classes; ++l) {
          const double curvature = sample_weight[i] * p[k] * ((k == l ? 1 : 0) - p[l]);
          for (size_t a = 0; a <= inputs; ++a)
            for (size_t b = 0; b <= inputs; ++b) h[(k * width() + a) * n + l * width() + b] += curvature * xi[a] * xi[b];
        }
      }
    }
  }
};

}  // namespace

std::vector<double> Stacking::probabilities(const std::vector<double>& class_probabilities,
                                            const std::vector<double>& scores) const {
  SONO_CHECK(class_probabilities.size() == classes() && scores.size() == this->scores(), "stacking: expected ",
             classes(), " class probabilities and ", this->scores(), " scores, got ", class_probabilities.size(),
             " and ", scores.size());
  const std::vector<double> x = stacking_inputs(class_probabilities, scores);
  std::vector<double> z = bias;
  for (size_t k = 0; k < z.size(); ++k)
    for (size_t a = 0; a < x.size(); ++a) z[k] += weights[k][a] * x[a];
  return softmax_row(z);
}

Stacking fit_stacking(const Rows& class_probabilities, const Rows& scores, const std::vector<int>& labels, double c) {
  SONO_CHECK(!labels.empty() && class_probabilities.size() == labels.size() && scores.size() == labels.size(),
             "fit_stacking: ", class_probabilities.size(), " probability rows and ", scores.size(), " score rows for ",
             labels.size(), " labels");
  const size_t classes = class_probabilities[0].size();
  std::vector<size_t> count(classes, 0);
  for (int y : labels) {
    SONO_CHECK(y >= 0 && static_cast<size_t>(y) < classes, "fit_stacking: label ", y, " outside ", classes, " classes");
    ++count[static_cast<size_t>(y)];
  }
  for (size_t k = 0; k < classes; ++k) SONO_CHECK(count[k] > 0, "fit_stacking: no rows of class ", k);
  Rows x;
  for (size_t i = 0; i < labels.size(); ++i) x.push_back(stacking_inputs(class_probabilities[i], scores[i]));
  Objective f{x, labels, {}, classes, x[0].size()};
  for (int y : labels)
    f.sample_weight.push_back(c * static_cast<double>(labels.size()) /
                              static_cast<double>(classes * count[static_cast<size_t>(y)]));
  std::vector<double> theta(classes * f.width(), 0), g, h;
  double value = f.value(theta);
  for (int iteration = 0; iteration < 100; ++iteration) {
    f.derivatives(theta, g, h);
    const std::vector<double> step = solve_positive_definite(h, g);
    double decrease = 0;  // Newton's decrement: the step's predicted fall of the objective
    for (size_t i = 0; i < g.size(); ++i) decrease += g[i] * step[i];
    if (decrease < 1e-12 * std::max(1.0, std::abs(value))) break;
    bool moved = false;
    for (double t = 1; t > 1e-8 && !moved; t /= 2) {  // backtracking: a full step from far away can overshoot
      std::vector<double> trial = theta;
      for (size_t i = 0; i < trial.size(); ++i) trial[i] -= t * step[i];
      const double trial_value = f.value(trial);
      if (trial_value <= value - 0.25 * t * decrease) theta = std::move(trial), value = trial_value, moved = true;
    }
    if (!moved) break;  // at the optimum to rounding
  }
  Stacking s;
  for (size_t k = 0; k < classes; ++k) {
    s.weights.emplace_back(theta.begin() + k * f.width(), theta.begin() + k * f.width() + f.inputs);
    s.bias.push_back(theta[k * f.width() + f.inputs]);
  }
  return s;
}

}  // namespace sono::data
