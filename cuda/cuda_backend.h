#pragma once
// The CUDA backend's host API, in plain C++ (no CUDA headers). When sono_cuda is linked
// (SONO_HAVE_CUDA), the backend registers itself as Device::cuda at startup; it touches the GPU
// only when a tensor is first put there.
#include <string>

#include "cuda/allocator.h"

namespace sono::cuda {

int device_count();  // 0 where there is no usable GPU (or no driver)
MemoryStats memory_stats();
std::string memory_report();  // "in use ..., peak ..., cached ..., N device allocations"
// Why cuBLAS cannot be used ("" where it can): its library, opened on the first GEMM, or one of
// the functions the backend calls missing (cublas_library.h).
std::string cublas_unavailable_reason();
void reset_peak_memory();
void release_cached_memory();  // gives cached blocks back to the device
void synchronize();            // waits for all work queued on the backend's stream
// The backend's cudaStream_t, for libraries whose work must order with the backend's (NCCL).
void* stream_handle();
// The GPU of this process's tensors, before the first is put there: one of several, for the
// rank of a data-parallel job (tools/app/distributed.h) on that machine.
void use_device(int index);
// Marks the work a profiler started with `--profile-from-start off` (ncu) should see: on after
// the warm-up steps, so that cuDNN's algorithm search is not counted as a step's time.
void set_profiling(bool on);
// Replaces SONO_CONV_IMPL (auto, ours, cudnn) and SONO_ALLOW_TF32 for the dense convs that
// follow, forgetting the per-shape choices so far (tests). False where this build has no cuDNN.
bool choose_convs(const std::string& impl, bool allow_tf32);

}  // namespace sono::cuda
