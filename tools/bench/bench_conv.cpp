// Convolutions at the shapes the models run, float32 NHWC on the CPU backend; torch_ops_bench.py
// times the forward cases in PyTorch under the same names (BM_Conv/<case>).
// convnext_dw7x7: ConvNeXt-Base stage-1 depthwise 7x7 (batch 8 at 224x224); aspp_dw3x3_d12: the
// first ASPP separable branch at output stride 16 (batch 8 at 256x256); dense3x3_s2: a regular
// strided 3x3 (im2col + GEMM); pointwise1x1: a 1x1 conv, one GEMM on [N*H*W, C];
// resnet_stem7x7_cin4: the 4-channel classifier's ResNet stem (batch 8 at 128x128); _192: the
// shipped classifier's (batch 8 at 192x192); resnet18_l*_3x3_192: its 3x3 stride-1 convs of
// layers 1-3 (Winograd's). BM_ConvBf16: the forward under bf16 autocast; BM_ConvFrozen: with
// frozen weights, as predict's fused models run them (weights packed once and kept).
#include <benchmark/benchmark.h>

#include "autograd/node.h"
#include "tensor/autocast.h"
#include "tensor/ops.h"

namespace {

using namespace sono;

// Input NHWC, weight [Cout, Cin/groups, KH, KW], options {stride, padding, dilation, groups}.
struct ConvBench {
  const char* name;
  Shape input, weight;
  Conv2dOptions opt;
};

const ConvBench kConvBenches[] = {
    {"convnext_dw7x7", {8, 56, 56, 128}, {128, 1, 7, 7}, {1, 3, 1, 128}},
    {"convnext_dw7x7_s3_b1", {1, 14, 14, 512}, {512, 1, 7, 7}, {1, 3, 1, 512}},
    {"mit_dw3x3_s1_b1", {1, 64, 64, 256}, {256, 1, 3, 3}, {1, 1, 1, 256}},
    {"aspp_dw3x3_d12", {8, 16, 16, 512}, {512, 1, 3, 3}, {1, 12, 12, 512}},
    {"dense3x3_s2", {8, 64, 64, 64}, {128, 64, 3, 3}, {2, 1, 1, 1}},
    {"pointwise1x1", {8, 56, 56, 128}, {512, 128, 1, 1}, {1, 0, 1, 1}},
    {"resnet_stem7x7_cin4", {8, 128, 128, 4}, {64, 4, 7, 7}, {2, 3, 1, 1}},
    {"resnet_stem7x7_cin4_192", {8, 192, 192, 4}, {64, 4, 7, 7}, {2, 3, 1, 1}},
    {"resnet18_l1_3x3_192", {8, 48, 48, 64}, {64, 64, 3, 3}, {1, 1, 1, 1}},
    {"resnet18_l2_3x3_192", {8, 24, 24, 128}, {128, 128, 3, 3}, {1, 1, 1, 1}},
    {"resnet18_l3_3x3_192", {8, 12, 12, 256}, {256, 256, 3, 3}, {1, 1, 1, 1}},
};

Tensor random_f32(const Shape& shape, uint64_t seed) {
  Generator gen(seed);
  return randn(shape, gen, DType::f32);
}

// Multiply-adds counted as 2 FLOPs, taps that fall in the zero padding included.
void set_conv_flops(benchmark::State& state, const ConvBench& c, const Shape& out, double passes) {
  const double macs = double(shape_numel(out)) * double(shape_numel(c.weight) / c.weight[0]);
  state.counters["GFLOP/s"] = benchmark::Counter(passes * 2.0 * macs * double(state.iterations()),
                                                 benchmark::Counter::kIsRate, benchmark::Counter::kIs1000);
}

void BM_Conv(benchmark::State& state, const ConvBench& c, Precision precision, bool frozen) {
  Tensor x = random_f32(c.input, 1), w = random_f32(c.weight, 2);
  w.impl().storage->frozen = frozen;
  autograd::NoGradGuard no_grad;
  Autocast autocast(Device::cpu, precision);
  Shape out_shape;
  for (auto _ : state) {
    Tensor y = conv2d(x, w, Tensor(), c.opt);
    out_shape = y.shape();
    benchmark::DoNotOptimize(y.raw_data());
  }
  set_conv_flops(state, c, out_shape, 1);
}

// Forward, then the input and weight gradients from a given output gradient (a training step's
// share of the conv): three passes of the forward's work.
void BM_ConvForwardBackward(benchmark::State& state, const ConvBench& c) {
  Tensor x = random_f32(c.input, 1).requires_grad_(), w = random_f32(c.weight, 2).requires_grad_();
  Tensor grad_y;
  {
    autograd::NoGradGuard no_grad;
    grad_y = random_f32(conv2d(x, w, Tensor(), c.opt).shape(), 3);
  }
  for (auto _ : state) {
    x.zero_grad();
    w.zero_grad();
    autograd::run_backward(conv2d(x, w, Tensor(), c.opt), grad_y);
    benchmark::DoNotOptimize(w.grad().raw_data());
  }
  set_conv_flops(state, c, grad_y.shape(), 3);
}

bool register_conv_cases() {
  for (const ConvBench& c : kConvBenches) {
    struct Variant {
      const char* prefix;
      Precision precision;
      bool frozen;
    };
    for (const Variant& v : {Variant{"BM_Conv/", Precision::f32, false}, Variant{"BM_ConvBf16/", Precision::bf16, false},
                             Variant{"BM_ConvFrozen/", Precision::f32, true}})
      benchmark::RegisterBenchmark((v.prefix + std::string(c.name)).c_str(), BM_Conv, c, v.precision, v.frozen)
          ->Unit(benchmark::kMillisecond)
          ->UseRealTime();
    benchmark::RegisterBenchmark((std::string("BM_ConvForwardBackward/") + c.name).c_str(),
                                 BM_ConvForwardBackward, c)
        ->Unit(benchmark::kMillisecond)
        ->UseRealTime();
  }
  return true;
}
const bool conv_cases_registered = register_conv_cases();

}  // namespace

BENCHMARK_MAIN();
