// The CUDA backend: our kernels (KernelBackend), device memory from the caching allocator,
// host<->device transfers, cuBLAS for GEMM (GemmEx on bfloat16 operands under bf16 autocast),
// and, where cuDNN is built in, cuDNN or our kernel per dense-conv shape (conv_impl.h).
// All work goes to one stream, created on first use,
// so memory freed to the allocator may be reused by the next kernel without events.
#include <cuda_profiler_api.h>

#include <climits>
#include <cstdio>
#include <memory>
#include <mutex>
#include <optional>

#include "cuda/cuda_backend.h"
#include "cuda/check.h"
#include "cuda/cublas_library.h"
#include "cuda/kernel_backend.cuh"
#ifdef SONO_HAVE_CUDNN
#include "cuda/cudnn/conv.h"
#endif

namespace sono::cuda {

namespace {

// cudaMalloc, with out-of-memory reported as nullptr (the allocator then frees its cache).
void* device_malloc(size_t bytes) {
  void* p = nullptr;
  const cudaError_t status = cudaMalloc(&p, bytes);
  if (status == cudaErrorMemoryAllocation) {
    cudaGetLastError();  // clear it: the allocator retries
    return nullptr;
  }
  if (status != cudaSuccess) fail_call("cudaMalloc", status);
  return p;
}

int checked_int(int64_t v, const char* what) {
  SONO_CHECK(v <= INT_MAX, "CUDA gemm: ", what, " ", v, " exceeds cuBLAS's int range");
  return static_cast<int>(v);
}

// gemm()'s arguments as cuBLAS takes them, for c^T = op(b)^T op(a)^T in column-major terms.
struct CublasGemm {
  cublasOperation_t op_a, op_b;
  int rows, cols, inner, lda, ldb, batches;
  long long stride_a, stride_b, stride_c;

  CublasGemm(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c) {
    const int64_t m = c.size(1), n = c.size(2), k = ta ? a.size(1) : a.size(2);
    SONO_CHECK((ta ? a.size(2) : a.size(1)) == m && (tb ? b.size(2) : b.size(1)) == k &&
                   (tb ? b.size(1) : b.size(2)) == n,
               "CUDA gemm: ", shape_str(a.shape()), (ta ? "^T" : ""), " x ", shape_str(b.shape()),
               (tb ? "^T" : ""), " does not give ", shape_str(c.shape()));
    op_a = ta ? CUBLAS_OP_T : CUBLAS_OP_N;
    op_b = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
    stride_a = a.size(0) == 1 ? 0 : a.size(1) * a.size(2);
    stride_b = b.size(0) == 1 ? 0 : b.size(1) * b.size(2);
    stride_c = m * n;
    rows = checked_int(n, "n");
    cols = checked_int(m, "m");
    inner = checked_int(k, "k");
    lda = checked_int(a.size(2), "lda");
    ldb = checked_int(b.size(2), "ldb");
    batches = checked_int(c.size(0), "batch");
  }
};

class CudaBackend final : public KernelBackend {
 public:
  CudaBackend() : allocator_(device_malloc, [](void* p) { cudaFree(p); }) {}

  const char* name() const override { return "cuda"; }
  void* allocate(size_t nbytes) override { return allocator_.allocate(nbytes, stream()); }
  void deallocate(void* ptr) override { allocator_.free(ptr); }

