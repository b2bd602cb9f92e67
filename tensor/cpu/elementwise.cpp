#include <algorithm>
#include <bit>
#include <cmath>

// GCC 12 flags the masked AVX-512 intrinsics inside Eigen's vectorised erf (see gemm.cpp).
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>
#include <unsupported/Eigen/SpecialFunctions>

#include "tensor/cpu/bf16.h"
#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/strided.h"

namespace sono::cpu {

namespace {

// A bfloat16 value's bits (DType::bf16): the top half of a float32.
struct Bf16 {
  uint16_t bits;
};

// float64 goes through float32 first, as torch converts it.
Bf16 to_bf16(float x) { return {bf16_bits(x)}; }
float from_bf16(Bf16 b) { return bf16_value(b.bits); }

template <typename D, typename S>
D convert(S v) {
  if constexpr (std::is_same_v<D, S>) return v;
  else if constexpr (std::is_same_v<S, Bf16>) return static_cast<D>(from_bf16(v));
  else if constexpr (std::is_same_v<D, Bf16>) return to_bf16(static_cast<float>(v));
  else return static_cast<D>(v);
}

// dispatch_any plus bfloat16, which only copies convert.
template <typename F>
void dispatch_storage(DType dtype, F&& f) {
  if (dtype == DType::bf16) f(Bf16{});
  else dispatch_any(dtype, std::forward<F>(f));
}

}  // namespace

void CpuBackend::copy(const Tensor& src, const Tensor& dst) {
  SONO_CHECK(src.shape() == dst.shape(), "copy: shapes ", shape_str(src.shape()), " and ",
             shape_str(dst.shape()), " differ");
  SONO_CHECK(src.device() == Device::cpu && dst.device() == Device::cpu,
             "CPU copy given a non-CPU tensor");
  dispatch_storage(src.dtype(), [&](auto s_tag) {
    using S = decltype(s_tag);
    dispatch_storage(dst.dtype(), [&](auto d_tag) {
      using D = decltype(d_tag);
      const S* s = static_cast<const S*>(src.raw_data());  // the dispatch checked the dtypes
      D* d = static_cast<D*>(dst.raw_data());
      for_each_row<2>(src.shape(), {&src.strides(), &dst.strides()},
                      [&](auto off, auto st, int64_t n) {
                        const S* sp = s + off[0];
                        D* dp = d + off[1];
                        for (int64_t i = 0; i < n; ++i) dp[i * st[1]] = convert<D>(sp[i * st[0]]);
                      });
    });
  });
}

void CpuBackend::fill(const Tensor& dst, double value) {
  dispatch_any(dst.dtype(), [&](auto tag) {
    using T = decltype(tag);
    T* d = dst.data<T>();
    const T v = static_cast<T>(value);
    for_each_row<1>(dst.shape(), {&dst.strides()}, [&](auto off, auto st, int64_t n) {
      for (int64_t i = 0; i < n; ++i) d[off[0] + i * st[0]] = v;
    });
  });
}

namespace {

template <typename T>
T gelu_erf(T x) {
  return T(0.5) * x * (T(1) + std::erf(x * T(M_SQRT1_2)));
}

// d/dx [x Phi(x)] = Phi(x) + x phi(x)
template <typename T>
T gelu_erf_grad(T x) {
  T cdf = T(0.5) * (T(1) + std::erf(x * T(M_SQRT1_2)));
  T pdf = std::exp(T(-0.5) * x * x) * T(0.3989422804014327);
  return cdf + x * pdf;
}

template <typename T>
T softplus(T x) {  // log(1 + e^x) without overflow
  return x > T(0) ? x + std::log1p(std::exp(-x)) : std::log1p(std::exp(x));
}

template <typename T>
T sigmoid(T x) {
  return x >= T(0) ? T(1) / (T(1) + std::exp(-x)) : std::exp(x) / (T(1) + std::exp(x));
}

template <typename T, typename F>
void map(const Tensor& x, const Tensor& out, F f) {
  const T* xp = x.data<T>();
  T* op = out.data<T>();
  const int64_t n = x.numel();
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) op[i] = f(xp[i]);
}

// GELU of v = x + bias (bias repeating every `cols` elements, or null): y = GELU(v), or with
// grad_y given, grad_x = grad_y * GELU'(v). The one loop behind gelu, bias_gelu and their
// gradients.
template <typename T>
struct GeluArgs {
  const T* x;
  const T* bias;
  int64_t cols;
  const T* grad_y;
  T* out;
  int64_t n;
};

// v[0, len) = x + bias for elements [begin, begin + len).
template <typename T>
void add_bias(const GeluArgs<T>& a, int64_t begin, int64_t len, T* v) {
  for (int64_t i = 0, c = begin % a.cols; i < len; c = 0) {
    const int64_t m = std::min(a.cols - c, len - i);
    const T* x = a.x + begin + i;
#pragma omp simd
    for (int64_t j = 0; j < m; ++j) v[i + j] = x[j] + a.bias[c + j];
    i += m;
  }
}

// float32 through Eigen's vectorised erf and exp (std::erf is scalar: GELU took 15% of MiT-B2
// inference, its gradient 14% of a ConvNeXt training step). float64 keeps std::erf for the
// gradient checks.
void gelu_span(const GeluArgs<float>& a, const float* in, int64_t begin, int64_t len) {
  Eigen::Map<const Eigen::ArrayXf> v(in, len);
  Eigen::Map<Eigen::ArrayXf> o(a.out + begin, len);
  o = 0.5f * (1.0f + (v * float(M_SQRT1_2)).erf());  // Phi(v), then in place
  if (a.grad_y)
    o = Eigen::Map<const Eigen::ArrayXf>(a.grad_y + begin, len) *
        (o + v * (-0.5f * v.square()).exp() * 0.3989422804014327f);
  else
    o *= v;
}

void gelu_span(const GeluArgs<double>& a, const double* in, int64_t begin, int64_t len) {
  double* o = a.out + begin;
  if (a.grad_y)
    for (int64_t i = 0; i < len; ++i) o[i] = a.grad_y[begin + i] * gelu_erf_grad(in[i]);
  else
    for (int64_t i = 0; i < len; ++i) o[i] = gelu_erf(in[i]);
}

}  // namespace

