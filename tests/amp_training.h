#pragma once
// bf16 mixed precision on the emulated CUDA device, whole models: training steps under
// sono::Autocast of convnext_atto and DeepLabV3+/mit_b0, with bfloat16 activations (the
// default: autocast ops return bf16, torch's semantics) or float32 ones (the same bf16 products
// with float32 results and float32 saved operands: the path before bf16 activations).
// The device's gradients are judged against a float64 reference of the same step, computed on
// the CPU, with bounds that follow from rounding as measured on this model, not from one
// machine's float32 result: (1) without autocast, every parameter's gradient lies within
// kOrderFactor times the CPU's own float32 error (float32 CPU against float64) of the float64
// one: another summation order (GPU tiles, split-K, atomics) rounds differently, not worse by
// more than that, while a kernel error (a dropped tap, a dropped term of a sum) moves a
// gradient by many times that. (2) With bf16 products (float32 activations), the whole model's
// relative L2 error against float64 stays within the float32 error scaled by the ratio of the
// unit roundoffs, 2^-9 / 2^-24 (measured: 0.42 of that bound for both models): that catches
// gross errors of the bf16 kernels (a dropped tap); small ones are test_cuda_kernels' to find.
// The bf16 path is not compared element by element with a fixed record: its gradients are a
// chaotic function of the float32 last bits (bf16 rounding flips). mit_b0's moved by 28% of
// the largest gradient norm (projected on random probes) when every parameter moved by one
// float32 ulp; an H200's other summation order moved them by 2.4%, which a golden record of
// one machine's run took for an error.
// The bf16-activation run rounds every autocast result once more. Its gradients must be no
// further from those of a float32 run (no autocast), in relative L2 over the model, than
// activation_error_factor times the float32-activation run's (bf16 products alone); it must
// hold fewer bytes, and learn.
// Each model is its own test executable (a few seconds per emulated training step).
#include <cmath>

#include "test_device.h"
#include "helpers.h"
#include "layers/optim.h"
#include "models/registry.h"
#include "tensor/autocast.h"

