// Tensor basics, views, broadcasting elementwise ops, reductions and matmul: forward values
// by hand, errors with clear messages. The ops' float64 gradchecks are rows of the op table
// (test_cuda_op_parity.cpp).
#include <set>

#include "helpers.h"
#include "tensor/cpu/cpu_backend.h"

using namespace sono;
using namespace sono::test;

TEST_CASE("views share storage and contiguous() copies") {
  Tensor t = Tensor::from_vector({0, 1, 2, 3, 4, 5}, {2, 3});
  Tensor p = t.transpose(0, 1);
  CHECK(p.shape() == Shape{3, 2});
  CHECK_FALSE(p.is_contiguous());
  check_values(p.contiguous(), {0, 3, 1, 4, 2, 5}, 0);
  check_values(t.slice(1, 1, 3), {1, 2, 4, 5}, 0);
  check_values(t.reshape({3, -1}).slice(0, 2, 3), {4, 5}, 0);
  CHECK(t.unsqueeze(0).shape() == Shape{1, 2, 3});
  check_values(Tensor::from_vector({1, 2}, {2, 1}).expand({2, 3}).contiguous(), {1, 1, 1, 2, 2, 2}, 0);
}

TEST_CASE("broadcasting elementwise forward") {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector({10, 20, 30}, {3});
  check_values(a + b, {11, 22, 33, 14, 25, 36}, 1e-7);
  check_values(a * Tensor::from_vector({2, 3}, {2, 1}), {2, 4, 6, 12, 15, 18}, 1e-7);
  check_values(gelu(Tensor::from_vector({-1, 0, 1}, {3})), {-0.15865525, 0, 0.84134475}, 1e-6);
  check_values(softplus(Tensor::from_vector({-100, 0, 100}, {3}, DType::f64)), {0, std::log(2.0), 100}, 1e-12);
}

TEST_CASE("reductions forward") {
  Tensor a = Tensor::from_vector({1, 5, 3, 4, 2, 6}, {2, 3});
  check_values(sum(a, {1}), {9, 12}, 1e-7);
  check_values(mean(a, {0}), {2.5, 3.5, 4.5}, 1e-7);
  check_values(amax(a, {1}), {5, 6}, 1e-7);
  check_values(sum(a), {21}, 1e-7);
  Tensor x = rand64({2, 3, 5, 4}, 7);
  CHECK(max_abs_diff(sum(x, {1, 2}, true), sum(sum(x, {1}, true), {2}, true)) < 1e-12);
}

TEST_CASE("matmul forward by hand") {
  Tensor a = Tensor::from_vector({1, 2, 3, 4, 5, 6}, {2, 3});
  Tensor b = Tensor::from_vector({7, 8, 9, 10, 11, 12}, {3, 2});
  check_values(matmul(a, b), {58, 64, 139, 154}, 1e-7);
  Tensor w = Tensor::from_vector({1, 0, -1, 2, 1, 0}, {2, 3});
  check_values(linear(a, w, Tensor::from_vector({0.5, -0.5}, {2})), {-1.5, 3.5, -1.5, 12.5}, 1e-7);
}

// float32 gradients of gelu(x + b) against float64 autograd, through the given op.
void expect_f32_gelu_grads(const std::function<Tensor(const Tensor&, const Tensor&)>& op,
                           const Tensor& x64, const Tensor& b64, const Tensor& seed64) {
  Tensor x = x64.to(DType::f32).requires_grad_(), b = b64.to(DType::f32).requires_grad_();
  Tensor xr = x64.detach().requires_grad_(), br = b64.detach().requires_grad_();
  autograd::run_backward(op(x, b), seed64.to(DType::f32));
  autograd::run_backward(gelu(add(xr, br)), seed64);
  // Seen: 5.3e-7 and, summed over 37 rows, 1.2e-6.
  CHECK(max_abs_diff(x.grad(), xr.grad()) < 1e-6);
  CHECK(max_abs_diff(b.grad(), br.grad()) < 3e-6);
}

