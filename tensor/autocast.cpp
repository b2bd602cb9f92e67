#include "tensor/autocast.h"

#include <atomic>

#include "autograd/node.h"
#include "tensor/backend.h"
#include "tensor/error.h"

namespace sono {

namespace {
std::atomic<Precision> precision_of[2] = {Precision::f32, Precision::f32};  // by Device
std::atomic<AutocastActivations> activations_dtype = AutocastActivations::bf16;

// The CPU's autocast keeps float32 activations: its other ops compute in float32, so bfloat16
// ones would only add a cast before each.
bool bf16_activations(Device device) {
  return device != Device::cpu && autocast_precision(device) == Precision::bf16 &&
         activations_dtype.load(std::memory_order_relaxed) == AutocastActivations::bf16;
}
}  // namespace

Precision autocast_precision(Device device) {
  return precision_of[static_cast<int>(device)].load(std::memory_order_relaxed);
}

void set_autocast(Device device, Precision precision) {
  precision_of[static_cast<int>(device)].store(precision, std::memory_order_relaxed);
}

Precision parse_precision(const std::string& name) {
  if (name == "off") return Precision::f32;
  SONO_CHECK(name == "bf16", "--amp ", name, ": expected off or bf16");
  return Precision::bf16;
}

Tensor autocast_operand(const Tensor& x) {
  if (x.dtype() != DType::f32 || !bf16_activations(x.device())) return x;
  autograd::NoGradGuard no_grad;  // a saved copy: no gradient flows through it
  return x.to(DType::bf16);
}

DType autocast_result_dtype(const Tensor& operand) {
  if (operand.dtype() == DType::bf16 && bf16_activations(operand.device())) return DType::bf16;
  return compute_dtype(operand.dtype());
}

Tensor float_operand(const Tensor& x) {
  return x.dtype() == DType::bf16 ? x.to(DType::f32) : x;
}

Tensor native_operand(const Tensor& x) {
  return backend_of(x).reads_bf16() ? x : float_operand(x);
}

AutocastPolicy autocast_policy(AutocastOp op) {
  switch (op) {
    case AutocastOp::matmul:
    case AutocastOp::linear:
    case AutocastOp::conv2d: return AutocastPolicy::bf16_operands;
    case AutocastOp::gelu:
    case AutocastOp::relu:
    case AutocastOp::bias_gelu:
    case AutocastOp::layer_norm:
    case AutocastOp::batch_norm: return AutocastPolicy::keeps_bf16;
    case AutocastOp::unary:
    case AutocastOp::binary:
    case AutocastOp::reduce:
    case AutocastOp::softmax:
    case AutocastOp::loss:
    case AutocastOp::resize:
    case AutocastOp::pad:
    case AutocastOp::concat:
    case AutocastOp::batch_norm_composed: return AutocastPolicy::float32;
  }
  fail("autocast_policy: unknown op ", static_cast<int>(op));
}

AutocastOp autocast_op(UnaryOp op) {
  if (op == UnaryOp::gelu) return AutocastOp::gelu;
  if (op == UnaryOp::relu) return AutocastOp::relu;
  return AutocastOp::unary;
}

Tensor autocast_input(AutocastOp op, const Tensor& x) {
  switch (autocast_policy(op)) {
    case AutocastPolicy::bf16_operands: return autocast_operand(x);
    case AutocastPolicy::keeps_bf16: return native_operand(x);
    case AutocastPolicy::float32: return float_operand(x);
  }
  fail("autocast_input: unknown policy");
}

void set_autocast_activations(AutocastActivations activations) {
  activations_dtype.store(activations, std::memory_order_relaxed);
}

}  // namespace sono
