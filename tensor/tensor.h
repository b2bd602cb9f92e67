#pragma once
// Tensor: a strided view over shared storage, with the autograd fields the tape needs.
// Images are NHWC. Kernels live in backends (tensor/cpu, cuda/); ops (tensor/ops.h) dispatch.
#include <functional>
#include <memory>
#include <ostream>
#include <vector>

#include "tensor/dtype.h"
#include "tensor/error.h"

namespace sono {

using Shape = std::vector<int64_t>;
std::string shape_str(const Shape& s);
// The element count; throws sono::Error when it overflows int64 (a shape read from a file).
int64_t shape_numel(const Shape& s);
Shape contiguous_strides(const Shape& s);

struct Storage {
  void* data = nullptr;
  size_t nbytes = 0;
  Device device = Device::cpu;
  // Never written again while it lives (nn::Module::freeze_parameters, for inference): kernels
  // may keep what they derive from it, e.g. the CPU convs' packed weights.
  bool frozen = false;
  Storage(size_t nbytes, Device device);
  ~Storage();
  Storage(const Storage&) = delete;
  Storage& operator=(const Storage&) = delete;
};

namespace autograd { struct Node; }

struct TensorImpl {
  std::shared_ptr<Storage> storage;
  Shape shape, strides;  // strides in elements
  int64_t offset = 0;    // in elements
  DType dtype = DType::f32;
  bool requires_grad = false;
  std::shared_ptr<TensorImpl> grad;             // accumulated gradient (leaves)
  std::shared_ptr<autograd::Node> grad_fn;      // the op that produced this tensor
};

class Tensor {
 public:
  Tensor() = default;
  explicit Tensor(std::shared_ptr<TensorImpl> impl) : impl_(std::move(impl)) {}

  // --- factories -----------------------------------------------------------
  static Tensor empty(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor zeros(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu);
  static Tensor full(const Shape& shape, double value, DType dtype = DType::f32,
                     Device device = Device::cpu);
  static Tensor ones(const Shape& shape, DType dtype = DType::f32, Device device = Device::cpu) {
    return full(shape, 1.0, dtype, device);
  }
  static Tensor from_vector(const std::vector<double>& values, const Shape& shape,
                            DType dtype = DType::f32);
  static Tensor from_labels(const std::vector<int64_t>& labels);

  // --- metadata ------------------------------------------------------------
  bool defined() const { return impl_ != nullptr; }
  const Shape& shape() const { return impl().shape; }
  const Shape& strides() const { return impl().strides; }
  int64_t offset() const { return impl().offset; }
  int64_t dim() const { return static_cast<int64_t>(impl().shape.size()); }
  int64_t size(int64_t d) const;
  int64_t numel() const { return shape_numel(impl().shape); }
  DType dtype() const { return impl().dtype; }
  Device device() const { return impl().storage->device; }
  bool is_contiguous() const;
  bool same_storage(const Tensor& o) const { return impl().storage == o.impl().storage; }

  // Raw element pointer (storage + offset); checks the element type.
  template <typename T> T* data() const;
  void* raw_data() const;

  // --- views and copies (autograd-aware; see tensor/ops/view.cpp) -----------
  Tensor reshape(const Shape& shape) const;
  Tensor permute(const std::vector<int64_t>& dims) const;
  Tensor transpose(int64_t a, int64_t b) const;
  Tensor slice(int64_t dim, int64_t start, int64_t end) const;
  Tensor unsqueeze(int64_t dim) const;
  Tensor squeeze(int64_t dim) const;
  Tensor expand(const Shape& shape) const;
  Tensor contiguous() const;
  Tensor clone() const;
  Tensor to(Device device) const;
  Tensor to(DType dtype) const;
  Tensor detach() const;  // shares storage, no grad_fn

  // --- values --------------------------------------------------------------
  double item() const;
  std::vector<double> to_vector() const;  // any dtype/device, row-major
  std::vector<int64_t> to_labels() const;

  // --- autograd ------------------------------------------------------------
  bool requires_grad() const { return impl().requires_grad; }
  Tensor& requires_grad_(bool on = true);
  Tensor grad() const { return impl().grad ? Tensor(impl().grad) : Tensor(); }
  void set_grad(const Tensor& g) { impl().grad = g.impl_; }
  void zero_grad() { impl().grad.reset(); }
  const std::shared_ptr<autograd::Node>& grad_fn() const { return impl().grad_fn; }
  void backward() const;  // from a scalar: seeds with 1

  TensorImpl& impl() const {
    SONO_CHECK(impl_, "use of an undefined tensor");
    return *impl_;
  }
  const std::shared_ptr<TensorImpl>& impl_ptr() const { return impl_; }

 private:
  std::shared_ptr<TensorImpl> impl_;
};

std::ostream& operator<<(std::ostream& os, const Tensor& t);

// Normalises a possibly negative dim index against rank.
int64_t wrap_dim(int64_t dim, int64_t rank);

}  // namespace sono
