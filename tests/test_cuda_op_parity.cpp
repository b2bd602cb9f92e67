// One parity harness over a table of ops (as PyTorch's OpInfo, ggml's test-backend-ops): for
// every row, a float64 gradcheck on the CPU, the CPU against the emulated CUDA device in
// float32 (forward and input gradients), and the op's rule under bf16 autocast, result and input
// gradients: the one autocast's table gives it (tensor/autocast.h), or, outside the table, the
// float32 results of a run without autocast. Every kernel of tensor/backend_ops.def names the
// row that reaches it (row_for below: a kernel without one does not compile), and a counting
// wrapper around the device checks that the row really calls it.
#include <doctest/doctest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <optional>

#include "helpers.h"
#include "tensor/autocast.h"
#include "tensor/backend.h"
#include "test_device.h"

namespace sono::test {
namespace {

// ---- the device, counted kernel by kernel --------------------------------------------------

// Forwards every kernel to the test device and counts the calls the ops make.
class CountingBackend final : public Backend {
 public:
  explicit CountingBackend(Backend& inner) : inner_(inner) {}
  const char* name() const override { return inner_.name(); }
  bool reads_bf16() const override { return inner_.reads_bf16(); }
  bool supports(BackendOp op, OpOperands operands) const override {
    return inner_.supports(op, operands);
  }
  void synchronize() override { inner_.synchronize(); }
  void* allocate(size_t nbytes) override { return inner_.allocate(nbytes); }
  void deallocate(void* ptr) override { inner_.deallocate(ptr); }
#define SONO_BACKEND_OP(kind, op, params, args) \
  void op params override {                     \
    ++calls_[static_cast<int>(BackendOp::op)];  \
    inner_.op args;                             \
  }
#include "tensor/backend_ops.def"

  int64_t calls(BackendOp op) const { return calls_[static_cast<int>(op)]; }
  void reset() { calls_.fill(0); }

 private:
  Backend& inner_;
  std::array<int64_t, kBackendOpCount> calls_{};
};

// The test device (emulated, or the GPU with SONO_TEST_DEVICE=gpu) behind a CountingBackend.
class CountedDevice {
 public:
  CountedDevice() : counting_(counted_) { register_backend(Device::cuda, &counting_); }
  ~CountedDevice() { register_backend(Device::cuda, &counted_); }
  CountedDevice(const CountedDevice&) = delete;
  CountedDevice& operator=(const CountedDevice&) = delete;
  CountingBackend& operator*() { return counting_; }

