// LayerNorm, BatchNorm, softmax/log_softmax, attention, dropout and drop_path: forward values
// against PyTorch goldens (tests/reference/ops_goldens.py), the fused kernels against their
// compositions, dropout's masks (with float64 gradchecks), and clear errors on bad input. The
// other ops' float64 gradchecks are rows of the op table (test_cuda_op_parity.cpp).
#include "helpers.h"
#include "layers/safetensors.h"
#include "tensor/cpu/cpu_backend.h"

using namespace sono;
using namespace sono::test;

namespace {

nn::StateDict ops_goldens() {
  return nn::load_safetensors(source_path("tests/golden/ops.safetensors")).tensors;
}

// Fraction of elements equal to zero.
double zero_fraction(const Tensor& t) {
  auto v = t.to_vector();
  double zeros = 0;
  for (double x : v) zeros += x == 0.0;
  return zeros / static_cast<double>(v.size());
}

}  // namespace

TEST_CASE("layer_norm forward: PyTorch golden, float32 agrees with float64") {
  nn::StateDict g = ops_goldens();
  Tensor y = layer_norm(g.at("layer_norm.x"), g.at("layer_norm.weight"), g.at("layer_norm.bias"), 1e-6);
  CHECK(max_abs_diff(y, g.at("layer_norm.y")) < 1e-10);
  Tensor y32 = layer_norm(g.at("layer_norm.x").to(DType::f32), g.at("layer_norm.weight").to(DType::f32),
                          g.at("layer_norm.bias").to(DType::f32), 1e-6);
  CHECK(max_abs_diff(y32.to(DType::f64), y) < 1e-5);
}

// Big enough for the kernels' threaded paths (gradchecks use small shapes): the fused kernels
// against the same maths composed from elementwise ops and reductions.
TEST_CASE("layer_norm and softmax kernels on large inputs match composed ops, values and grads") {
  Tensor x = add(rand64({301, 70}, 7, 3.0), 2.0), w = rand64({70}, 8), b = rand64({70}, 9);
  auto composed_layer_norm = [](const std::vector<Tensor>& v) {
    Tensor centered = sub(v[0], mean(v[0], {1}, true));
    Tensor rstd = pow(add(mean(mul(centered, centered), {1}, true), 1e-5), -0.5);
    return add(mul(mul(centered, rstd), v[1]), v[2]);
  };
  auto composed_log_softmax = [](const std::vector<Tensor>& v) {
    Tensor shifted = sub(v[0], amax(v[0], {1}, true));
    return sub(shifted, log(sum(exp(shifted), {1}, true)));
  };
  auto fused_layer_norm = [](const std::vector<Tensor>& v) { return layer_norm(v[0], v[1], v[2], 1e-5); };
  auto fused_log_softmax = [](const std::vector<Tensor>& v) { return log_softmax(v[0], -1); };
  auto fused_softmax = [](const std::vector<Tensor>& v) { return softmax(v[0], -1); };
  auto composed_softmax = [&](const std::vector<Tensor>& v) { return exp(composed_log_softmax(v)); };
  using Fn = std::function<Tensor(const std::vector<Tensor>&)>;
  for (auto [fused, composed] : {std::pair<Fn, Fn>{fused_layer_norm, composed_layer_norm},
                                 {fused_log_softmax, composed_log_softmax}, {fused_softmax, composed_softmax}}) {
    std::vector<Tensor> a{x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()};
    std::vector<Tensor> c{x.clone().requires_grad_(), w.clone().requires_grad_(), b.clone().requires_grad_()};
    Tensor projection = rand64({301, 70}, 10);
    Tensor ya = fused(a), yc = composed(c);
    CHECK(max_abs_diff(ya, yc) < 1e-12);
    sum(mul(ya, projection)).backward();
    sum(mul(yc, projection)).backward();
    for (size_t i = 0; i < 3; ++i)
      if (c[i].grad().defined()) CHECK(max_abs_diff(a[i].grad(), c[i].grad()) < 1e-10);
  }
}

