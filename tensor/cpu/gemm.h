#pragma once
// The CPU GEMM's operands, and our own float32 GEMM for CPUs with AVX-512 (sgemm.cpp) or AVX2 and
// FMA (sgemm_avx2.cpp): packed, cache-blocked and threaded without barriers. Eigen's threaded
// GEMM (still used for float64 and older CPUs) makes its threads meet at every depth block, has
// no epilogue to add Linear's bias while the result is in registers, and its sums depend on the
// matrices' sizes, so a batch's rows would not be those of one image.
#include <cstdint>
#include <memory>

namespace sono::cpu {

// Row-major operands: A is [m, k] ([k, m] when trans_a), B is [k, n] ([n, k] when trans_b),
// C is [m, n]; each is `batch` matrices back to back, except that a_shared / b_shared mean one
// matrix serves every batch item. lda/ldb/ldc are the stored row strides (0: packed, i.e. the
// stored column count), so a GEMM can read and write column slices of wider matrices.
// op(A) as a convolution's column matrix, read straight from the NHWC input instead of copied
// out by im2col: row r is output pixel r (image r / (oh * ow) from x on), depth step p is channel
// p % channels of kernel tap p / channels (taps row-major), zero where the tap reads padding.
// sgemm reads it 16 depth steps at a time, each inside one tap: channels is a multiple of 16.
struct ImplicitColumns {
  const float* x;  // image 0's pixel (0, 0), at the group's first channel
  int64_t h, w, pixel_stride;  // input height and width, floats from one pixel to the next
  int64_t oh, ow, kw, channels, stride, padding, dilation;
};

// op(B) packed once for every GEMM with the same B, n, k and bf16 math (pack_b): for weights
// that do not change from call to call (a conv's, once its model is fused for inference).
struct PackedB;

template <typename T>
struct GemmProblem {
  const T* a;
  const T* b;
  T* c;
  const T* bias;  // [n] added to every row of C, or nullptr
  int64_t batch, m, n, k;
  bool trans_a, trans_b, a_shared, b_shared;
  T alpha, beta;
  int64_t lda = 0, ldb = 0, ldc = 0;
  // Applied in place to every finished row segment of C (after alpha, beta and the bias) while
  // it is still in cache: Linear's GELU epilogue. Null: none.
  void (*post_op)(T* values, int64_t n) = nullptr;
  // C clamped at 0 after the bias, before post_op: a conv's fused ReLU, which sgemm applies in
  // the tile's registers instead of by a post_op call per row.
  bool relu = false;
  // bf16 products (float32 only): A and B read rounded to bfloat16, float32 accumulation.
  bool bf16_operands = false;
  // sgemm only, batch 1: op(A) read through this instead of a / lda / trans_a.
  const ImplicitColumns* a_columns = nullptr;
  // sgemm only, batch 1: b already packed by pack_b (used where it was packed for this
  // problem's n, k and bf16 math, else b is packed as usual).
  const PackedB* packed_b = nullptr;
};

// kSgemmRowTile: the rows of C sgemm's micro-kernel computes at once (a GEMM of m rows runs
// m rounded up to a multiple of it).
#if defined(__AVX512F__)
inline constexpr bool kHaveSgemm = true;
inline constexpr int64_t kSgemmRowTile = 14;
#elif defined(__AVX2__) && defined(__FMA__)
inline constexpr bool kHaveSgemm = true;
inline constexpr int64_t kSgemmRowTile = 6;
#else
inline constexpr bool kHaveSgemm = false;  // callers take Eigen's path (under `if constexpr`)
inline constexpr int64_t kSgemmRowTile = 1;
#endif

// What sgemm's bf16 products run on, fastest first: AMX tiles (TDPBF16PS, 16 x 16 float32
// tiles; Intel Xeon from Sapphire Rapids on), AVX512-BF16 dot products (VDPBF16PS), or float32
// FMAs of the rounded values (any AVX-512 or AVX2 CPU). All give float32 sums of exact products.
enum class Bf16Math { amx, dot_products, rounded };

// C[i] = alpha * op(A[i]) op(B[i]) + beta * C[i] + bias; C is not read when beta is 0.
// Defined only where kHaveSgemm. bf16 operands multiply on the fastest Bf16Math the CPU has,
// within the limit below.
void sgemm(const GemmProblem<float>& p);
// p's op(B) (batch 1) packed as sgemm's micro-kernels read it, every depth block, with the bf16
// math the CPU runs now.
std::shared_ptr<const PackedB> pack_b(const GemmProblem<float>& p);
// Whether sgemm would use `packed` for p now (the same n, k and bf16 math).
bool packed_b_fits(const PackedB& packed, const GemmProblem<float>& p);
// Whether this CPU (and, for AMX, the kernel, which must grant the tile state) runs `math`.
bool cpu_runs(Bf16Math math);
// Whether this CPU multiplies bfloat16 in hardware (AMX tiles or AVX512-BF16 dot products);
// elsewhere bf16 products are float32 FMAs of rounded operands, slower than float32. Defined
// on every CPU.
bool cpu_multiplies_bf16();
// The fastest Bf16Math sgemm may use (default Bf16Math::amx): tests step it down to run the
// paths of CPUs without AMX or without AVX512-BF16.
void limit_bf16_math(Bf16Math fastest);

// The same for float32 and float64: sgemm where the CPU has it, Eigen's GEMM otherwise. Inside
// an OpenMP parallel region it runs on the calling thread alone.
template <typename T>
void gemm_rows(const GemmProblem<T>& p);

}  // namespace sono::cpu
