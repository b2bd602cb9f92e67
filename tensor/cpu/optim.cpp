// One torch.optim.AdamW update of one parameter, element by element, in the order and with the
// rounding of torch's single-tensor path (the CPU default):
//   p *= 1 - lr * wd                       (decoupled weight decay, before the moments)
//   m  = lerp(m, g, 1 - beta1)             (m + (1 - beta1) (g - m))
//   v  = beta2 v + (1 - beta2) g^2
//   p -= lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
// Scalars are formed in double and cast once to the element type, as torch does with Python
// scalars. Adam's L2 decay is wd = 0 here with the decay already folded into g.
#include <cmath>

#include "tensor/cpu/cpu_backend.h"

namespace sono::cpu {

namespace {

template <typename T>
void adamw_elements(T* p, const T* g, T* m, T* v, int64_t n, double lr, double beta1, double beta2,
                    double eps, double weight_decay, int64_t step) {
  const T decay = static_cast<T>(1.0 - lr * weight_decay);
  const T one_minus_beta1 = static_cast<T>(1.0 - beta1);
  const T b2 = static_cast<T>(beta2), one_minus_beta2 = static_cast<T>(1.0 - beta2);
  const T step_size = static_cast<T>(lr / (1.0 - std::pow(beta1, static_cast<double>(step))));
  const T bias_correction2_sqrt =
      static_cast<T>(std::sqrt(1.0 - std::pow(beta2, static_cast<double>(step))));
  const T e = static_cast<T>(eps);
#pragma omp parallel for simd schedule(static) if (n > 32768)
  for (int64_t i = 0; i < n; ++i) {
    const T gi = g[i];
    const T mi = m[i] + one_minus_beta1 * (gi - m[i]);
    const T vi = v[i] * b2 + one_minus_beta2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    p[i] = p[i] * decay - step_size * (mi / (std::sqrt(vi) / bias_correction2_sqrt + e));
  }
}

}  // namespace

void CpuBackend::adamw_step(const Tensor& param, const Tensor& grad, const Tensor& exp_avg,
                            const Tensor& exp_avg_sq, double lr, double beta1, double beta2,
                            double eps, double weight_decay, int64_t step) {
  SONO_CHECK(step >= 1, "adamw_step: step counts from 1, got ", step);
  for (const Tensor* t : {&grad, &exp_avg, &exp_avg_sq}) {
    SONO_CHECK(t->shape() == param.shape() && t->dtype() == param.dtype(),
               "adamw_step: grad and state must match the parameter's shape ",
               shape_str(param.shape()), " and dtype ", dtype_name(param.dtype()), ", got ",
               shape_str(t->shape()), " ", dtype_name(t->dtype()));
  }
  for (const Tensor* t : {&param, &grad, &exp_avg, &exp_avg_sq})
    SONO_CHECK(t->is_contiguous(), "adamw_step: tensors must be contiguous");
  dispatch_float(param.dtype(), [&](auto tag) {
    using T = decltype(tag);
    adamw_elements<T>(param.data<T>(), grad.data<T>(), exp_avg.data<T>(), exp_avg_sq.data<T>(),
                      param.numel(), lr, beta1, beta2, eps, weight_decay, step);
  });
}

}  // namespace sono::cpu