 private:
  TestDevice device_;
  Backend& counted_ = backend(Device::cuda);
  CountingBackend counting_;
};

// ---- the table -----------------------------------------------------------------------------

using OpFn = std::function<Tensor(const std::vector<Tensor>&)>;

struct OpRow {
  std::string name;
  std::vector<Shape> inputs;  // uniform values in [lo, hi)
  OpFn fn;
  std::vector<BackendOp> kernels;  // what the op calls on the device
  bool differentiable = true;      // gradcheck and input gradients
  // The op's entry in autocast's table; none for ops outside autocast (copies, optimizers).
  std::optional<AutocastOp> autocast = std::nullopt;
  double lo = -1.0, hi = 1.0;
  double f32_tol = 2e-5;  // CPU vs device, relative to max(1, |result|)
  // Why the bf16 rule holds for the result only, where it does.
  const char* bf16_gradients_skip = nullptr;
  // The backward sums with atomics, in the order the emulator's schedule (or the GPU) picks:
  // the bf16 rule's gradients agree within f32_tol, not bit for bit.
  bool atomic_backward = false;
  // For an op whose kernels have no bf16 path: what it runs instead under bf16 autocast, a
  // composition of ops whose rows hold their own rules.
  OpFn composed_under_autocast = nullptr;
};

Tensor attention(const std::vector<Tensor>& v) {
  return scaled_dot_product_attention(v[0], v[1], v[2]);
}

// The composition attention runs where its fused kernel does not (float32 only) run.
Tensor composed_attention(const std::vector<Tensor>& v) {
  const double scale = 1.0 / std::sqrt(static_cast<double>(v[0].size(3)));
  return matmul(softmax(matmul(mul(v[0], scale), v[1].transpose(2, 3)), -1), v[2]);
}

Tensor adamw(const std::vector<Tensor>& v, bool multi) {
  const Tensor param = v[0].clone();
  const Tensor exp_avg = Tensor::zeros(v[0].shape(), v[0].dtype(), v[0].device());
  const Tensor exp_avg_sq = mul(v[1], v[1]);
  Backend& be = backend_of(param);
  if (multi)
    be.adamw_multi_step({{param, v[1], exp_avg, exp_avg_sq, 3}}, 1e-2, 0.9, 0.999, 1e-8, 0.05);
  else be.adamw_step(param, v[1], exp_avg, exp_avg_sq, 1e-2, 0.9, 0.999, 1e-8, 0.05, 3);
  return param;
}

// Fixed values that are no input of the row (a frozen weight, running statistics), in x's
// compute dtype and on its device.
Tensor constant_like(const Tensor& x, const Shape& shape, uint64_t seed, double lo = -1.0,
                     double hi = 1.0) {
  return Tensor::from_vector(uniform(shape_numel(shape), seed, lo, hi), shape,
                             compute_dtype(x.dtype()))
      .to(x.device());
}

Tensor batch_norm_training(const std::vector<Tensor>& v) {
  return batch_norm(v[0], v[1], v[2], Tensor(), Tensor(), true, 0.1, 1e-5);
}

// With running statistics to update (they do not change the result in training).
Tensor batch_norm_training_running(const std::vector<Tensor>& v) {
  const Shape channels{v[0].size(-1)};
  return batch_norm(v[0], v[1], v[2], constant_like(v[0], channels, 20),
                    constant_like(v[0], channels, 21, 0.5, 1.5), true, 0.1, 1e-5);
}

Tensor batch_norm_eval(const std::vector<Tensor>& v) {
  const Shape channels{v[0].size(-1)};
  return batch_norm(v[0], v[1], v[2], constant_like(v[0], channels, 23),
                    constant_like(v[0], channels, 24, 0.5, 1.5), false, 0.1, 1e-5);
}

struct ConvRow {
  const char* name;
  Shape x;  // NHWC
  int64_t cout, kernel;
  Conv2dOptions opt;  // stride, padding, dilation, groups
  bool bias = true;
};

// Every conv regime the models run (regular, strided, 1x1, depthwise 7x7, dilated, atrous,
// grouped, patch stems) on odd spatial sizes, channel counts that are not multiples of 8,
// batches of 1 to 3, and the device kernels' paths (a GEMM for 1x1, 4 channels a thread).
const ConvRow kConvRows[] = {
    {"3x3 stride 2, bias", {2, 7, 9, 6}, 10, 3, {2, 1, 1, 1}},
    {"regular 3x3 stride 1", {1, 7, 6, 5}, 6, 3, {1, 1, 1, 1}},
    {"regular 3x3 stride 2", {3, 9, 7, 3}, 4, 3, {2, 1, 1, 1}},
    {"pointwise", {2, 3, 4, 13}, 20, 1, {1, 0, 1, 1}, false},
    {"pointwise 1x1, bias", {3, 5, 7, 6}, 5, 1, {1, 0, 1, 1}},
    {"depthwise 3x3", {2, 6, 5, 4}, 4, 3, {1, 1, 1, 4}, false},
    {"depthwise 7x7, bias", {2, 9, 8, 5}, 5, 7, {1, 3, 1, 5}},
    {"depthwise 7x7, 4 channels a thread", {2, 9, 8, 8}, 8, 7, {1, 3, 1, 8}},
    {"depthwise 7x7 pad 3 (ConvNeXt)", {1, 9, 13, 6}, 6, 7, {1, 3, 1, 6}},
    {"depthwise 3x3 dilation 2 pad 2 (Mix-FFN at OS16)", {3, 7, 10, 5}, 5, 3, {1, 2, 2, 5}},
    {"depthwise 3x3 stride 2", {1, 8, 17, 4}, 4, 3, {2, 1, 1, 4}},
    {"depthwise 3x3, 70 channels (full vector blocks + tail)", {1, 5, 11, 70}, 70, 3,
     {1, 1, 1, 70}},
    {"atrous depthwise 3x3 dilation 12 pad 12 (ASPP)", {1, 13, 11, 3}, 3, 3, {1, 12, 12, 3}},
    {"atrous dense 3x3 dilation 12 pad 12", {1, 13, 11, 2}, 3, 3, {1, 12, 12, 1}},
    {"dense 3x3 dilation 2 pad 2 (patch_embed4 at OS16)", {1, 6, 7, 4}, 5, 3, {1, 2, 2, 1}},
    {"grouped 3x3 groups 2", {1, 7, 5, 6}, 4, 3, {1, 1, 1, 2}},
    {"stem 4x4 stride 4 (ConvNeXt)", {1, 9, 13, 3}, 5, 4, {4, 0, 1, 1}},
    {"patch embed 7x7 stride 4 pad 3 (MiT)", {1, 9, 10, 3}, 4, 7, {4, 3, 1, 1}},
    {"downsample 2x2 stride 2", {3, 7, 9, 5}, 6, 2, {2, 0, 1, 1}},
    // more output channels than output pixels: columns in the weights' order
    {"downsample 2x2 stride 2, 8 channels out of 6 pixels", {1, 4, 6, 3}, 8, 2, {2, 0, 1, 1}},
    {"grouped 3x3 stride 2 pad 1, 12 channels out of 9 pixels", {1, 5, 5, 4}, 12, 3,
     {2, 1, 1, 2}},
};

OpRow conv_row(const ConvRow& c) {
  using K = BackendOp;
  OpRow row{std::string("conv2d ") + c.name,
            {c.x, {c.cout, c.x[3] / c.opt.groups, c.kernel, c.kernel}},
            [opt = c.opt](auto& v) {
              return conv2d(v[0], v[1], v.size() > 2 ? v[2] : Tensor(), opt);
            },
            {K::conv2d_forward, K::conv2d_backward_input, K::conv2d_backward_weight},
            true,
            AutocastOp::conv2d};
  if (c.bias) {
    row.inputs.push_back({c.cout});
    row.kernels.push_back(K::bias_add);
  }
  return row;
}

struct ResizeRow {
  Shape x;  // NHWC
  int64_t out_h, out_w;
};

// Up x4, down, non-integer ratios, a 1x1 map.
const ResizeRow kResizeRows[] = {{{2, 3, 4, 3}, 5, 7}, {{1, 3, 4, 5}, 12, 16},
                                 {{3, 9, 11, 2}, 4, 5}, {{1, 5, 7, 3}, 8, 11},
                                 {{2, 7, 5, 3}, 3, 9},  {{2, 1, 1, 3}, 5, 7}};

std::string resize_row_name(const ResizeRow& c, bool align_corners) {
  return "interpolate_bilinear " + shape_str(c.x) + " -> " + std::to_string(c.out_h) + "x" +
         std::to_string(c.out_w) + (align_corners ? ", align_corners" : "");
}

OpRow resize_row(const ResizeRow& c, bool align_corners) {
  using K = BackendOp;
  OpRow row{resize_row_name(c, align_corners),
            {c.x},
            [c, align_corners](auto& v) {
              return interpolate_bilinear(v[0], c.out_h, c.out_w, align_corners);
            },
            {K::resize_bilinear_forward, K::resize_bilinear_backward},
            true,
            AutocastOp::resize};
  row.atomic_backward = true;
  return row;
}

std::vector<OpRow> fixed_rows() {
  using K = BackendOp;
  using A = AutocastOp;
  return {
      {"contiguous", {{5, 7}}, [](auto& v) { return v[0].transpose(0, 1).contiguous(); },
       {K::copy}},
      {"views (permute, slice, reshape)", {{3, 5, 7}},
       [](auto& v) { return v[0].permute({2, 0, 1}).slice(0, 1, 6).reshape({-1, 3}); }, {K::copy}},
      {"cat", {{3, 5, 7}}, [](auto& v) { return cat({v[0], mul(v[0], 2.0)}, 1); },
       {K::copy, K::unary}, true, A::concat},
      {"pad", {{3, 5, 7}}, [](auto& v) { return pad(v[0], {1, 2, 0, 3}); }, {K::fill, K::copy},
       true, A::pad},
      // Elementwise ops on awkward shapes; the domain of log, sqrt, pow and abs kept off 0.
      {"exp", {{3, 5, 7}}, [](auto& v) { return exp(v[0]); }, {K::unary}, true, A::unary},
      {"log", {{3, 5, 7}}, [](auto& v) { return log(v[0]); }, {K::unary}, true, A::unary, 0.5, 2.5},
      {"sqrt", {{3, 5, 7}}, [](auto& v) { return sqrt(v[0]); }, {K::unary}, true, A::unary, 0.5,
       2.5},
      {"pow 2.5", {{3, 5, 7}}, [](auto& v) { return pow(v[0], 2.5); }, {K::unary}, true, A::unary,
       0.5, 2.5},
      {"abs", {{3, 5, 7}}, [](auto& v) { return abs(v[0]); }, {K::unary}, true, A::unary, 0.5, 2.5},
      {"scalar mul and add", {{3, 5, 7}}, [](auto& v) { return add(mul(v[0], 3.0), -1.0); },
       {K::unary}, true, A::unary},
      {"sigmoid", {{3, 5, 7}}, [](auto& v) { return sigmoid(v[0]); }, {K::unary}, true, A::unary},
      {"tanh", {{3, 5, 7}}, [](auto& v) { return tanh(v[0]); }, {K::unary}, true, A::unary},
      {"softplus", {{3, 5, 7}}, [](auto& v) { return softplus(v[0]); }, {K::unary}, true,
       A::unary},
      {"gelu", {{3, 5, 7}}, [](auto& v) { return gelu(v[0]); }, {K::unary, K::gelu_backward},
       true, A::gelu},
      {"relu", {{3, 5, 7}}, [](auto& v) { return relu(v[0]); }, {K::unary, K::binary}, true, A::relu, 0.5,
       2.5},
      {"add (broadcast)", {{3, 5, 7}, {5, 1}}, [](auto& v) { return add(v[0], v[1]); },
       {K::binary}, true, A::binary},
      // About half the sums negative: both sides of the ReLU.
      {"add_relu (broadcast)", {{3, 5, 7}, {5, 1}}, [](auto& v) { return add_relu(v[0], v[1]); },
       {K::binary}, true, A::binary},
      {"sub (broadcast)", {{3, 5, 7}, {5, 1}}, [](auto& v) { return sub(v[0], v[1]); },
       {K::binary}, true, A::binary},
      {"mul (broadcast)", {{3, 5, 7}, {5, 1}}, [](auto& v) { return mul(v[0], v[1]); },
       {K::binary}, true, A::binary},
      {"div", {{3, 5, 7}, {3, 5, 7}}, [](auto& v) { return div(v[0], v[1]); }, {K::binary}, true,
       A::binary, 0.5, 2.5},
      {"bias_gelu", {{3, 5, 7}, {7}}, [](auto& v) { return bias_gelu(v[0], v[1]); },
       {K::bias_gelu_forward, K::gelu_backward}, true, A::bias_gelu},
      {"sum over dims", {{3, 5, 7}}, [](auto& v) { return sum(v[0], {0, 2}); }, {K::reduce}, true,
       A::reduce},
      {"mean (keepdim)", {{3, 5, 7}}, [](auto& v) { return mean(v[0], {1}, true); },
       {K::reduce, K::unary}, true, A::reduce},
      {"amax", {{3, 5, 7}}, [](auto& v) { return amax(v[0], {2}); }, {K::reduce}, true, A::reduce},
      {"matmul (batched)", {{1, 3, 5, 4}, {1, 3, 4, 6}}, [](auto& v) { return matmul(v[0], v[1]); },
       {K::gemm}, true, A::matmul},
      {"matmul (broadcast)", {{1, 3, 5, 4}, {4, 6}}, [](auto& v) { return matmul(v[0], v[1]); },
       {K::gemm}, true, A::matmul},
      {"linear", {{1, 3, 5, 4}, {3, 4}, {3}}, [](auto& v) { return linear(v[0], v[1], v[2]); },
       {K::linear_forward, K::gemm}, true, A::linear},
      {"linear (no bias)", {{2, 5, 9}, {12, 9}},
       [](auto& v) { return linear(v[0], v[1], Tensor()); }, {K::gemm}, true, A::linear},
      // Without gradients (the bf16 rule) the fused inference path: GELU in the GEMM's epilogue.
      {"linear_gelu", {{2, 5, 9}, {12, 9}, {12}},
       [](auto& v) { return linear_gelu(v[0], v[1], v[2]); }, {K::linear_forward, K::gemm}, true,
       A::linear, -1.0, 1.0, 2e-5,
       "(with gradients it is linear then gelu, two roundings under autocast, whose rows hold it)"},
      // A strided input and a frozen weight (no weight gradient to compute).
      {"conv2d on a permuted input, frozen weight", {{2, 5, 4, 3}},
       [](auto& v) {
         return conv2d(v[0].permute({0, 2, 1, 3}), constant_like(v[0], {4, 3, 3, 3}, 2), Tensor(),
                       {.padding = 1});
       },
       {K::conv2d_forward, K::conv2d_backward_input}, true, A::conv2d},
      {"global_avg_pool", {{3, 5, 7, 6}}, [](auto& v) { return global_avg_pool(v[0]); },
       {K::reduce}, true, A::reduce},
      // ResNet's stem pooling on odd sizes (the padded map is cut and padded further), and a
      // window without padding that leaves the last row and column out.
      {"max_pool2d (3x3, stride 2, padding 1)", {{2, 7, 6, 5}},
       [](auto& v) { return max_pool2d(v[0], 3, 2, 1); },
       {K::max_pool2d_forward, K::max_pool2d_backward}, true, A::reduce},
      // Without gradients no winners' positions are written.
      {"max_pool2d (3x3, stride 2, padding 1), no gradients", {{2, 7, 6, 5}},
       [](auto& v) { return max_pool2d(v[0], 3, 2, 1); }, {K::max_pool2d_forward}, false, A::reduce},
      {"max_pool2d (2x2, stride 2)", {{1, 5, 5, 3}}, [](auto& v) { return max_pool2d(v[0], 2, 2, 0); },
       {K::max_pool2d_forward, K::max_pool2d_backward}, true, A::reduce},
      // Overlapping windows wider than the stride: an input read by up to 9 of them.
      {"max_pool2d (5x5, stride 1, padding 2)", {{2, 6, 5, 3}},
       [](auto& v) { return max_pool2d(v[0], 5, 1, 2); },
       {K::max_pool2d_forward, K::max_pool2d_backward}, true, A::reduce},
      // Rows not a multiple of 8, a permuted input, one row, without affine parameters or bias.
      {"layer_norm", {{4, 11}, {11}, {11}},
       [](auto& v) { return layer_norm(v[0], v[1], v[2], 1e-5); },
       {K::layer_norm_forward, K::layer_norm_backward}, true, A::layer_norm},
      {"layer_norm (3-D, 7 columns)", {{3, 5, 7}, {7}, {7}},
       [](auto& v) { return layer_norm(v[0], v[1], v[2], 1e-5); },
       {K::layer_norm_forward, K::layer_norm_backward}, true, A::layer_norm},
      {"layer_norm (permuted input, no affine)", {{5, 3, 1}},
       [](auto& v) { return layer_norm(v[0].permute({2, 1, 0}), {}, {}, 1e-6); },
       {K::layer_norm_forward, K::layer_norm_backward}, true, A::layer_norm},
      {"layer_norm (one row, no bias)", {{1, 13}, {13}},
       [](auto& v) { return layer_norm(v[0], v[1], {}, 1e-6); },
       {K::layer_norm_forward, K::layer_norm_backward}, true, A::layer_norm},
      {"batch_norm (training)", {{6, 5}, {5}, {5}}, batch_norm_training,
       {K::batch_norm_forward, K::batch_norm_backward}, true, A::batch_norm},
      {"batch_norm (training, NHWC batch 1, running statistics)", {{1, 3, 5, 5}, {5}, {5}},
       batch_norm_training_running, {K::batch_norm_forward, K::batch_norm_backward}, true,
       A::batch_norm},
      {"batch_norm (training, NHWC batch 3, running statistics)", {{3, 3, 5, 5}, {5}, {5}},
       batch_norm_training_running, {K::batch_norm_forward, K::batch_norm_backward}, true,
       A::batch_norm},
      {"batch_norm (training, no affine)", {{7, 5}},
       [](auto& v) { return batch_norm(v[0], {}, {}, {}, {}, true, 0.1, 1e-5); },
       {K::batch_norm_forward, K::batch_norm_backward}, true, A::batch_norm},
      // Eval mode normalises with the running statistics, composed of elementwise ops.
      {"batch_norm (eval)", {{3, 2, 3, 7}, {7}, {7}}, batch_norm_eval, {K::binary, K::unary},
       true, A::batch_norm_composed},
      // Without gradients (inference) eval mode is one scale-and-shift pass.
      {"batch_norm (eval, no gradients)", {{3, 2, 3, 7}, {7}, {7}}, batch_norm_eval,
       {K::channel_affine}, false, A::batch_norm_composed},
      // Inference's conv with a folded BatchNorm: bias and ReLU in one kernel.
      {"conv2d_relu (no gradients)", {{2, 7, 9, 6}, {10, 6, 3, 3}, {10}},
       [](auto& v) { return conv2d_relu(v[0], v[1], v[2], {2, 1, 1, 1}); },
       {K::conv2d_bias_relu_forward}, false, A::conv2d},
      // Recording gradients it is conv2d then relu: the float64 gradcheck runs that path.
      {"conv2d_relu (gradients)", {{2, 7, 9, 6}, {10, 6, 3, 3}, {10}},
       [](auto& v) { return conv2d_relu(v[0], v[1], v[2], {2, 1, 1, 1}); },
       {K::conv2d_forward, K::conv2d_backward_input, K::conv2d_backward_weight, K::bias_add, K::unary}, true,
       A::conv2d},
      {"softmax", {{3, 5, 7}}, [](auto& v) { return softmax(v[0]); },
       {K::softmax_forward, K::softmax_backward}, true, A::softmax},
      {"softmax (dim 0)", {{3, 5, 7}}, [](auto& v) { return softmax(v[0], 0); },
       {K::softmax_forward, K::softmax_backward}, true, A::softmax},
      {"softmax (dim 1)", {{3, 5, 7}}, [](auto& v) { return softmax(v[0], 1); },
       {K::softmax_forward, K::softmax_backward}, true, A::softmax},
      {"log_softmax", {{3, 5, 7}}, [](auto& v) { return log_softmax(v[0]); },
       {K::softmax_forward, K::softmax_backward}, true, A::softmax},
      {"log_softmax (dim 0)", {{3, 5, 7}}, [](auto& v) { return log_softmax(v[0], 0); },
       {K::softmax_forward, K::softmax_backward}, true, A::softmax},
      {"log_softmax (dim 1)", {{3, 5, 7}}, [](auto& v) { return log_softmax(v[0], 1); },
       {K::softmax_forward, K::softmax_backward}, true, A::softmax},
      // The fused kernel reads float32 only: under autocast attention is matmul and softmax.
      {"scaled_dot_product_attention", {{1, 2, 5, 8}, {1, 2, 6, 8}, {1, 2, 6, 8}},
       attention,
       {K::attention_forward}, true, std::nullopt, -1.0, 1.0, 2e-5, nullptr, false,
       composed_attention},
      {"scaled_dot_product_attention (batch 3, one head)",
       {{3, 1, 6, 5}, {3, 1, 6, 5}, {3, 1, 6, 5}},
       attention,
       {K::attention_forward}, true, std::nullopt, -1.0, 1.0, 2e-5, nullptr, false,
       composed_attention},
      // v's heads wider than q's: the fused kernel does not fit, the composition runs.
      {"scaled_dot_product_attention (Lq != Lk, v's D != q's)",
       {{1, 2, 5, 4}, {1, 2, 7, 4}, {1, 2, 7, 3}},
       attention,
       {K::gemm, K::softmax_forward, K::softmax_backward}, true, std::nullopt, -1.0, 1.0, 2e-5,
       nullptr, false, composed_attention},
      // Master weights, gradients and optimizer state are float32 under autocast too.
      {"adamw_step", {{3, 5}, {3, 5}}, [](auto& v) { return adamw(v, false); }, {K::adamw_step},
       false},
      {"adamw_multi_step", {{3, 5}, {3, 5}}, [](auto& v) { return adamw(v, true); },
       {K::adamw_multi_step}, false},
  };
}

// The fixed rows, then the generated conv and resize rows.
const std::vector<OpRow>& rows() {
  static const std::vector<OpRow> table = [] {
    std::vector<OpRow> all = fixed_rows();
    for (const ConvRow& c : kConvRows) all.push_back(conv_row(c));
    for (const ResizeRow& c : kResizeRows)
      for (bool align_corners : {false, true}) all.push_back(resize_row(c, align_corners));
    return all;
  }();
  return table;
}

// The row that reaches each kernel. No default: with a kernel added to backend_ops.def and no
// row named here, this file does not compile.
#pragma GCC diagnostic error "-Wswitch"
const char* row_for(BackendOp op) {
  switch (op) {
    case BackendOp::copy: return "contiguous";
    case BackendOp::fill: return "pad";

    case BackendOp::unary: return "exp";
    case BackendOp::binary: return "mul (broadcast)";
    case BackendOp::bias_gelu_forward: return "bias_gelu";
    case BackendOp::gelu_backward: return "gelu";
    case BackendOp::bias_add: return "conv2d 3x3 stride 2, bias";
    case BackendOp::reduce: return "sum over dims";
    case BackendOp::gemm: return "matmul (batched)";
    case BackendOp::linear_forward: return "linear";
    case BackendOp::attention_forward: return "scaled_dot_product_attention";
    case BackendOp::conv2d_forward:
    case BackendOp::conv2d_backward_input:
    case BackendOp::conv2d_backward_weight: return "conv2d 3x3 stride 2, bias";
    case BackendOp::conv2d_bias_relu_forward: return "conv2d_relu (no gradients)";
    case BackendOp::layer_norm_forward:
    case BackendOp::layer_norm_backward: return "layer_norm";
    case BackendOp::batch_norm_forward:
    case BackendOp::batch_norm_backward: return "batch_norm (training)";
    case BackendOp::channel_affine: return "batch_norm (eval, no gradients)";
    case BackendOp::softmax_forward:
    case BackendOp::softmax_backward: return "softmax";
    case BackendOp::max_pool2d_forward:
    case BackendOp::max_pool2d_backward: return "max_pool2d (3x3, stride 2, padding 1)";
    case BackendOp::resize_bilinear_forward:
    case BackendOp::resize_bilinear_backward:
      return "interpolate_bilinear [2, 3, 4, 3] -> 5x7";
    case BackendOp::adamw_step: return "adamw_step";
    case BackendOp::adamw_multi_step: return "adamw_multi_step";
  }
  return nullptr;
}

// ---- running a row -------------------------------------------------------------------------

std::vector<std::vector<double>> row_values(const OpRow& row) {
  std::vector<std::vector<double>> values;
  for (size_t i = 0; i < row.inputs.size(); ++i)
    values.push_back(uniform(shape_numel(row.inputs[i]), 100 + i, row.lo, row.hi));
  return values;
}

std::vector<Tensor> row_inputs(const OpRow& row, DType dtype, Device device, bool grad) {
  const auto values = row_values(row);
  std::vector<Tensor> inputs;
  for (size_t i = 0; i < values.size(); ++i) {
    Tensor t = Tensor::from_vector(values[i], row.inputs[i], dtype).to(device);
    inputs.push_back(grad ? t.requires_grad_() : t);
  }
  return inputs;
}

// The op's result on `args`, then each leaf's gradient of sum(result * r) for a fixed random r
// (float32: the gradient autocast hands back to a bfloat16 result too); no leaves, no backward.
std::vector<Tensor> result_and_gradients(const OpRow& row, const std::vector<Tensor>& args,
                                         const std::vector<Tensor>& leaves) {
  const Tensor out = row.fn(args);
  std::vector<Tensor> results{out};
  if (leaves.empty()) return results;
  const Tensor r =
      Tensor::from_vector(uniform(out.numel(), 7, -1, 1), out.shape()).to(out.device());
  autograd::run_backward(out, r);
  for (const Tensor& x : leaves) results.push_back(x.grad());
  return results;
}

std::vector<Tensor> forward_and_gradients(const OpRow& row, Device device) {
  const std::vector<Tensor> inputs = row_inputs(row, DType::f32, device, row.differentiable);
  return result_and_gradients(row, inputs, row.differentiable ? inputs : std::vector<Tensor>{});
}

void expect_near(const char* what, const Tensor& got, const Tensor& want, double tol) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  const std::vector<double> g = got.to_vector(), w = want.to_vector();
  double scale = 1;
  for (double x : w) scale = std::max(scale, std::abs(x));
  double worst = 0;
  for (size_t i = 0; i < g.size(); ++i) worst = std::max(worst, std::abs(g[i] - w[i]));
  CHECK(worst <= tol * scale);
}

void expect_bitwise(const char* what, const Tensor& got, const Tensor& want) {
  INFO(what);
  REQUIRE(got.shape() == want.shape());
  REQUIRE(got.dtype() == want.dtype());
  CHECK(got.to_vector() == want.to_vector());
}

// ---- the checks ----------------------------------------------------------------------------

TEST_CASE("op table: every kernel of backend_ops.def has a row, and that row calls it") {
  CountedDevice device;
  for (int i = 0; i < kBackendOpCount; ++i) {
    const BackendOp op = static_cast<BackendOp>(i);
    INFO("kernel " << std::string(backend_op_name(op)));
    const auto row = std::find_if(rows().begin(), rows().end(), [&](const OpRow& r) {
      return r.name == row_for(op);
    });
    REQUIRE(row != rows().end());
    CHECK(std::count(row->kernels.begin(), row->kernels.end(), op) == 1);
  }
  for (const OpRow& row : rows()) {
    INFO("row " << row.name);
    (*device).reset();
    forward_and_gradients(row, Device::cuda);
    for (BackendOp op : row.kernels) {
      INFO("kernel " << std::string(backend_op_name(op)));
      CHECK((*device).calls(op) > 0);
    }
  }
}

TEST_CASE("op table: float64 gradcheck on the CPU") {
  for (const OpRow& row : rows()) {
    INFO("row " << row.name);
    if (!row.differentiable) {
      MESSAGE("skipped gradcheck: " << row.name
                                    << " has no gradient (an optimizer step, an inference path)");
      continue;
    }
    expect_gradcheck(row.fn, row_inputs(row, DType::f64, Device::cpu, false));
  }
}

TEST_CASE("op table: the emulated CUDA device equals the CPU in float32, forward and gradients") {
  CountedDevice device;
  in_each_schedule([&] {
    for (const OpRow& row : rows()) {
      INFO("row " << row.name);
      const std::vector<Tensor> want = forward_and_gradients(row, Device::cpu);
      const std::vector<Tensor> got = forward_and_gradients(row, Device::cuda);
      REQUIRE(got.size() == want.size());
      expect_near("result", got[0], want[0], row.f32_tol);
      for (size_t i = 1; i < got.size(); ++i) {
        INFO("gradient of input " << i - 1);
        expect_near("gradient", got[i], want[i], row.f32_tol);
      }
    }
  });
}

// The rule of the row's policy, on the device under bf16 autocast, bit for bit:
// - bf16_operands: the bfloat16 result is the float32 result of the same bf16 products
//   (AutocastActivations::f32) rounded once, and the input gradients (float32) are those of
//   that float32 run: the backward's products read the same bf16-rounded operands, saved as
//   bfloat16 or rounded again from float32;
// - keeps_bf16: a bfloat16 activation is read as its float32 widening, and a bfloat16 result
//   is the float32 one rounded once;
// - float32: a bfloat16 activation is read as its float32 widening, the result is float32;
// - keeps_bf16 and float32: the gradients (float32) are those of the widened input, the
//   activation's being the one its float32 producer receives through the cast to bfloat16;
// - outside autocast's table (copies, the optimizer): the float32 results of a run without it;
// - attention, whose fused kernel reads float32 only: its composition of matmul and softmax.
// The result is checked without gradients (inference's fused paths), the gradients by a second
// run that records the graph.
bool bf16_gradients_apply(const OpRow& row) {
  if (!row.differentiable) return false;
  if (row.bf16_gradients_skip)
    MESSAGE("skipped bf16 gradients: " << row.name << " "
                                       << std::string(row.bf16_gradients_skip));
  return !row.bf16_gradients_skip;
}

void expect_equal_gradients(const OpRow& row, const std::vector<Tensor>& got,
                            const std::vector<Tensor>& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 1; i < got.size(); ++i) {
    INFO("gradient of input " << i - 1);
    REQUIRE(got[i].dtype() == DType::f32);
    if (row.atomic_backward) expect_near("float32 gradient", got[i], want[i], row.f32_tol);
    else expect_bitwise("float32 gradient", got[i], want[i]);
  }
}