  // c[i] = alpha op(a[i]) op(b[i]) + beta c[i], row-major. cuBLAS is column-major, where the
  // same bytes hold the transposes: compute c^T = op(b)^T op(a)^T instead (operands swapped).
  void gemm_native(const Tensor& a, bool ta, const Tensor& b, bool tb, const Tensor& c,
                   double alpha, double beta) override {
    const CublasGemm g(a, ta, b, tb, c);
    if (c.dtype() == DType::f64) {
      const double al = alpha, be = beta;
      SONO_CUDA_CHECK(cublas_functions().dgemm_strided_batched(
          cublas(), g.op_b, g.op_a, g.rows, g.cols, g.inner, &al, b.data<double>(), g.ldb,
          g.stride_b, a.data<double>(), g.lda, g.stride_a, &be, c.data<double>(), g.rows,
          g.stride_c, g.batches));
    } else {
      const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
      SONO_CUDA_CHECK(cublas_functions().sgemm_strided_batched(
          cublas(), g.op_b, g.op_a, g.rows, g.cols, g.inner, &al, b.data<float>(), g.ldb,
          g.stride_b, a.data<float>(), g.lda, g.stride_a, &be, c.data<float>(), g.rows,
          g.stride_c, g.batches));
    }
  }
  // Mixed precision: bfloat16 operands on the tensor cores, float32 accumulation, a float32 or
  // bfloat16 (autocast's activations, rounded once) result.
  void gemm_bf16(const Tensor& a, const bfloat16* a16, bool ta, const Tensor& b,
                 const bfloat16* b16, bool tb, const Tensor& c, double alpha,
                 double beta) override {
    const CublasGemm g(a, ta, b, tb, c);
    const float al = static_cast<float>(alpha), be = static_cast<float>(beta);
    const cudaDataType c_type = c.dtype() == DType::bf16 ? CUDA_R_16BF : CUDA_R_32F;
    SONO_CHECK(c.dtype() == DType::bf16 || c.dtype() == DType::f32,
               "CUDA gemm: bfloat16 operands give float32 or bfloat16, not ",
               dtype_name(c.dtype()));
    SONO_CUDA_CHECK(cublas_functions().gemm_strided_batched_ex(
        cublas(), g.op_b, g.op_a, g.rows, g.cols, g.inner, &al, b16, CUDA_R_16BF, g.ldb,
        g.stride_b, a16, CUDA_R_16BF, g.lda, g.stride_a, &be, c.raw_data(), c_type, g.rows,
        g.stride_c, g.batches, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
  }

#ifdef SONO_HAVE_CUDNN
  // FLOPs and the bytes of input, weight and output, float32 (whichever pass; all three cost
  // about the same); on tensor cores unless the precision is plain float32.
  static LaunchCost cudnn_conv_cost(const Conv2dGeometry& g, ConvPrecision precision) {
    const double outputs = static_cast<double>(g.n) * g.oh * g.ow * g.cout;
    const double weights = static_cast<double>(g.cout) * (g.cin / g.groups) * g.kh * g.kw;
    LaunchCost cost;
    cost.flops = 2 * outputs * weights / g.cout;
    cost.bytes_read = 4 * (static_cast<double>(g.n) * g.h * g.w * g.cin + weights);
    cost.bytes_written = 4 * outputs;
    cost.tensor_cores = precision != ConvPrecision::f32;
    return cost;
  }

  // Every dense conv pass goes to the per-shape choice between ours and cuDNN, at its
  // precision (conv_impl.h); ours alone where cuDNN cannot start (said once on stderr).
  void dense_conv(ConvPass pass, const Conv2dGeometry& g, const Tensor& a, const Tensor& b,
                  const Tensor& out, const std::function<void()>& ours) override {
    std::call_once(cudnn_once_, [this] { start_cudnn(); });
    if (!cudnn_) return ours();
    const ConvPrecision precision = conv_precision(g, a, b, out);
    conv_impls_->run({pass, g, precision}, [&](ConvImpl impl, bool timed) {
      return timed_run(timed, [&] {
        if (impl == ConvImpl::ours) {
          ours();
          return true;
        }
        if (audit_library("cudnn_conv", cudnn_conv_cost(g, precision))) return true;
        return cudnn_conv(pass, g, precision, a, b, out);
      });
    });
  }
  // cuda::choose_convs (backend.h).
  void choose_convs(ConvPolicy policy, bool allow_tf32) {
    std::call_once(cudnn_once_, [this] { start_cudnn(); });
    choose(policy, allow_tf32);
  }
#endif

  void synchronize() override { SONO_CUDA_CHECK(cudaStreamSynchronize(stream())); }

  cudaStream_t stream() const override {
    std::call_once(stream_once_, [this] {
      SONO_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    });
    return stream_;
  }

  CachingAllocator& allocator() { return allocator_; }

 protected:
  void transfer(void* dst, const void* src, size_t bytes, bool to_device) override {
    SONO_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes,
                                    to_device ? cudaMemcpyHostToDevice : cudaMemcpyDeviceToHost,
                                    stream()));
    // Pageable uploads return once the host buffer is staged; downloads must land first.
    if (!to_device) SONO_CUDA_CHECK(cudaStreamSynchronize(stream()));
  }

