#pragma once
// Mixed precision, switched per device. While bf16 autocast is on for a device, its matrix
// products (matmul, linear, dense and pointwise convolutions, forward and backward) read their
// float32 operands rounded to bfloat16 and accumulate in float32, as torch.autocast(dtype=
// torch.bfloat16) does for them; parameters, gradients, optimizer state and every other op
// (norms, softmax, depthwise convolutions, attention) stay float32. On a GPU the products are
// cuBLAS GemmEx / our conv kernels on bf16 operands. Only the CUDA backend implements it: the CPU
// refuses bf16. The setting is process-wide (the tools' --amp flag sets it once), not per thread.
//
// Like torch.autocast, these ops cast their activation operands to bfloat16 once and save those
// copies for backward (DType::bf16, half the bytes); the weight gradient g^T x then reads the
// same bf16 x the forward used. Weights stay float32 (master weights) and are rounded per use.
#include <string>

#include "tensor/tensor.h"

namespace sono {

enum class Precision : uint8_t { f32, bf16 };

Precision autocast_precision(Device device);
// Throws for bf16 on the CPU.
void set_autocast(Device device, Precision precision);
// "off" -> f32, "bf16" -> bf16 (the --amp flag's values); throws on anything else.
Precision parse_precision(const std::string& name);

// The operand an autocast op computes with and saves for backward: under bf16 autocast on x's
// device, float32 x as a bfloat16 copy (outside the graph); otherwise x itself.
Tensor autocast_operand(const Tensor& x);

// What autocast ops save: bfloat16 copies (the default) or their float32 operands, rounded again
// by the backward (the path before bf16 storage: the same results with twice the bytes; kept to
// compare memory and results against).
enum class SavedActivations : uint8_t { bf16, f32 };
void set_autocast_saved_activations(SavedActivations saved);

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