// The fused GELU kernels (bias_gelu, and gelu's backward): float64 exact (the gradcheck is the
// op table's), float32 through the vectorised path on rows that straddle its 4096-element
// chunks (301 columns).
TEST_CASE("bias_gelu equals gelu(x + bias); fused GELU gradients") {
  Tensor x = rand64({3, 5, 7}, 11, 2.0), b = rand64({7}, 12);
  CHECK(max_abs_diff(bias_gelu(x, b), gelu(add(x, b))) == 0.0);
  CHECK_THROWS_WITH_AS(bias_gelu(x, rand64({5}, 13)), doctest::Contains("does not fit"), Error);

  Tensor x2 = rand64({37, 301}, 14, 3.0), b2 = rand64({301}, 15), seed = rand64({37, 301}, 16);
  // float32 rounding of x + b where |x + b| reaches 12: seen 1.0e-6.
  CHECK(max_abs_diff(bias_gelu(x2.to(DType::f32), b2.to(DType::f32)), gelu(add(x2, b2))) < 2e-6);
  expect_f32_gelu_grads([](const Tensor& v, const Tensor& c) { return bias_gelu(v, c); }, x2, b2,
                        seed);
  expect_f32_gelu_grads([](const Tensor& v, const Tensor& c) { return gelu(add(v, c)); }, x2, b2,
                        seed);
}

TEST_CASE("autograd engine: accumulation, no_grad, freed graph, clear errors") {
  Tensor w = Tensor::from_vector({2.0}, {1}, DType::f64).requires_grad_();
  Tensor y = add(mul(w, w), mul(w, 3.0));  // w used twice: grads sum
  sum(y).backward();
  check_values(w.grad(), {7.0}, 1e-12);
  sum(mul(w, 2.0)).backward();  // accumulates on the leaf
  check_values(w.grad(), {9.0}, 1e-12);
  {
    autograd::NoGradGuard guard;
    CHECK_FALSE(mul(w, 2.0).requires_grad());
  }
  Tensor s = sum(mul(w, w));
  s.backward();
  CHECK_THROWS_WITH_AS(s.backward(), doctest::Contains("already freed"), Error);
  CHECK_THROWS_WITH_AS(cat({w, w}, 0).backward(), doctest::Contains("scalar"), Error);
  CHECK_THROWS_WITH_AS(sum(Tensor::ones({2})).backward(), doctest::Contains("does not require grad"), Error);
}

TEST_CASE("autograd engine frees each node's saved tensors as soon as its backward has run") {
  Tensor x = Tensor::from_vector({1.0, 2.0}, {2}, DType::f64).requires_grad_();
  Tensor saved = Tensor::ones({1 << 16}, DType::f64);  // stands for an activation kept for backward
  std::weak_ptr<TensorImpl> saved_alive = saved.impl_ptr();
  bool freed_before_earlier_node = false;
  // first runs second in backward; by then second's closure (and `saved`) must be gone.
  Tensor first = autograd::record("first", mul(x, 1.0).detach(), {x}, [&](const Tensor& g) {
    freed_before_earlier_node = saved_alive.expired();
    return std::vector<Tensor>{g};
  });
  Tensor second = autograd::record("second", mul(first, 1.0).detach(), {first},
                                   [kept = std::move(saved)](const Tensor& g) {
                                     return std::vector<Tensor>{mul(g, sum(kept))};
                                   });
  sum(second).backward();
  CHECK(freed_before_earlier_node);
  check_values(x.grad(), {65536.0, 65536.0}, 1e-12);
}

TEST_CASE("autograd keeps no intermediate alive that no backward saved") {
  Tensor x = rand64({64, 64}, 1).requires_grad_();
  Tensor y = mul(x, 2.0);
  std::weak_ptr<Storage> y_storage = y.impl().storage;
  Tensor z = add(y, 1.0);  // its backward needs no operand: only the edge to y's node remains
  y = Tensor();
  CHECK(y_storage.expired());
  sum(z).backward();
  check_values(x.grad(), std::vector<double>(64 * 64, 2.0), 1e-12);
}

TEST_CASE("matmul and linear keep their 3-D operands for backward, not the bases of views") {
  Tensor base = rand64({2, 64, 64}, 3).requires_grad_();
  Tensor q = rand64({2, 8, 32}, 4).requires_grad_();
  auto attention_like = [&](bool drop_views) {
    Tensor kv = mul(base, 1.0);                         // a projection that k views
    Tensor k_t = kv.slice(2, 0, 32).transpose(1, 2);    // [2, 32, 64], copied by matmul
    std::weak_ptr<Storage> kv_storage = kv.impl().storage;
    Tensor scores = matmul(q, k_t);
    std::weak_ptr<Storage> scores_storage = scores.impl().storage;
    Tensor y = linear(scores.transpose(1, 2), rand64({5, 8}, 5), Tensor());  // x: a view of scores
    if (drop_views) {
      kv = k_t = scores = Tensor();
      CHECK(kv_storage.expired());
      CHECK(scores_storage.expired());  // linear copied its view to 2-D rows
    }
    sum(y).backward();
    return std::pair{base.grad().clone(), q.grad().clone()};
  };
  auto [base_grad, q_grad] = attention_like(false);
  base.zero_grad(), q.zero_grad();
  auto [base_grad_dropped, q_grad_dropped] = attention_like(true);
  CHECK(max_abs_diff(base_grad, base_grad_dropped) == 0);
  CHECK(max_abs_diff(q_grad, q_grad_dropped) == 0);
}

