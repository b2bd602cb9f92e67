// Moves between devices and dtypes, differentiable: the gradient goes back to the source's
// device, and to its dtype's compute dtype.
#include "autograd/node.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace sono {

Tensor Tensor::to(Device device) const {
  if (device == this->device()) return *this;
  Tensor src = contiguous();
  Tensor dst = empty(shape(), dtype(), device);
  // The non-CPU side owns the transfer.
  backend(device == Device::cpu ? src.device() : device).copy(src, dst);
  return autograd::record("to_device", dst, {*this}, [src_device = this->device()](const Tensor& g) {
    return std::vector<Tensor>{g.to(src_device)};
  });
}

Tensor Tensor::to(DType dtype) const {
  if (dtype == this->dtype()) return *this;
  Tensor dst = empty(shape(), dtype, device());
  backend_of(*this).copy(*this, dst);
  if (dtype == DType::i64 || this->dtype() == DType::i64) return dst;
  // A bfloat16 tensor's gradient is float32, so casts between the two pass it on as it is.
  return autograd::record("to_dtype", dst, {*this}, [src = this->dtype()](const Tensor& g) {
    return std::vector<Tensor>{g.to(compute_dtype(src))};
  });
}

}  // namespace sono
