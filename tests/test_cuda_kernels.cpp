// The CUDA kernels, compiled by the host compiler and run by the SIMT emulator (cuda/simt) in
// forward, reversed and shuffled thread order, against the CPU backend or plain double-precision
// reference loops, on awkward shapes (odd sizes, rows shorter than a warp, channels not a
// multiple of 32). Also: the emulator's own rules, and a kernel with a missing barrier that the
// harness must catch. Each kernel's tolerance is stated where it is checked; they allow for the
// few-ulp error of CUDA's expf/erff/logf, which the emulator computes exactly.
#include <algorithm>
#include <bit>
#include <cfloat>
#include <iostream>
#include <map>
#include <memory>
#include <random>

#include "cuda/allocator.h"
#include "cuda/kernel_backend.cuh"
#include "test_device.h"
#include "helpers.h"
#include "layers/optim.h"
#include "models/registry.h"
#include "tensor/autocast.h"
#include "tensor/cpu/gemm.h"
#ifdef SONO_HAVE_CUDA
#include "cuda/cuda_backend.h"
#include "cuda/shared_library.h"
#endif

#if defined(__SANITIZE_THREAD__)
// Under ThreadSanitizer the emulator reports the race of block_sum_missing_barrier (below) in
// every schedule; that kernel is broken on purpose.
extern "C" const char* __tsan_default_suppressions() { return "race:block_sum_missing_barrier\n"; }
#endif

namespace sono::test {
namespace {

namespace k = sono::cuda;
using simt::Schedule;


// The largest error seen per kernel, printed by the last test case.
std::map<std::string, double>& error_log() {
  static std::map<std::string, double> log;
  return log;
}

// Checks |got - want| / max(1, |want|) <= tol elementwise and logs the largest.
void expect_close(const std::string& kernel, const std::vector<double>& got,
                  const std::vector<double>& want, double tol) {
  REQUIRE(got.size() == want.size());
  double worst = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double err = std::abs(got[i] - want[i]) / std::max(1.0, std::abs(want[i]));
    worst = std::isnan(err) ? INFINITY : std::max(worst, err);
  }
  INFO(kernel << ": max error " << worst << ", tolerance " << tol);
  CHECK(worst <= tol);
  double& logged = error_log()[kernel];
  logged = std::max(logged, worst);
}

Tensor host(const std::vector<double>& v, const Shape& shape, DType dtype = DType::f32) {
  return Tensor::from_vector(v, shape, dtype);
}

// ---- the emulated CUDA device (cuda/emulated): our kernels over host memory ------------------

Tensor on_device(const Tensor& t) { return t.to(Device::cuda); }
Tensor device_empty(const Shape& shape) { return Tensor::empty(shape, DType::f32, Device::cuda); }
Backend& device() { return backend(Device::cuda); }

// ---- the emulator -----------------------------------------------------------------------------

template <typename T>
__global__ void warp_intrinsics_kernel(T* out) {
  const int lane = threadIdx.x % 32;
  T* o = out + threadIdx.x * 3;
  const T v = static_cast<T>(100 + threadIdx.x);
  o[0] = __shfl_sync(k::kFullMask, v, 5);
  o[1] = __shfl_sync(k::kFullMask, v, lane + 1, 8);
  o[2] = __shfl_xor_sync(k::kFullMask, v, 9, 16);
}

TEST_CASE("simt: warp shuffles follow CUDA's rules") {
  in_each_schedule([] {
    std::vector<double> out(64 * 3);
    k::launch("warp_intrinsics", warp_intrinsics_kernel<double>, {dim3(1), dim3(64)}, out.data());
    for (int t = 0; t < 64; ++t) {
      const int lane = t % 32, warp0 = t - lane;
      auto value = [&](int l) { return 100.0 + warp0 + l; };
      INFO("thread " << t);
      CHECK(out[t * 3 + 0] == value(5));
      CHECK(out[t * 3 + 1] == value((lane & ~7) + ((lane + 1) & 7)));
      // xor 9 within groups of 16 stays inside the group (9 < 16)
      CHECK(out[t * 3 + 2] == value(lane ^ 9));
    }
  });
}

// A block sum (block b sums x[b n, (b + 1) n)) with the barrier between writing and reading
// the warp partials left out.
template <typename T>
__global__ void block_sum_missing_barrier(const T* x, int64_t n, T* out) {
  __shared__ T partial[32];
  T v = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
  v = k::warp_sum(v);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  if (threadIdx.x < 32) {  // here __syncthreads() is missing
    v = threadIdx.x < blockDim.x / 32 ? partial[threadIdx.x] : T(0);
    v = k::warp_sum(v);
    if (threadIdx.x == 0) out[blockIdx.x] = v;
  }
}

// The same sum done right (the library's block_reduce).
template <typename T>
__global__ void block_sum(const T* x, int64_t n, T* out) {
  T v = 0;
  for (int64_t i = threadIdx.x; i < n; i += blockDim.x) v += x[blockIdx.x * n + i];
  v = k::block_reduce(v, T(0), k::SumOp{});
  if (threadIdx.x == 0) out[blockIdx.x] = v;
}

TEST_CASE("simt: a reduction missing a __syncthreads is caught in some schedule") {
  const int64_t n = 1000, blocks = 4;
  std::vector<double> x(n * blocks), sums(blocks, 0.0);
  for (int64_t i = 0; i < n * blocks; ++i) {
    x[i] = static_cast<double>(i % 17) + 1.0;
    sums[i / n] += x[i];
  }
  int wrong_schedules = 0;
  for (Schedule s : kSchedules) {
    simt::set_schedule(s, 7);
    std::vector<double> good(blocks), bad(blocks);
    k::launch("block_sum", block_sum<double>, {dim3(blocks), dim3(256)}, x.data(), n, good.data());
    k::launch("block_sum_missing_barrier", block_sum_missing_barrier<double>,
              {dim3(blocks), dim3(256)}, x.data(), n, bad.data());
    CHECK(good == sums);
    if (bad != sums) ++wrong_schedules;
    std::ostringstream os;
    for (int64_t b = 0; b < blocks; ++b) os << " " << bad[b] << " (right " << sums[b] << ")";
    MESSAGE("missing barrier, " << std::string(simt::schedule_name(s)) << " schedule:" << os.str());
  }
  simt::set_schedule(Schedule::forward);
  CHECK(wrong_schedules >= 1);
}

// Block sums of three rows in a row (one instantiation: one shared array), then block maxima;
// every thread records every result.
template <typename T>
__global__ void block_reduce_each_thread(const T* x, T* out) {
  const int64_t at = threadIdx.x, n = blockDim.x;
  for (int row = 0; row < 3; ++row)
    out[(row * n + at) * 2] = k::block_reduce(x[row * n + at], T(0), k::SumOp{});
  for (int row = 0; row < 3; ++row)
    out[(row * n + at) * 2 + 1] = k::block_reduce(x[row * n + at], T(-1e300), k::MaxOp{});
}

TEST_CASE("simt: block_reduce gives every thread the result, call after call") {
  const int threads = 96;
  const auto x = uniform(3 * threads, 3);
  in_each_schedule([&] {
    std::vector<double> out(3 * threads * 2);
    k::launch("block_reduce_each_thread", block_reduce_each_thread<double>,
              {dim3(1), dim3(threads)}, x.data(), out.data());
    for (int row = 0; row < 3; ++row) {
      const auto first = x.begin() + row * threads, last = first + threads;
      const double total = std::accumulate(first, last, 0.0),
                   largest = *std::max_element(first, last);
      for (int t = 0; t < threads; ++t) {
        CHECK(out[(row * threads + t) * 2] == doctest::Approx(total).epsilon(1e-12));
        CHECK(out[(row * threads + t) * 2 + 1] == largest);
      }
    }
  });
}

template <typename T>
__global__ void divergent_barrier_kernel(T* out) {
  if (threadIdx.x < 40) __syncthreads();
  out[threadIdx.x] = 1;
}

template <typename T>
__global__ void two_barriers_kernel(T* out) {
  if (threadIdx.x % 2)
    __syncthreads();
  else
    __syncthreads();
  out[threadIdx.x] = 1;
}

template <typename T>
__global__ void full_mask_shuffle_kernel(T* out) {
  out[threadIdx.x] = __shfl_xor_sync(k::kFullMask, out[threadIdx.x], 1);
}

// Lanes 32..39 exit; the rest of warp 1 (and the lanes past a 48-thread block) do not hold it
// up, as in CUDA, but reading them gives poison.
template <typename T>
__global__ void exited_lanes_kernel(T* out) {
  if (threadIdx.x >= 32 && threadIdx.x < 40) return;
  out[threadIdx.x] = __shfl_xor_sync(k::kFullMask, static_cast<T>(threadIdx.x), 16);
}

template <typename T>
__global__ void shuffle_against_barrier_kernel(T* out) {
  // Lanes 16-31 are in the mask but go to the barrier instead.
  if (threadIdx.x % 32 < 16) out[threadIdx.x] = __shfl_xor_sync(k::kFullMask, out[threadIdx.x], 1);
  __syncthreads();
}

// The first 32-byte aligned float of a buffer (WMMA's tiles must start there).
inline float* aligned_in(float* buffer) {
  return reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(buffer) + 31) & ~uintptr_t{31});
}

// Launches kernel(buffer) on blocks x threads and expects a simt::Fault saying `words`.
void expect_fault(void (*kernel)(float*), const char* name, unsigned blocks, unsigned threads,
                  const std::string& words) {
  std::vector<float> buffer(4096, 1.0f);
  try {
    k::launch(name, kernel, {dim3(blocks), dim3(threads)}, buffer.data());
    FAIL("no simt::Fault for a kernel that should raise one (" << words << ")");
  } catch (const simt::Fault& f) {
    const std::string message = f.what();
    INFO(message);
    CHECK(message.find(words) != std::string::npos);
  }
}

TEST_CASE("simt: exited and absent lanes do not hold up warp intrinsics, and read as poison") {
  in_each_schedule([] {
    std::vector<float> out(128, -7.0f);
    k::launch("exited_lanes", exited_lanes_kernel<float>, {dim3(1), dim3(48)}, out.data());
    for (int t = 0; t < 32; ++t) CHECK(out[t] == static_cast<float>(t ^ 16));
    for (int t = 32; t < 40; ++t) CHECK(out[t] == -7.0f);     // exited
    for (int t = 40; t < 48; ++t) CHECK(std::isnan(out[t]));  // read lanes 56..63
  });
}

TEST_CASE("simt: misused barriers and bad launches raise a Fault naming the kernel") {
  expect_fault(divergent_barrier_kernel<float>, "divergent", 2, 64,
               "threads exited while others wait at __syncthreads");
  expect_fault(two_barriers_kernel<float>, "two_barriers", 1, 64, "wait at different barriers");
  expect_fault(shuffle_against_barrier_kernel<float>, "half_mask", 1, 64, "deadlock");
  expect_fault(full_mask_shuffle_kernel<float>, "huge_block", 1, 2048, "invalid configuration");
  expect_fault(divergent_barrier_kernel<float>, "kernel_name_here", 1, 64,
               "kernel 'kernel_name_here' block (0,0,0)");
  // After faults, the fibers left mid-kernel are discarded and launches work again.
  std::vector<double> x(600, 1.0), sums(2);
  k::launch("block_sum", block_sum<double>, {dim3(2), dim3(128)}, x.data(), int64_t{300},
            sums.data());
  CHECK(sums[0] == 300.0);
  CHECK(sums[1] == 300.0);
}

// x rounded to the nearest bfloat16 (ties to even) by a route independent of the kernel's bit
// arithmetic: the quantum at 8 significant bits (2^-133 below the normal range), nearbyint.
double bf16_reference(float x) {
  if (!std::isfinite(x) || x == 0) return x;
  int e;
  std::frexp(x, &e);  // |x| = m 2^e, m in [0.5, 1)
  const double quantum = std::ldexp(1.0, std::max(e - 8, -133));
  return static_cast<float>(std::nearbyint(x / quantum) * quantum);  // past the range: inf
}

std::vector<double> bf16_rounded(const std::vector<double>& v) {
  std::vector<double> r(v.size());
  for (size_t i = 0; i < v.size(); ++i) r[i] = bf16_reference(static_cast<float>(v[i]));
  return r;
}

// ---- WMMA (tensor-core tiles) in the emulator ---------------------------------------------------

namespace wmma = k::wmma;
constexpr int kTile = k::kWmmaTile;

// One 16x16x16 product per warp: warp w reads tile w of a, b and c (each tile ld rows or
// columns apart, tiles `stride` elements apart) and stores d = a b + c as tile w of d.
template <typename LayoutA, typename LayoutB>
__global__ void wmma_tile_kernel(const k::bfloat16* a, const k::bfloat16* b, unsigned ld16,
                                 const float* c, wmma::layout_t c_layout, float* d,
                                 wmma::layout_t d_layout, unsigned ld32, int64_t stride16,
                                 int64_t stride32) {
  const int warp = threadIdx.x / 32;
  wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, k::WmmaBf16, LayoutA> fa;
  wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, k::WmmaBf16, LayoutB> fb;
  wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> fc;
  wmma::load_matrix_sync(fa, k::as_wmma(a + warp * stride16), ld16);
  wmma::load_matrix_sync(fb, k::as_wmma(b + warp * stride16), ld16);
  wmma::load_matrix_sync(fc, c + warp * stride32, ld32, c_layout);
  wmma::mma_sync(fc, fa, fb, fc);
  wmma::store_matrix_sync(d + warp * stride32, fc, ld32, d_layout);
}

// A 32-byte aligned pointer into v (sized with 32 bytes to spare), as WMMA wants its tiles.
template <typename T>
T* aligned32(std::vector<T>& v) {
  void* p = v.data();
  size_t space = v.size() * sizeof(T);
  return static_cast<T*>(std::align(32, sizeof(T), p, space));
}

k::bfloat16 to_bf16(double x) {
  const float f = static_cast<float>(bf16_reference(static_cast<float>(x)));
  return {static_cast<uint16_t>(std::bit_cast<uint32_t>(f) >> 16)};
}

// Element (row, col) of a tile stored row- or column-major with leading dimension ld.
size_t at(int row, int col, unsigned ld, bool row_major) {
  return row_major ? size_t(row) * ld + col : size_t(col) * ld + row;
}