void expect_bf16_operands_rule(const OpRow& row) {
  auto run = [&](AutocastActivations activations, bool gradients) {
    set_autocast_activations(activations);
    const std::vector<Tensor> inputs = row_inputs(row, DType::f32, Device::cuda, gradients);
    return result_and_gradients(row, inputs, gradients ? inputs : std::vector<Tensor>{});
  };
  const Tensor f32 = run(AutocastActivations::f32, false)[0];
  const Tensor got = run(AutocastActivations::bf16, false)[0];
  REQUIRE(got.dtype() == DType::bf16);
  expect_bitwise("bf16 result", got, f32.to(DType::bf16));
  if (!bf16_gradients_apply(row)) return;
  const std::vector<Tensor> want_gradients = run(AutocastActivations::f32, true);
  expect_equal_gradients(row, run(AutocastActivations::bf16, true), want_gradients);
}

// The row's inputs with the first (the activation) as autocast hands it on, bfloat16 cast from a
// float32 leaf, and as its float32 widening.
struct WidenedInputs {
  std::vector<Tensor> leaves, args, widened;
};

WidenedInputs widened_inputs(const OpRow& row, bool gradients) {
  WidenedInputs in;
  in.leaves = row_inputs(row, DType::f32, Device::cuda, gradients);
  in.args = in.leaves;
  in.args[0] = in.leaves[0].to(DType::bf16);
  in.widened = row_inputs(row, DType::f32, Device::cuda, false);
  in.widened[0] = in.args[0].detach().to(DType::f32);
  if (gradients)
    for (Tensor& x : in.widened) x.requires_grad_();
  return in;
}

