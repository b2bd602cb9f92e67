#include "tensor/tensor.h"

#include <cmath>
#include <cstring>
#include <sstream>

#include "tensor/backend.h"

namespace sono {

std::string shape_str(const Shape& s) {
  std::ostringstream os;
  os << "[";
  for (size_t i = 0; i < s.size(); ++i) os << (i ? ", " : "") << s[i];
  os << "]";
  return os.str();
}

int64_t shape_numel(const Shape& s) {
  int64_t n = 1;
  for (int64_t d : s)
    if (__builtin_mul_overflow(n, d, &n)) [[unlikely]]
      fail("shape ", shape_str(s), " has more elements than an int64 counts");
  return n;
}

Shape contiguous_strides(const Shape& s) {
  Shape st(s.size());
  int64_t acc = 1;
  for (size_t i = s.size(); i-- > 0;) {
    st[i] = acc;
    acc *= s[i];
  }
  return st;
}

int64_t wrap_dim(int64_t dim, int64_t rank) {
  int64_t d = dim < 0 ? dim + rank : dim;
  SONO_CHECK(d >= 0 && d < std::max<int64_t>(rank, 1), "dimension ", dim,
             " out of range for a tensor of rank ", rank);
  return d;
}

Storage::Storage(size_t n, Device dev) : nbytes(n), device(dev) {
  data = backend(dev).allocate(n == 0 ? 1 : n);
}
Storage::~Storage() { backend(device).deallocate(data); }

// ---- factories -------------------------------------------------------------------------------

Tensor Tensor::empty(const Shape& shape, DType dtype, Device device) {
  for (int64_t d : shape) SONO_CHECK(d >= 0, "negative size in shape ", shape_str(shape));
  auto impl = std::make_shared<TensorImpl>();
  int64_t nbytes;
  SONO_CHECK(!__builtin_mul_overflow(shape_numel(shape), static_cast<int64_t>(dtype_size(dtype)), &nbytes),
             "shape ", shape_str(shape), " has more bytes than an int64 counts");
  impl->storage = std::make_shared<Storage>(static_cast<size_t>(nbytes), device);
  impl->shape = shape;
  impl->strides = contiguous_strides(shape);
  impl->dtype = dtype;
  return Tensor(std::move(impl));
}

Tensor Tensor::full(const Shape& shape, double value, DType dtype, Device device) {
  Tensor t = empty(shape, dtype, device);
  backend(device).fill(t, value);
  return t;
}

Tensor Tensor::zeros(const Shape& shape, DType dtype, Device device) {
  return full(shape, 0.0, dtype, device);
}

Tensor Tensor::from_vector(const std::vector<double>& values, const Shape& shape, DType dtype) {
  SONO_CHECK(static_cast<int64_t>(values.size()) == shape_numel(shape), "from_vector: ",
             values.size(), " values for shape ", shape_str(shape));
  SONO_CHECK(dtype != DType::bf16, "from_vector: make a float32 tensor and cast it with "
             ".to(DType::bf16)");
  Tensor t = empty(shape, dtype);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == DType::f32) t.data<float>()[i] = static_cast<float>(values[i]);
    else if (dtype == DType::f64) t.data<double>()[i] = values[i];
    else t.data<int64_t>()[i] = static_cast<int64_t>(values[i]);
  }
  return t;
}

Tensor Tensor::from_labels(const std::vector<int64_t>& labels) {
  Tensor t = empty({static_cast<int64_t>(labels.size())}, DType::i64);
  if (!labels.empty())  // an empty vector's data() may be null, which memcpy may not take
    std::memcpy(t.data<int64_t>(), labels.data(), labels.size() * sizeof(int64_t));
  return t;
}

// ---- metadata -------------------------------------------------------------------------------

int64_t Tensor::size(int64_t d) const { return shape()[wrap_dim(d, dim())]; }

bool Tensor::is_contiguous() const {
  int64_t expected = 1;
  for (size_t i = shape().size(); i-- > 0;) {
    if (shape()[i] != 1 && strides()[i] != expected) return false;
    expected *= shape()[i];
  }
  return true;
}