TEST_CASE("batch_norm forward: PyTorch golden for train (with running stats) and eval") {
  nn::StateDict g = ops_goldens();
  const Tensor &x = g.at("batch_norm.x"), &w = g.at("batch_norm.weight"), &b = g.at("batch_norm.bias");
  Tensor rm = g.at("batch_norm.running_mean").clone(), rv = g.at("batch_norm.running_var").clone();
  Tensor y = batch_norm(x, w, b, rm, rv, true, 0.1, 1e-5);
  CHECK(max_abs_diff(y, g.at("batch_norm.train_y")) < 1e-10);
  CHECK(max_abs_diff(rm, g.at("batch_norm.train_running_mean")) < 1e-10);
  CHECK(max_abs_diff(rv, g.at("batch_norm.train_running_var")) < 1e-10);
  Tensor y_eval = batch_norm(x, w, b, g.at("batch_norm.running_mean"), g.at("batch_norm.running_var"),
                             false, 0.1, 1e-5);
  CHECK(max_abs_diff(y_eval, g.at("batch_norm.eval_y")) < 1e-10);
}

// x * scale + bias in one buffer (the composed path: eval mode, or a backend without the fused
// kernels): bit for bit the composed mul then add, values and gradients, without the product
// alive beside the result at the forward's peak.
TEST_CASE("batch_norm scales and shifts into one buffer, exactly as mul then add") {
  const Shape shape{256, 1024};  // 1 MiB of float32
  Tensor x = rand64(shape, 30).to(DType::f32).requires_grad_();
  Tensor w = rand64({1024}, 31).to(DType::f32).requires_grad_();
  Tensor b = rand64({1024}, 32).to(DType::f32).requires_grad_();
  const Tensor running_mean = rand64({1024}, 34).to(DType::f32), running_var = add(rand64({1024}, 35), 2.0).to(DType::f32);
  Tensor up = rand64(shape, 33).to(DType::f32);  // an uneven upstream gradient
  auto grads = [&](const Tensor& y) {
    sum(mul(y, up)).backward();
    std::vector<Tensor> g{x.grad(), w.grad(), b.grad()};
    x.zero_grad(), w.zero_grad(), b.zero_grad();
    return g;
  };
  Tensor centered = sub(x, running_mean);
  Tensor scale = mul(pow(add(running_var, 1e-5), -0.5), w);
  Tensor composed = add(mul(centered, scale), b);
  centered = scale = Tensor();
  std::vector<Tensor> composed_grads = grads(composed);

  const int64_t before = cpu::memory_stats().in_use_bytes;
  cpu::reset_peak_memory();
  Tensor y = batch_norm(x, w, b, running_mean, running_var, false, 0.1, 1e-5);
  CHECK(cpu::memory_stats().peak_bytes - before < 3 << 20);  // centered and y, no third map
  CHECK(max_abs_diff(y, composed) == 0);
  std::vector<Tensor> y_grads = grads(y);
  for (size_t i = 0; i < 3; ++i) CHECK(max_abs_diff(y_grads[i], composed_grads[i]) == 0);
}