// mma_sync multiplies bf16 values, whose products are exact in float, and sums them in float:
// against the exact sum in double it may differ by the float additions' roundings alone, at
// most gamma_16 = 16 u / (1 - 16 u) (u = 2^-24) times c + sum |a b| per element (16 additions).
// Both operand layouts, both accumulator layouts, padded leading dimensions, two warps.
TEST_CASE("simt: WMMA mma_sync of bf16 tiles is a float triple loop within summation order") {
  constexpr int warps = 2;
  constexpr unsigned ld16 = 24, ld32 = 20;  // padded: 48 and 80 bytes, multiples of 16
  constexpr int64_t stride16 = kTile * ld16, stride32 = kTile * ld32;
  const double gamma16 = 16 * std::ldexp(1.0, -24) / (1 - 16 * std::ldexp(1.0, -24));
  const auto as = uniform(warps * stride16, 91), bs = uniform(warps * stride16, 92),
             cs = uniform(warps * stride32, 93, -8.0, 8.0);
  std::vector<k::bfloat16> a_buf(warps * stride16 + 16), b_buf(warps * stride16 + 16);
  std::vector<float> c_buf(warps * stride32 + 8), d_buf(warps * stride32 + 8);
  k::bfloat16 *a = aligned32(a_buf), *b = aligned32(b_buf);
  float *c = aligned32(c_buf), *d = aligned32(d_buf);
  for (int64_t i = 0; i < warps * stride16; ++i) {
    a[i] = to_bf16(as[i]);
    b[i] = to_bf16(bs[i]);
  }
  for (int64_t i = 0; i < warps * stride32; ++i) c[i] = static_cast<float>(cs[i]);
  const auto value = [](k::bfloat16 x) { return double(std::bit_cast<float>(uint32_t(x.bits) << 16)); };
  const auto run = [&](bool a_row, bool b_row, wmma::layout_t c_layout, wmma::layout_t d_layout) {
    std::fill(d, d + warps * stride32, -1234.5f);  // unwritten padding keeps this
    const k::LaunchConfig cfg{dim3(1), dim3(32 * warps)};
    using R = wmma::row_major;
    using C = wmma::col_major;
    const auto args = std::make_tuple(a, b, ld16, c, c_layout, d, d_layout, ld32, stride16, stride32);
    const auto go = [&](auto kernel) { std::apply([&](auto... p) { k::launch("wmma_tile", kernel, cfg, p...); }, args); };
    if (a_row && b_row) go(wmma_tile_kernel<R, R>);
    if (a_row && !b_row) go(wmma_tile_kernel<R, C>);
    if (!a_row && b_row) go(wmma_tile_kernel<C, R>);
    if (!a_row && !b_row) go(wmma_tile_kernel<C, C>);
    double worst_ratio = 0;
    int64_t padding_changed = 0;
    for (int w = 0; w < warps; ++w) {
      const k::bfloat16 *aw = a + w * stride16, *bw = b + w * stride16;
      const float *cw = c + w * stride32, *dw = d + w * stride32;
      for (int i = 0; i < kTile; ++i)
        for (int j = 0; j < kTile; ++j) {
          const double cij = cw[at(i, j, ld32, c_layout == wmma::mem_row_major)];
          double sum = cij, magnitude = std::abs(cij);
          for (int kk = 0; kk < kTile; ++kk) {
            const double p = value(aw[at(i, kk, ld16, a_row)]) * value(bw[at(kk, j, ld16, b_row)]);
            sum += p;
            magnitude += std::abs(p);
          }
          const double got = dw[at(i, j, ld32, d_layout == wmma::mem_row_major)];
          worst_ratio = std::max(worst_ratio, std::abs(got - sum) / (gamma16 * magnitude));
        }
      for (int r = 0; r < kTile; ++r)
        for (unsigned col = kTile; col < ld32; ++col) padding_changed += dw[r * ld32 + col] != -1234.5f;
    }
    INFO("a " << (a_row ? "row" : "col") << "-major, b " << (b_row ? "row" : "col") << "-major, c "
              << c_layout << ", d " << d_layout);
    CHECK(worst_ratio <= 1.0);
    CHECK(padding_changed == 0);
  };
  in_each_schedule([&] {
    for (bool a_row : {true, false})
      for (bool b_row : {true, false})
        for (auto c_layout : {wmma::mem_row_major, wmma::mem_col_major})
          for (auto d_layout : {wmma::mem_row_major, wmma::mem_col_major})
            run(a_row, b_row, c_layout, d_layout);
  });
}

// Half of a warp at mma_sync, the other half at store_matrix_sync: never completes on a device.
template <typename T>
__global__ void divergent_mma_kernel(T* buffer) {
  float* tile = aligned_in(buffer);
  wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc;
  wmma::fill_fragment(acc, 1.0f);
  if (threadIdx.x % 32 < 16) {
    wmma::fragment<wmma::matrix_a, kTile, kTile, kTile, k::WmmaBf16, wmma::row_major> a{};
    wmma::fragment<wmma::matrix_b, kTile, kTile, kTile, k::WmmaBf16, wmma::row_major> b{};
    wmma::mma_sync(acc, a, b, acc);
  }
  wmma::store_matrix_sync(tile, acc, kTile, wmma::mem_row_major);
}
// A tile 4 bytes past a 32-byte boundary.
template <typename T>
__global__ void misaligned_wmma_kernel(T* buffer) {
  wmma::fragment<wmma::accumulator, kTile, kTile, kTile, float> acc;
  wmma::load_matrix_sync(acc, aligned_in(buffer) + 1, kTile, wmma::mem_row_major);
}

TEST_CASE("simt: WMMA calls are warp-collective and check alignment as the device does") {
  expect_fault(divergent_mma_kernel<float>, "divergent_mma", 1, 32, "deadlock");
  expect_fault(misaligned_wmma_kernel<float>, "misaligned_wmma", 1, 32, "256-bit aligned");
}

// ---- elementwise ------------------------------------------------------------------------------

TEST_CASE("elementwise kernels match the CPU backend (unary, broadcast binary, copy, fill)") {
  TestDevice dev;
  const std::vector<double> xs = uniform(1037, 1, -3.0, 3.0), pos = uniform(1037, 2, 0.05, 4.0);
  const Tensor x = host(xs, {1037}), xp = host(pos, {1037});
  struct Case {
    const char* name;
    UnaryOp op;
    double alpha;
    bool positive;
  };
  const Case cases[] = {{"neg", UnaryOp::neg, 0, false},
                        {"exp", UnaryOp::exp, 0, false},
                        {"log", UnaryOp::log, 0, true},
                        {"sqrt", UnaryOp::sqrt, 0, true},
                        {"abs", UnaryOp::abs, 0, false},
                        {"sign", UnaryOp::sign, 0, false},
                        {"relu", UnaryOp::relu, 0, false},
                        {"gelu", UnaryOp::gelu, 0, false},
                        {"sigmoid", UnaryOp::sigmoid, 0, false},
                        {"tanh", UnaryOp::tanh, 0, false},
                        {"softplus", UnaryOp::softplus, 0, false},
                        {"add_scalar", UnaryOp::add_scalar, 0.25, false},
                        {"mul_scalar", UnaryOp::mul_scalar, -1.5, false},
                        {"pow_scalar", UnaryOp::pow_scalar, 1.7, true},
                        {"gt_scalar", UnaryOp::gt_scalar, 0.1, false}};
  in_each_schedule([&] {
    for (const Case& c : cases) {
      INFO("unary " << std::string(c.name));
      const Tensor& in = c.positive ? xp : x;
      Tensor want = Tensor::empty({1037}), got = device_empty({1037});
      backend(Device::cpu).unary(c.op, in, want, c.alpha);
      device().unary(c.op, on_device(in), got, c.alpha);
      expect_close(std::string("unary ") + c.name, got.to_vector(), want.to_vector(), 1e-6);
    }
    // Broadcasting both ways, through the op layer: [5,1,7] * [1,3,7] and [5,3,7] / [7].
    const Tensor a = host(uniform(35, 3), {5, 1, 7}), b = host(uniform(21, 4, 0.5, 2.0), {1, 3, 7});
    const Tensor c = host(uniform(105, 5), {5, 3, 7}), d = host(uniform(7, 6, 0.5, 2.0), {7});
    expect_close("binary (broadcast)", (on_device(a) * on_device(b)).to_vector(),
                 (a * b).to_vector(), 0);
    expect_close("binary (broadcast)", (on_device(c) / on_device(d)).to_vector(),
                 (c / d).to_vector(), 0);
    expect_close("binary (broadcast)", (on_device(a) - on_device(c)).to_vector(),
                 (a - c).to_vector(), 0);
    // Strided copies with conversion: a transposed view to float64, int64 to float32.
    const Tensor m = on_device(host(uniform(6 * 35, 7), {6, 35}));
    Tensor mt = Tensor::empty({35, 6}, DType::f64, Device::cuda);
    device().copy(m.transpose(0, 1), mt);
    expect_close("copy (strided, f32->f64)", mt.to_vector(),
                 m.transpose(0, 1).contiguous().to_vector(), 0);
    const Tensor labels = on_device(Tensor::from_labels({3, -1, 7, 0, 5}));
    Tensor lf = device_empty({5});
    device().copy(labels, lf);
    expect_close("copy (i64->f32)", lf.to_vector(), {3, -1, 7, 0, 5}, 0);
    // Fill a strided column slice; the rest stays.
    Tensor z = on_device(Tensor::zeros({4, 9}));
    device().fill(z.slice(1, 2, 5), 2.5);
    std::vector<double> want(36, 0.0);
    for (int r = 0; r < 4; ++r)
      for (int col = 2; col < 5; ++col) want[r * 9 + col] = 2.5;
    expect_close("fill (strided)", z.to_vector(), want, 0);
  });
}

// The fused GELU kernels against the CPU backend's: rows shorter than a warp and not a
// multiple of it (7, 45 columns), and plain GELU (no bias) over 1037 values. The op-level
// gradients also run the bias-gradient column sum. Tolerance 2e-6 (seen 5.5e-7): CUDA's erff
// and expf are off by a few ulp, the CPU's vectorised float32 erf by up to 1e-6 of GELU's scale.
TEST_CASE("fused bias + GELU and GELU backward match the CPU backend") {
  TestDevice dev;
  const Shape shapes[] = {{3, 5, 7}, {13, 45}, {1037}};
  in_each_schedule([&] {
    for (const Shape& shape : shapes) {
      INFO("shape " << shape_str(shape));
      const int64_t n = shape_numel(shape), cols = shape.back();
      const Tensor x = host(uniform(n, 8, -4.0, 4.0), shape), bias = host(uniform(cols, 9), {cols}),
                   gy = host(uniform(n, 10), shape);
      Tensor want = Tensor::empty(shape), got = device_empty(shape);
      backend(Device::cpu).bias_gelu_forward(x, bias, want);
      device().bias_gelu_forward(on_device(x), on_device(bias), got);
      expect_close("bias_gelu_forward", got.to_vector(), want.to_vector(), 2e-6);
      for (const Tensor& b : {bias, Tensor()}) {
        backend(Device::cpu).gelu_backward(x, b, gy, want);
        device().gelu_backward(on_device(x), b.defined() ? on_device(b) : b, on_device(gy), got);
        expect_close(b.defined() ? "gelu_backward (bias)" : "gelu_backward", got.to_vector(),
                     want.to_vector(), 2e-6);
      }
      Tensor xd = on_device(x).requires_grad_(), bd = on_device(bias).requires_grad_();
      Tensor xc = x.detach().requires_grad_(), bc = bias.detach().requires_grad_();
      autograd::run_backward(bias_gelu(xd, bd), on_device(gy));
      autograd::run_backward(bias_gelu(xc, bc), gy);
      expect_close("bias_gelu op: bias gradient", bd.grad().to_vector(), bc.grad().to_vector(),
                   2e-6);
    }
  });
}

// ---- reductions -------------------------------------------------------------------------------

// Shapes for each kernel of plan_reduce, with one chunk and with several (the first stage's
// partials folded by a second pass): a coalesced column sum over more rows than 64-row chunks
// (columns), a row sum and a sum to a scalar over more than 2 x 4096 elements (blocks), many
// outputs of a few elements (threads); odd sizes, one row, one column, channels not a multiple
// of 4 or 32, a transposed input.
TEST_CASE("reduce kernels match the CPU backend on each launch plan, one chunk or several") {
  TestDevice dev;
  const Tensor x = host(uniform(3 * 5 * 7 * 37, 11), {3, 5, 7, 37});
  const Tensor wide = host(uniform(40 * 600, 12), {40, 600});  // 600 outputs, coalesced
  const Tensor narrow = host(uniform(100 * 5, 13), {100, 5});  // 5 to a row: per-thread
  const Tensor tall = host(uniform(1031 * 37, 14), {1031, 37});  // columns in 16 chunks
  const Tensor one_column = host(uniform(1031, 15), {1031, 1});
  const Tensor one_row = host(uniform(37, 16), {1, 37});
  const Tensor long_rows = host(uniform(3 * 9001, 17), {3, 9001});  // blocks in 4 chunks
  const Tensor very_tall = host(uniform(9000 * 40, 18), {9000, 40});  // 70 chunks: the wide fold
  struct Case {
    const Tensor* t;
    std::vector<int64_t> dims;
  };
  const Case cases[] = {{&x, {3}},          {&x, {0, 1, 2}},      {&x, {1, 2}},
                        {&x, {0}},          {&x, {0, 3}},         {&wide, {0}},
                        {&narrow, {1}},     {&narrow, {0}},       {&tall, {0}},
                        {&tall, {1}},       {&one_column, {0}},   {&one_row, {0}},
                        {&one_row, {1}},    {&long_rows, {1}},    {&long_rows, {0, 1}},
                        {&very_tall, {0}}};
  std::vector<std::vector<double>> first_run;
  bool first_schedule = true;
  in_each_schedule([&] {
    std::vector<std::vector<double>> run;
    for (const Case& c : cases) {
      INFO("dims " << shape_str(c.dims) << " of " << shape_str(c.t->shape()));
      const Tensor d = on_device(*c.t);
      run.push_back(sum(d, c.dims, true).to_vector());
      expect_close("reduce sum", run.back(), sum(*c.t, c.dims, true).to_vector(), 1e-6);
      run.push_back(amax(d, c.dims, true).to_vector());
      expect_close("reduce max", run.back(), amax(*c.t, c.dims, true).to_vector(), 0);
    }
    run.push_back({sum(on_device(tall)).item()});
    expect_close("reduce sum", run.back(), {sum(tall).item()}, 1e-6);
    // A transposed (strided) input straight to the backends.
    const Tensor m = host(uniform(6 * 35, 15), {6, 35});
    Tensor want = Tensor::empty({35, 1}), got = device_empty({35, 1});
    backend(Device::cpu).reduce(ReduceOp::sum, m.transpose(0, 1), want);
    device().reduce(ReduceOp::sum, on_device(m).transpose(0, 1), got);
    expect_close("reduce sum", got.to_vector(), want.to_vector(), 1e-6);
    // Deterministic: every schedule gives the same bits.
    if (first_schedule) first_run = run;
    CHECK(run == first_run);
    first_schedule = false;
  });
}

