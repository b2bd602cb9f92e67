#pragma once
// The parity goldens' formulas (tests/reference/deeplab_goldens.py): inputs and whole state dicts
// computed from indices and names, so a golden needs no weights file; and the measures (rms,
// max_abs, worst_error) the model tests share.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "helpers.h"
#include "layers/module.h"

namespace sono::test {

// The goldens' input: x[i] = sin(0.37 i) + 0.5 cos(0.0021 i) over the NHWC flat index.
inline Tensor formula_input(const Shape& nhwc, DType dtype) {
  std::vector<double> v(shape_numel(nhwc));
  for (size_t i = 0; i < v.size(); ++i) v[i] = std::sin(0.37 * i) + 0.5 * std::cos(0.0021 * i);
  return Tensor::from_vector(v, nhwc, dtype);
}

// hash_uniform() of deeplab_goldens.py: n values in [-1, 1) from a 32-bit hash of (index, h).
inline std::vector<double> hash_uniform(int64_t n, uint64_t h) {
  std::vector<double> v(n);
  for (int64_t i = 0; i < n; ++i) {
    uint64_t x = (static_cast<uint64_t>(i) * 2654435761u + h * 40503u) & 0xFFFFFFFFu;
    for (auto [shift, mult] : {std::pair<int, uint64_t>{15, 2246822519u}, {13, 3266489917u}}) {
      x ^= x >> shift;
      x = (x * mult) & 0xFFFFFFFFu;
    }
    x ^= x >> 16;
    v[i] = static_cast<double>(x) / 4294967296.0 * 2 - 1;
  }
  return v;
}

// formula_state() of deeplab_goldens.py: every float entry from its name and flat index.
inline nn::StateDict formula_state(nn::Module& model, DType dtype) {
  nn::StateDict state;
  for (auto& [name, t] : model.state_dict()) {
    if (t.dtype() != DType::f32 && t.dtype() != DType::f64) {
      state[name] = t;
      continue;
    }
    uint64_t h = 0;
    for (unsigned char c : name) h += c;
    std::vector<double> v = hash_uniform(t.numel(), h);
    for (double& x : v) {
      if (name.ends_with("running_var")) x = 1 + 0.5 * x * x;
      else if (t.dim() >= 2) x *= std::sqrt(6.0 / static_cast<double>(t.numel() / t.size(0)));
      else if (name.ends_with(".weight")) x = 1 + 0.2 * x;
      else x *= 0.1;
    }
    state[name] = Tensor::from_vector(v, t.shape(), dtype);
  }
  return state;
}

// A parameter's gradient summed over all but its first dim, as the golden stores it.
inline Tensor gradient_sum(const Tensor& g) {
  if (g.dim() == 1) return g;
  std::vector<int64_t> rest;
  for (int64_t d = 1; d < g.dim(); ++d) rest.push_back(d);
  return sum(g, rest);
}

inline double rms(const Tensor& t) {
  double ss = 0;
  for (double v : t.to_vector()) ss += v * v;
  return std::sqrt(ss / static_cast<double>(t.numel()));
}

inline double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

// Worst of max|ours - ref| / max(max|ref|, floor) over the entries named prefix + name.
inline std::pair<std::string, double> worst_error(const nn::NamedTensors& ours, const nn::StateDict& ref,
                                           const std::string& prefix, double floor = 0.0) {
  std::pair<std::string, double> worst{"", 0.0};
  for (auto& [name, t] : ours) {
    auto it = ref.find(prefix + name);
    if (it == ref.end()) continue;  // num_batches_tracked
    INFO(prefix << name);
    REQUIRE(t.defined());
    const double err = max_abs_diff(t, it->second) / std::max({max_abs(it->second), floor, 1e-300});
    if (err > worst.second) worst = {name, err};
  }
  return worst;
}

}  // namespace sono::test