// Bytes above `before` at the peak of running f.
template <typename F>
int64_t peak_bytes_of(F&& f) {
  const int64_t before = cpu::memory_stats().in_use_bytes;
  cpu::reset_peak_memory();
  f();
  return cpu::memory_stats().peak_bytes - before;
}

TEST_CASE("checkpoint keeps only its input; gradients bit for bit those of the plain graph") {
  Tensor x0 = rand64({128, 1024}, 8).requires_grad_();  // 1 MiB
  Tensor w = rand64({8, 1024}, 9, 0.05).requires_grad_(), b = rand64({8}, 10).requires_grad_();
  Tensor up = rand64({128, 8}, 11);
  auto mlp_tail = [&](const Tensor& h) { return linear(gelu(h), w, b); };
  auto run = [&](bool checkpointed, int64_t& held_after_forward) {
    const int64_t before = cpu::memory_stats().in_use_bytes;
    Tensor x = mul(x0, 1.0);
    Tensor y = checkpointed ? autograd::checkpoint(mlp_tail, x, {w, b}) : mlp_tail(x);
    held_after_forward = cpu::memory_stats().in_use_bytes - before;
    sum(mul(y, up)).backward();
    std::vector<Tensor> grads{y.detach(), x0.grad(), w.grad(), b.grad()};
    x0.zero_grad(), w.zero_grad(), b.zero_grad();
    return grads;
  };
  int64_t plain_bytes, checkpoint_bytes;
  std::vector<Tensor> plain = run(false, plain_bytes), recomputed = run(true, checkpoint_bytes);
  CHECK(plain_bytes >= 2 << 20);       // x, and gelu(x) saved for the weight gradient
  CHECK(checkpoint_bytes < 3 << 19);   // x (and the small output) only
  for (size_t i = 0; i < plain.size(); ++i) CHECK(max_abs_diff(plain[i], recomputed[i]) == 0);
}

TEST_CASE("mul(x, x) hands one product to both operands") {
  Tensor x = rand64({128, 1024}, 7).requires_grad_();  // 1 MiB
  Tensor p = mul(x, 1.0);
  Tensor loss = sum(add(mul(p, p), mul(p, 3.0)));
  // Upstream gradient, p's gradient from mul(p, 3), and g * p once for both operands of p * p.
  CHECK(peak_bytes_of([&] { loss.backward(); }) < 4 << 20);
  std::vector<double> expected;
  for (double v : x.to_vector()) expected.push_back(2 * v + 3);
  check_values(x.grad(), expected, 1e-12);
}

// Contiguous operands merge into one row, which the CPU hands to its threads in pieces
// (cpu::kRowPiece): every element once, across the pieces' edges, contiguous or strided.
TEST_CASE("elementwise ops over rows longer than a piece reach every element once") {
  const int64_t n = 3 * 16384 + 5;
  std::vector<double> a(n), b(n);
  for (int64_t i = 0; i < n; ++i) a[i] = i, b[i] = 0.5 * i;
  const Tensor ta = Tensor::from_vector(a, {n}), tb = Tensor::from_vector(b, {n});
  std::vector<double> sum(n);
  for (int64_t i = 0; i < n; ++i) sum[i] = 1.5 * i;
  check_values(ta + tb, sum, 0);
  check_values(Tensor::full({n}, 7.0), std::vector<double>(n, 7.0), 0);
  // [2, n] read transposed: rows of 2, strided, n of them.
  const Tensor pairs = Tensor::from_vector([&] {
    std::vector<double> v(a);
    v.insert(v.end(), b.begin(), b.end());
    return v;
  }(), {2, n}).transpose(0, 1);
  std::vector<double> interleaved;
  for (int64_t i = 0; i < n; ++i) interleaved.insert(interleaved.end(), {a[i], b[i]});
  check_values(pairs.contiguous(), interleaved, 0);
}

