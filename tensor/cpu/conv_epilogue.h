#pragma once
// What conv2d_bias_relu_forward adds to a conv's output, shared by the CPU conv paths
// (conv.cpp, winograd.cpp): each applies it while the output is in registers or cache where it
// can, the others in a pass over the output.
#include <cstdint>

namespace sono::cpu {

// + bias (of the columns from `bias` on; none where null), then ReLU where asked.
template <typename T>
struct Epilogue {
  const T* bias = nullptr;
  bool relu = false;

  Epilogue columns_from(int64_t first) const { return {bias ? bias + first : nullptr, relu}; }
};

}  // namespace sono::cpu
