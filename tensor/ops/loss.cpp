// Losses with mean reduction, matching torch.nn.functional on the same inputs.
#include <vector>

#include "tensor/autocast.h"
#include "tensor/ops.h"

namespace sono {

namespace {

void check_same_shape(const Tensor& logits, const Tensor& target, const char* op) {
  SONO_CHECK(target.shape() == logits.shape(), op, ": target shape ", shape_str(target.shape()),
             " must equal logits shape ", shape_str(logits.shape()));
}

std::vector<int64_t> checked_labels(const Tensor& labels, int64_t n, int64_t classes) {
  SONO_CHECK(labels.dtype() == DType::i64 && labels.dim() == 1 && labels.size(0) == n,
             "cross_entropy: labels must be int64 [", n, "], got ", dtype_name(labels.dtype()), " ",
             shape_str(labels.shape()));
  std::vector<int64_t> y = labels.to_labels();
  for (size_t i = 0; i < y.size(); ++i)
    SONO_CHECK(y[i] >= 0 && y[i] < classes, "cross_entropy: label ", y[i], " at index ", i,
               " is out of range for ", classes, " classes (valid: 0..", classes - 1, ")");
  return y;
}

std::vector<double> checked_class_weights(const Tensor& w, int64_t classes) {
  if (!w.defined()) return std::vector<double>(classes, 1.0);
  SONO_CHECK(w.dim() == 1 && w.size(0) == classes, "cross_entropy: class_weights has shape ",
             shape_str(w.shape()), ", expected [", classes, "]");
  return w.to_vector();
}

}  // namespace

// PyTorch's mean with class weights divides by the summed weights of the batch's labels, and
// label smoothing spreads eps/C over every class with the same weights and the same divisor:
//   loss = sum_i sum_c w_c ((1 - eps) [c == y_i] + eps / C) (-log p_ic) / sum_i w_{y_i}.
// So the whole loss is -sum(log_softmax(logits) * T) with T built on the host.
Tensor cross_entropy(const Tensor& logits_in, const Tensor& labels, const Tensor& class_weights,
                     double label_smoothing) {
  const Tensor logits = autocast_input(AutocastOp::loss, logits_in);
  SONO_CHECK(logits.dim() == 2 && logits.size(0) > 0 && logits.size(1) > 0,
             "cross_entropy: logits must be [N, C] with N, C > 0, got ", shape_str(logits.shape()));
  SONO_CHECK(label_smoothing >= 0.0 && label_smoothing <= 1.0,
             "cross_entropy: label_smoothing must be in [0, 1], got ", label_smoothing);
  const int64_t n = logits.size(0), classes = logits.size(1);
  const std::vector<int64_t> y = checked_labels(labels, n, classes);
  const std::vector<double> w = checked_class_weights(class_weights, classes);
  double total = 0;
  for (int64_t label : y) total += w[label];
  SONO_CHECK(total > 0, "cross_entropy: the class weights of this batch's labels sum to ", total,
             "; the weighted mean is undefined");
  std::vector<double> target(n * classes);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t c = 0; c < classes; ++c)
      target[i * classes + c] =
          w[c] * ((c == y[i] ? 1.0 - label_smoothing : 0.0) + label_smoothing / classes) / total;
  Tensor t = Tensor::from_vector(target, {n, classes}, logits.dtype()).to(logits.device());
  return neg(sum(mul(log_softmax(logits, -1), t)));
}

// softplus(x) - x t equals PyTorch's max(x, 0) - x t + log(1 + exp(-|x|)), stable for any x.
Tensor bce_with_logits(const Tensor& logits_in, const Tensor& target) {
  const Tensor logits = autocast_input(AutocastOp::loss, logits_in);
  check_same_shape(logits, target, "bce_with_logits");
  return mean(sub(softplus(logits), mul(logits, target)));
}

Tensor soft_dice_loss(const Tensor& logits_in, const Tensor& target, double smooth) {
  const Tensor logits = autocast_input(AutocastOp::loss, logits_in);
  check_same_shape(logits, target, "soft_dice_loss");
  SONO_CHECK(logits.dim() >= 1 && logits.size(0) > 0, "soft_dice_loss: needs a non-empty batch dim, got ",
             shape_str(logits.shape()));
  std::vector<int64_t> per_sample;
  for (int64_t d = 1; d < logits.dim(); ++d) per_sample.push_back(d);
  Tensor p = sigmoid(logits);
  Tensor overlap = sum(mul(p, target), per_sample);
  Tensor total = add(sum(p, per_sample), sum(target, per_sample));
  Tensor dice = div(add(mul(overlap, 2.0), smooth), add(total, smooth));
  return add(neg(mean(dice)), 1.0);
}

}  // namespace sono