// The plans these tests run are the ones described: each kernel, one chunk and several.
TEST_CASE("reduce plans: the kernels and chunk counts the reduce test runs") {
  const auto plan = [](const Shape& shape, const Shape& out) {
    return k::plan_reduce(k::make_reduce_space(shape, contiguous_strides(shape), out));
  };
  using K = k::ReduceKernel;
  const k::ReducePlan tall_columns = plan({1031, 37}, {1, 37});
  CHECK(tall_columns.kernel == K::columns);
  CHECK(tall_columns.chunks == 16);
  CHECK(tall_columns.workspace() == 16 * 37);
  CHECK(plan({40, 600}, {1, 600}).kernel == K::columns);
  CHECK(plan({40, 600}, {1, 600}).chunks == 1);
  const k::ReducePlan long_rows = plan({3, 9001}, {3, 1});
  CHECK(long_rows.kernel == K::blocks);
  CHECK(long_rows.chunks == 4);
  CHECK(plan({3, 9001}, {1, 1}).chunks == 13);
  CHECK(plan({1031, 1}, {1, 1}).kernel == K::blocks);
  CHECK(plan({100, 5}, {100, 1}).kernel == K::threads);
  CHECK(plan({1, 37}, {1, 1}).kernel == K::blocks);
  CHECK(plan({1, 37}, {1, 37}).kernel == K::threads);
  CHECK(plan({9000, 40}, {1, 40}).kernel == K::columns);
  CHECK(plan({9000, 40}, {1, 40}).chunks >= 2 * k::kWideFoldRows);
}

// Every reduce shape of a ConvNeXt-Base 224 bs16 or MiT-B2 256 bs8 training step, and the
// extremes around them, gets a launch that fills an H200 (132 SMs x 256 threads at least,
// wherever more than 8 MB is read) with no thread folding more than a few thousand elements.
TEST_CASE("reduce plans fill the GPU: enough threads, bounded per-thread loops") {
  struct Case {
    Shape shape, out;
  };
  const Case cases[] = {
      {{802816, 128}, {1, 128}},          // column sums over 800k rows
      {{16, 56, 56, 512}, {1, 1, 1, 512}},  // ConvNeXt stage 1 MLP bias gradient
      {{16, 56, 56, 128}, {1, 1, 1, 128}},  // and its layer scale
      {{16, 7, 7, 4096}, {1, 1, 1, 4096}},  // stage 4 MLP
      {{8, 64, 64, 64}, {1, 1, 1, 64}},     // MiT-B2 stage 1
      {{8, 64, 64, 3}, {1, 1, 1, 3}},       // few outputs, a huge count
      {{8, 3, 256, 256}, {1, 3, 1, 1}},     // the same, channels first (not coalesced)
      {{16, 3, 224, 224}, {1, 1, 1, 1}},    // to a scalar
      {{802816, 128}, {802816, 1}},         // last-dim row sums
      {{2, 5, 4096, 4096}, {2, 5, 4096, 1}},  // attention-sized rows
      {{10, 1 << 20}, {10, 1}},             // few long rows
      {{1 << 22, 5}, {1 << 22, 1}},         // many outputs, a tiny count
      {{1 << 20, 3}, {1, 3}},               // three columns of a million
  };
  for (const Case& c : cases) {
    const k::ReduceSpace s = k::make_reduce_space(c.shape, contiguous_strides(c.shape), c.out);
    const k::ReducePlan p = k::plan_reduce(s);
    INFO("sum of " << shape_str(c.shape) << " to " << shape_str(c.out) << ": grid "
                   << p.grid.x << "x" << p.grid.y << ", block " << p.block.x << "x" << p.block.y
                   << ", " << p.chunks << " chunks, longest loop " << p.thread_loop);
    if (s.outputs * s.count * 4 > (8 << 20)) CHECK(p.threads() >= 132 * 256);
    CHECK(p.thread_loop <= 4096);
    CHECK(p.chunks * p.chunk >= s.count);
    CHECK((p.chunks - 1) * p.chunk < s.count);
  }
  // The first stages of the parameter gradients split their rows by the same rule.
  const int64_t rows = 16 * 56 * 56, cols = 128;
  const int64_t ln_chunks = k::layer_norm_param_chunks(rows, cols);
  CHECK(ln_chunks * k::ceil_div(cols, k::kWarp) * k::kWarp * k::kTileRows >= 132 * 256);
  CHECK(k::ceil_div(rows, ln_chunks * k::kTileRows) <= 4096);
  CHECK(k::layer_norm_param_chunks(1000, 37) == 15);  // as the layer norm test runs
  CHECK(k::depthwise_weight_chunks({2, 17, 16, 12, 7, 7, 17, 16, 1, 3, 1}) == 8);  // and depthwise
  CHECK(k::depthwise_weight_chunks({2, 15, 10, 13, 3, 3, 15, 10, 1, 1, 1}) == 4);
  const k::DepthwiseGeometry convnext_stage1{16, 56, 56, 128, 7, 7, 56, 56, 1, 3, 1};
  const int64_t dw_chunks = k::depthwise_weight_chunks(convnext_stage1);
  CHECK(k::depthwise_weight_block_taps(convnext_stage1) == 7);  // a block sums a row of taps
  CHECK(dw_chunks * 4 * 7 * k::kWarp * k::kTileRows >= 132 * 256);
  CHECK(k::ceil_div(rows, dw_chunks * k::kTileRows) * 49 <= 4096);
}

// ---- index arithmetic -------------------------------------------------------------------------

TEST_CASE("divide takes 32 bits where both operands fit and 64 where either does not") {
  const int64_t big = int64_t{1} << 32;
  for (int64_t a : {int64_t{0}, int64_t{1}, int64_t{7}, big - 1, big, big + 5, int64_t{3} << 40})
    for (int64_t b : {int64_t{1}, int64_t{3}, int64_t{128}, big - 1, big, big + 3}) {
      CAPTURE(a);
      CAPTURE(b);
      const k::QuotientRemainder got = k::divide(a, b);
      CHECK(got.quotient == a / b);
      CHECK(got.remainder == a % b);
    }
  // NHWC coordinates by successive division, below and above 2^32 elements.
  for (int64_t i : {int64_t{0}, int64_t{123456}, big + 777, (int64_t{5} << 33) + 12345}) {
    const int64_t h = 56, w = 57, c = 128;
    const k::Nhwc at = k::nhwc_index(i, h, w, c);
    CHECK(((at.n * h + at.y) * w + at.x) * c + at.c == i);
    CHECK((at.y < h && at.x < w && at.c < c));
  }
}

// ---- softmax ----------------------------------------------------------------------------------

TEST_CASE("softmax and log-softmax (warp per row, online max/sum) forward and backward") {
  TestDevice dev;
  const int64_t shapes[][2] = {{1, 1}, {7, 5}, {37, 31}, {5, 32}, {9, 33}, {3, 100}, {2, 1000}};
  in_each_schedule([&] {
    for (auto [rows, cols] : shapes) {
      INFO("rows " << rows << ", cols " << cols);
      auto xs = uniform(rows * cols, 14 + cols, -6.0, 6.0);
      xs[0] += 3000.0;  // one huge logit: the online max must keep exp() in range
      const auto gs = uniform(rows * cols, 15 + cols);
      for (bool log : {false, true}) {
        std::vector<double> want_y(xs.size()), want_g(xs.size());
        for (int64_t r = 0; r < rows; ++r) {
          const double* xr = &xs[r * cols];
          const double m = *std::max_element(xr, xr + cols);
          double s = 0;
          for (int64_t c = 0; c < cols; ++c) s += std::exp(xr[c] - m);
          double dot = 0;
          for (int64_t c = 0; c < cols; ++c) {
            const double p = std::exp(xr[c] - m) / s;
            want_y[r * cols + c] = log ? xr[c] - m - std::log(s) : p;
            dot += log ? gs[r * cols + c] : gs[r * cols + c] * p;
          }
          for (int64_t c = 0; c < cols; ++c) {
            const double p = std::exp(xr[c] - m) / s, g = gs[r * cols + c];
            want_g[r * cols + c] = log ? g - p * dot : p * (g - dot);
          }
        }
        const Tensor x = on_device(host(xs, {rows, cols}));
        Tensor y = device_empty({rows, cols}), gx = device_empty({rows, cols});
        device().softmax_forward(x, y, log);
        device().softmax_backward(y, on_device(host(gs, {rows, cols})), gx, log);
        const char* name = log ? "log_softmax" : "softmax";
        expect_close(std::string(name) + " forward", y.to_vector(), want_y, 2e-6);
        expect_close(std::string(name) + " backward", gx.to_vector(), want_g, 2e-6);
      }
    }
  });
}

// ---- layer norm -------------------------------------------------------------------------------

struct LayerNormReference {
  std::vector<double> y, mean, rstd, grad_x, grad_w, grad_b;
};

LayerNormReference layer_norm_reference(const std::vector<double>& x, const std::vector<double>& w,
                                        const std::vector<double>& b, const std::vector<double>& gy,
                                        int64_t rows, int64_t cols, double eps) {
  LayerNormReference r{std::vector<double>(x.size()),  std::vector<double>(rows),
                       std::vector<double>(rows),      std::vector<double>(x.size()),
                       std::vector<double>(cols, 0.0), std::vector<double>(cols, 0.0)};
  for (int64_t i = 0; i < rows; ++i) {
    const double* xr = &x[i * cols];
    double mu = 0, var = 0;
    for (int64_t c = 0; c < cols; ++c) mu += xr[c] / cols;
    for (int64_t c = 0; c < cols; ++c) var += (xr[c] - mu) * (xr[c] - mu) / cols;
    const double rs = 1.0 / std::sqrt(var + eps);
    r.mean[i] = mu;
    r.rstd[i] = rs;
    double mean_g = 0, mean_gx = 0;
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (xr[c] - mu) * rs, g = gy[i * cols + c] * (w.empty() ? 1.0 : w[c]);
      r.y[i * cols + c] = xhat * (w.empty() ? 1.0 : w[c]) + (b.empty() ? 0.0 : b[c]);
      mean_g += g / cols;
      mean_gx += g * xhat / cols;
      r.grad_w[c] += gy[i * cols + c] * xhat;
      r.grad_b[c] += gy[i * cols + c];
    }
    for (int64_t c = 0; c < cols; ++c) {
      const double xhat = (xr[c] - mu) * rs, g = gy[i * cols + c] * (w.empty() ? 1.0 : w[c]);
      r.grad_x[i * cols + c] = rs * (g - mean_g - xhat * mean_gx);
    }
  }
  return r;
}

TEST_CASE("layer norm (a warp or a block per row) forward and backward with weight and bias gradients") {
  TestDevice dev;
  // 1000 rows: weight and bias gradients in 15 chunks. Under kFillBlocks rows the input gradient
  // takes a block per row, from 1100 a warp per row.
  const int64_t shapes[][2] = {{1, 5}, {3, 32}, {67, 37}, {150, 100}, {6, 300}, {1000, 37},
                               {1100, 45}};
  const double eps = 1e-6;
  in_each_schedule([&] {
    for (auto [rows, cols] : shapes) {
      for (bool affine : {true, false}) {
        INFO("rows " << rows << ", cols " << cols << (affine ? ", affine" : ", no weight/bias"));
        auto xs = uniform(rows * cols, 20 + cols, -3.0, 5.0);
        const auto gys = uniform(rows * cols, 21 + cols);
        const auto ws = affine ? uniform(cols, 22) : std::vector<double>{};
        const auto bs = affine ? uniform(cols, 23) : std::vector<double>{};
        const auto ref = layer_norm_reference(xs, ws, bs, gys, rows, cols, eps);
        const Tensor x = on_device(host(xs, {rows, cols}));
        const Tensor w = affine ? on_device(host(ws, {cols})) : Tensor();
        const Tensor b = affine ? on_device(host(bs, {cols})) : Tensor();
        Tensor y = device_empty({rows, cols}), mean = device_empty({rows}),
               rstd = device_empty({rows});
        device().layer_norm_forward(x, w, b, eps, y, mean, rstd);
        Tensor gx = device_empty({rows, cols});
        Tensor gw = affine ? device_empty({cols}) : Tensor(),
               gb = affine ? device_empty({cols}) : Tensor();
        device().layer_norm_backward(x, w, mean, rstd, on_device(host(gys, {rows, cols})), gx, gw,
                                     gb);
        expect_close("layer_norm forward", y.to_vector(), ref.y, 1e-5);
        expect_close("layer_norm forward", mean.to_vector(), ref.mean, 1e-6);
        expect_close("layer_norm forward", rstd.to_vector(), ref.rstd, 1e-5);
        expect_close("layer_norm backward input", gx.to_vector(), ref.grad_x, 1e-5);
        if (affine) {
          // Sums over up to 150 rows: scale the tolerance by the row count.
          expect_close("layer_norm backward weight", gw.to_vector(), ref.grad_w, 1e-6 * rows);
          expect_close("layer_norm backward bias", gb.to_vector(), ref.grad_b, 1e-6 * rows);
        }
      }
    }
  });
}

// Checks that the bfloat16 tensor `got` holds exactly the float32 values `want` rounded to
// nearest even: a result computed in float32 and rounded once, on the store.
void expect_bf16_rounding(const std::string& kernel, const Tensor& got, const Tensor& want) {
  REQUIRE(got.dtype() == DType::bf16);
  REQUIRE(want.dtype() == DType::f32);
  const std::vector<double> g = got.to_vector(), w = want.to_vector();
  REQUIRE(g.size() == w.size());
  int64_t differ = 0;
  for (size_t i = 0; i < g.size(); ++i) differ += g[i] != bf16_reference(static_cast<float>(w[i]));
  INFO(kernel << ": " << differ << " of " << g.size() << " values are not float32 rounded once");
  CHECK(differ == 0);
}

// ---- batch norm ---------------------------------------------------------------------------------

