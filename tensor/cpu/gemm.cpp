#include <Eigen/Core>

#include "tensor/cpu/cpu_backend.h"

namespace sono::cpu {

namespace {

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

template <typename T>
void gemm_typed(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c, T alpha, T beta) {
  const int64_t batch = c.size(0), m = c.size(1), n = c.size(2);
  const int64_t ar = a.size(1), ac = a.size(2), br = b.size(1), bc = b.size(2);
  const int64_t k = ta ? ar : ac;
  SONO_CHECK((ta ? ac : ar) == m && (tb ? bc : br) == k && (tb ? br : bc) == n,
             "gemm: shapes do not chain: ", shape_str(a.shape()), (ta ? "^T" : ""), " x ",
             shape_str(b.shape()), (tb ? "^T" : ""), " -> ", shape_str(c.shape()));
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

void CpuBackend::gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                      double alpha, double beta) {
  dispatch_float(c.dtype(), [&](auto tag) {
    using T = decltype(tag);
    gemm_typed<T>(a, ta, b, tb, c, static_cast<T>(alpha), static_cast<T>(beta));
  });
}

}  // namespace sono::cpu