void expect_widening_rule(const OpRow& row) {
  const WidenedInputs in = widened_inputs(row, false);
  const Tensor got = row.fn(in.args), want = row.fn(in.widened);
  if (got.dtype() == DType::bf16) {
    CHECK(autocast_policy(*row.autocast) == AutocastPolicy::keeps_bf16);
    expect_bitwise("bf16 result", got, want.to(DType::bf16));
  } else {
    expect_bitwise("float32 result", got, want);
  }
  if (!bf16_gradients_apply(row)) return;
  const WidenedInputs g = widened_inputs(row, true);
  expect_equal_gradients(row, result_and_gradients(row, g.args, g.leaves),
                         result_and_gradients(row, g.widened, g.widened));
}

void expect_same_results(const std::vector<Tensor>& got, const std::vector<Tensor>& want) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("result " << i << " (0: the op's, then the inputs' gradients)");
    expect_bitwise("float32", got[i], want[i]);
  }
}

// An op outside autocast's table (copies, the optimizer) computes as it does without autocast.
void expect_unchanged_by_autocast(const OpRow& row) {
  const std::vector<Tensor> want = forward_and_gradients(row, Device::cuda);
  Autocast amp(Device::cuda);
  expect_same_results(forward_and_gradients(row, Device::cuda), want);
}