TEST_CASE("relu keeps its output for backward, not its input, and its gradient is one map") {
  Tensor x = rand64({128, 1024}, 6, 2.0).requires_grad_();  // 1 MiB
  Tensor pre = mul(x, 1.0);
  std::weak_ptr<Storage> pre_storage = pre.impl().storage;
  Tensor y = relu(pre);
  pre = Tensor();
  CHECK(pre_storage.expired());
  // The upstream gradient and relu's own: the product goes over the mask, not beside it.
  CHECK(peak_bytes_of([&] { sum(y).backward(); }) < 3 << 20);
  std::vector<double> expected;
  for (double v : x.to_vector()) expected.push_back(v > 0 ? 1.0 : 0.0);
  check_values(x.grad(), expected, 0);
}

TEST_CASE("autograd adds a second gradient into the first in place, for nodes and leaves") {
  const Shape shape{128, 1024};  // 1 MiB of float64 per gradient
  const int64_t mib = int64_t{1} << 20;
  Tensor w = Tensor::zeros(shape, DType::f64).requires_grad_();
  // Two consumers of w, each handing back a fresh gradient of ones.
  auto consumer = [&](const Tensor& in) {
    auto fresh_ones = [shape](const Tensor&) {
      return std::vector<Tensor>{Tensor::ones(shape, DType::f64)};
    };
    return autograd::record("consumer", Tensor::zeros({1}, DType::f64), {in}, fresh_ones);
  };
  // A node receiving both gradients, and passing their sum to w as it is.
  Tensor through = autograd::record("through", w.detach(), {w}, [](const Tensor& g) {
    return std::vector<Tensor>{g};
  });
  Tensor loss = add(consumer(through), consumer(through));
  CHECK(peak_bytes_of([&] { loss.backward(); }) < 3 * mib);  // two gradients, never a third sum
  check_values(w.grad(), std::vector<double>(128 * 1024, 2.0), 0);
  Tensor again = consumer(w);  // the leaf already holds a gradient: added into, not replaced
  CHECK(peak_bytes_of([&] { again.backward(); }) < 2 * mib);  // beside the .grad held before
  check_values(w.grad(), std::vector<double>(128 * 1024, 3.0), 0);
}

TEST_CASE("a leaf's .grad takes over a gradient nobody else holds, and copies a shared one") {
  Tensor x = Tensor::from_vector({1.0, 2.0, 3.0}, {3}, DType::f64).requires_grad_();
  Tensor w = Tensor::from_vector({4.0, 5.0, 6.0}, {3}, DType::f64).requires_grad_();
  TensorImpl* fresh = nullptr;
  Tensor shared;  // a gradient the caller still holds: .grad must not alias it
  Tensor y = autograd::record("pair", mul(x, w).detach(), {x, w}, [&](const Tensor& g) {
    Tensor gx = mul(g, 2.0);
    fresh = gx.impl_ptr().get();
    shared = mul(g, 3.0);
    return std::vector<Tensor>{gx, shared};
  });
  sum(y).backward();
  CHECK(x.grad().impl_ptr().get() == fresh);
  CHECK_FALSE(w.grad().same_storage(shared));
  check_values(x.grad(), {2.0, 2.0, 2.0}, 1e-12);
  check_values(w.grad(), {3.0, 3.0, 3.0}, 1e-12);
}

// ConvNeXt's pointwise weights are [out, in, 1, 1] used as matrices: the gradient reaching the
// leaf is a reshape (a view) of the product's; it becomes .grad without a copy.
TEST_CASE("a leaf's .grad takes over a reshaped gradient nobody else holds") {
  Tensor w = Tensor::from_vector({1.0, 2.0, 3.0, 4.0, 5.0, 6.0}, {3, 2, 1, 1}, DType::f64).requires_grad_();
  Tensor x = Tensor::from_vector({1.0, -1.0, 0.5, 2.0}, {2, 2}, DType::f64);
  const void* product = nullptr;
  Tensor matrix = autograd::record("as_matrix", w.detach().reshape({3, 2}), {w}, [&](const Tensor& g) {
    product = g.raw_data();
    return std::vector<Tensor>{g.reshape({3, 2, 1, 1})};
  });
  sum(linear(x, matrix, Tensor())).backward();
  CHECK(w.grad().raw_data() == product);
  check_values(w.grad().reshape({6}), {1.5, 1.0, 1.5, 1.0, 1.5, 1.0}, 1e-12);
}

