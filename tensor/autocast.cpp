#include "tensor/autocast.h"

#include <atomic>

#include "autograd/node.h"
#include "tensor/error.h"

namespace sono {

namespace {
std::atomic<Precision> precision_of[2] = {Precision::f32, Precision::f32};  // by Device
std::atomic<SavedActivations> saved_activations = SavedActivations::bf16;
}  // namespace

Precision autocast_precision(Device device) {
  return precision_of[static_cast<int>(device)].load(std::memory_order_relaxed);
}

void set_autocast(Device device, Precision precision) {
  SONO_CHECK(device != Device::cpu || precision == Precision::f32,
             "bf16 mixed precision: the CPU backend computes in float32 only (use --device cuda, "
             "or --amp off)");
  precision_of[static_cast<int>(device)].store(precision, std::memory_order_relaxed);
}

Precision parse_precision(const std::string& name) {
  if (name == "off") return Precision::f32;
  SONO_CHECK(name == "bf16", "--amp ", name, ": expected off or bf16");
  return Precision::bf16;
}

Tensor autocast_operand(const Tensor& x) {
  const bool cast = x.dtype() == DType::f32 && autocast_precision(x.device()) == Precision::bf16 &&
                    saved_activations.load(std::memory_order_relaxed) == SavedActivations::bf16;
  if (!cast) return x;
  autograd::NoGradGuard no_grad;  // a saved copy: no gradient flows through it
  return x.to(DType::bf16);
}

void set_autocast_saved_activations(SavedActivations saved) {
  saved_activations.store(saved, std::memory_order_relaxed);
}

}  // namespace sono