namespace sono::test::amp {

// A model, its input and target, and its stages' MLP sizes for the memory bound below.
struct ModelCase {
  std::string name;
  models::ModelOptions options;
  Shape input, target;
  std::vector<int64_t> dims, depths, sides;  // per stage: channels, blocks, feature-map side
  int64_t mlp_saving;  // bytes an MLP block saves per pixel and channel, see bf16_saving_bound
  // The target's mean. A zero-mean noise target leaves the segmenter nothing to learn in a few
  // steps but the ~7% between its first output and predicting zeros, and where its loss ends in
  // that band depends on rounding (the input scaled by 1 +- 0.001 to 0.005, about a bf16 step:
  // 0.92-0.97 of the first loss after 5 steps); a mean to learn makes it fall by ~40% on each.
  double target_mean = 0;
  // How much further bf16 activations may take the gradients from float32's than bf16 products
  // do. mit_b0 at 32 x 32 is chaotic: its ASPP BatchNorms see 8 values per channel, and bf16
  // products alone move the median parameter's gradient by a third. With the input scaled by
  // 1 +- 0.001 to 0.005, the ratio ran 0.73-1.84 over 8 runs (the worst single gradient's ratio:
  // 0.64-2.29), hence 3; convnext_atto's 0.98-1.19.
  double activation_error_factor = 2;
};

inline const ModelCase kConvnext{"convnext_atto", models::ModelOptions{.in_channels = 4, .num_classes = 3}, {2, 32, 32, 4},
                          {2, 3}, {40, 80, 160, 320}, {2, 2, 6, 2}, {8, 4, 2, 1}, 22};
// Output stride 16: the last stage keeps the third's resolution.
inline const ModelCase kDeeplab{"mit_b0", models::ModelOptions{.in_channels = 3, .num_classes = 1}, {2, 32, 32, 3},
                         {2, 32, 32, 1}, {32, 64, 160, 256}, {2, 2, 2, 2}, {8, 4, 2, 2}, 26, 2.0, 3};

// A lower bound on the bytes that bf16 activations save once the forward is done, in the MLPs:
// what each layer keeps for backward goes from 4 to 2 bytes an element. A ConvNeXt block: its
// depthwise conv keeps its [P, C] input, LayerNorm the conv's [P, C] output, fc1 its [P, C]
// LayerNorm output, GELU fc1's [P, 4C] output, fc2 GELU's [P, 4C] output: 22 P C bytes. A MiT
// Mix-FFN: fc1 its [P, C] input, the
// depthwise conv fc1's [P, 4C] output, GELU the conv's, fc2 GELU's: 26 P C bytes. Less: the
// bf16 copy of the image that the first conv saves beside the float32 one the test holds, and
// up to 511 bytes of allocator rounding (512-byte classes) per tensor counted.
inline int64_t bf16_saving_bound(const ModelCase& c) {
  int64_t saved = 0, tensors = 1;
  for (size_t s = 0; s < c.dims.size(); ++s) {
    const int64_t pixels = c.input[0] * c.sides[s] * c.sides[s];
    saved += c.depths[s] * c.mlp_saving * pixels * c.dims[s];
    tensors += 5 * c.depths[s];
  }
  return saved - 2 * shape_numel(c.input) - 511 * tensors;
}

// A model with its input and a random regression target, on the test device (or the CPU, in
// float64 for the reference): the same float32 values in every case, widened for float64.
struct Setup {
  std::shared_ptr<nn::UnaryModule> model;
  Tensor x, target;
};

inline Setup make_setup(const ModelCase& c, Device device = Device::cuda, DType dtype = DType::f32) {
  manual_seed(1);
  Setup s{models::create_model(c.name, c.options), {}, {}};
  Generator gen(2);
  s.x = randn(c.input, gen).to(dtype).to(device);
  s.target = add(randn(c.target, gen), c.target_mean).to(dtype).to(device);
  s.model->to(dtype);
  s.model->to(device);
  s.model->train();
  return s;
}

// Sum of squared errors; dropout masks from a reseeded generator, the same in every run.
inline Tensor loss_of(Setup& s) {
  manual_seed(5);
  const Tensor diff = sub((*s.model)(s.x), s.target);
  return sum(mul(diff, diff));
}

// Training, under bf16 autocast unless `autocast` is false: the first step's gradients (on the
// host) and device bytes (activations live once the loss is computed, and the step's peak, both
// above what the model and its data held before), and every step's loss.
struct AmpRun {
  nn::NamedTensors gradients;
  int64_t activation_bytes = 0, peak_bytes = 0;
  std::vector<double> losses;
};

// Parameters' gradients, on the host in float64.
inline nn::NamedTensors gradients_on_host(const nn::Module& model) {
  nn::NamedTensors out;
  for (auto& [name, p] : model.named_parameters())
    out.emplace_back(name, p.grad().to(Device::cpu).to(DType::f64));
  return out;
}

// The first step's gradients on the CPU without autocast, in float64 (the reference) or float32.
inline nn::NamedTensors cpu_gradients(const ModelCase& c, DType dtype) {
  Setup s = make_setup(c, Device::cpu, dtype);
  loss_of(s).backward();
  return gradients_on_host(*s.model);
}

inline int64_t device_bytes() { return static_cast<int64_t>(device_memory_stats().in_use); }

inline AmpRun train(const ModelCase& c, AutocastActivations activations, int steps,
                    bool autocast = true) {
  Setup s = make_setup(c);
  set_autocast_activations(activations);
  Autocast amp(Device::cuda, autocast ? Precision::bf16 : Precision::f32);
  nn::AdamW optimizer(nn::single_group(*s.model), {.lr = 1e-3, .weight_decay = 0.05});
  AmpRun run;
  for (int step = 0; step < steps; ++step) {
    optimizer.zero_grad();
    const int64_t before = device_bytes();
    reset_device_peak_memory();
    const Tensor loss = loss_of(s);
    if (step == 0) run.activation_bytes = device_bytes() - before;
    loss.backward();
    if (step == 0) {
      run.peak_bytes = static_cast<int64_t>(device_memory_stats().peak) - before;
      run.gradients = gradients_on_host(*s.model);
    }
    optimizer.step();
    run.losses.push_back(loss.item());
  }
  set_autocast_activations(AutocastActivations::bf16);
  return run;
}

inline double max_abs(const Tensor& t) {
  double m = 0;
  for (double v : t.to_vector()) m = std::max(m, std::abs(v));
  return m;
}

constexpr double kUnitRoundoffF32 = 0x1p-24, kUnitRoundoffBf16 = 0x1p-9;
// How many times the CPU's float32 error another summation order's may be (measured: the
// emulator's kernels up to 3.7 times, per tensor, on mit_b0).
constexpr double kOrderFactor = 16;

// The float64 reference and the CPU's float32 gradients of the same step.
struct Reference {
  nn::NamedTensors f64, f32;
};

inline Reference cpu_reference(const ModelCase& c) {
  return {cpu_gradients(c, DType::f64), cpu_gradients(c, DType::f32)};
}

// Each gradient's distance from the float64 one over its bound, the largest such ratio:
// kOrderFactor x (the CPU's float32 error, at least one unit roundoff of the gradient's size),
// plus a millionth of the model's largest gradient entry for gradients that are zero but for
// rounding (mit_b0's last encoder norm bias: 6e-14 in float64, 3e-4 on the emulator).
inline double worst_rounding_ratio(const nn::NamedTensors& got, const Reference& ref,
                                   std::string& which) {
  REQUIRE(got.size() == ref.f64.size());
  double model_max = 0, worst = 0;
  for (const auto& [name, g] : ref.f64) model_max = std::max(model_max, max_abs(g));
  for (size_t i = 0; i < got.size(); ++i) {
    const Tensor& want = ref.f64[i].second;
    const double cpu_f32_err =
        std::max(max_abs_diff(ref.f32[i].second, want), kUnitRoundoffF32 * max_abs(want));
    const double bound = kOrderFactor * cpu_f32_err + 1e-6 * model_max;
    const double ratio = max_abs_diff(got[i].second, want) / bound;
    if (ratio >= worst) std::tie(worst, which) = std::make_pair(ratio, got[i].first);
  }
  return worst;
}

// ||a - b|| / ||b|| over all the model's gradients.
inline double relative_l2_error(const nn::NamedTensors& a, const nn::NamedTensors& b) {
  REQUIRE(a.size() == b.size());
  double diff = 0, norm = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const std::vector<double> x = a[i].second.to_vector(), y = b[i].second.to_vector();
    for (size_t j = 0; j < y.size(); ++j) {
      diff += (x[j] - y[j]) * (x[j] - y[j]);
      norm += y[j] * y[j];
    }
  }
  return std::sqrt(diff / norm);
}