TEST_CASE("bad input raises clear errors") {
  Tensor a = Tensor::ones({2, 3}), b = Tensor::ones({4});
  CHECK_THROWS_WITH_AS(add(a, b), doctest::Contains("do not broadcast"), Error);
  CHECK_THROWS_WITH_AS(add(a, Tensor::ones({2, 3}, DType::f64)), doctest::Contains("dtype mismatch"), Error);
  CHECK_THROWS_WITH_AS(matmul(a, a), doctest::Contains("inner sizes"), Error);
  CHECK_THROWS_WITH_AS(a.reshape({4, 2}), doctest::Contains("does not fit"), Error);
  CHECK_THROWS_AS(a.data<double>(), Error);
}

TEST_CASE("GradReadyHook reports each leaf once, when its gradient is final, inner backwards not") {
  Tensor x = rand64({4, 3}, 20);
  Tensor w1 = rand64({3}, 21).requires_grad_(), w2 = rand64({3}, 22).requires_grad_(),
         w3 = rand64({3}, 23).requires_grad_();
  Tensor a = mul(x, w1);  // w1's first use: its gradient is final only at the end of the backward
  Tensor y = autograd::checkpoint([&](const Tensor& h) { return mul(h, w2); }, a, {w2});
  Tensor loss = sum(add(mul(y, w1), mul(a, w3)));
  std::vector<std::pair<TensorImpl*, Tensor>> reported;  // each leaf with its gradient then
  {
    autograd::GradReadyHook hook([&](TensorImpl& leaf) { reported.emplace_back(&leaf, Tensor(leaf.grad).clone()); });
    loss.backward();
  }
  REQUIRE(reported.size() == 3);
  std::set<TensorImpl*> leaves;
  for (auto& [leaf, grad] : reported) {
    leaves.insert(leaf);
    CHECK(max_abs_diff(grad, Tensor(leaf->grad)) == 0);
  }
  CHECK(leaves == std::set<TensorImpl*>{w1.impl_ptr().get(), w2.impl_ptr().get(), w3.impl_ptr().get()});
  CHECK(reported.back().first == w1.impl_ptr().get());
  w1.zero_grad();
  sum(mul(x, w1)).backward();  // the hook is gone with its scope
  CHECK(reported.size() == 3);
}

// What load_checkpoint builds its model under: no draw, no move of the generator.
TEST_CASE("under SkipRandomFill, randn, rand and trunc_normal give zeros and leave the generator where it was") {
  Generator drawn(7), skipped(7);
  const std::vector<double> expected = randn({5}, drawn).to_vector();
  {
    SkipRandomFill skip;
    CHECK(randn({3, 2}, skipped).to_vector() == std::vector<double>(6, 0.0));
    CHECK(rand({4}, skipped, DType::f64).to_vector() == std::vector<double>(4, 0.0));
    CHECK(trunc_normal({2}, 0.02, -2, 2, skipped).to_vector() == std::vector<double>(2, 0.0));
    {
      SkipRandomFill nested;
    }
    CHECK(randn({1}, skipped).item() == 0.0);  // still skipping: the nested guard restored its outer one
  }
  CHECK(randn({5}, skipped).to_vector() == expected);
}

// The winners' positions (int64, twice a float32 output's bytes) are for the backward alone: an
// inference allocates the pooled map and nothing beside it.
TEST_CASE("max_pool2d keeps the winners' positions only where a backward will read them") {
  Generator gen(5);
  const Tensor x = randn({2, 16, 16, 64}, gen);
  const int64_t output_bytes = 2 * 8 * 8 * 64 * sizeof(float);
  auto pooled_bytes = [&](const Tensor& input) {
    cpu::reset_peak_memory();
    const int64_t before = cpu::memory_stats().in_use_bytes;
    const Tensor y = max_pool2d(input, 3, 2, 1);
    return cpu::memory_stats().peak_bytes - before;
  };
  CHECK(pooled_bytes(x) < 2 * output_bytes);
  const Tensor leaf = x.detach().requires_grad_();
  CHECK(pooled_bytes(leaf) >= 3 * output_bytes);  // recording: the output and its positions
  autograd::NoGradGuard no_grad;
  CHECK(pooled_bytes(leaf) < 2 * output_bytes);
}