 private:
  cublasHandle_t cublas() {
    std::call_once(cublas_once_, [this] {
      SONO_CUDA_CHECK(cublas_functions().create(&cublas_));
      SONO_CUDA_CHECK(cublas_functions().set_stream(cublas_, stream()));
    });
    return cublas_;
  }

#ifdef SONO_HAVE_CUDNN
  void start_cudnn() { choose(conv_policy_from_env(), allow_tf32_from_env()); }
  void choose(ConvPolicy policy, bool allow_tf32) {
    allow_tf32_ = allow_tf32;
    conv_impls_.emplace(policy);
    if (policy == ConvPolicy::ours || cudnn_) return;  // no cuDNN handle wanted, or one exists
    try {
      cudnn_ = std::make_unique<CudnnConv>(stream());
    } catch (const Error& e) {
      std::fprintf(stderr, "sono: cuDNN unavailable, convolutions run our kernels: %s\n", e.what());
    }
  }

  // At bf16 precision (or given bfloat16 activations) a pass multiplies bf16 operands: natively
  // where its result is a bfloat16 activation, exactly in TF32 where it is float32.
  ConvPrecision conv_precision(const Conv2dGeometry& g, const Tensor& a, const Tensor& b,
                               const Tensor& out) const {
    const bool bf16 = g.precision == Precision::bf16 || a.dtype() == DType::bf16 ||
                      b.dtype() == DType::bf16 || out.dtype() == DType::bf16;
    if (bf16) return out.dtype() == DType::bf16 ? ConvPrecision::bf16 : ConvPrecision::bf16_exact;
    return allow_tf32_ ? ConvPrecision::tf32 : ConvPrecision::f32;
  }

  // cuDNN's operands for the pass (cuda/cudnn/conv.h): the activations (x, grad_y) as they are,
  // in bfloat16 or bf16-rounded per the precision; the weight, or the weight gradient, in
  // cuDNN's NHWC filter layout, through scratch.
  bool cudnn_conv(ConvPass pass, const Conv2dGeometry& g, ConvPrecision precision,
                  const Tensor& a, const Tensor& b, const Tensor& out) {
    const ConvGeometry cg = dense(g);
    const int64_t weights = g.cout * (g.cin / g.groups) * g.kh * g.kw;
    const bool bf16 = precision == ConvPrecision::bf16, exact = precision == ConvPrecision::bf16_exact;
    const size_t element = bf16 ? sizeof(bfloat16) : sizeof(float);
    Buffer a_copy(*this, bf16 || exact ? a.numel() * element : 0);
    Buffer b_copy(*this, pass == ConvPass::backward_weight && !exact ? 0 : b.numel() * element);
    Buffer filter_out(*this, pass == ConvPass::backward_weight ? weights * sizeof(float) : 0);
    const void* a_data = activation_operand(a, precision, a_copy);
    const void* b_data = b.raw_data();
    if (pass == ConvPass::backward_weight) {
      b_data = activation_operand(b, precision, b_copy);
    } else {
      if (bf16) filter_to_cudnn(cg, b.data<float>(), b_copy.bf16(), false, stream());
      else filter_to_cudnn(cg, b.data<float>(), b_copy.floats(), exact, stream());
      b_data = b_copy.data;
    }
    void* out_data = pass == ConvPass::backward_weight ? filter_out.data : out.raw_data();
    const bool ran = cudnn_->run(pass, g, precision, a_data, b_data, out_data,
                                 [this](size_t bytes, const std::function<void(void*)>& use) {
                                   with_workspace(bytes, use);
                                 });
    if (ran && pass == ConvPass::backward_weight)
      filter_from_cudnn(cg, filter_out.floats(), out.data<float>(), stream());
    return ran;
  }