// The CPU's fused training kernels against the composed formula (the op table's gradcheck
// checks them in float64): float32 values and gradients within rounding, running stats alike.
TEST_CASE("batch_norm in training: the CPU's fused kernels equal the composed formula") {
  const Shape shape{2, 9, 7, 48};  // 126 rows: not a multiple of the float blocks' 32
  Tensor x = add(mul(rand64(shape, 40), 3.0), 5.0).to(DType::f32).requires_grad_();  // mean far from 0
  Tensor w = rand64({48}, 41).to(DType::f32).requires_grad_();
  Tensor b = rand64({48}, 42).to(DType::f32).requires_grad_();
  Tensor up = rand64(shape, 43).to(DType::f32);
  CHECK(backend(Device::cpu).supports(BackendOp::batch_norm_forward, {&x}));
  std::vector<int64_t> rows{0, 1, 2};
  Tensor centered = sub(x, mean(x, rows));
  Tensor var = mean(mul(centered, centered), rows);
  Tensor composed = add(mul(centered, mul(pow(add(var, 1e-5), -0.5), w)), b);
  sum(mul(composed, up)).backward();
  std::vector<Tensor> want{x.grad().clone(), w.grad().clone(), b.grad().clone()};
  x.zero_grad(), w.zero_grad(), b.zero_grad();

  Tensor running_mean = Tensor::zeros({48}), running_var = Tensor::ones({48});
  Tensor y = batch_norm(x, w, b, running_mean, running_var, true, 0.1, 1e-5);
  CHECK(max_abs_diff(y, composed) < 2e-6);
  sum(mul(y, up)).backward();
  std::vector<Tensor> got{x.grad(), w.grad(), b.grad()};
  for (size_t i = 0; i < 3; ++i) CHECK(max_abs_diff(got[i], want[i]) < 2e-5 * std::max(1.0, max_abs_diff(want[i], mul(want[i], 0.0))));
  // PyTorch's running stats: momentum 0.1, the unbiased variance.
  const double unbias = 126.0 / 125.0;
  CHECK(max_abs_diff(running_mean, mul(mean(x, rows), 0.1)) < 1e-6);
  CHECK(max_abs_diff(running_var, add(mul(var, 0.1 * unbias), 0.9)) < 1e-6);
}

TEST_CASE("batch_norm: one value per channel in training is an error, not NaN") {
  Tensor x = Tensor::ones({1, 1, 1, 4});  // batch 1 on a 1x1 map (ASPP's pooling branch)
  Tensor rm = Tensor::zeros({4}), rv = Tensor::ones({4});
  CHECK_THROWS_WITH_AS(batch_norm(x, {}, {}, rm, rv, true, 0.1, 1e-5),
                       doctest::Contains("expected more than 1 value per channel when training"), Error);
  check_values(rm, {0, 0, 0, 0}, 0);  // buffers untouched by the failed call
  check_values(batch_norm(x, {}, {}, rm, rv, false, 0.1, 0.0), {1, 1, 1, 1}, 1e-7);
  CHECK_THROWS_WITH_AS(batch_norm(Tensor::ones({2, 3}), Tensor::ones({4}), {}, {}, {}, true, 0.1, 1e-5),
                       doctest::Contains("weight has shape [4], expected [3]"), Error);
}

TEST_CASE("softmax forward: PyTorch golden, rows sum to 1, huge logits stay finite") {
  nn::StateDict g = ops_goldens();
  const Tensor& x = g.at("softmax.x");
  CHECK(max_abs_diff(softmax(x, -1), g.at("softmax.last")) < 1e-10);
  CHECK(max_abs_diff(softmax(x, 1), g.at("softmax.dim1")) < 1e-10);
  CHECK(max_abs_diff(log_softmax(x, 2), g.at("log_softmax.last")) < 1e-10);
  CHECK(max_abs_diff(log_softmax(x, 1), g.at("log_softmax.dim1")) < 1e-10);
  Tensor big = Tensor::from_vector({1000, 0, -1000, 999}, {2, 2});
  check_values(softmax(big, -1), {1, 0, 0, 1}, 1e-7);
  check_values(log_softmax(big, -1), {0, -1000, -1999, 0}, 1e-7);
  check_values(sum(softmax(rand64({4, 9}, 31), -1), {1}), {1, 1, 1, 1}, 1e-12);
}

// float32 rows use the kernel's own vectorised exp; float64 uses std::exp.
TEST_CASE("float32 softmax and log_softmax agree with float64, values and gradients") {
  Tensor x = rand64({37, 33}, 32, 10.0), projection = rand64({37, 33}, 33);
  for (bool log : {false, true}) {
    INFO("log " << log);
    std::vector<Tensor> y, grad;
    for (DType dtype : {DType::f32, DType::f64}) {
      Tensor leaf = x.to(dtype).detach().requires_grad_();
      Tensor out = log ? log_softmax(leaf, -1) : softmax(leaf, -1);
      sum(mul(out, projection.to(dtype))).backward();
      y.push_back(out.to(DType::f64));
      grad.push_back(leaf.grad().to(DType::f64));
    }
    CHECK(max_abs_diff(y[0], y[1]) < (log ? 2e-5 : 1e-6));
    CHECK(max_abs_diff(grad[0], grad[1]) < 1e-5);  // sums of ~30 terms of size ~10 in float
  }
}