template <>
void gelu_in_place<float>(float* values, int64_t n) {
  Eigen::Map<Eigen::ArrayXf> v(values, n);
  v = 0.5f * v * (1.0f + (v * float(M_SQRT1_2)).erf());  // coefficient-wise: safe in place
}

template <>
void gelu_in_place<double>(double* values, int64_t n) {
  for (int64_t i = 0; i < n; ++i) values[i] = gelu_erf(values[i]);
}

namespace {

template <typename T>
void gelu_map(const GeluArgs<T>& a) {
  constexpr int64_t chunk = 4096;
#pragma omp parallel for schedule(static) if (a.n > 32768)
  for (int64_t begin = 0; begin < a.n; begin += chunk) {
    const int64_t len = std::min(chunk, a.n - begin);
    T shifted[chunk];
    if (a.bias) add_bias(a, begin, len, shifted);
    gelu_span(a, a.bias ? shifted : a.x + begin, begin, len);
  }
}

template <typename T>
const T* data_or_null(const Tensor& t) {
  return t.defined() ? t.data<T>() : nullptr;
}

}  // namespace

void CpuBackend::unary(UnaryOp op, const Tensor& x, const Tensor& out, double alpha) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    const T a = static_cast<T>(alpha);
    switch (op) {
      case UnaryOp::neg: return map<T>(x, out, [](T v) { return -v; });
      case UnaryOp::exp: return map<T>(x, out, [](T v) { return std::exp(v); });
      case UnaryOp::log: return map<T>(x, out, [](T v) { return std::log(v); });
      case UnaryOp::sqrt: return map<T>(x, out, [](T v) { return std::sqrt(v); });
      case UnaryOp::abs: return map<T>(x, out, [](T v) { return std::abs(v); });
      case UnaryOp::sign: return map<T>(x, out, [](T v) { return T((v > T(0)) - (v < T(0))); });
      case UnaryOp::relu: return map<T>(x, out, [](T v) { return v > T(0) ? v : T(0); });
      case UnaryOp::gelu:
        return gelu_map<T>({x.data<T>(), nullptr, 1, nullptr, out.data<T>(), x.numel()});
      case UnaryOp::sigmoid: return map<T>(x, out, [](T v) { return sigmoid(v); });
      case UnaryOp::tanh: return map<T>(x, out, [](T v) { return std::tanh(v); });
      case UnaryOp::softplus: return map<T>(x, out, [](T v) { return softplus(v); });
      case UnaryOp::add_scalar: return map<T>(x, out, [a](T v) { return v + a; });
      case UnaryOp::mul_scalar: return map<T>(x, out, [a](T v) { return v * a; });
      case UnaryOp::pow_scalar: return map<T>(x, out, [a](T v) { return std::pow(v, a); });
      case UnaryOp::gt_scalar: return map<T>(x, out, [a](T v) { return T(v > a); });
    }
  });
}