  // An activation operand at the precision: float32 as it is (f32, tf32), bfloat16 (bf16: a
  // bfloat16 tensor as it is, a float32 one converted), or bf16-rounded float32 (bf16_exact).
  const void* activation_operand(const Tensor& t, ConvPrecision precision, const Buffer& copy) {
    const bool is_bf16 = t.dtype() == DType::bf16;
    switch (precision) {
      case ConvPrecision::f32:
      case ConvPrecision::tf32: return t.raw_data();
      case ConvPrecision::bf16:
        if (is_bf16) return t.raw_data();
        bf16_convert(t.numel(), t.data<float>(), copy.bf16(), stream());
        return copy.data;
      case ConvPrecision::bf16_exact:
        if (is_bf16) bf16_rounded(t.numel(), static_cast<const bfloat16*>(t.raw_data()), copy.floats(), stream());
        else bf16_rounded(t.numel(), t.data<float>(), copy.floats(), stream());
        return copy.data;
    }
    return nullptr;
  }

  // Device scratch for the duration of use(pointer).
  void with_workspace(size_t bytes, const std::function<void(void*)>& use) {
    void* ws = bytes ? allocate(bytes) : nullptr;
    std::unique_ptr<void, std::function<void(void*)>> held(ws, [this](void* p) {
      if (p) deallocate(p);
    });
    use(ws);
  }
#endif

  // Runs f (false: it could not take the shape); with `timed`, returns the milliseconds the
  // stream spent on it, waiting for it to finish.
  template <typename F>
  std::optional<double> timed_run(bool timed, F&& f) {
    if (!timed) return f() ? std::optional(0.0) : std::nullopt;
    cudaEvent_t start, stop;
    SONO_CUDA_CHECK(cudaEventCreate(&start));
    SONO_CUDA_CHECK(cudaEventCreate(&stop));
    SONO_CUDA_CHECK(cudaEventRecord(start, stream()));
    const bool ran = f();
    SONO_CUDA_CHECK(cudaEventRecord(stop, stream()));
    SONO_CUDA_CHECK(cudaEventSynchronize(stop));
    float ms = 0;
    SONO_CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
    cudaEventDestroy(start);
    cudaEventDestroy(stop);
    return ran ? std::optional<double>(ms) : std::nullopt;
  }

  // Blocks live until the process ends: freeing at exit would race the runtime's own teardown.
  CachingAllocator allocator_;
#ifdef SONO_HAVE_CUDNN
  std::once_flag cudnn_once_;
  std::optional<ConvImplCache> conv_impls_;
  std::unique_ptr<CudnnConv> cudnn_;
  bool allow_tf32_ = true;
#endif
  mutable std::once_flag stream_once_, cublas_once_;
  mutable cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
};

CudaBackend& instance() {
  static CudaBackend backend;
  return backend;
}

[[maybe_unused]] const bool registered = [] {
  register_backend(Device::cuda, &instance());
  return true;
}();

}  // namespace

int device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

MemoryStats memory_stats() { return instance().allocator().stats(); }
std::string memory_report() { return instance().allocator().report(); }
void reset_peak_memory() { instance().allocator().reset_peak(); }
void release_cached_memory() { instance().allocator().release_cached(); }
void synchronize() { SONO_CUDA_CHECK(cudaStreamSynchronize(instance().stream())); }
void* stream_handle() { return instance().stream(); }
void use_device(int index) { SONO_CUDA_CHECK(cudaSetDevice(index)); }

void set_profiling(bool on) {
  synchronize();
  SONO_CUDA_CHECK(on ? cudaProfilerStart() : cudaProfilerStop());
}

bool choose_convs(const std::string& impl, bool allow_tf32) {
#ifdef SONO_HAVE_CUDNN
  instance().choose_convs(conv_policy_from(impl.c_str()), allow_tf32);
  return true;
#else
  (void)impl, (void)allow_tf32;
  return false;
#endif
}

}  // namespace sono::cuda

// Named by the linker option --undefined in cuda/CMakeLists.txt: keeps this object, and with it
// the registration above, in every program that links sono_cuda.
extern "C" {
int sono_cuda_backend_linked = 0;
}