TEST_CASE("scaled_dot_product_attention: golden forward, shapes that do not fit") {
  Tensor q = rand64({1, 2, 5, 4}, 40), k = rand64({1, 2, 7, 4}, 41);
  nn::StateDict g = ops_goldens();
  Tensor out = scaled_dot_product_attention(g.at("sdpa.q"), g.at("sdpa.k"), g.at("sdpa.v"));
  CHECK(max_abs_diff(out, g.at("sdpa.out")) < 1e-10);
  CHECK_THROWS_WITH_AS(scaled_dot_product_attention(q, k, rand64({1, 2, 6, 3}, 46)),
                       doctest::Contains("k and v with equal L"), Error);
}

namespace {

using DropFn = Tensor (*)(const Tensor&, double, bool, Generator&);

// Gradchecks `drop` with a fixed generator (the same mask on every evaluation), then checks that
// backward applies the forward's own mask: the gradient of sum(y) is y / x. Returns that mask.
Tensor checked_mask(DropFn drop, const Tensor& x, double p, uint64_t seed) {
  expect_gradcheck([&](auto& v) {
    Generator gen(seed);
    return drop(v[0], p, true, gen);
  }, {x});
  Generator gen(seed);
  Tensor leaf = x.clone().requires_grad_();
  Tensor y = drop(leaf, p, true, gen);
  sum(y).backward();
  CHECK(max_abs_diff(leaf.grad(), div(y.detach(), x)) < 1e-12);
  Tensor mask = leaf.grad();
  CHECK(zero_fraction(mask) > 0.0);  // the seed drops some and keeps some
  CHECK(zero_fraction(mask) < 1.0);
  return mask;
}

}  // namespace

TEST_CASE("dropout: same mask forward and backward, inverted scaling, eval is identity") {
  Tensor x = add(abs(rand64({3, 5, 7}, 50)), 0.1);
  for (double m : checked_mask(dropout, x, 0.4, 7).to_vector())
    CHECK((m == 0.0 || std::abs(m - 1.0 / 0.6) < 1e-12));
  Tensor ones = Tensor::ones({200000});
  Generator gen(9);
  Tensor dropped = dropout(ones, 0.3, true, gen);
  CHECK(mean(dropped).item() == doctest::Approx(1.0).epsilon(0.01));
  CHECK(zero_fraction(dropped) == doctest::Approx(0.3).epsilon(0.02));
  CHECK(dropout(x, 0.4, false, gen).same_storage(x));
  CHECK(dropout(x, 0.0, true, gen).same_storage(x));
  check_values(dropout(x, 1.0, true, gen), std::vector<double>(x.numel(), 0.0), 0);
  CHECK_THROWS_WITH_AS(dropout(x, 1.5, true, gen), doctest::Contains("[0, 1]"), Error);
}

TEST_CASE("drop_path: whole samples dropped, survivors scaled by 1/keep, eval is identity") {
  Tensor x = add(abs(rand64({3, 4, 5, 2}, 60)), 0.1);
  Tensor mask = checked_mask(drop_path, x, 0.5, 3);
  for (int64_t n = 0; n < 3; ++n) {  // one factor per sample: 0 or 1 / keep
    auto v = mask.slice(0, n, n + 1).to_vector();
    CHECK((v.front() == 0.0 || std::abs(v.front() - 2.0) < 1e-12));
    for (double m : v) CHECK(m == v.front());
  }
  Generator gen(12);
  Tensor dropped = drop_path(Tensor::ones({20000, 3}), 0.25, true, gen);
  CHECK(mean(dropped).item() == doctest::Approx(1.0).epsilon(0.02));
  CHECK(zero_fraction(dropped) == doctest::Approx(0.25).epsilon(0.04));
  CHECK(drop_path(x, 0.5, false, gen).same_storage(x));
}
