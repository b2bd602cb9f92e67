#pragma once
// Mixed precision, switched per device, as torch.autocast(dtype=torch.bfloat16). While bf16
// autocast is on for a device, its matrix products (matmul, linear, and every convolution,
// depthwise too; forward and backward) read their float32 operands rounded to bfloat16,
// accumulate in float32, and return bfloat16 activations (rounded once, after the bias). Those
// activations are what the next ops read and what backward keeps: half the bytes of float32.
// GELU, ReLU and training-mode BatchNorm map bfloat16 to bfloat16 (torch runs them in their
// input's dtype; BatchNorm where the backend has its fused kernels); LayerNorm reads bfloat16
// as it is (and keeps it for backward) but returns float32, as torch's float32 autocast ops
// do; every other op widens a bfloat16 input to float32 and returns float32, as those ops
// (softmax, losses) and type promotion (bf16 + fp32) do. Attention, composed of matmul and
// softmax, follows them. Parameters, gradients (of bfloat16 activations too) and optimizer
// state are float32: master weights, rounded per use.
// autocast_policy is that list as a table, which the ops read (autocast_input).
// On a GPU the products are cuBLAS GemmEx / our conv kernels on bf16 operands. On the CPU the
// products read their operands rounded to bfloat16 in the same way (AMX tiles or AVX512-BF16 dot
// products where the CPU has them, cpu::Bf16Math), but the activations stay float32 (the AutocastActivations::f32
// path below): its other ops compute in float32. The setting is process-wide (the tools'
// --amp flag sets it once), not per thread.
#include <string>

#include "tensor/backend.h"
#include "tensor/tensor.h"

namespace sono {

Precision autocast_precision(Device device);
void set_autocast(Device device, Precision precision);
// "off" -> f32, "bf16" -> bf16 (the --amp flag's values); throws on anything else.
Precision parse_precision(const std::string& name);

// The ops autocast treats alike; autocast_policy (autocast.cpp) is the one table of what each
// does, and ops read their input through autocast_input.
enum class AutocastOp : uint8_t {
  matmul, linear, conv2d,                // products
  gelu, relu, bias_gelu, layer_norm,     // read bfloat16 activations
  batch_norm,                            // where the backend has the fused kernels
  unary, binary, reduce, softmax, loss,  // the rest
  resize, pad, concat, batch_norm_composed
};
enum class AutocastPolicy : uint8_t {
  // Under bf16 autocast, float32 operands rounded to bfloat16 (a copy saved for backward),
  // float32 accumulation; the result as autocast_result_dtype says.
  bf16_operands,
  // A bfloat16 activation read as it is where the backend reads bfloat16 (Backend::reads_bf16);
  // the op says what it returns (GELU and ReLU bfloat16, LayerNorm float32).
  keeps_bf16,
  // A bfloat16 input widened to float32 (a cast in the graph); float32 result.
  float32,
};
AutocastPolicy autocast_policy(AutocastOp op);
// The elementwise ops: GELU and ReLU keep bfloat16, the others are float32.
AutocastOp autocast_op(UnaryOp op);

// x as `op` reads it under its policy: autocast_operand, native_operand or float_operand.
Tensor autocast_input(AutocastOp op, const Tensor& x);

// The operand an autocast op computes with and saves for backward: under bf16 autocast on x's
// device, float32 x as a bfloat16 copy (outside the graph); otherwise x itself.
Tensor autocast_operand(const Tensor& x);
// The dtype an autocast op returns, given its (autocast_operand) activation operand: bfloat16
// for a bfloat16 operand under bf16 autocast, else float32 or float64 as the operand's.
DType autocast_result_dtype(const Tensor& operand);
// x as an op that computes in float32 reads it: a bfloat16 activation widened to a float32 copy
// (a cast in the graph, which hands the float32 gradient back unchanged); any other tensor as
// it is.
Tensor float_operand(const Tensor& x);
// x as an op that reads bfloat16 itself takes it: as it is where x's backend reads bfloat16
// (Backend::reads_bf16), else float_operand(x).
Tensor native_operand(const Tensor& x);

// The activations that autocast ops return and save: bfloat16 (the default, torch's), or
// float32 from the same bfloat16 products (rounded operands, float32 results, and float32
// copies saved and rounded again by the backward: the path before bfloat16 activations, twice
// the bytes; kept to compare memory and results against).
enum class AutocastActivations : uint8_t { bf16, f32 };
void set_autocast_activations(AutocastActivations activations);

// Sets a device's precision for a scope and restores the previous one.
class Autocast {
 public:
  explicit Autocast(Device device, Precision precision = Precision::bf16)
      : device_(device), previous_(autocast_precision(device)) {
    set_autocast(device, precision);
  }
  ~Autocast() { set_autocast(device_, previous_); }
  Autocast(const Autocast&) = delete;
  Autocast& operator=(const Autocast&) = delete;

 private:
  Device device_;
  Precision previous_;
};

}  // namespace sono
