// At the shape of ConvNeXt-Base's stage-2 Mlp hidden layer ([8*28*28, 1024]), float32, CPU
// backend: GELU forward and backward from a given output gradient, alone, after a separate bias
// add (a Linear's bias, as the models ran before bias_gelu), and fused with the bias; and the
// column sum that is a bias's gradient.
#include <benchmark/benchmark.h>

#include "autograd/node.h"
#include "tensor/ops.h"

namespace {

using namespace sono;

constexpr int64_t kRows = 8 * 28 * 28, kCols = 1024;

Tensor random_f32(const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  return randn(shape, gen, DType::f32);
}

// Times op(x, bias) forward and backward; bytes: read x, write y, read x and dy, write dx.
template <typename Op>
void forward_backward(benchmark::State& state, Op op) {
  Tensor x = random_f32({kRows, kCols}, 1).requires_grad_(),
         bias = random_f32({kCols}, 2).requires_grad_(), grad_y = random_f32({kRows, kCols}, 3);
  for (auto _ : state) {
    x.zero_grad();
    bias.zero_grad();
    autograd::run_backward(op(x, bias), grad_y);
    benchmark::DoNotOptimize(x.grad().raw_data());
  }
  state.SetBytesProcessed(state.iterations() * 5 * kRows * kCols *
                          static_cast<int64_t>(sizeof(float)));
}

void BM_GeluForwardBackward(benchmark::State& state) {
  forward_backward(state, [](const Tensor& x, const Tensor&) { return gelu(x); });
}
void BM_BiasGeluForwardBackward_Unfused(benchmark::State& state) {
  forward_backward(state, [](const Tensor& x, const Tensor& b) { return gelu(add(x, b)); });
}
void BM_BiasGeluForwardBackward(benchmark::State& state) {
  forward_backward(state, [](const Tensor& x, const Tensor& b) { return bias_gelu(x, b); });
}

void BM_SumRows(benchmark::State& state) {
  Tensor x = random_f32({kRows, kCols}, 4);
  autograd::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(sum(x, {0}).raw_data());
  state.SetBytesProcessed(state.iterations() * kRows * kCols * static_cast<int64_t>(sizeof(float)));
}

BENCHMARK(BM_GeluForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BiasGeluForwardBackward_Unfused)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_BiasGeluForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_SumRows)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