// The fused BatchNorm (training: batch statistics) against the CPU's composed op in float64:
// output, running statistics, and the input, weight and bias gradients, with and without the
// affine parameters. Channels not a multiple of a warp (3, 37), rows not a multiple of the
// tile (5 x 7 x 3 = 105), and more rows than 64 chunks of 256 (2 x 70 x 131 = 18,340). float32
// sums over up to 18k values: tolerance 1e-5 relative to max(1, |value|), 1e-4 for the gradients
// of the parameters (sums of the same length). A bfloat16 input (autocast's) gives the float32
// result rounded once.
TEST_CASE("batch norm (fused, channels last) forward, running stats and gradients") {
  TestDevice dev;
  const Shape shapes[] = {{5, 7, 3, 37}, {2, 70, 131, 3}, {4, 1, 1, 40}};
  in_each_schedule([&] {
    for (const Shape& shape : shapes) {
      for (bool affine : {true, false}) {
        INFO("shape " << shape_str(shape) << (affine ? ", affine" : ", no weight or bias"));
        const int64_t c = shape.back(), n = shape_numel(shape);
        const Tensor x = host(uniform(n, 97, -3.0, 5.0), shape), gy = host(uniform(n, 98), shape);
        const Tensor w = affine ? host(uniform(c, 99), {c}) : Tensor(),
                     b = affine ? host(uniform(c, 100), {c}) : Tensor(),
                     rm = host(uniform(c, 101), {c}), rv = host(uniform(c, 102, 0.5, 2.0), {c});
        // Each side: y, then x's, w's and b's gradients, then the running stats.
        auto run = [&](Device device, DType dtype) {
          const auto leaf = [&](const Tensor& t) {
            return t.defined() ? t.to(dtype).to(device).requires_grad_() : t;
          };
          std::vector<Tensor> in{leaf(x), leaf(w), leaf(b)};
          Tensor mean = rm.to(dtype).to(device), var = rv.to(dtype).to(device);
          const Tensor y = batch_norm(in[0], in[1], in[2], mean, var, true, 0.1, 1e-5);
          sum(mul(y, gy.to(dtype).to(device))).backward();
          std::vector<std::vector<double>> out{y.to_vector()};
          for (const Tensor& t : in) out.push_back(t.defined() ? t.grad().to_vector() : std::vector<double>{});
          out.push_back(mean.to_vector());
          out.push_back(var.to_vector());
          return out;
        };
        const auto want = run(Device::cpu, DType::f64), got = run(Device::cuda, DType::f32);
        const char* what[] = {"batch_norm forward", "batch_norm backward input",
                              "batch_norm backward weight", "batch_norm backward bias",
                              "batch_norm running mean", "batch_norm running var"};
        const double tol[] = {1e-5, 1e-5, 1e-4, 1e-4, 1e-6, 1e-6};
        for (int i = 0; i < 6; ++i) expect_close(what[i], got[i], want[i], tol[i]);

        const Tensor x16 = on_device(x).to(DType::bf16), wd = affine ? on_device(w) : w,
                     bd = affine ? on_device(b) : b;
        Tensor y16 = Tensor::empty(shape, DType::bf16, Device::cuda), y32 = device_empty(shape);
        const auto stats = [&] { return device_empty({c}); };
        REQUIRE(device().supports(BackendOp::batch_norm_forward, {&x16}));
        device().batch_norm_forward(x16, wd, bd, 1e-5, y16, stats(), stats(), stats());
        device().batch_norm_forward(x16, wd, bd, 1e-5, y32, stats(), stats(), stats());
        expect_bf16_rounding("batch_norm to bf16", y16, y32);
      }
    }
  });
}

// ---- depthwise convolution ----------------------------------------------------------------------

struct ConvReference {
  std::vector<double> y, grad_x, grad_w;
};

ConvReference depthwise_reference(const k::DepthwiseGeometry& g, const std::vector<double>& x,
                                  const std::vector<double>& w, const std::vector<double>& gy) {
  ConvReference r{std::vector<double>(g.n * g.oh * g.ow * g.c, 0.0),
                  std::vector<double>(x.size(), 0.0), std::vector<double>(w.size(), 0.0)};
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t oy = 0; oy < g.oh; ++oy)
      for (int64_t ox = 0; ox < g.ow; ++ox)
        for (int64_t ky = 0; ky < g.kh; ++ky)
          for (int64_t kx = 0; kx < g.kw; ++kx) {
            const int64_t iy = oy * g.stride - g.padding + ky * g.dilation;
            const int64_t ix = ox * g.stride - g.padding + kx * g.dilation;
            if (iy < 0 || iy >= g.h || ix < 0 || ix >= g.w) continue;
            for (int64_t c = 0; c < g.c; ++c) {
              const int64_t o = ((n * g.oh + oy) * g.ow + ox) * g.c + c;
              const int64_t i = ((n * g.h + iy) * g.w + ix) * g.c + c;
              const int64_t t = (c * g.kh + ky) * g.kw + kx;
              r.y[o] += x[i] * w[t];
              r.grad_x[i] += gy[o] * w[t];
              r.grad_w[t] += gy[o] * x[i];
            }
          }
  return r;
}

TEST_CASE("depthwise conv NHWC (3x3, 7x7, dilated, strided, generic) forward and both gradients") {
  TestDevice dev;
  struct Case {
    int64_t n, h, w, c, kh, kw, stride, padding, dilation;
  };
  const Case cases[] = {
      {2, 9, 11, 37, 3, 3, 1, 1, 1},  // MiT Mix-FFN
      {1, 8, 7, 37, 3, 3, 1, 2, 2},   // dilated (output stride 16)
      {3, 7, 9, 13, 3, 3, 2, 1, 1},   // strided, batch 3
      {1, 10, 9, 45, 7, 7, 1, 3, 1},  // ConvNeXt block
      {2, 9, 8, 5, 5, 3, 2, 1, 3},    // generic size, non-square
      {2, 17, 16, 12, 7, 7, 1, 3, 1}, // 4 channels a thread; 544 positions: 4 weight chunks
      {3, 9, 11, 20, 3, 3, 2, 1, 1},  // 4 channels a thread, strided
      {2, 15, 10, 13, 3, 3, 1, 1, 1}, // 300 positions, odd channels: 2 weight chunks
  };
  int window_cases = 0;
  in_each_schedule([&] {
    for (const Case& cs : cases) {
      const int64_t oh = (cs.h + 2 * cs.padding - cs.dilation * (cs.kh - 1) - 1) / cs.stride + 1;
      const int64_t ow = (cs.w + 2 * cs.padding - cs.dilation * (cs.kw - 1) - 1) / cs.stride + 1;
      const Conv2dGeometry g{cs.n, cs.h, cs.w,      cs.c,       cs.c,        cs.kh, cs.kw,
                             oh,   ow,   cs.stride, cs.padding, cs.dilation, cs.c};
      const k::DepthwiseGeometry dg{cs.n, cs.h, cs.w,      cs.c,       cs.kh,      cs.kw,
                                    oh,   ow,   cs.stride, cs.padding, cs.dilation};
      INFO("kernel " << cs.kh << "x" << cs.kw << " stride " << cs.stride << " pad " << cs.padding
                     << " dilation " << cs.dilation << " C " << cs.c);
      const auto xs = uniform(cs.n * cs.h * cs.w * cs.c, 30 + cs.kh),
                 ws = uniform(cs.c * cs.kh * cs.kw, 31);
      const auto gys = uniform(cs.n * oh * ow * cs.c, 32);
      const auto ref = depthwise_reference(dg, xs, ws, gys);
      const Tensor x = on_device(host(xs, {cs.n, cs.h, cs.w, cs.c}));
      const Tensor w = on_device(host(ws, {cs.c, 1, cs.kh, cs.kw}));
      const Tensor gy = on_device(host(gys, {cs.n, oh, ow, cs.c}));
      Tensor y = device_empty({cs.n, oh, ow, cs.c}), gx = device_empty(x.shape()),
             gw = device_empty(w.shape());
      // Channels a multiple of 4 take the 4-wide path; 3x3 and 7x7 at stride 1 the window
      // kernel (4 of the cases), the others the plain gather.
      CHECK(k::depthwise_vector_width(dg, x.raw_data(), 4, y.raw_data(), 4) ==
            (cs.c % 4 == 0 ? 4 : 1));
      window_cases += k::depthwise_window_applies(dg);
      device().conv2d_forward(g, x, w, y);
      device().conv2d_backward_input(g, gy, w, gx);
      device().conv2d_backward_weight(g, x, gy, gw);
      expect_close("depthwise forward", y.to_vector(), ref.y, 1e-5);
      expect_close("depthwise backward input", gx.to_vector(), ref.grad_x, 1e-5);
      // Sums over every output position (up to 544 here).
      expect_close("depthwise backward weight", gw.to_vector(), ref.grad_w, 1e-5);
    }
  });
  CHECK(window_cases == 4 * 3);  // in each of the three schedules
}

// ---- dense and grouped convolution (implicit GEMM) ----------------------------------------------

struct ConvCase {
  const char* what;
  int64_t n, h, w, cin, cout, kh, kw, stride, padding, dilation, groups;

  Conv2dGeometry geometry() const {
    const int64_t oh = (h + 2 * padding - dilation * (kh - 1) - 1) / stride + 1;
    const int64_t ow = (w + 2 * padding - dilation * (kw - 1) - 1) / stride + 1;
    return {n, h, w, cin, cout, kh, kw, oh, ow, stride, padding, dilation, groups};
  }
};

// Uniform input, weight and output gradient for a case; seeds seed, seed + 1, seed + 2 mixed
// with the case's sizes, so that cases differ.
struct ConvInputs {
  std::vector<double> xs, ws, gys;
};
ConvInputs conv_inputs(const ConvCase& cs, uint64_t seed) {
  const Conv2dGeometry g = cs.geometry();
  return {uniform(g.n * g.h * g.w * g.cin, seed + cs.kh),
          uniform(g.cout * g.cin / g.groups * g.kh * g.kw, seed + 1 + cs.cin),
          uniform(g.n * g.oh * g.ow * g.cout, seed + 2 + cs.cout)};
}

// y, grad_x and grad_w of a conv, as vectors.
struct ConvOutputs {
  std::vector<double> y, grad_x, grad_w;
};

// y, grad_x and grad_w against want within float32 summation error: sums of up to ~300
// products of values in [-2, 2] (sums up to ~60), weight gradients over up to 1104 pixels.
void expect_conv_close(const std::string& what, const ConvOutputs& got, const ConvOutputs& want) {
  expect_close(what + " forward", got.y, want.y, 3e-5);
  expect_close(what + " backward input", got.grad_x, want.grad_x, 3e-5);
  expect_close(what + " backward weight", got.grad_w, want.grad_w, 1e-4);
}

// The three conv kernels of the backend of `device`, on tensors of `dtype` holding xs, ws, gys.
ConvOutputs backend_conv(Device device, DType dtype, const Conv2dGeometry& g,
                         const std::vector<double>& xs, const std::vector<double>& ws,
                         const std::vector<double>& gys) {
  const Shape x_shape{g.n, g.h, g.w, g.cin}, w_shape{g.cout, g.cin / g.groups, g.kh, g.kw},
      y_shape{g.n, g.oh, g.ow, g.cout};
  const Tensor x = host(xs, x_shape, dtype).to(device), w = host(ws, w_shape, dtype).to(device),
               gy = host(gys, y_shape, dtype).to(device);
  Tensor y = Tensor::empty(y_shape, dtype, device), gx = Tensor::empty(x_shape, dtype, device),
         gw = Tensor::empty(w_shape, dtype, device);
  Backend& be = backend(device);
  be.conv2d_forward(g, x, w, y);
  be.conv2d_backward_input(g, gy, w, gx);
  be.conv2d_backward_weight(g, x, gy, gw);
  return {y.to_vector(), gx.to_vector(), gw.to_vector()};
}

// The implicit-GEMM launchers called directly (the backend sends pointwise convs to its GEMM).
k::ConvGeometry kernel_geometry(const Conv2dGeometry& g) {
  return {g.n,  g.h,  g.w,      g.cin,     g.cout,     g.kh,    g.kw,
          g.oh, g.ow, g.stride, g.padding, g.dilation, g.groups};
}
ConvOutputs implicit_gemm_conv(const Conv2dGeometry& g, const std::vector<double>& xs,
                               const std::vector<double>& ws, const std::vector<double>& gys,
                               k::ConvMath math = k::ConvMath::float32) {
  const k::ConvGeometry cg = kernel_geometry(g);
  const std::vector<float> x(xs.begin(), xs.end()), w(ws.begin(), ws.end()),
      gy(gys.begin(), gys.end());
  std::vector<float> y(gys.size()), gx(xs.size()), gw(ws.size()),
      forward_ws(k::conv_forward_workspace(cg)), input_ws(k::conv_backward_input_workspace(cg)),
      weight_ws(k::conv_backward_weight_workspace(cg));
  k::conv_forward(cg, x.data(), w.data(), y.data(), forward_ws.data(), nullptr, math);
  k::conv_backward_input(cg, gy.data(), w.data(), gx.data(), input_ws.data(), nullptr, math);
  k::conv_backward_weight(cg, x.data(), gy.data(), gw.data(), weight_ws.data(), nullptr, math);
  return {{y.begin(), y.end()}, {gx.begin(), gx.end()}, {gw.begin(), gw.end()}};
}

// A spatial-reduction conv in miniature: 4 output pixels, one tile, so the forward (depth 16 taps
// x 24 = 384: 3 chunks of 128) and the input gradient (each of the 16 stride phases one tap x 260
// outputs: 2 chunks) split their depth into chunks (split-K).
constexpr ConvCase kSplitKCase{"4x4 stride 4 over 4 pixels, 24 -> 260 (split-K)",
                               1, 8, 8, 24, 260, 4, 4, 4, 0, 1, 1};

TEST_CASE("dense, grouped and atrous conv (implicit GEMM) match the CPU backend in float64") {
  TestDevice dev;
  // Channel counts straddle the 64-wide tile and the 16-deep step; batch 1 and 3; odd sizes.
  const ConvCase cases[] = {
      {"3x3", 1, 9, 11, 5, 7, 3, 3, 1, 1, 1, 1},
      {"3x3 stride 2, batch 3", 3, 7, 9, 6, 10, 3, 3, 2, 1, 1, 1},
      {"3x3 dilation 2", 2, 9, 8, 6, 5, 3, 3, 1, 2, 2, 1},
      {"3x3 stride 2 dilation 2 (one stride phase)", 2, 9, 8, 6, 5, 3, 3, 2, 2, 2, 1},
      {"2x2 stride 3 pad 1 (a stride phase without taps)", 1, 5, 5, 3, 4, 2, 2, 3, 1, 1, 1},
      {"3x3 dilation 12 (ASPP)", 1, 13, 14, 4, 3, 3, 3, 1, 12, 12, 1},
      {"4x4 stride 4 (ConvNeXt stem)", 2, 16, 13, 4, 9, 4, 4, 4, 0, 1, 1},
      {"7x7 stride 4 pad 3 (MiT patch embed)", 2, 17, 15, 3, 8, 7, 7, 4, 3, 1, 1},
      {"2x2 stride 2 (downsample), tile edges", 1, 6, 5, 70, 66, 2, 2, 2, 0, 1, 1},
      {"3x3 groups 2", 2, 7, 9, 6, 10, 3, 3, 1, 1, 1, 2},
      {"1x1 (pointwise)", 3, 5, 7, 37, 70, 1, 1, 1, 0, 1, 1},
      {"1x1 stride 2", 2, 7, 7, 5, 6, 1, 1, 2, 0, 1, 1},
      {"3x3 over 1104 pixels (weight-gradient chunks)", 2, 24, 23, 3, 4, 3, 3, 1, 1, 1, 1},
      kSplitKCase,
  };
  in_each_schedule([&] {
    for (const ConvCase& cs : cases) {
      INFO(std::string(cs.what));
      const Conv2dGeometry g = cs.geometry();
      const auto [xs, ws, gys] = conv_inputs(cs, 70);
      const ConvOutputs want = backend_conv(Device::cpu, DType::f64, g, xs, ws, gys);
      for (const ConvOutputs& got :
           {backend_conv(Device::cuda, DType::f32, g, xs, ws, gys),
            implicit_gemm_conv(g, xs, ws, gys)}) {
        expect_conv_close("conv", got, want);
      }
    }
  });
}

