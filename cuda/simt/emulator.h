#pragma once
// A SIMT emulator: runs CUDA kernel source, compiled by a host C++ compiler, on the CPU.
//
// Every CUDA thread of a block is a fiber; the blocks of a grid run one after another. A fiber
// runs until it reaches a barrier (__syncthreads, or a _sync warp intrinsic), then the next
// fiber runs; the order in which ready fibers run is the schedule (forward, reversed or
// shuffled), so a missing barrier shows up as a wrong result in some schedule. Barriers are
// checked: threads waiting at different barriers, a thread leaving while others wait at a
// __syncthreads, a warp intrinsic that can never complete, all raise simt::Fault with the
// kernel, block, threads and source lines involved. As in CUDA, a _sync intrinsic waits for the
// non-exited lanes of its mask; a shuffle reading an exited or absent lane gets NaN (or -1).
//
// Static __shared__ variables become function statics: shared by the fibers of a block, and
// they keep the previous block's values (no way to poison them: a section attribute is dropped
// for template instantiations). The dynamic shared buffer (DYNAMIC_SMEM, cuda/kernels/
// common.cuh) is poisoned with NaN before every block. As shared memory is then global, one
// grid runs at a time in the process (a global lock).
#ifdef __CUDACC__
#error "cuda/simt/emulator.h is for host compilers; nvcc compiles kernels for the real device"
#endif

#include <math.h>

#include <atomic>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>

// ---- the CUDA language, as far as our kernels use it --------------------------------------------

#define __global__
#define __device__
#define __host__
#define __constant__
#define __forceinline__ inline __attribute__((always_inline))
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))
#define __shared__ static

struct uint3 {
  unsigned x, y, z;
};
struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
inline float2 make_float2(float x, float y) { return {x, y}; }
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

typedef struct CUstream_st* cudaStream_t;

// The running fiber's coordinates (set by the scheduler at every switch).
extern uint3 threadIdx;
extern uint3 blockIdx;
extern dim3 blockDim;
extern dim3 gridDim;
constexpr int warpSize = 32;

namespace simt {

// Raised for every misuse the emulator detects; the message says which kernel, block, threads
// and lines.
struct Fault : std::runtime_error {
  using std::runtime_error::runtime_error;
};

enum class Schedule { forward, reversed, shuffled };
const char* schedule_name(Schedule s);
// The order in which ready threads (and blocks) run; shuffled draws from a generator seeded
// with `seed` here, so a run is reproducible.
void set_schedule(Schedule s, uint64_t seed = 1);
Schedule schedule();

// What a warp-synchronous intrinsic does once every lane of its mask has arrived.
enum class WarpOp { shfl_idx, shfl_xor, sync };

// Runs body(ctx) once for every thread of every block (a kernel launch); body reads
// threadIdx/blockIdx. Throws Fault on a misused barrier or an invalid launch configuration.
void run_grid_impl(const char* kernel, dim3 grid, dim3 block, size_t dynamic_smem_bytes,
                   void (*body)(void*), void* ctx);

template <typename F>
void run_grid(const char* kernel, dim3 grid, dim3 block, size_t dynamic_smem_bytes, F&& body) {
  run_grid_impl(kernel, grid, block, dynamic_smem_bytes,
                [](void* c) { (*static_cast<std::remove_reference_t<F>*>(c))(); }, &body);
}

// The running block's dynamic shared memory (poisoned with NaN before each block).
void* dynamic_smem();

// Barrier entry points behind the CUDA names below.
void syncthreads(const char* file, int line);
uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* name,
                 const char* file, int line);

template <typename T>
uint64_t to_bits(T v) {
  static_assert(sizeof(T) <= 8 && std::is_trivially_copyable_v<T>, "warp shuffles move <= 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, &v, sizeof(T));
  return bits;
}
template <typename T>
T from_bits(uint64_t bits) {
  T v;
  std::memcpy(&v, &bits, sizeof(T));
  return v;
}

}  // namespace simt

// ---- barriers and warp intrinsics ---------------------------------------------------------------

inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  simt::syncthreads(file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  simt::warp_op(simt::WarpOp::sync, mask, 0, 0, 32, "__syncwarp", file, line);
}

#define SIMT_SHUFFLE(name, op)                                                                \
  template <typename T>                                                                     \
  T name(unsigned mask, T var, int arg, int width = 32, const char* file = __builtin_FILE(), \
         int line = __builtin_LINE()) {                                                     \
    return simt::from_bits<T>(                                                              \
        simt::warp_op(op, mask, simt::to_bits(var), arg, width, #name, file, line));        \
  }
SIMT_SHUFFLE(__shfl_sync, simt::WarpOp::shfl_idx)
SIMT_SHUFFLE(__shfl_xor_sync, simt::WarpOp::shfl_xor)
#undef SIMT_SHUFFLE


// ---- atomics (fibers switch only at barriers, but host threads may share memory too) ------------

template <typename T>
T atomicAdd(T* address, T value) {
  if constexpr (std::is_integral_v<T>) {
    return __atomic_fetch_add(address, value, __ATOMIC_RELAXED);
  } else {
    T old, sum;
    __atomic_load(address, &old, __ATOMIC_RELAXED);
    do {
      sum = old + value;
    } while (!__atomic_compare_exchange(address, &old, &sum, false, __ATOMIC_RELAXED,
                                        __ATOMIC_RELAXED));
    return old;
  }
}

// ---- device math: the round-to-nearest intrinsics (kept apart from FMA contraction on the GPU)

inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline unsigned __float_as_uint(float x) { return simt::from_bits<unsigned>(simt::to_bits(x)); }
inline float __uint_as_float(unsigned x) { return simt::from_bits<float>(simt::to_bits(x)); }