namespace {

template <typename T, typename F>
void zip(const Tensor& a, const Tensor& b, const Tensor& out, F f) {
  const T* ap = a.data<T>();
  const T* bp = b.data<T>();
  T* op = out.data<T>();
  for_each_row<3>(out.shape(), {&a.strides(), &b.strides(), &out.strides()},
                  [&](auto off, auto st, int64_t n) {
                    const T* x = ap + off[0];
                    const T* y = bp + off[1];
                    T* z = op + off[2];
                    if (st[0] == 1 && st[1] == 1 && st[2] == 1) {
#pragma omp simd
                      for (int64_t i = 0; i < n; ++i) z[i] = f(x[i], y[i]);
                    } else {
                      for (int64_t i = 0; i < n; ++i) z[i * st[2]] = f(x[i * st[0]], y[i * st[1]]);
                    }
                  });
}

}  // namespace

void CpuBackend::binary(BinaryOp op, const Tensor& a, const Tensor& b, const Tensor& out) {
  dispatch_float(out.dtype(), [&](auto tag) {
    using T = decltype(tag);
    switch (op) {
      case BinaryOp::add: return zip<T>(a, b, out, [](T x, T y) { return x + y; });
      case BinaryOp::sub: return zip<T>(a, b, out, [](T x, T y) { return x - y; });
      case BinaryOp::mul: return zip<T>(a, b, out, [](T x, T y) { return x * y; });
      case BinaryOp::div: return zip<T>(a, b, out, [](T x, T y) { return x / y; });
      case BinaryOp::eq: return zip<T>(a, b, out, [](T x, T y) { return T(x == y); });
      case BinaryOp::relu_grad: return zip<T>(a, b, out, [](T x, T y) { return y > T(0) ? x : T(0); });
      case BinaryOp::add_relu:
        return zip<T>(a, b, out, [](T x, T y) {
          const T sum = x + y;
          return sum > T(0) ? sum : T(0);
        });
    }
  });
}

void CpuBackend::bias_gelu_forward(const Tensor& x, const Tensor& bias, const Tensor& y) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    gelu_map<T>({x.data<T>(), bias.data<T>(), bias.numel(), nullptr, y.data<T>(), x.numel()});
  });
}

void CpuBackend::gelu_backward(const Tensor& x, const Tensor& bias, const Tensor& grad_y,
                               const Tensor& grad_x) {
  dispatch_float(x.dtype(), [&](auto tag) {
    using T = decltype(tag);
    gelu_map<T>({x.data<T>(), data_or_null<T>(bias), bias.defined() ? bias.numel() : 1,
                 grad_y.data<T>(), grad_x.data<T>(), x.numel()});
  });
}

}  // namespace sono::cpu
