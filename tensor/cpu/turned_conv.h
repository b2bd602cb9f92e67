#pragma once
// The input gradient of a stride-1 convolution is a convolution itself: grad_x[y] = sum over ky
// of grad_out[y + padding - dilation ky] w[ky] (and so along x), which is the conv of grad_out
// with the kernel turned by 180 degrees, its in and out channels swapped, and padding
// dilation (k - 1) - padding. Run as a forward, its GEMM reads the columns from grad_out itself
// (or its Winograd transform does), where the GEMM over w would write a column matrix of every
// tap for col2im to add up.
#include <cstdint>

#include "tensor/backend.h"

namespace sono::cpu {

// Stride 1, one group, a square kernel larger than 1x1 (a 1x1 conv's GEMM writes grad_x
// directly) and padding at most dilation (k - 1).
inline bool input_gradient_is_a_conv(const Conv2dGeometry& g) {
  return g.stride == 1 && g.groups == 1 && g.kh == g.kw && g.kh > 1 && g.padding <= g.dilation * (g.kh - 1);
}

inline Conv2dGeometry input_gradient_geometry(const Conv2dGeometry& g) {
  Conv2dGeometry t = g;
  t.h = g.oh, t.w = g.ow, t.oh = g.h, t.ow = g.w;
  t.cin = g.cout, t.cout = g.cin;
  t.padding = g.dilation * (g.kh - 1) - g.padding;
  return t;
}

// w [Cout, Cin, k, k] -> turned [Cin, Cout, k, k], each kernel rotated by 180 degrees.
template <typename T>
void turn_weights(const Conv2dGeometry& g, const T* w, T* turned) {
  const int64_t taps = g.kh * g.kw;
  for (int64_t co = 0; co < g.cout; ++co)
    for (int64_t ci = 0; ci < g.cin; ++ci)
      for (int64_t k = 0; k < taps; ++k) turned[(ci * g.cout + co) * taps + taps - 1 - k] = w[(co * g.cin + ci) * taps + k];
}

}  // namespace sono::cpu
