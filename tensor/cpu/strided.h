#pragma once
// Iterates the elements of up to three equally-shaped strided views. Dims that are contiguous
// for every operand are merged first, so the common cases run as one flat inner loop.
#include <array>
#include <vector>

#include "tensor/tensor.h"

namespace sono::cpu {

template <size_t K>
struct StridedLayout {
  Shape shape;                       // merged shape
  std::array<Shape, K> strides;      // merged strides per operand
};

template <size_t K>
StridedLayout<K> merge_dims(const Shape& shape, const std::array<const Shape*, K>& strides) {
  StridedLayout<K> m;
  for (size_t d = 0; d < shape.size(); ++d) {
    if (shape[d] == 1) continue;
    bool mergeable = !m.shape.empty();
    for (size_t k = 0; k < K && mergeable; ++k)
      mergeable = m.strides[k].back() == (*strides[k])[d] * shape[d];
    if (mergeable) {
      m.shape.back() *= shape[d];
      for (size_t k = 0; k < K; ++k) m.strides[k].back() = (*strides[k])[d];
    } else {
      m.shape.push_back(shape[d]);
      for (size_t k = 0; k < K; ++k) m.strides[k].push_back((*strides[k])[d]);
    }
  }
  if (m.shape.empty()) {
    m.shape.push_back(1);
    for (size_t k = 0; k < K; ++k) m.strides[k].push_back(1);
  }
  return m;
}

// Calls row(offsets, inner_strides, inner_len) for every innermost row, rows in parallel.
template <size_t K, typename Row>
void for_each_row(const Shape& shape, const std::array<const Shape*, K>& strides, Row&& row) {
  StridedLayout<K> m = merge_dims<K>(shape, strides);
  const int64_t rank = static_cast<int64_t>(m.shape.size());
  const int64_t inner = m.shape.back();
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < rank; ++d) rows *= m.shape[d];
  std::array<int64_t, K> inner_strides;
  for (size_t k = 0; k < K; ++k) inner_strides[k] = m.strides[k].back();
#pragma omp parallel for schedule(static) if (rows * inner > 32768)
  for (int64_t r = 0; r < rows; ++r) {
    std::array<int64_t, K> off{};
    int64_t rem = r;
    for (int64_t d = rank - 2; d >= 0; --d) {
      int64_t i = rem % m.shape[d];
      rem /= m.shape[d];
      for (size_t k = 0; k < K; ++k) off[k] += i * m.strides[k][d];
    }
    row(off, inner_strides, inner);
  }
}

}  // namespace sono::cpu