// One-group convs multiply their im2col matrix in slabs of whole images, the weight gradient
// summing over the slabs: a budget of one image's matrix, and of two, give the CPU's results.
TEST_CASE("im2col convs in slabs of images match the CPU backend in float64") {
  TestDevice dev;
  const ConvCase cs{"3x3 stride 2, batch 3", 3, 7, 9, 6, 10, 3, 3, 2, 1, 1, 1};
  const Conv2dGeometry g = cs.geometry();
  const auto [xs, ws, gys] = conv_inputs(cs, 70);
  const ConvOutputs want = backend_conv(Device::cpu, DType::f64, g, xs, ws, gys);
  const int64_t image_bytes = g.oh * g.ow * g.cin * g.kh * g.kw * 4;
  for (int64_t images : {1, 2}) {
    INFO(images << " images a slab");
    const std::string budget = std::to_string(images * image_bytes);
    ::setenv("SONO_IM2COL_SLAB_BYTES", budget.c_str(), 1);
    const ConvOutputs got = backend_conv(Device::cuda, DType::f32, g, xs, ws, gys);
    ::unsetenv("SONO_IM2COL_SLAB_BYTES");
    expect_conv_close("conv", got, want);
  }
}

// The bf16 implicit GEMM, on the tensor cores (emulated WMMA) and on the SIMT fallback: float32
// sums of products of the bf16-rounded operands, so the CPU's float64 conv of the rounded values
// within float32 summation error (as in the test above), and far from the unrounded conv. Shapes
// whose depth (taps x channels) is no multiple of WMMA's 16 or the 32-deep step, channels past
// the 64-wide tile, padding, stride 2, dilation 2, groups, several weight-gradient chunks. A bf16
// y is the float32 y rounded once.
TEST_CASE("bf16 dense conv on emulated tensor cores (WMMA) and on the SIMT fallback") {
  TestDevice dev;
  const ConvCase cases[] = {
      {"3x3 pad 1, 19 -> 21 channels", 2, 7, 9, 19, 21, 3, 3, 1, 1, 1, 1},
      {"3x3 stride 2 pad 1, 70 -> 66 channels", 1, 9, 8, 70, 66, 3, 3, 2, 1, 1, 1},
      {"3x3 dilation 2 pad 2, 13 -> 5", 2, 9, 8, 13, 5, 3, 3, 1, 2, 2, 1},
      {"7x7 stride 4 pad 3, 3 -> 8 (MiT patch embed)", 2, 17, 15, 3, 8, 7, 7, 4, 3, 1, 1},
      {"2x2 stride 2, 33 -> 17 (downsample)", 2, 6, 7, 33, 17, 2, 2, 2, 0, 1, 1},
      {"3x3 groups 2, 6 -> 10", 2, 7, 9, 6, 10, 3, 3, 1, 1, 1, 2},
      {"3x3 over 1104 pixels (weight-gradient chunks)", 2, 24, 23, 3, 4, 3, 3, 1, 1, 1, 1},
      kSplitKCase,
  };
  in_each_schedule([&] {
    for (const ConvCase& cs : cases) {
      INFO(std::string(cs.what));
      const Conv2dGeometry g = cs.geometry();
      const auto [xs, ws, gys] = conv_inputs(cs, 95);
      const ConvOutputs want = backend_conv(Device::cpu, DType::f64, g, bf16_rounded(xs),
                                            bf16_rounded(ws), bf16_rounded(gys));
      const ConvOutputs exact = backend_conv(Device::cpu, DType::f64, g, xs, ws, gys);
      for (k::ConvMath math : {k::ConvMath::bf16_wmma, k::ConvMath::bf16_simt}) {
        INFO((math == k::ConvMath::bf16_wmma ? "WMMA" : "SIMT"));
        const ConvOutputs got = implicit_gemm_conv(g, xs, ws, gys, math);
        expect_conv_close("bf16 conv", got, want);
        CHECK(max_abs_diff(host(got.y, {int64_t(got.y.size())}),
                           host(exact.y, {int64_t(exact.y.size())})) > 1e-3);
      }
      // bfloat16 activations in and out, as autocast stores them.
      const std::vector<float> x32(xs.begin(), xs.end()), w32(ws.begin(), ws.end());
      std::vector<k::bfloat16> x16(xs.size()), y16(gys.size());
      for (size_t i = 0; i < xs.size(); ++i) x16[i] = to_bf16(xs[i]);
      std::vector<float> y32(gys.size()), ws16(k::conv_forward_workspace(kernel_geometry(g)));
      k::conv_forward(kernel_geometry(g), x16.data(), w32.data(), y16.data(), ws16.data(), nullptr,
                      k::ConvMath::bf16_wmma);
      k::conv_forward(kernel_geometry(g), x32.data(), w32.data(), y32.data(), ws16.data(), nullptr,
                      k::ConvMath::bf16_wmma);
      int64_t not_rounded_once = 0;
      for (size_t i = 0; i < y32.size(); ++i)
        not_rounded_once += std::bit_cast<float>(uint32_t(y16[i].bits) << 16) != bf16_reference(y32[i]);
      CHECK(not_rounded_once == 0);
    }
  });
}

// Split-K (the two tests above check its values against the CPU's float64): the split path is
// taken, its fixed-order fold gives the same bits in every schedule of the emulator, for float32
// and both bf16 kernels, and the CPU check would catch a fold that dropped a chunk.
TEST_CASE("split-K conv: deterministic across schedules, every chunk counts") {
  TestDevice dev;
  const Conv2dGeometry g = kSplitKCase.geometry();
  const k::ConvGeometry cg = kernel_geometry(g);
  REQUIRE(k::forward_gemm(cg).chunks == 3);
  REQUIRE(k::backward_input_gemm(cg).chunks == 2);
  const auto [xs, ws, gys] = conv_inputs(kSplitKCase, 70);
  for (k::ConvMath math : {k::ConvMath::float32, k::ConvMath::bf16_wmma, k::ConvMath::bf16_simt}) {
    INFO("math " << int(math));
    std::vector<ConvOutputs> runs;
    in_each_schedule([&] { runs.push_back(implicit_gemm_conv(g, xs, ws, gys, math)); });
    for (const ConvOutputs& run : runs) {
      CHECK(run.y == runs.front().y);
      CHECK(run.grad_x == runs.front().grad_x);
    }
  }
  // The mutant: the fold over the forward partials with chunk 1 zeroed.
  const ConvOutputs want = backend_conv(Device::cpu, DType::f64, g, xs, ws, gys);
  const std::vector<float> x(xs.begin(), xs.end()), w(ws.begin(), ws.end());
  std::vector<float> y(want.y.size()), partials(k::conv_forward_workspace(cg));
  const auto y_error = [&] {
    double e = 0;
    for (size_t i = 0; i < y.size(); ++i) e = std::max(e, std::abs(y[i] - want.y[i]));
    return e;
  };
  k::conv_forward(cg, x.data(), w.data(), y.data(), partials.data(), nullptr);
  CHECK(y_error() < 1e-4);
  std::fill_n(partials.begin() + int64_t(y.size()), y.size(), 0.0f);
  k::column_sums(partials.data(), 3, int64_t(y.size()), y.data(), nullptr);
  CHECK(y_error() > 0.1);
}

// ---- bilinear resize --------------------------------------------------------------------------

// PyTorch's bilinear source index, in double.
void source_index(int64_t dst, int64_t in, int64_t out, bool align_corners, int64_t& i0,
                  int64_t& i1, double& l1) {
  double src;
  if (in == out)
    src = static_cast<double>(dst);
  else if (align_corners)
    src = out > 1 ? dst * double(in - 1) / double(out - 1) : 0.0;
  else
    src = std::max((dst + 0.5) * double(in) / double(out) - 0.5, 0.0);
  i0 = std::min(static_cast<int64_t>(src), in - 1);
  i1 = std::min(i0 + 1, in - 1);
  l1 = std::clamp(src - i0, 0.0, 1.0);
}

std::vector<double> resize_reference(const k::ResizeGeometry& g, const std::vector<double>& x,
                                     const std::vector<double>& gy, std::vector<double>& grad_x) {
  std::vector<double> y(g.n * g.out_h * g.out_w * g.c);
  grad_x.assign(x.size(), 0.0);
  for (int64_t n = 0; n < g.n; ++n)
    for (int64_t oy = 0; oy < g.out_h; ++oy)
      for (int64_t ox = 0; ox < g.out_w; ++ox) {
        int64_t y0, y1, x0, x1;
        double ly, lx;
        source_index(oy, g.in_h, g.out_h, g.align_corners, y0, y1, ly);
        source_index(ox, g.in_w, g.out_w, g.align_corners, x0, x1, lx);
        const int64_t taps[4] = {y0 * g.in_w + x0, y0 * g.in_w + x1, y1 * g.in_w + x0,
                                 y1 * g.in_w + x1};
        const double weights[4] = {(1 - ly) * (1 - lx), (1 - ly) * lx, ly * (1 - lx), ly * lx};
        for (int64_t c = 0; c < g.c; ++c) {
          const int64_t o = ((n * g.out_h + oy) * g.out_w + ox) * g.c + c;
          y[o] = 0;
          for (int t = 0; t < 4; ++t) {
            y[o] += weights[t] * x[(n * g.in_h * g.in_w + taps[t]) * g.c + c];
            grad_x[(n * g.in_h * g.in_w + taps[t]) * g.c + c] += weights[t] * gy[o];
          }
        }
      }
  return y;
}

TEST_CASE("bilinear resize NHWC, both align_corners, forward and backward") {
  TestDevice dev;
  const int64_t sizes[][4] = {
      {5, 7, 9, 13}, {9, 13, 4, 5}, {6, 6, 6, 6}, {1, 3, 4, 7}, {8, 8, 32, 32}};
  in_each_schedule([&] {
    for (auto [ih, iw, oh, ow] : sizes) {
      for (bool ac : {false, true}) {
        const int64_t n = 2, c = 37;
        INFO(ih << "x" << iw << " -> " << oh << "x" << ow << (ac ? ", align_corners" : ""));
        const k::ResizeGeometry g{n, ih, iw, oh, ow, c, ac};
        const auto xs = uniform(n * ih * iw * c, 40 + ih), gys = uniform(n * oh * ow * c, 41 + oh);
        std::vector<double> want_gx;
        const auto want_y = resize_reference(g, xs, gys, want_gx);
        Tensor y = device_empty({n, oh, ow, c}), gx = device_empty({n, ih, iw, c});
        device().resize_bilinear_forward(on_device(host(xs, {n, ih, iw, c})), y, ac);
        device().resize_bilinear_backward(on_device(host(gys, {n, oh, ow, c})), gx, ac);
        // Source coordinates are floats, as in PyTorch: ~1 ulp of a coordinate near 13.
        expect_close("resize forward", y.to_vector(), want_y, 4e-6);
        // Atomic adds land in schedule order: float sums of up to ~20 terms.
        expect_close("resize backward", gx.to_vector(), want_gx, 1e-5);
      }
    }
  });
  // Hand values: [0, 1] -> 4 columns.
  Tensor y = device_empty({1, 1, 4, 1});
  device().resize_bilinear_forward(on_device(host({0, 1}, {1, 1, 2, 1})), y, false);
  expect_close("resize forward", y.to_vector(), {0, 0.25, 0.75, 1}, 0);
  device().resize_bilinear_forward(on_device(host({0, 1}, {1, 1, 2, 1})), y, true);
  expect_close("resize forward", y.to_vector(), {0, 1.0 / 3, 2.0 / 3, 1}, 1e-7);
}

// ---- AdamW --------------------------------------------------------------------------------------

// torch.optim.AdamW(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05), 3 steps, on
// p[i] = ((i % 7) - 3) / 10 with grads g_t[i] = (((5 i + 3 t) % 11) - 5) * 0.03 (i < 64,
// t = 1..3): torch 2.15 (fused=True, CPU) gives these float32 values for p[0..15]
// (tests/reference/cuda_adamw_golden.py prints them).
constexpr uint32_t kTorchAdamW[16] = {0xbe9929afu, 0xbe4d0f78u, 0xbdc9866fu, 0xbb144f3du,
                                      0x3dd12127u, 0x3e4acb0au, 0x3e9ad6bdu, 0xbe99d434u,
                                      0xbe4e240eu, 0xbdcce6f3u, 0xba50a597u, 0x3dce6d07u,
                                      0x3e4c7a66u, 0x3e9a6354u, 0xbe9abc52u, 0xbe4a96d5u};

TEST_CASE("AdamW: a multi-tensor step is torch.optim.AdamW to the bit") {
  TestDevice dev;
  in_each_schedule([&] {
    std::vector<double> p0(64), zeros(64, 0.0);
    for (int i = 0; i < 64; ++i) p0[i] = ((i % 7) - 3) / 10.0;
    const Tensor p = on_device(host(p0, {64})), m = on_device(host(zeros, {64})),
                 v = on_device(host(zeros, {64}));
    for (int t = 1; t <= 3; ++t) {
      std::vector<double> g(64);
      for (int i = 0; i < 64; ++i) g[i] = (((5 * i + 3 * t) % 11) - 5) * 0.03;
      device().adamw_step(p, on_device(host(g, {64})), m, v, 1e-3, 0.9, 0.999, 1e-8, 0.05, t);
    }
    const auto got = p.to_vector();
    for (int i = 0; i < 16; ++i) {
      INFO("p[" << i << "] = " << got[i]);
      CHECK(__float_as_uint(static_cast<float>(got[i])) == kTorchAdamW[i]);
    }
  });
}

