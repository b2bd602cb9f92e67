#pragma once
// Mixed precision, switched per device. While bf16 autocast is on for a device, its matrix
// products (matmul, linear, dense and pointwise convolutions, forward and backward) read their
// float32 operands rounded to bfloat16 and accumulate in float32, as torch.autocast(dtype=
// torch.bfloat16) does for them; parameters, gradients, optimizer state and every other op
// (norms, softmax, depthwise convolutions, attention) stay float32. On a GPU the products are
// cuBLAS GemmEx / our conv kernels on bf16 operands. Only the CUDA backend implements it: the CPU
// refuses bf16. The setting is process-wide (the tools' --amp flag sets it once), not per thread.
#include <string>

#include "tensor/dtype.h"

namespace sono {

enum class Precision : uint8_t { f32, bf16 };

Precision autocast_precision(Device device);
// Throws for bf16 on the CPU.
void set_autocast(Device device, Precision precision);
// "off" -> f32, "bf16" -> bf16 (the --amp flag's values); throws on anything else.
Precision parse_precision(const std::string& name);

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