void* Tensor::raw_data() const {
  return static_cast<char*>(impl().storage->data) + offset() * dtype_size(dtype());
}

template <typename T>
T* Tensor::data() const {
  constexpr DType want = std::is_same_v<T, float>    ? DType::f32
                         : std::is_same_v<T, double> ? DType::f64
                                                     : DType::i64;
  SONO_CHECK(dtype() == want, "tensor holds ", dtype_name(dtype()), ", accessed as ",
             dtype_name(want));
  return static_cast<T*>(raw_data());
}
template float* Tensor::data<float>() const;
template double* Tensor::data<double>() const;
template int64_t* Tensor::data<int64_t>() const;

// ---- copies ---------------------------------------------------------------------------------

Tensor Tensor::detach() const {
  auto impl = std::make_shared<TensorImpl>(this->impl());
  impl->requires_grad = false;
  impl->grad.reset();
  impl->grad_fn.reset();
  return Tensor(std::move(impl));
}

double Tensor::item() const {
  SONO_CHECK(numel() == 1, "item() on a tensor of shape ", shape_str(shape()));
  return to_vector()[0];
}

std::vector<double> Tensor::to_vector() const {
  Tensor host = to(Device::cpu).contiguous().to(DType::f64);
  const double* p = host.data<double>();
  return std::vector<double>(p, p + host.numel());
}

std::vector<int64_t> Tensor::to_labels() const {
  Tensor host = to(Device::cpu).contiguous();
  SONO_CHECK(host.dtype() == DType::i64, "to_labels() on a ", dtype_name(dtype()), " tensor");
  const int64_t* p = host.data<int64_t>();
  return std::vector<int64_t>(p, p + host.numel());
}

// ---- autograd -------------------------------------------------------------------------------

Tensor& Tensor::requires_grad_(bool on) {
  SONO_CHECK(!on || dtype() != DType::i64, "an int64 tensor cannot require grad");
  SONO_CHECK(!impl().grad_fn, "requires_grad_() on a non-leaf tensor");
  impl().requires_grad = on;
  return *this;
}

std::ostream& operator<<(std::ostream& os, const Tensor& t) {
  if (!t.defined()) return os << "Tensor(undefined)";
  os << "Tensor(" << shape_str(t.shape()) << ", " << dtype_name(t.dtype()) << ", "
     << device_name(t.device()) << ") [";
  auto v = t.to_vector();
  for (size_t i = 0; i < v.size() && i < 8; ++i) os << (i ? ", " : "") << v[i];
  return os << (v.size() > 8 ? ", ...]" : "]");
}

// ---- randomness -----------------------------------------------------------------------------

Generator& default_generator() {
  static Generator gen(0);
  return gen;
}
void manual_seed(uint64_t seed) { default_generator().seed(seed); }

namespace {
thread_local bool skip_random_fill = false;

Tensor random_tensor(const Shape& shape, DType dtype, const std::function<double()>& draw) {
  if (skip_random_fill) return Tensor::zeros(shape, dtype);
  Tensor t = Tensor::empty(shape, dtype);
  int64_t n = t.numel();
  for (int64_t i = 0; i < n; ++i) {
    if (dtype == DType::f32) t.data<float>()[i] = static_cast<float>(draw());
    else t.data<double>()[i] = draw();
  }
  return t;
}
}  // namespace

bool SkipRandomFill::active() { return skip_random_fill; }
SkipRandomFill::SkipRandomFill() : previous_(skip_random_fill) { skip_random_fill = true; }
SkipRandomFill::~SkipRandomFill() { skip_random_fill = previous_; }

Tensor randn(const Shape& shape, Generator& gen, DType dtype) {
  return random_tensor(shape, dtype, [&] { return gen.normal(); });
}
Tensor rand(const Shape& shape, Generator& gen, DType dtype) {
  return random_tensor(shape, dtype, [&] { return gen.uniform(); });
}
Tensor trunc_normal(const Shape& shape, double std, double lo, double hi, Generator& gen) {
  return random_tensor(shape, DType::f32, [&] {
    for (;;) {
      double v = gen.normal() * std;
      if (v >= lo && v <= hi) return v;
    }
  });
}

}  // namespace sono