// Ten steps of one multi-tensor call over parameters of awkward sizes (one element, under a
// warp, over a chunk, several chunks and a ragged tail) with step counts that differ per
// parameter, against the CPU backend's adamw_step on each. The CPU rounds differently (no FMA
// in lerp and addcmul, p * decay - step * ... as one expression): |error| <= 4e-7 relative to
// max(1, |want|) over p, m and v after ten steps (a few float ulps).
TEST_CASE("AdamW: one multi-tensor launch steps every parameter as the CPU backend does") {
  const std::vector<int64_t> sizes = {1, 31, 1000, 4099, k::kAdamWChunk, 3 * k::kAdamWChunk + 5};
  const std::vector<int64_t> first_step = {1, 4, 1, 2, 7, 1};
  const double lr = 3e-3, beta1 = 0.9, beta2 = 0.95, eps = 1e-6, wd = 0.1;
  // The table has a chunk per kAdamWChunk elements, so the one launch has that many blocks.
  std::vector<k::AdamWTensor> shapes;
  for (int64_t n : sizes) shapes.push_back({nullptr, nullptr, nullptr, nullptr, n, 1});
  CHECK(k::adamw_chunks(shapes, lr, beta1, beta2).size() == 1 + 1 + 1 + 1 + 1 + 4);
  TestDevice dev;
  in_each_schedule([&] {
    std::vector<Backend::AdamWParam> cpu, cuda;
    for (size_t i = 0; i < sizes.size(); ++i) {
      const Shape shape{sizes[i]};
      const Tensor p = host(uniform(sizes[i], 10 + i), shape),
                   m = host(uniform(sizes[i], 20 + i, -0.1, 0.1), shape),
                   v = host(uniform(sizes[i], 30 + i, 0.0, 0.01), shape);
      cpu.push_back({p, Tensor(), m, v, first_step[i]});
      cuda.push_back({on_device(p), Tensor(), on_device(m), on_device(v), first_step[i]});
    }
    for (int t = 0; t < 10; ++t) {
      for (size_t i = 0; i < sizes.size(); ++i) {
        cpu[i].grad = host(uniform(sizes[i], 1000 * t + i), {sizes[i]});
        cuda[i].grad = on_device(cpu[i].grad);
      }
      backend(Device::cpu).adamw_multi_step(cpu, lr, beta1, beta2, eps, wd);
      device().adamw_multi_step(cuda, lr, beta1, beta2, eps, wd);
      for (size_t i = 0; i < sizes.size(); ++i) ++cpu[i].step, ++cuda[i].step;
    }
    for (size_t i = 0; i < sizes.size(); ++i) {
      INFO("parameter of " << sizes[i] << " elements");
      expect_close("adamw multi-tensor (10 steps)", cuda[i].param.to_vector(),
                   cpu[i].param.to_vector(), 4e-7);
      expect_close("adamw multi-tensor (10 steps)", cuda[i].exp_avg.to_vector(),
                   cpu[i].exp_avg.to_vector(), 4e-7);
      expect_close("adamw multi-tensor (10 steps)", cuda[i].exp_avg_sq.to_vector(),
                   cpu[i].exp_avg_sq.to_vector(), 4e-7);
    }
  });
}

// ---- fused attention ----------------------------------------------------------------------------

TEST_CASE("fused attention (online softmax over key tiles) matches softmax(q k^T / sqrt(d)) v") {
  const int64_t shapes[][4] = {{3, 37, 45, 64}, {2, 5, 1, 40}, {1, 9, 70, 128}, {2, 33, 32, 1}};
  in_each_schedule([&] {
    for (auto [bh, lq, lk, d] : shapes) {
      INFO("bh " << bh << ", lq " << lq << ", lk " << lk << ", d " << d);
      const auto q = uniform(bh * lq * d, 60 + d), kk = uniform(bh * lk * d, 61 + d),
                 v = uniform(bh * lk * d, 62 + d);
      const double scale = 1.0 / std::sqrt(static_cast<double>(d));
      std::vector<double> want(bh * lq * d, 0.0), want_lse(bh * lq);
      for (int64_t h = 0; h < bh; ++h)
        for (int64_t i = 0; i < lq; ++i) {
          std::vector<double> s(lk);
          for (int64_t j = 0; j < lk; ++j) {
            s[j] = 0;
            for (int64_t c = 0; c < d; ++c)
              s[j] += q[(h * lq + i) * d + c] * kk[(h * lk + j) * d + c] * scale;
          }
          const double m = *std::max_element(s.begin(), s.end());
          double total = 0;
          for (double x : s) total += std::exp(x - m);
          want_lse[h * lq + i] = m + std::log(total);
          for (int64_t j = 0; j < lk; ++j)
            for (int64_t c = 0; c < d; ++c)
              want[(h * lq + i) * d + c] += std::exp(s[j] - m) / total * v[(h * lk + j) * d + c];
        }
      const std::vector<float> qf(q.begin(), q.end()), kf(kk.begin(), kk.end()),
          vf(v.begin(), v.end());
      std::vector<float> out(want.size()), lse(want_lse.size());
      k::attention_forward(bh, lq, lk, d, static_cast<float>(scale), qf.data(), kf.data(),
                           vf.data(), out.data(), lse.data(), nullptr);
      expect_close("attention forward", {out.begin(), out.end()}, want, 2e-6);
      expect_close("attention forward (log-sum-exp)", {lse.begin(), lse.end()}, want_lse, 2e-6);
    }
  });
}

// The attention op on the device: float32 heads of up to 128 dims run the fused kernel, which
// holds no [Lq, Lk] score matrix (the forward's peak memory shows it), and the backward
// recomputes the composition; 130 dims fall back to the composition. Output and gradients
// against the CPU's composed float64, on MiT-like shapes (few keys) and odd ones.
TEST_CASE("attention op on the device: fused forward without the scores, gradients recomputed") {
  TestDevice dev;
  const Shape shapes[][2] = {{{2, 2, 37, 32}, {2, 2, 45, 32}},
                             {{1, 1, 300, 64}, {1, 1, 9, 64}},
                             {{1, 2, 70, 130}, {1, 2, 33, 130}}};
  for (const auto& [q_shape, kv_shape] : shapes) {
    INFO("q " << shape_str(q_shape) << ", k and v " << shape_str(kv_shape));
    const Tensor q = host(uniform(shape_numel(q_shape), 63), q_shape),
                 k = host(uniform(shape_numel(kv_shape), 64), kv_shape),
                 v = host(uniform(shape_numel(kv_shape), 65), kv_shape),
                 probe = host(uniform(shape_numel(q_shape), 66), q_shape);
    std::vector<Tensor> want{q.to(DType::f64).requires_grad_(), k.to(DType::f64).requires_grad_(),
                             v.to(DType::f64).requires_grad_()};
    const Tensor want_out = scaled_dot_product_attention(want[0], want[1], want[2]);
    sum(mul(want_out, probe.to(DType::f64))).backward();

    const bool fused = q_shape[3] <= 128;
    const int64_t scores_bytes = q_shape[0] * q_shape[1] * q_shape[2] * kv_shape[2] * 4;
    std::vector<Tensor> got{on_device(q).requires_grad_(), on_device(k).requires_grad_(),
                            on_device(v).requires_grad_()};
    const int64_t before = static_cast<int64_t>(device_memory_stats().in_use);
    reset_device_peak_memory();
    const Tensor got_out = scaled_dot_product_attention(got[0], got[1], got[2]);
    // What the forward held beyond its output.
    const int64_t forward_extra = static_cast<int64_t>(device_memory_stats().peak) -
                                  before - got_out.numel() * 4;
    MESSAGE("forward held " << forward_extra << " bytes beside its output; scores " << scores_bytes);
    CHECK((forward_extra < scores_bytes) == fused);
    sum(mul(got_out, on_device(probe))).backward();
    expect_close("attention op", got_out.to_vector(), want_out.to_vector(), 2e-6);
    for (int i = 0; i < 3; ++i)
      expect_close("attention op gradient", got[i].grad().to_vector(), want[i].grad().to_vector(), 2e-5);
  }
}

// ---- whole models on the emulated device -------------------------------------------------------

struct ModelRun {
  Tensor out;                               // on the host
  std::map<std::string, Tensor> gradients;  // by parameter name, on the host
};

// One training step's forward and backward on the model's device, loss = sum(out * probe) with
// a fixed random probe, so that every output element gets a gradient of its own. Dropout masks
// come from a reseeded generator: the same on both devices.
ModelRun train_step(nn::UnaryModule& model, const Tensor& x) {
  const Device device = model.parameters().front().device();
  manual_seed(5);
  model.zero_grad();
  model.train();
  const Tensor out = model(x.to(device));
  Generator gen(6);
  sum(mul(out, randn(out.shape(), gen).to(device))).backward();
  ModelRun r{out.to(Device::cpu), {}};
  for (auto& [name, p] : model.named_parameters()) r.gradients[name] = p.grad().to(Device::cpu);
  return r;
}

double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

// Builds `name` on the CPU and runs a training step there, then moves the same weights to the
// emulated device (Module::to) and runs it again. The output and every parameter gradient must
// agree to `tol` relative to max(their largest value, 1e-3 x the model's largest gradient): the
// floor covers gradients that are zero but for rounding, such as MiT-DeepLab's encoder.norm4.bias
// (every ASPP branch normalises its conv of it with BatchNorm, which cancels a shift).
void expect_model_matches_cpu(const std::string& name, const models::ModelOptions& options,
                              const Shape& input, double tol) {
  TestDevice dev;
  manual_seed(1);
  auto model = models::create_model(name, options);
  Generator gen(2);
  const Tensor x = randn(input, gen);
  const ModelRun cpu = train_step(*model, x);
  model->to(Device::cuda);
  const ModelRun cuda = train_step(*model, x);
  double floor = 0;
  for (const auto& [param, g] : cpu.gradients) floor = std::max(floor, 1e-3 * max_abs(g));
  std::pair<std::string, double> worst{"output",
                                       max_abs_diff(cuda.out, cpu.out) / max_abs(cpu.out)};
  CHECK(worst.second <= tol);
  for (const auto& [param, want] : cpu.gradients) {
    INFO(name << " gradient of " << param);
    const double err =
        max_abs_diff(cuda.gradients.at(param), want) / std::max(max_abs(want), floor);
    CHECK(err <= tol);
    if (err > worst.second) worst = {param, err};
  }
  MESSAGE(name << ": worst relative error " << worst.second << " (" << worst.first
               << ") over the output and " << cpu.gradients.size() << " parameter gradients");
  error_log()[name + " training step (relative to max)"] = worst.second;
}

// Tolerances: the CPU backend's own float32 step differs from its float64 step by 1e-6
// (ConvNeXt) and 8e-5 (MiT-DeepLab: BatchNorm over 2 x 1 x 1 values in the ASPP pooling branch,
// LayerNorms, attention); the emulated device differs from the CPU by as much. Input sizes are
// the smallest the models take (32: MiT's last stage is 1 x 1), so that the emulator's fibers
// take seconds; one schedule (forward), as each kernel is run in all three above.
TEST_CASE("convnext_atto trains on the emulated CUDA device as on the CPU") {
  expect_model_matches_cpu("convnext_atto", {.in_channels = 4, .num_classes = 3}, {2, 32, 32, 4},
                           2e-5);
}

TEST_CASE("DeepLabV3+ mit_b0 trains on the emulated CUDA device as on the CPU") {
  expect_model_matches_cpu("mit_b0", {.in_channels = 3, .num_classes = 1}, {2, 32, 32, 3}, 5e-4);
}

// Its nearest upsampling is a 6-dim expand and copy forward, a 6-dim sum backward.
TEST_CASE("U-Net resnet18 (depth 3) trains on the emulated CUDA device as on the CPU") {
  expect_model_matches_cpu("unet_resnet18", {.encoder_depth = 3, .decoder_channels = {16, 8, 4}}, {2, 32, 32, 3}, 5e-5);
}

// ---- bf16 mixed precision -----------------------------------------------------------------------

TEST_CASE("bf16: float32 -> bfloat16 rounds to nearest even, and back exactly") {
  std::vector<float> x = {1.0f + 0x1p-8f,  1.0f + 0x3p-8f, -(1.0f + 0x1p-8f), 1.0f + 0x1.02p-8f,
                          3.0e38f,         FLT_MAX,        -FLT_MAX,          0x1p-140f,
                          0x1.8p-133f,     -0.0f,          INFINITY,          -INFINITY,
                          FLT_MIN,         1e-40f};
  for (double v : uniform(1000, 90, -1.0, 1.0))  // magnitudes across most of the float range
    x.push_back(static_cast<float>(v * std::exp(80 * v)));
  x.push_back(NAN);
  in_each_schedule([&] {
    std::vector<k::bfloat16> b(x.size());
    std::vector<float> back(x.size());
    k::bf16_convert(static_cast<int64_t>(x.size()), x.data(), b.data(), nullptr);
    k::bf16_convert(static_cast<int64_t>(x.size()), b.data(), back.data(), nullptr);
    for (size_t i = 0; i < x.size(); ++i) {
      INFO("x = " << x[i] << " (" << std::hexfloat << x[i] << ")");
      CHECK(std::signbit(back[i]) == std::signbit(x[i]));
      if (std::isnan(x[i])) CHECK(std::isnan(back[i]));
      else CHECK(static_cast<double>(back[i]) == bf16_reference(x[i]));
    }
  });
}

// The bits of a bfloat16 tensor (DType::bf16), read on the host.
std::vector<uint16_t> bf16_bits(const Tensor& t) {
  const Tensor h = t.to(Device::cpu);
  const auto* p = static_cast<const uint16_t*>(h.raw_data());
  return std::vector<uint16_t>(p, p + h.numel());
}

// The cast op (Tensor::to(DType::bf16) and back), which makes autocast's saved activations: the
// device's kernel against the CPU backend's copy, bit for bit, on sizes with tails shorter than
// a warp, over ties (to even, up and down), values past the largest bfloat16 (to inf), subnormals,
// signed zeros, infinities and NaNs (quiet, sign kept). Both must also equal bf16_reference.
TEST_CASE("bf16 storage: the device cast equals the CPU's on odd sizes, ties, inf and NaN") {
  TestDevice dev;
  const float special[] = {1.0f + 0x1p-8f,   1.0f + 0x3p-8f, -(1.0f + 0x1p-8f), 1.0f + 0x1.02p-8f,
                           -(1.0f + 0x3p-8f), 0x1.fep127f,   FLT_MAX,           -FLT_MAX,
                           0x1p-140f,         0x1.8p-133f,   -0.0f,             0.0f,
                           INFINITY,          -INFINITY,     FLT_MIN,           1e-40f,
                           NAN,               -NAN,          std::bit_cast<float>(0x7f800001u)};
  std::vector<double> values(std::begin(special), std::end(special));
  for (double v : uniform(600, 91, -1.0, 1.0)) values.push_back(static_cast<float>(v * std::exp(60 * v)));
  in_each_schedule([&] {
    for (int64_t n : {1, 5, 19, 31, 33, 37, 263, 619}) {
      INFO("n = " << n);
      const Tensor x = host({values.begin(), values.begin() + n}, {n});
      const Tensor cpu16 = x.to(DType::bf16), dev16 = on_device(x).to(DType::bf16);
      CHECK(dev16.dtype() == DType::bf16);
      CHECK(bf16_bits(dev16) == bf16_bits(cpu16));
      const std::vector<double> back = dev16.to(DType::f32).to_vector(), cpu_back = cpu16.to_vector();
      for (int64_t i = 0; i < n; ++i) {
        INFO("x = " << values[i] << " (" << std::hexfloat << values[i] << ")");
        if (std::isnan(values[i])) {
          CHECK((std::isnan(back[i]) && std::isnan(cpu_back[i])));
          CHECK(std::signbit(back[i]) == std::signbit(values[i]));
        } else {
          CHECK(back[i] == bf16_reference(static_cast<float>(values[i])));
          CHECK(cpu_back[i] == back[i]);
        }
      }
    }
  });
}

