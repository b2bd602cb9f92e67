// GCC 12 flags the masked AVX-512 intrinsics inside Eigen's GEMM kernels (their undefined
// merge source is by design), hundreds of times per build.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <Eigen/Core>

#include <vector>

#include "tensor/cpu/bf16.h"
#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/gemm.h"

namespace sono::cpu {

namespace {

template <typename T>
using RowMajor = Eigen::Matrix<T, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
template <typename T>
using MatrixView = Eigen::Map<RowMajor<T>, 0, Eigen::OuterStride<>>;

template <typename T>
MatrixView<T> view(const T* data, int64_t rows, int64_t cols, int64_t row_stride) {
  return MatrixView<T>(const_cast<T*>(data), rows, cols, Eigen::OuterStride<>(row_stride ? row_stride : cols));
}

// Eigen picks its packed, blocked and (outside a parallel region, with OpenMP) threaded kernel.
template <typename T>
void eigen_gemm(const GemmProblem<T>& p) {
  const int64_t a_rows = p.trans_a ? p.k : p.m, a_cols = p.trans_a ? p.m : p.k;
  const int64_t b_rows = p.trans_b ? p.n : p.k, b_cols = p.trans_b ? p.k : p.n;
  const int64_t a_step = a_rows * (p.lda ? p.lda : a_cols), b_step = b_rows * (p.ldb ? p.ldb : b_cols);
  for (int64_t i = 0; i < p.batch; ++i) {
    auto A = view(p.a + (p.a_shared ? 0 : i * a_step), a_rows, a_cols, p.lda);
    auto B = view(p.b + (p.b_shared ? 0 : i * b_step), b_rows, b_cols, p.ldb);
    auto C = view(p.c + i * p.m * (p.ldc ? p.ldc : p.n), p.m, p.n, p.ldc);
    if (p.beta == T(0)) C.setZero();
    else if (p.beta != T(1)) C *= p.beta;
    if (!p.trans_a && !p.trans_b) C.noalias() += p.alpha * A * B;
    else if (p.trans_a && !p.trans_b) C.noalias() += p.alpha * A.transpose() * B;
    else if (!p.trans_a && p.trans_b) C.noalias() += p.alpha * A * B.transpose();
    else C.noalias() += p.alpha * A.transpose() * B.transpose();
    if (p.bias) C.rowwise() += Eigen::Map<const Eigen::Matrix<T, 1, Eigen::Dynamic>>(p.bias, p.n);
    if (p.relu) C = C.cwiseMax(T(0));
    if (p.post_op)
      for (int64_t r = 0; r < p.m; ++r) p.post_op(&C(r, 0), p.n);
  }
}

template <typename T>
GemmProblem<T> tensor_problem(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                              double alpha, double beta) {
  const int64_t batch = c.size(0), m = c.size(1), n = c.size(2);
  const int64_t k = ta ? a.size(1) : a.size(2);
  SONO_CHECK((ta ? a.size(2) : a.size(1)) == m && (tb ? b.size(2) : b.size(1)) == k &&
                 (tb ? b.size(1) : b.size(2)) == n,
             "gemm: shapes do not chain: ", shape_str(a.shape()), (ta ? "^T" : ""), " x ",
             shape_str(b.shape()), (tb ? "^T" : ""), " -> ", shape_str(c.shape()));
  return {a.data<T>(), b.data<T>(), c.data<T>(), nullptr, batch, m, n, k, ta, tb,
          a.size(0) == 1, b.size(0) == 1, static_cast<T>(alpha), static_cast<T>(beta)};
}

// The float32 values an operand of `items` matrices spans (`step` apart, rows x cols with row
// stride ld), rounded to bfloat16: what Eigen's GEMM reads for bf16 products.
std::vector<float> rounded_operand(const float* data, int64_t items, int64_t step, int64_t rows, int64_t cols,
                                   int64_t ld) {
  const int64_t span = (items - 1) * step + (rows - 1) * (ld ? ld : cols) + cols;
  std::vector<float> rounded(static_cast<size_t>(span));
  for (int64_t i = 0; i < span; ++i) rounded[i] = round_to_bf16(data[i]);
  return rounded;
}

// bf16 products without sgemm (CPUs without AVX-512): Eigen's float32 GEMM on copies of the
// operands rounded.
[[maybe_unused]] void eigen_gemm_bf16(GemmProblem<float> p) {
  const int64_t a_rows = p.trans_a ? p.k : p.m, a_cols = p.trans_a ? p.m : p.k;
  const int64_t b_rows = p.trans_b ? p.n : p.k, b_cols = p.trans_b ? p.k : p.n;
  const std::vector<float> a = rounded_operand(p.a, p.a_shared ? 1 : p.batch, a_rows * (p.lda ? p.lda : a_cols),
                                               a_rows, a_cols, p.lda);
  const std::vector<float> b = rounded_operand(p.b, p.b_shared ? 1 : p.batch, b_rows * (p.ldb ? p.ldb : b_cols),
                                               b_rows, b_cols, p.ldb);
  p.a = a.data();
  p.b = b.data();
  eigen_gemm(p);
}

}  // namespace

bool cpu_multiplies_bf16() {
  if constexpr (kHaveSgemm) return cpu_runs(Bf16Math::dot_products) || cpu_runs(Bf16Math::amx);
  return false;
}

template <typename T>
void gemm_rows(const GemmProblem<T>& p) {
  SONO_CHECK(!p.a_columns || (std::is_same_v<T, float> && kHaveSgemm),
             "gemm: implicit convolution columns need sgemm (float32, AVX-512)");
  if constexpr (std::is_same_v<T, float> && kHaveSgemm) sgemm(p);
  else if constexpr (std::is_same_v<T, float>) {
    if (p.bf16_operands && p.batch && p.m && p.n && p.k) eigen_gemm_bf16(p);
    else eigen_gemm(p);
  } else {
    eigen_gemm(p);
  }
}
template void gemm_rows<float>(const GemmProblem<float>&);
template void gemm_rows<double>(const GemmProblem<double>&);

void CpuBackend::gemm(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                      double alpha, double beta, Precision precision) {
  dispatch_float(c.dtype(), [&](auto tag) {
    using T = decltype(tag);
    GemmProblem<T> p = tensor_problem<T>(a, ta, b, tb, c, alpha, beta);
    p.bf16_operands = precision == Precision::bf16;
    gemm_rows(p);
  });
}

void CpuBackend::linear_forward(const Tensor& x, const Tensor& w, const Tensor& bias,
                                const Tensor& y, bool gelu, Precision precision) {
  dispatch_float(y.dtype(), [&](auto tag) {
    using T = decltype(tag);
    GemmProblem<T> p = tensor_problem<T>(x, false, w, true, y, 1.0, 0.0);
    p.bf16_operands = precision == Precision::bf16;
    p.bias = bias.data<T>();
    if (gelu) p.post_op = &gelu_in_place<T>;
    gemm_rows(p);
  });
}

}  // namespace sono::cpu
