// GEMM and AdamW at the shapes the models run, float32 (and the GEMMs with bf16 products) on the
// CPU backend; torch_ops_bench.py times the float32 cases in PyTorch under the same names.
// GEMM: the pointwise Linear layers (ConvNeXt-Base MLP fc1 at stages 1 and 3 for batch 8 at
// 224x224, MiT-B2 stage-1 Mix-FFN fc1 for batch 8 at 256x256) and the weight gradient of the
// first (grad_out^T x, the transposed GEMM of every Linear backward).
// AdamW: one 4096x1024 weight (ConvNeXt-Base stage-4 fc1), and every parameter of
// ConvNeXt-Base (4 input channels, 3 classes) as a training step sees them.
#include <benchmark/benchmark.h>

#include "autograd/node.h"
#include "models/registry.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "tensor/ops.h"

namespace {

using namespace sono;

Tensor random_f32(const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  return randn(shape, gen, DType::f32);
}

void set_gemm_flops(benchmark::State& state, int64_t m, int64_t k, int64_t n) {
  state.counters["GFLOP/s"] =
      benchmark::Counter(static_cast<double>(state.iterations()) * 2.0 * m * k * n,
                         benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}

// Args: rows (tokens), in features, out features. y = x W^T + b.
void BM_Linear(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  Tensor x = random_f32({m, k}, 1), w = random_f32({n, k}, 2), b = random_f32({n}, 3);
  autograd::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(linear(x, w, b).raw_data());
  set_gemm_flops(state, m, k, n);
}

// BM_Linear under bf16 autocast: the GEMM's operands read as bfloat16 (AMX tiles or AVX512-BF16
// dot products where the CPU has them), float32 accumulation and output.
void BM_LinearBf16(benchmark::State& state) {
  Autocast bf16(Device::cpu);
  BM_Linear(state);
}

// Args as BM_Linear. grad_W [out, in] = grad_y^T [out, rows] x [rows, in]: the backend GEMM with
// a transposed left operand, as Linear's backward runs it.
void BM_LinearWeightGrad(benchmark::State& state) {
  const int64_t m = state.range(0), k = state.range(1), n = state.range(2);
  Tensor x = random_f32({1, m, k}, 1), grad_y = random_f32({1, m, n}, 2);
  Tensor grad_w = Tensor::empty({1, n, k});
  for (auto _ : state) {
    backend_of(x).gemm(grad_y, true, x, false, grad_w, 1.0, 0.0, Precision::f32);
    benchmark::DoNotOptimize(grad_w.raw_data());
  }
  set_gemm_flops(state, m, k, n);
}

struct AdamWState {
  std::vector<Tensor> params, grads, exp_avg, exp_avg_sq;
  int64_t elements = 0;

  void add(const Shape& shape, uint64_t seed) {
    params.push_back(random_f32(shape, seed));
    grads.push_back(random_f32(shape, seed + 1));
    exp_avg.push_back(Tensor::zeros(shape));
    exp_avg_sq.push_back(Tensor::zeros(shape));
    elements += shape_numel(shape);
  }
};

// One AdamW step over every tensor of `s` (lr 1e-4, betas .9/.999, eps 1e-8, weight decay .05).
void run_adamw(benchmark::State& state, AdamWState& s) {
  int64_t step = 0;
  for (auto _ : state) {
    ++step;
    for (size_t i = 0; i < s.params.size(); ++i)
      backend_of(s.params[i]).adamw_step(s.params[i], s.grads[i], s.exp_avg[i], s.exp_avg_sq[i],
                                         1e-4, 0.9, 0.999, 1e-8, 0.05, step);
  }
  // Reads param, grad, m, v and writes param, m, v: 7 floats per element.
  state.SetBytesProcessed(state.iterations() * s.elements * 7 * static_cast<int64_t>(sizeof(float)));
}

void BM_AdamW_OneWeight(benchmark::State& state) {
  AdamWState s;
  s.add({4096, 1024}, 1);
  run_adamw(state, s);
}

void BM_AdamW_ConvNeXtBase(benchmark::State& state) {
  AdamWState s;
  auto model = models::create_model("convnext_base", {4, 3, 0.0});
  uint64_t seed = 1;
  for (const Tensor& p : model->parameters()) s.add(p.shape(), seed += 2);
  model.reset();  // only the shapes were needed
  run_adamw(state, s);
}

struct GemmCase {
  const char* name;
  int64_t m, k, n;
};
constexpr GemmCase kGemmCases[] = {{"convnext_s1_fc1", 8 * 56 * 56, 128, 512},
                                   {"convnext_s3_fc1", 8 * 14 * 14, 512, 2048},
                                   {"mit_b2_s1_fc1", 8 * 64 * 64, 64, 256},
                                   // batch 1: few rows against a wide weight
                                   {"convnext_s3_fc1_b1", 7 * 7, 1024, 4096},
                                   {"convnext_s2_fc2_b1", 14 * 14, 2048, 512},
                                   // MiT-B2 batch 1 at 256 (stage 4 at 16 x 16, output stride 16)
                                   {"mit_b2_s1_fc2_b1", 64 * 64, 256, 64},
                                   {"mit_b2_s4_fc1_b1", 16 * 16, 512, 2048},
                                   {"mit_b2_s4_fc2_b1", 16 * 16, 2048, 512},
                                   {"mit_b2_s4_q_b1", 16 * 16, 512, 512}};

// Every Linear case forward, and the first one's weight gradient.
bool register_gemm_cases() {
  auto add = [](const std::string& name, void (*fn)(benchmark::State&), const GemmCase& c) {
    benchmark::RegisterBenchmark(name.c_str(), fn)
        ->ArgNames({"M", "K", "N"})
        ->Args({c.m, c.k, c.n})
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  };
  for (const GemmCase& c : kGemmCases) add(std::string("BM_Linear/") + c.name, BM_Linear, c);
  for (const GemmCase& c : kGemmCases) add(std::string("BM_LinearBf16/") + c.name, BM_LinearBf16, c);
  add(std::string("BM_LinearWeightGrad/") + kGemmCases[0].name, BM_LinearWeightGrad, kGemmCases[0]);
  return true;
}
const bool gemm_cases_registered = register_gemm_cases();

BENCHMARK(BM_AdamW_OneWeight)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_AdamW_ConvNeXtBase)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