// Copies of autocast's activations: the strided copy kernel converts to, from and between
// bfloat16 on views (a permute, a slice, a broadcast), bit for bit as the CPU backend does.
TEST_CASE("bf16 activations: strided copies to, from and between bfloat16 equal the CPU's") {
  TestDevice dev;
  const Tensor x = host(uniform(3 * 5 * 7, 94, -50.0, 50.0), {3, 5, 7});
  const Tensor x16 = x.to(DType::bf16);
  in_each_schedule([&] {
    const auto views = [](const Tensor& t) {
      return std::vector<Tensor>{t.permute({2, 0, 1}), t.slice(1, 1, 4), t.slice(2, 3, 4).expand({3, 5, 6})};
    };
    for (DType from : {DType::f32, DType::bf16}) {
      const Tensor src = from == DType::bf16 ? x16 : x;
      const std::vector<Tensor> cpu_views = views(src), dev_views = views(on_device(src));
      for (size_t v = 0; v < cpu_views.size(); ++v) {
        for (DType to : {DType::f32, DType::bf16, DType::f64}) {
          INFO("view " << v << ", " << dtype_name(from) << " -> " << dtype_name(to));
          Tensor want = Tensor::empty(cpu_views[v].shape(), to);
          Tensor got = Tensor::empty(dev_views[v].shape(), to, Device::cuda);
          backend(Device::cpu).copy(cpu_views[v], want);
          device().copy(dev_views[v], got);
          CHECK(got.to(DType::f64).to_vector() == want.to(DType::f64).to_vector());
        }
      }
    }
  });
}

// The bias + activation epilogue on every mix of float32 and bfloat16 input and output: computed
// in float32 from the (exact) widened input, rounded once on a bfloat16 store. Reference: the
// CPU's float32 kernel on the same input values, then rounded; rows of 7 and 45 columns (not
// multiples of a warp) and a plain GELU without bias. GELU's backward reads a bfloat16 input too.
TEST_CASE("bf16 activations: bias + GELU, bias add and GELU backward read and write bfloat16") {
  TestDevice dev;
  const Shape shapes[] = {{3, 5, 7}, {13, 45}, {1037}};
  in_each_schedule([&] {
    for (const Shape& shape : shapes) {
      const int64_t n = shape_numel(shape), cols = shape.back();
      const Tensor x32 = host(uniform(n, 95, -4.0, 4.0), shape), bias = host(uniform(cols, 96), {cols}),
                   gy = host(uniform(n, 97), shape);
      for (DType in : {DType::f32, DType::bf16})
        for (DType out : {DType::f32, DType::bf16})
          for (bool gelu : {true, false}) {
            INFO("shape " << shape_str(shape) << ", " << dtype_name(in) << " -> " << dtype_name(out)
                          << (gelu ? ", bias + GELU" : ", bias add"));
            const Tensor x = x32.to(in).to(DType::f32);  // the values the kernel reads
            Tensor want = Tensor::empty(shape), got = Tensor::empty(shape, out, Device::cuda),
                   got32 = device_empty(shape);
            const Tensor xd = on_device(x).to(in), bd = on_device(bias);
            if (gelu) {
              backend(Device::cpu).bias_gelu_forward(x, bias, want);
              device().bias_gelu_forward(xd, bd, got);
              device().bias_gelu_forward(xd, bd, got32);
            } else {
              backend(Device::cpu).bias_add(x, bias, want);
              device().bias_add(xd, bd, got);
              device().bias_add(xd, bd, got32);
            }
            expect_close("bias_act", got32.to_vector(), want.to_vector(), 2e-6);
            if (out == DType::bf16) expect_bf16_rounding("bias_act to bf16", got, got32);
            else CHECK(got.to_vector() == got32.to_vector());
          }
      const Tensor x = x32.to(DType::bf16);
      for (const Tensor& b : {bias, Tensor()}) {
        Tensor want = Tensor::empty(shape), got = device_empty(shape);
        backend(Device::cpu).gelu_backward(x.to(DType::f32), b, gy, want);
        device().gelu_backward(on_device(x), b.defined() ? on_device(b) : b, on_device(gy), got);
        expect_close("gelu_backward of bf16 x", got.to_vector(), want.to_vector(), 2e-6);
      }
      // Plain GELU and ReLU through the unary entry: bfloat16 in, bfloat16 out.
      for (UnaryOp op : {UnaryOp::gelu, UnaryOp::relu}) {
        Tensor want = Tensor::empty(shape), got = Tensor::empty(shape, DType::bf16, Device::cuda),
               got32 = device_empty(shape);
        backend(Device::cpu).unary(op, x.to(DType::f32), want, 0.0);
        device().unary(op, on_device(x), got, 0.0);
        device().unary(op, on_device(x), got32, 0.0);
        expect_close("gelu or relu of bf16 x", got32.to_vector(), want.to_vector(), 2e-6);
        expect_bf16_rounding("gelu or relu to bf16", got, got32);
      }
    }
  });
}

// What an op does with a bfloat16 input: GELU, ReLU and training BatchNorm keep bfloat16; the
// others compute in float32 and return float32, with float32 gradients flowing back to the
// bfloat16 tensor's producer. Kernels that do not take bfloat16 say so when called directly.
TEST_CASE("bf16 activations: ops read bfloat16 as float32, gradients are float32") {
  TestDevice dev;
  const Tensor x = host({1.5, -2.0, 3.25}, {3});
  const Tensor on_cpu = x.to(DType::bf16), on_gpu = on_device(x).to(DType::bf16);
  CHECK(on_gpu.to_vector() == std::vector<double>{1.5, -2.0, 3.25});
  const Tensor e = exp(on_gpu);
  CHECK(e.dtype() == DType::f32);
  expect_close("exp of bf16", e.to_vector(), {std::exp(1.5), std::exp(-2.0), std::exp(3.25)}, 1e-6);
  CHECK(add(on_cpu, x).dtype() == DType::f32);
  CHECK(add(on_cpu, on_cpu).to_vector() == std::vector<double>{3.0, -4.0, 6.5});
  CHECK(gelu(on_gpu).dtype() == DType::bf16);
  CHECK(relu(on_gpu).dtype() == DType::bf16);
  CHECK(batch_norm(on_gpu.reshape({3, 1}), Tensor(), Tensor(), Tensor(), Tensor(), true, 0.1, 1e-5)
            .dtype() == DType::bf16);
  CHECK(layer_norm(on_gpu.reshape({1, 3}), Tensor(), Tensor(), 1e-5).dtype() == DType::f32);
  CHECK(gelu(on_cpu).dtype() == DType::f32);  // the CPU backend widens bfloat16 first
  CHECK(on_gpu.to(DType::f64).to_vector() == std::vector<double>{1.5, -2.0, 3.25});
  CHECK_THROWS_WITH_AS(Tensor::from_vector({1.0}, {1}, DType::bf16),
                       doctest::Contains("cast it with .to(DType::bf16)"), Error);

  // d/dx sum(w * gelu(x.to(bf16))): the cast and GELU hand float32 gradients back.
  Tensor leaf = on_device(x).requires_grad_();
  const Tensor w = on_device(host({0.5, 2.0, -1.0}, {3}));
  sum(mul(gelu(leaf.to(DType::bf16)), w)).backward();
  REQUIRE(leaf.grad().dtype() == DType::f32);
  std::vector<double> want;
  for (int i = 0; i < 3; ++i) {
    const double v = x.to_vector()[i], wi = w.to_vector()[i];
    want.push_back(wi * (0.5 * (1 + std::erf(v / std::sqrt(2.0))) +
                         v * std::exp(-0.5 * v * v) / std::sqrt(2 * M_PI)));
  }
  expect_close("gradient through bf16 gelu", leaf.grad().to_vector(), want, 1e-6);

  Tensor y = Tensor::empty({3}, DType::f32, Device::cuda);
  CHECK_THROWS_WITH_AS(device().unary(UnaryOp::exp, on_gpu, y, 0.0),
                       doctest::Contains("on bfloat16 not implemented"), Error);
  CHECK_THROWS_WITH_AS(Tensor::zeros({3}, DType::bf16, Device::cuda), doctest::Contains("got bfloat16"),
                       Error);
  // A softmax kernel (the op widens bfloat16 first) given a bfloat16 input.
  CHECK_THROWS_WITH_AS(device().softmax_forward(on_gpu.reshape({1, 3}), device_empty({1, 3}), false),
                       doctest::Contains("softmax on bfloat16 not implemented"), Error);
}

// LayerNorm reads a bfloat16 x as it is (the exact float32 widening of each value): forward and
// backward equal, bit for bit, the kernels on the widened float32 copy; rows of 45 and 37
// columns (not multiples of a warp), 1 to 300 rows.
TEST_CASE("bf16 activations: LayerNorm reads bfloat16 x as its float32 widening, bit for bit") {
  TestDevice dev;
  const Shape shapes[] = {{300, 45}, {1, 37}, {7, 3, 37}};
  in_each_schedule([&] {
    for (const Shape& shape : shapes) {
      INFO("shape " << shape_str(shape));
      const int64_t cols = shape.back(), rows = shape_numel(shape) / cols;
      const Tensor x16 = on_device(host(uniform(shape_numel(shape), 103, -3.0, 3.0), shape)).to(DType::bf16);
      const Tensor gy = on_device(host(uniform(shape_numel(shape), 104), shape)),
                   w = on_device(host(uniform(cols, 105), {cols})),
                   b = on_device(host(uniform(cols, 106), {cols}));
      auto run = [&](const Tensor& x) {
        std::vector<Tensor> out{device_empty(shape), device_empty({rows}), device_empty({rows}),
                                device_empty(shape), device_empty({cols}), device_empty({cols})};
        device().layer_norm_forward(x, w, b, 1e-6, out[0], out[1], out[2]);
        device().layer_norm_backward(x, w, out[1], out[2], gy, out[3], out[4], out[5]);
        return out;
      };
      const std::vector<Tensor> got = run(x16), want = run(x16.to(DType::f32));
      for (size_t i = 0; i < got.size(); ++i) CHECK(got[i].to_vector() == want[i].to_vector());
    }
  });
}

// Under bf16 autocast the emulated device's GEMMs and dense convolutions (forward and both
// gradients) must equal float32-accumulated products of the bf16-rounded operands: the CPU's
// float64 conv and matmul of rounded values, within the float32 tolerances of the conv test above.
// Without the rounding the same results are off by far more, so the check sees the flag. The
// CPU's float32 convs and matmul under bf16 must equal them too (on each cpu::Bf16Math the CPU
// has), returning float32.
TEST_CASE("bf16 autocast: GEMMs and convs on the emulated device and the CPU multiply bf16-rounded operands") {
  TestDevice dev;
  const ConvCase cases[] = {
      {"3x3 stride 2, batch 3", 3, 7, 9, 6, 10, 3, 3, 2, 1, 1, 1},
      {"3x3 groups 2", 2, 7, 9, 6, 10, 3, 3, 1, 1, 1, 2},
      {"3x3 dilation 2 (the CPU's input gradient a turned conv)", 2, 9, 8, 20, 32, 3, 3, 1, 2, 2, 1},
      {"2x2 stride 2 (downsample), tile edges", 1, 6, 5, 70, 66, 2, 2, 2, 0, 1, 1},
      {"1x1 (pointwise: a GEMM)", 3, 5, 7, 37, 70, 1, 1, 1, 0, 1, 1},
      {"depthwise 3x3 dilation 2", 2, 9, 7, 6, 6, 3, 3, 1, 2, 2, 6},
      {"depthwise 7x7 stride 2", 1, 11, 13, 5, 5, 7, 7, 2, 3, 1, 5},
      {"depthwise 3x3, 4 channels a thread", 2, 9, 7, 8, 8, 3, 3, 1, 1, 1, 8},
      {"depthwise 7x7 stride 1 (the CPU rounds in its row ring)", 1, 9, 10, 20, 20, 7, 7, 1, 3, 1, 20},
  };
  in_each_schedule([&] {
    for (const ConvCase& cs : cases) {
      INFO(std::string(cs.what));
      const Conv2dGeometry g = cs.geometry();
      const auto [xs, ws, gys] = conv_inputs(cs, 80);
      const ConvOutputs want =
          backend_conv(Device::cpu, DType::f64, g, bf16_rounded(xs), bf16_rounded(ws),
                       bf16_rounded(gys));
      Conv2dGeometry g16 = g;
      g16.precision = Precision::bf16;
      const ConvOutputs got = backend_conv(Device::cuda, DType::f32, g16, xs, ws, gys);
      expect_conv_close("bf16 conv", got, want);
      for_each_bf16_math(
          [&] { expect_conv_close("CPU bf16 conv", backend_conv(Device::cpu, DType::f32, g16, xs, ws, gys), want); });
      const ConvOutputs exact = backend_conv(Device::cpu, DType::f64, g, xs, ws, gys);
      CHECK(max_abs_diff(host(got.y, {int64_t(got.y.size())}),
                         host(exact.y, {int64_t(exact.y.size())})) > 1e-3);
    }
    const auto as = uniform(2 * 45 * 33, 84), bs = uniform(33 * 70, 85);
    const Tensor want = matmul(host(bf16_rounded(as), {2, 45, 33}, DType::f64),
                               host(bf16_rounded(bs), {33, 70}, DType::f64));
    Autocast amp(Device::cuda), cpu_amp(Device::cpu);
    const Tensor got = matmul(on_device(host(as, {2, 45, 33})), on_device(host(bs, {33, 70})));
    CHECK(got.dtype() == DType::bf16);
    expect_close("bf16 matmul", got.to_vector(), want.to_vector(), 2e-2);
    for_each_bf16_math([&] {
      const Tensor on_cpu = matmul(host(as, {2, 45, 33}), host(bs, {33, 70}));
      CHECK(on_cpu.dtype() == DType::f32);
      expect_close("CPU bf16 matmul", on_cpu.to_vector(), want.to_vector(), 1e-5);
      CHECK(max_abs_diff(on_cpu, matmul(host(as, {2, 45, 33}, DType::f64), host(bs, {33, 70}, DType::f64))) > 1e-3);
    });
  });
}

