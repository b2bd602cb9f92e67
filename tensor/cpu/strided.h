#pragma once
// Iterates the elements of up to three equally-shaped strided views. Dims that are contiguous
// for every operand are merged first (merge_dims), so the common cases run as one flat inner
// loop.
#include <algorithm>
#include <array>
#include <vector>

#include "tensor/strided_layout.h"
#include "tensor/tensor.h"

namespace sono::cpu {

// Calls row(offsets, inner_strides, len) for every innermost row, in parallel. Rows are handed
// out in pieces of at most kRowPiece elements: contiguous operands merge into one row, which
// would otherwise run on one thread.
inline constexpr int64_t kRowPiece = 16384;

template <size_t K, typename Row>
void for_each_row(const Shape& shape, const std::array<const Shape*, K>& strides, Row&& row) {
  StridedLayout<K> m = merge_dims<K>(shape, strides);
  const int64_t rank = static_cast<int64_t>(m.shape.size());
  const int64_t inner = m.shape.back(), pieces = (inner + kRowPiece - 1) / kRowPiece;
  int64_t rows = 1;
  for (int64_t d = 0; d + 1 < rank; ++d) rows *= m.shape[d];
  std::array<int64_t, K> inner_strides;
  for (size_t k = 0; k < K; ++k) inner_strides[k] = m.strides[k].back();
#pragma omp parallel for schedule(static) if (rows * inner > 32768)
  for (int64_t item = 0; item < rows * pieces; ++item) {
    const int64_t r = item / pieces, first = item % pieces * kRowPiece;
    std::array<int64_t, K> off{};
    int64_t rem = r;
    for (int64_t d = rank - 2; d >= 0; --d) {
      int64_t i = rem % m.shape[d];
      rem /= m.shape[d];
      for (size_t k = 0; k < K; ++k) off[k] += i * m.strides[k][d];
    }
    for (size_t k = 0; k < K; ++k) off[k] += first * inner_strides[k];
    row(off, inner_strides, std::min(kRowPiece, inner - first));
  }
}

}  // namespace sono::cpu
