#include <Eigen/Core>

#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/gemm.h"

namespace sono::cpu {

namespace {

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <typename T>
GemmProblem<T> make_problem(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                            T alpha, T beta) {
  const int64_t batch = c.size(0), m = c.size(1), n = c.size(2);
  const int64_t k = ta ? a.size(1) : a.size(2);
  SONO_CHECK((ta ? a.size(2) : a.size(1)) == m && (tb ? b.size(2) : b.size(1)) == k &&
                 (tb ? b.size(1) : b.size(2)) == n,
             "gemm: shapes do not chain: ", shape_str(a.shape()), (ta ? "^T" : ""), " x ",
             shape_str(b.shape()), (tb ? "^T" : ""), " -> ", shape_str(c.shape()));
  return {a.data<T>(), b.data<T>(), c.data<T>(), nullptr, batch, m, n, k,
          ta, tb, a.size(0) == 1, b.size(0) == 1, alpha, beta};
}

template <typename T>
void eigen_gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c, T alpha, T beta) {
  make_problem(a, ta, b, tb, c, alpha, beta);  // checks the shapes
  const int64_t batch = c.size(0), m = c.size(1), n = c.size(2);
  const int64_t ar = a.size(1), ac = a.size(2), br = b.size(1), bc = b.size(2);
  for (int64_t i = 0; i < batch; ++i) {
    Eigen::Map<const RowMajor<T>> A(a.data<T>() + (a.size(0) == 1 ? 0 : i) * ar * ac, ar, ac);
    Eigen::Map<const RowMajor<T>> B(b.data<T>() + (b.size(0) == 1 ? 0 : i) * br * bc, br, bc);
    Eigen::Map<RowMajor<T>> C(c.data<T>() + i * m * n, m, n);
    if (beta == T(0)) C.setZero();
    else if (beta != T(1)) C *= beta;
    // Eigen picks its packed, blocked and (with OpenMP) threaded kernel for each case.
    if (!ta && !tb) C.noalias() += alpha * A * B;
    else if (ta && !tb) C.noalias() += alpha * A.transpose() * B;
    else if (!ta && tb) C.noalias() += alpha * A * B.transpose();
    else C.noalias() += alpha * A.transpose() * B.transpose();
  }
}

}  // namespace

void CpuBackend::linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                const Tensor& y) {
  if (y.dtype() == DType::f32 && kHaveSgemm) {
    GemmProblem<float> p = make_problem<float>(x, false, w, true, y, 1.0f, 0.0f);
    p.bias = bias.data<float>();
    return sgemm(p);
  }
  Backend::linear_forward(x, w, bias, y);
}

void CpuBackend::gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                      double alpha, double beta) {
  dispatch_float(c.dtype(), [&](auto tag) {
    using T = decltype(tag);
    if constexpr (std::is_same_v<T, float> && kHaveSgemm)
      sgemm(make_problem<float>(a, ta, b, tb, c, alpha, beta));
    else
      eigen_gemm<T>(a, ta, b, tb, c, static_cast<T>(alpha), static_cast<T>(beta));
  });
}

}  // namespace sono::cpu