// An op whose kernels have no bf16 path: under autocast it is, bit for bit, its composition,
// result and gradients, calling the same kernels as many times (its own fused ones never).
void expect_composed_under_autocast(const OpRow& row, CountingBackend& device) {
  Autocast amp(Device::cuda);
  device.reset();
  const std::vector<Tensor> got = forward_and_gradients(row, Device::cuda);
  std::array<int64_t, kBackendOpCount> op_calls{};
  for (int i = 0; i < kBackendOpCount; ++i) op_calls[i] = device.calls(static_cast<BackendOp>(i));
  OpRow composed = row;
  composed.fn = row.composed_under_autocast;
  device.reset();
  const std::vector<Tensor> want = forward_and_gradients(composed, Device::cuda);
  for (int i = 0; i < kBackendOpCount; ++i) {
    INFO("kernel " << std::string(backend_op_name(static_cast<BackendOp>(i))));
    CHECK(op_calls[i] == device.calls(static_cast<BackendOp>(i)));
  }
  expect_same_results(got, want);
  CHECK(got[0].dtype() == DType::bf16);  // the last product's
}

TEST_CASE("op table: each op follows its bf16 autocast rule, result and gradients") {
  CountedDevice device;
  in_each_schedule([&] {
    for (const OpRow& row : rows()) {
      INFO("row " << row.name);
      if (row.composed_under_autocast) {
        expect_composed_under_autocast(row, *device);
        continue;
      }
      if (!row.autocast) {
        expect_unchanged_by_autocast(row);
        continue;
      }
      Autocast amp(Device::cuda);
      if (autocast_policy(*row.autocast) == AutocastPolicy::bf16_operands)
        expect_bf16_operands_rule(row);
      else
        expect_widening_rule(row);
    }
  });
}

}  // namespace
}  // namespace sono::test
