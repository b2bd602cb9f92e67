// LayerNorm and attention at the shapes the models run: ConvNeXt-Base stage-1 tokens
// ([8*56*56, 128]) and MiT-B2's efficient attention at stage 1 (1 head, 64x64 queries against
// 8x8 reduced keys) and stage 4 (8 heads, 16x16 tokens). float32, CPU backend.
#include <benchmark/benchmark.h>

#include "autograd/node.h"
#include "tensor/ops.h"

namespace {

using namespace sono;

Tensor random_f32(const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  return randn(shape, gen, DType::f32);
}

void set_bytes(benchmark::State& state, int64_t elements_touched) {
  state.SetBytesProcessed(state.iterations() * elements_touched * static_cast<int64_t>(sizeof(float)));
}

void BM_LayerNormForward(benchmark::State& state) {
  const int64_t rows = 8 * 56 * 56, c = 128;
  Tensor x = random_f32({rows, c}, 1), w = random_f32({c}, 2), b = random_f32({c}, 3);
  autograd::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(layer_norm(x, w, b, 1e-6).raw_data());
  set_bytes(state, 2 * rows * c);  // read x, write y
}

// Seeded with a given output gradient, so the time is LayerNorm's, not a loss reduction's.
void BM_LayerNormForwardBackward(benchmark::State& state) {
  const int64_t rows = 8 * 56 * 56, c = 128;
  Tensor x = random_f32({rows, c}, 1).requires_grad_(), w = random_f32({c}, 2).requires_grad_(),
         b = random_f32({c}, 3).requires_grad_();
  Tensor grad_y = random_f32({rows, c}, 4);
  for (auto _ : state) {
    for (Tensor* t : {&x, &w, &b}) t->zero_grad();
    autograd::run_backward(layer_norm(x, w, b, 1e-6), grad_y);
    benchmark::DoNotOptimize(x.grad().raw_data());
  }
  set_bytes(state, 5 * rows * c);  // forward: read x, write y; backward: read x, dy, write dx
}

// Args: batch, heads, query tokens, key tokens, head dim.
void BM_Attention(benchmark::State& state) {
  const int64_t batch = state.range(0), heads = state.range(1), lq = state.range(2),
                lk = state.range(3), d = state.range(4);
  Tensor q = random_f32({batch, heads, lq, d}, 4), k = random_f32({batch, heads, lk, d}, 5),
         v = random_f32({batch, heads, lk, d}, 6);
  autograd::NoGradGuard no_grad;
  for (auto _ : state) benchmark::DoNotOptimize(scaled_dot_product_attention(q, k, v).raw_data());
  // Two matmuls of 2 * Lq * Lk * D flops each per head.
  state.counters["GFLOP/s"] = benchmark::Counter(
      static_cast<double>(state.iterations()) * 4.0 * batch * heads * lq * lk * d,
      benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}

BENCHMARK(BM_LayerNormForward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_LayerNormForwardBackward)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Attention)
    ->Name("BM_Attention/mit_b2_stage1")
    ->ArgNames({"B", "H", "Lq", "Lk", "D"})
    ->Args({8, 1, 64 * 64, 8 * 8, 64})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();
BENCHMARK(BM_Attention)
    ->Name("BM_Attention/mit_b2_stage4")
    ->ArgNames({"B", "H", "Lq", "Lk", "D"})
    ->Args({8, 8, 16 * 16, 16 * 16, 64})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