inline std::string joined(const std::vector<double>& v) {
  std::ostringstream os;
  for (double x : v) os << " " << x;
  return os.str();
}

inline void expect_bf16_activations_train(const ModelCase& c) {
  TestDevice dev;
  const AmpRun float32 = train(c, AutocastActivations::f32, 1, /*autocast=*/false);
  const AmpRun f32 = train(c, AutocastActivations::f32, 1);
  const AmpRun bf16 = train(c, AutocastActivations::bf16, 5);

  // float32 on the device: as close to float64 as float32 rounding in another order allows.
  const Reference ref = cpu_reference(c);
  std::string which;
  const double float32_ratio = worst_rounding_ratio(float32.gradients, ref, which);
  MESSAGE(c.name << ": float32 gradients against float64, worst error / rounding bound "
                 << float32_ratio << " (" << which << "); CPU float32 relative L2 error "
                 << relative_l2_error(ref.f32, ref.f64));
  CHECK(float32_ratio <= 1);

  // bf16 products: no further from float64 than bf16 rounding makes float32's error.
  const double products_l2 = relative_l2_error(f32.gradients, ref.f64);
  const double products_bound =
      kUnitRoundoffBf16 / kUnitRoundoffF32 * relative_l2_error(ref.f32, ref.f64);
  MESSAGE(c.name << ": bf16 products' relative L2 error against float64 " << products_l2
                 << ", bound " << products_bound);
  CHECK(products_l2 <= products_bound);

  // bf16 activations: one more rounding of each autocast result, which must not take the
  // gradients much further from float32's than the bf16 products already do, over the whole
  // model (relative L2; see activation_error_factor).
  const double products_err = relative_l2_error(f32.gradients, float32.gradients);
  const double activations_err = relative_l2_error(bf16.gradients, float32.gradients);
  MESSAGE(c.name << ": gradients' relative L2 error against float32, bf16 products " << products_err
                 << ", + bf16 activations " << activations_err << "; losses " << float32.losses[0] << ", "
                 << f32.losses[0] << ", " << bf16.losses[0]);
  CHECK(activations_err <= c.activation_error_factor * products_err);
  CHECK(std::abs(bf16.losses[0] - f32.losses[0]) <= 1e-2 * f32.losses[0]);

  // Fewer bytes.
  const int64_t bound = bf16_saving_bound(c);
  MESSAGE(c.name << ": activations after the forward " << f32.activation_bytes << " -> "
                 << bf16.activation_bytes << " bytes (saved "
                 << f32.activation_bytes - bf16.activation_bytes << ", bound " << bound
                 << "); step peak " << f32.peak_bytes << " -> " << bf16.peak_bytes);
  CHECK(f32.activation_bytes - bf16.activation_bytes >= bound);
  // At 32 x 32 the step's peak comes late in the backward, from the weight gradients (3.7M
  // parameters, 15 MB), when most activations are gone; it may then hold the bf16 copy of the
  // image that the first conv saved, and nothing else more.
  CHECK(bf16.peak_bytes <= f32.peak_bytes + 2 * shape_numel(c.input));

  // Still learns: AdamW on float32 master weights.
  MESSAGE(c.name << ": bf16 training losses:" << joined(bf16.losses));
  CHECK(bf16.losses.back() < 0.8 * bf16.losses.front());
}

}  // namespace sono::test::amp