// cuDNN's dense convs at each precision, forced (no timing choice in between), on a real GPU
// (SONO_TEST_DEVICE=gpu); the emulated device has no cuDNN. The shapes that ran our kernels
// with cuDNN forced before its filters were NHWC (MiT's patch embeddings and spatial
// reductions), dilation, groups and odd channels. float32 FMA: float32 tolerances; TF32: each
// operand rounded to 11 significant bits, so within 2^-10 of sum |x w| (<= 4 depth here); bf16
// under autocast: float32 sums of bf16 products, as our kernels; a bfloat16 y within one
// rounding of them.
TEST_CASE("cuDNN dense convs on the GPU: float32 FMA, TF32, bf16 under autocast") {
#ifdef SONO_HAVE_CUDA
  if (!on_real_gpu()) {
    MESSAGE("skipped: cuDNN's convs run only with SONO_TEST_DEVICE=gpu on a GPU");
    return;
  }
  TestDevice dev;
  if (!k::choose_convs("cudnn", false)) {
    MESSAGE("skipped: this build has no cuDNN");
    return;
  }
  const ConvCase cases[] = {
      {"2x2 stride 2, 64 -> 64 (MiT spatial reduction)", 2, 16, 16, 64, 64, 2, 2, 2, 0, 1, 1},
      {"3x3 stride 2 pad 1, 64 -> 128 (MiT patch embed)", 2, 16, 16, 64, 128, 3, 3, 2, 1, 1, 1},
      {"7x7 stride 4 pad 3, 3 -> 64 (MiT patch embed 1)", 2, 32, 32, 3, 64, 7, 7, 4, 3, 1, 1},
      {"3x3 dilation 2 pad 2, 19 -> 21", 2, 9, 8, 19, 21, 3, 3, 1, 2, 2, 1},
      {"3x3 groups 2, 6 -> 10", 2, 7, 9, 6, 10, 3, 3, 1, 1, 1, 2},
  };
  for (const ConvCase& cs : cases) {
    INFO(std::string(cs.what));
    const Conv2dGeometry g = cs.geometry();
    const auto [xs, ws, gys] = conv_inputs(cs, 97);
    const ConvOutputs exact = backend_conv(Device::cpu, DType::f64, g, xs, ws, gys);
    k::choose_convs("cudnn", false);
    const ConvOutputs fma = backend_conv(Device::cuda, DType::f32, g, xs, ws, gys);
    const double depth = double(g.kh * g.kw * g.cin / g.groups);
    // cuDNN's float32 sums run in an order of its choosing (it differs between cuDNN 9.14 and
    // 9.19): the same bound as TF32's below, with float32's 24 bits.
    expect_close("cuDNN FMA forward", fma.y, exact.y, std::max(3e-5, std::ldexp(4 * depth, -24)));
    expect_close("cuDNN FMA backward input", fma.grad_x, exact.grad_x,
                 std::max(3e-5, std::ldexp(4.0 * g.kh * g.kw * g.cout / g.groups, -24)));
    expect_close("cuDNN FMA backward weight", fma.grad_w, exact.grad_w,
                 std::max(1e-4, std::ldexp(4.0 * g.n * g.oh * g.ow, -24)));
    k::choose_convs("cudnn", true);
    const ConvOutputs tf32 = backend_conv(Device::cuda, DType::f32, g, xs, ws, gys);
    expect_close("cuDNN TF32 forward", tf32.y, exact.y, std::ldexp(4 * depth, -10));
    expect_close("cuDNN TF32 backward input", tf32.grad_x, exact.grad_x,
                 std::ldexp(4.0 * g.kh * g.kw * g.cout / g.groups, -10));
    expect_close("cuDNN TF32 backward weight", tf32.grad_w, exact.grad_w,
                 std::ldexp(4.0 * g.n * g.oh * g.ow, -10));
    const ConvOutputs want = backend_conv(Device::cpu, DType::f64, g, bf16_rounded(xs),
                                          bf16_rounded(ws), bf16_rounded(gys));
    Conv2dGeometry g16 = g;
    g16.precision = Precision::bf16;
    const ConvOutputs bf16 = backend_conv(Device::cuda, DType::f32, g16, xs, ws, gys);
    expect_conv_close("cuDNN bf16", bf16, want);
    const Tensor x16 = on_device(host(xs, {g.n, g.h, g.w, g.cin})).to(DType::bf16),
                 w = on_device(host(ws, {g.cout, g.cin / g.groups, g.kh, g.kw}));
    Tensor y16 = Tensor::empty({g.n, g.oh, g.ow, g.cout}, DType::bf16, Device::cuda);
    backend(Device::cuda).conv2d_forward(g16, x16, w, y16);
    const std::vector<double> got16 = y16.to_vector();
    double worst = 0;  // in bf16 ulps of the float32 result, plus the sums' float32 error
    for (size_t i = 0; i < got16.size(); ++i)
      worst = std::max(worst, std::abs(got16[i] - want.y[i]) / (std::ldexp(std::abs(want.y[i]), -8) + 3e-5));
    CHECK(worst <= 1.0);
  }
  k::choose_convs("auto", true);
#else
  MESSAGE("skipped: this build has no CUDA backend");
#endif
}

// Under autocast with float32 activations, linear (+ GELU) is the float32 sum of bf16-rounded
// products plus the bias, as float64 on rounded values says; that its bfloat16 result is this
// rounded once is the bf16 rule of tests/test_cuda_op_parity.cpp's rows (linear, linear_gelu,
// matmul, convs). The input gradient under autocast is float32.
TEST_CASE("bf16 autocast: linear's float32 path is bf16-operand products, its input gradient float32") {
  TestDevice dev;
  const auto xs = uniform(2 * 5 * 33, 86), ws = uniform(70 * 33, 87), bs = uniform(70, 88);
  const Tensor x64 = host(bf16_rounded(xs), {2, 5, 33}, DType::f64),
               w64 = host(bf16_rounded(ws), {70, 33}, DType::f64), b64 = host(bs, {70}).to(DType::f64);
  const Tensor x = on_device(host(xs, {2, 5, 33})), w = on_device(host(ws, {70, 33})),
               b = on_device(host(bs, {70}));
  in_each_schedule([&] {
    Autocast amp(Device::cuda);
    set_autocast_activations(AutocastActivations::f32);
    const Tensor lin32 = linear(x, w, b), gelu32 = linear_gelu(x, w, b);
    set_autocast_activations(AutocastActivations::bf16);
    expect_close("bf16-operand linear", lin32.to_vector(), linear(x64, w64, b64).to_vector(), 1e-5);
    expect_close("bf16-operand linear_gelu", gelu32.to_vector(), gelu(linear(x64, w64, b64)).to_vector(), 1e-5);

    Tensor leaf = x.detach().requires_grad_();
    sum(linear(leaf, w, b)).backward();
    CHECK(leaf.grad().dtype() == DType::f32);
    // d/dx sum(x w^T + b) = column sums of w, of bf16-rounded w.
    const Tensor want_gx = matmul(host(std::vector<double>(2 * 5 * 70, 1.0), {2, 5, 70}, DType::f64), w64);
    expect_close("bf16 linear input gradient", leaf.grad().to_vector(), want_gx.to_vector(), 1e-5);
  });
}

// A tiny ConvNeXt under bf16 autocast on the emulated device, against the CPU's float32 forward
// of the same weights: bf16 keeps 8 significant bits (relative rounding <= 2^-9 = 2e-3 per
// operand), which through the stem, four stages and the head gives a few 1e-3 relative to the
// largest logit; the tolerance is 2e-2. Then AdamW steps under autocast (fp32 master weights
// and moments) must bring the loss down.
TEST_CASE("bf16 autocast: convnext_atto forward near the CPU's float32, and it trains") {
  TestDevice dev;
  manual_seed(1);
  auto model = models::create_model("convnext_atto", {.in_channels = 4, .num_classes = 3});
  Generator gen(2);
  const Tensor x = randn({4, 32, 32, 4}, gen), target = randn({4, 3}, gen);
  model->eval();
  const Tensor want = (*model)(x);
  model->to(Device::cuda);
  Autocast amp(Device::cuda);
  const Tensor got = (*model)(on_device(x)).to(Device::cpu);
  const double err = max_abs_diff(got, want) / max_abs(want);
  MESSAGE("bf16 forward: max |error| / max |logit| = " << err);
  CHECK(err <= 2e-2);
  error_log()["convnext_atto bf16 forward (relative to max)"] = err;

  model->train();
  nn::AdamW optimizer(nn::single_group(*model), {.lr = 1e-3, .weight_decay = 0.05});
  const Tensor xd = on_device(x), td = on_device(target);
  std::vector<double> losses;
  for (int step = 0; step < 5; ++step) {
    optimizer.zero_grad();
    const Tensor diff = sub((*model)(xd), td);
    const Tensor loss = sum(mul(diff, diff));
    loss.backward();
    optimizer.step();
    losses.push_back(loss.item());
  }
  std::ostringstream os;
  for (double l : losses) os << " " << l;
  MESSAGE("bf16 training losses:" << os.str());
  CHECK(losses.back() < 0.5 * losses.front());
  for (auto& [name, p] : model->named_parameters()) CHECK(p.dtype() == DType::f32);
}

// ---- device memory ------------------------------------------------------------------------------

TEST_CASE("caching allocator: size classes, reuse per stream, peak, out-of-memory retry") {
  using k::CachingAllocator;
  CHECK(CachingAllocator::size_class(1) == 512);
  CHECK(CachingAllocator::size_class(513) == 1024);
  CHECK(CachingAllocator::size_class((1 << 20) + 1) == (1 << 20) + (1 << 15));
  CHECK(CachingAllocator::size_class((24 << 20) + 1) == (24 << 20) + (1 << 19));
  CHECK(CachingAllocator::size_class(3 << 20) == 3 << 20);
  size_t budget = (7 << 20) + 1024, device_bytes = 0;  // a pretend device of 7 MiB + 1 KiB
  std::map<void*, size_t> blocks;
  CachingAllocator alloc(
      [&](size_t n) -> void* {
        if (device_bytes + n > budget) return nullptr;
        device_bytes += n;
        void* p = std::malloc(n);
        blocks[p] = n;
        return p;
      },
      [&](void* p) {
        device_bytes -= blocks.at(p);
        blocks.erase(p);
        std::free(p);
      });
  int s1 = 0, s2 = 0;  // two streams
  void* a = alloc.allocate(1000, &s1);
  alloc.free(a);
  CHECK(alloc.allocate(900, &s1) == a);  // same class, same stream: reused
  void* b = alloc.allocate(900, &s2);    // another stream: not that block
  CHECK(b != a);
  CHECK(alloc.stats().device_allocations == 2);
  CHECK(alloc.stats().in_use == 2048);
  alloc.free(a);
  alloc.free(b);
  CHECK(alloc.stats().cached == 2048);
  CHECK(alloc.stats().peak == 2048);
  void* big = alloc.allocate(7 << 20, &s1);  // needs the cache given back first
  CHECK(alloc.stats().cached == 0);
  CHECK_THROWS_WITH_AS(alloc.allocate(2 << 20, &s1),
                       doctest::Contains("CUDA: out of memory allocating 2.00 MiB"), Error);
  alloc.free(big);
  alloc.release_cached();
  CHECK(device_bytes == 0);
  CHECK(alloc.report().find("peak 7.00 MiB") != std::string::npos);
}

#ifdef SONO_HAVE_CUDA
// The real backend, linked in CUDA builds. Without a GPU, the first allocation must fail with
// a message naming the failing CUDA call; with one, its kernels must agree with the CPU.
TEST_CASE("CUDA backend: registered, clear errors without a GPU, CPU results with one") {
  CHECK(std::string(backend(Device::cuda).name()) == "cuda");
  if (sono::cuda::device_count() == 0) {
    // The stream is created first: "CUDA: cudaStreamCreateWithFlags(...) failed: ..."
    CHECK_THROWS_WITH_AS(Tensor::zeros({4}, DType::f32, Device::cuda),
                         doctest::Contains(") failed: "), Error);
    return;
  }
  const Tensor x = host(uniform(3 * 45, 50), {3, 45}), w = host(uniform(45 * 7, 51), {45, 7});
  const Tensor xd = x.to(Device::cuda);
  expect_close("real device gelu + sum", sum(gelu(xd), {1}).to_vector(),
               sum(gelu(x), {1}).to_vector(), 1e-5);
  expect_close("real device gemm", matmul(xd, w.to(Device::cuda)).to_vector(),
               matmul(x, w).to_vector(), 1e-5);
  MESSAGE("device memory: " << sono::cuda::memory_report());
}

// cuBLAS is opened on the first GEMM, not linked (cuda/shared_library.h): every function the
// backend calls must be found in the library of the headers' major version, GPU or not.
TEST_CASE("CUDA backend: cuBLAS opens on demand with every function it calls") {
  CHECK(sono::cuda::cublas_unavailable_reason() == "");
}

TEST_CASE("SharedLibrary names the library or the function that is missing") {
  sono::cuda::SharedLibrary missing("libsono_no_such_library.so.1");
  void (*f)() = nullptr;
  missing.find("anything", f);
  CHECK(!f);
  CHECK(missing.error().rfind("cannot open libsono_no_such_library.so.1 (", 0) == 0);
  sono::cuda::SharedLibrary libc("libc.so.6");
  size_t (*length)(const char*) = nullptr;
  libc.find("strlen", length);
  CHECK(libc.error() == "");
  REQUIRE(bool(length));
  CHECK(length("four") == 4);
  libc.find("sono_no_such_function", f);
  libc.find("sono_second_missing_function", f);
  CHECK(libc.error() == "libc.so.6 has no sono_no_such_function");
}
#endif

// Prints the largest error per kernel over all schedules when the run ends (a listener, not a
// test case: it checks nothing).
struct ErrorReport : doctest::IReporter {
  explicit ErrorReport(const doctest::ContextOptions&) {}
  void test_run_end(const doctest::TestRunStats&) override {
    if (error_log().empty()) return;
    std::cout << "max errors (|got - want| / max(1, |want|)):\n";
    for (const auto& [kernel, err] : error_log()) std::cout << "  " << kernel << ": " << err << "\n";
  }
  void report_query(const doctest::QueryData&) override {}
  void test_run_start() override {}
  void test_case_start(const doctest::TestCaseData&) override {}
  void test_case_reenter(const doctest::TestCaseData&) override {}
  void test_case_end(const doctest::CurrentTestCaseStats&) override {}
  void test_case_exception(const doctest::TestCaseException&) override {}
  void subcase_start(const doctest::SubcaseSignature&) override {}
  void subcase_end() override {}
  void log_assert(const doctest::AssertData&) override {}
  void log_message(const doctest::MessageData&) override {}
  void test_case_skipped(const doctest::TestCaseData&) override {}
};
REGISTER_LISTENER("kernel_errors", 1, ErrorReport);

}  // namespace
}  // namespace sono::test
