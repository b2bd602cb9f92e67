#pragma once
// Strided views described with the fewest dims: the layout both backends' strided loops and
// launches start from (the CPU's row iteration, the CUDA copies, elementwise ops and
// reductions).
#include <array>

#include "tensor/tensor.h"

namespace sono {

// K equally-shaped strided views after merge_dims.
template <size_t K>
struct StridedLayout {
  Shape shape;                       // merged shape
  std::array<Shape, K> strides;      // merged strides per operand
};

// Merges the dims that are contiguous for every operand (a dim's stride equals the next one's
// stride times its size, for each of the K operands) and drops dims of size 1.
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

}  // namespace sono
