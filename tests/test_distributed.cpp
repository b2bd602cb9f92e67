// Data-parallel training on MPI (tools/app/distributed.h), run by ctest as
// `mpirun -np 2 test_distributed`: both ranks run every test case, in the same order.
#include <algorithm>

#include "helpers.h"
#include "layers/norm.h"
#include "layers/optim.h"
#include "models/registry.h"
#include "tensor/random.h"
#include "tools/app/distributed.h"
#include "test_device.h"
#include "tools/data/loader.h"

using namespace sono;
namespace distributed = sono::app::distributed;

const distributed::Session mpi;  // joins the job before doctest's main runs

namespace {

constexpr int64_t kBatch = 8, kSize = 32, kClasses = 3;

// The global batch, the same on every rank.
struct GlobalBatch {
  Tensor images, labels;
};

GlobalBatch global_batch(int step) {
  Generator gen(1000 + step);
  std::vector<int64_t> labels;
  for (int64_t i = 0; i < kBatch; ++i) labels.push_back((i * 7 + step) % kClasses);
  return {randn({kBatch, kSize, kSize, 4}, gen), Tensor::from_labels(labels)};
}

std::shared_ptr<nn::UnaryModule> convnext_atto(DType dtype) {
  manual_seed(5);
  auto model = models::create_model("convnext_atto", {.in_channels = 4, .num_classes = kClasses});
  model->to(dtype);
  return model;
}

// How each rank computes a step's gradient.
enum class Mode {
  whole_batch,     // one process: the 8 images
  reduced,         // this rank's 4 images, gradients all-reduced (the data-parallel step)
  halves_locally,  // one process, two halves of 4: the sum of shares the all-reduce must give
  not_reduced,     // this rank's 4 images and nothing else: what skipping the all-reduce gives
  sharded,         // reduced, each rank stepping its shard of the parameters, then gathering all (ZeRO-1)
  not_gathered,    // sharded, without the gather: what skipping it gives
};

Tensor loss_of(nn::UnaryModule& model, const Tensor& images, const Tensor& labels) {
  return cross_entropy(model(images.to(model.parameters()[0].dtype())), labels);
}

bool sharded(Mode mode) { return mode == Mode::sharded || mode == Mode::not_gathered; }

// convnext_atto's parameters after 3 AdamW steps on global_batch(0..2); the whole optimizer's
// state after them into `optimizer_state` where given.
std::vector<Tensor> train_three_steps(Mode mode, DType dtype = DType::f32, size_t bucket_bytes = size_t{25} << 20,
                                      nn::StateDict* optimizer_state = nullptr) {
  auto model = convnext_atto(dtype);
  nn::AdamW adamw(nn::param_groups_weight_decay(*model, 0.05), {.lr = 1e-3, .weight_decay = 0.05});
  std::unique_ptr<distributed::GradientReducer> reducer;
  if (mode == Mode::reduced || sharded(mode))
    reducer = std::make_unique<distributed::GradientReducer>(model->parameters(), bucket_bytes);
  std::unique_ptr<distributed::OptimizerShards> shards;
  if (sharded(mode)) shards = std::make_unique<distributed::OptimizerShards>(adamw);
  auto [first, last] = data::rank_share(kBatch, distributed::rank(), distributed::size());
  auto rows = [](const Tensor& t, size_t a, size_t b) { return t.slice(0, int64_t(a), int64_t(b)); };
  for (int step = 0; step < 3; ++step) {
    GlobalBatch batch = global_batch(step);
    adamw.zero_grad();
    if (mode == Mode::whole_batch) {
      loss_of(*model, batch.images, batch.labels).backward();
    } else if (mode == Mode::reduced || sharded(mode)) {
      reducer->backward(loss_of(*model, rows(batch.images, first, last), rows(batch.labels, first, last)), 0.5);
      // Overlap: every bucket but those of the stem (the backward's last node: weight, bias) in flight before.
      CHECK(reducer->overlapped_buckets() + (bucket_bytes < 10240 ? 2 : 1) == reducer->buckets());
    } else if (mode == Mode::not_reduced) {
      loss_of(*model, rows(batch.images, first, last), rows(batch.labels, first, last)).backward();
    } else {
      std::vector<std::vector<Tensor>> halves;
      for (int64_t h = 0; h < 2; ++h) {
        adamw.zero_grad();
        loss_of(*model, rows(batch.images, 4 * h, 4 * h + 4), rows(batch.labels, 4 * h, 4 * h + 4)).backward();
        std::vector<Tensor> grads;
        for (Tensor& p : model->parameters()) grads.push_back(p.grad());
        halves.push_back(grads);
      }
      std::vector<Tensor> params = model->parameters();
      for (size_t k = 0; k < params.size(); ++k)
        params[k].set_grad(add(mul(halves[0][k], 0.5), mul(halves[1][k], 0.5)));
    }
    adamw.step();
    if (mode == Mode::sharded) shards->gather_parameters();
  }
  if (optimizer_state)
    for (auto& [name, t] : shards ? shards->state_dict() : adamw.state_dict()) (*optimizer_state)[name] = t.clone();
  std::vector<Tensor> params;
  for (Tensor& p : model->parameters()) params.push_back(p.detach().to(DType::f64));
  return params;
}

double max_difference(const std::vector<Tensor>& a, const std::vector<Tensor>& b) {
  double m = 0;
  for (size_t k = 0; k < a.size(); ++k) m = std::max(m, test::max_abs_diff(a[k], b[k]));
  return m;
}

}  // namespace

TEST_CASE("the test runs on two MPI ranks") {
  REQUIRE(distributed::size() == 2);
}

// The tolerance comes from float64: the data-parallel step changes only the order of float32
// additions (two sums of 4 images, then one more), so its parameters must lie as close to the
// float64 run's as the one-process float32 run's do, within a factor for the other rounding path.
TEST_CASE("two ranks at batch 4 take convnext_atto's AdamW steps of one process at batch 8") {
  std::vector<Tensor> exact = train_three_steps(Mode::whole_batch, DType::f64);
  std::vector<Tensor> one_process = train_three_steps(Mode::whole_batch);
  std::vector<Tensor> two_ranks = train_three_steps(Mode::reduced);
  const double float32_error = max_difference(one_process, exact);
  const double data_parallel_error = max_difference(two_ranks, exact);
  MESSAGE("largest parameter error against float64: one process ", float32_error, ", two ranks ",
          data_parallel_error);
  CHECK(float32_error > 0);
  CHECK(data_parallel_error <= 4 * float32_error);

  SUBCASE("bit for bit the sum of the halves' gradients, each weighted 1/2") {
    CHECK(max_difference(two_ranks, train_three_steps(Mode::halves_locally)) == 0);
  }
  SUBCASE("without the all-reduce the test fails: the ranks take other steps") {
    const double skipped_error = max_difference(train_three_steps(Mode::not_reduced), exact);
    MESSAGE("without the all-reduce: ", skipped_error);
    CHECK(skipped_error > 10 * 4 * float32_error);
  }
}

TEST_CASE("bucket boundaries, between a layer's weight and its bias too, do not change the sums") {
  auto model = convnext_atto(DType::f32);
  distributed::GradientReducer small(model->parameters(), 4096), one(model->parameters(), size_t{1} << 30);
  CHECK(one.buckets() == 1);
  CHECK(small.buckets() > 20);
  nn::NamedTensors named = model->named_parameters();
  int split_layers = 0;  // whose weight and bias are in different buckets
  for (size_t k = 0; k + 1 < named.size(); ++k) {
    const std::string& name = named[k].first;
    if (name.size() > 7 && name.substr(name.size() - 7) == ".weight" &&
        named[k + 1].first == name.substr(0, name.size() - 7) + ".bias")
      split_layers += small.bucket_of(k) != small.bucket_of(k + 1);
  }
  CHECK(split_layers > 0);
  CHECK(max_difference(train_three_steps(Mode::reduced, DType::f32, 4096), train_three_steps(Mode::reduced)) == 0);
}

TEST_CASE("a rank without an image in the step still sums its (zero) share") {
  auto model = convnext_atto(DType::f32);
  distributed::GradientReducer reducer(model->parameters());
  GlobalBatch batch = global_batch(0);
  Tensor rank1_loss;
  if (distributed::rank() == 1) rank1_loss = loss_of(*model, batch.images.slice(0, 0, 1), batch.labels.slice(0, 0, 1));
  reducer.backward(rank1_loss, distributed::rank() == 1 ? 1.0 : 0.0);
  std::vector<Tensor> reduced;
  for (Tensor& p : model->parameters()) reduced.push_back(p.grad());
  model->zero_grad();
  loss_of(*model, batch.images.slice(0, 0, 1), batch.labels.slice(0, 0, 1)).backward();
  std::vector<Tensor> alone;
  for (Tensor& p : model->parameters()) alone.push_back(p.grad());
  CHECK(max_difference(reduced, alone) == 0);
}

TEST_CASE("map_rows: each rank computes its rows, every rank gets all of them in order") {
  for (int64_t n : {1, 2, 5}) {
    Tensor rows = Tensor::from_vector(std::vector<double>(n * 3, 1.0), {n, 3}).to(DType::f32);
    int calls = 0;
    Tensor out = distributed::map_rows(
        [&](const Tensor& part) {
          ++calls;
          return mul(part, double(part.size(0)));  // shows which rows went together
        },
        add(rows, Tensor::from_vector({0, 1, 2}, {3}).to(DType::f32)));
    CHECK(out.shape() == Shape{n, 3});
    std::vector<double> v = out.to_vector();
    for (int64_t i = 0; i < n; ++i) {
      auto [first, last] = data::rank_share(size_t(n), 0, 2);
      const double together = n < 2 ? double(n) : (size_t(i) < last ? double(last - first) : double(n - last));
      CHECK(v[i * 3 + 2] == 3 * together);
    }
    CHECK(calls == 1);
  }
}

TEST_CASE("sum, and the broadcast of rank 0's buffers") {
  CHECK(distributed::sum(distributed::rank() + 1.5) == 4.0);
  auto model = models::create_model("mit_b0", {.in_channels = 3, .num_classes = 1});  // BatchNorm in the head
  nn::StateDict initial, changed;
  for (auto& [name, b] : model->named_buffers()) {
    initial[name] = b.clone();
    if (b.dtype() == DType::f32) changed[name] = add(b, double(distributed::rank() * 10));  // rank 0's stay
  }
  REQUIRE(!initial.empty());
  model->load_state_dict(changed, false);
  distributed::broadcast_buffers_from_root(*model);
  for (auto& [name, b] : model->named_buffers()) CHECK(test::max_abs_diff(b, initial.at(name)) == 0);
}

// SyncBatchNorm in float64: 3 images shared 1 + 2, each rank's loss weighted by its share, give
// one process's BatchNorm on all 3: gradients of the input rows, weight and bias, and running
// statistics.
TEST_CASE("--sync-bn: BatchNorm over the ranks' images is BatchNorm over the whole batch") {
  const Tensor images = test::rand64({3, 2, 2, 4}, 30, 2.0), outside = test::rand64({2, 2, 4}, 33);
  struct Result {
    Tensor input_grad, weight_grad, bias_grad, running_mean, running_var;
  };
  // Loss: the mean over the images of sum((y * outside)^2), on rows [first, last), weighted by share.
  auto train_step = [&](size_t first, size_t last, double share) {
    nn::BatchNorm2d bn(4);
    bn.to(DType::f64);
    bn.load_state_dict({{"weight", test::rand64({4}, 31)}, {"bias", test::rand64({4}, 32)}}, false);
    Tensor x = images.slice(0, int64_t(first), int64_t(last)).contiguous().requires_grad_();
    Tensor y = mul(bn(x), outside);
    mul(mean(sum(mul(y, y), {1, 2, 3})), share).backward();
    return Result{x.grad(), bn.weight.grad(), bn.bias.grad(), bn.running_mean.clone(), bn.running_var.clone()};
  };
  const Result alone = train_step(0, 3, 1.0);
  auto [first, last] = data::rank_share(3, distributed::rank(), 2);
  REQUIRE(last - first == size_t(distributed::rank() + 1));
  nn::BatchNorm2d::sum_over_ranks = distributed::sum_over_ranks;
  const Result synced = train_step(first, last, double(last - first) / 3);
  nn::BatchNorm2d::sum_over_ranks = nullptr;
  CHECK(test::max_abs_diff(synced.input_grad, alone.input_grad.slice(0, int64_t(first), int64_t(last))) < 1e-12);
  CHECK(test::max_abs_diff(distributed::sum_over_ranks(synced.weight_grad), alone.weight_grad) < 1e-12);
  CHECK(test::max_abs_diff(distributed::sum_over_ranks(synced.bias_grad), alone.bias_grad) < 1e-12);
  CHECK(test::max_abs_diff(synced.running_mean, alone.running_mean) < 1e-12);
  CHECK(test::max_abs_diff(synced.running_var, alone.running_var) < 1e-12);
  // Each rank's own statistics (per-rank BatchNorm) give other gradients.
  const Result per_rank = train_step(first, last, double(last - first) / 3);
  CHECK(test::max_abs_diff(per_rank.input_grad, alone.input_grad.slice(0, int64_t(first), int64_t(last))) > 1e-3);
}

// ZeRO-1: the owner of a parameter takes the step the unsharded optimizer takes on the same
// averaged gradient, so the parameters agree bit for bit, and so do the optimizer states once
// gathered (what a resume state holds).
TEST_CASE("--shard-optimizer: two ranks stepping their shards take the unsharded data-parallel steps") {
  nn::StateDict whole_state, sharded_state;
  std::vector<Tensor> reduced = train_three_steps(Mode::reduced, DType::f32, size_t{25} << 20, &whole_state);
  std::vector<Tensor> zero1 = train_three_steps(Mode::sharded, DType::f32, size_t{25} << 20, &sharded_state);
  CHECK(max_difference(zero1, reduced) == 0);
  const double float32_error = max_difference(train_three_steps(Mode::whole_batch), train_three_steps(Mode::whole_batch, DType::f64));
  CHECK(max_difference(zero1, train_three_steps(Mode::whole_batch, DType::f64)) <= 4 * float32_error);
  REQUIRE(sharded_state.size() == whole_state.size());
  REQUIRE(whole_state.size() == 1 + 3 * convnext_atto(DType::f32)->parameters().size());
  for (auto& [name, t] : whole_state) {
    INFO(name);
    REQUIRE(sharded_state.count(name));
    CHECK(test::max_abs_diff(sharded_state.at(name), t) == 0);
  }
  SUBCASE("without the gather the test fails: each rank stepped only its shard") {
    const double not_gathered = max_difference(train_three_steps(Mode::not_gathered), reduced);
    MESSAGE("without the gather: ", not_gathered);
    CHECK(not_gathered > 1e-4);
  }
}

TEST_CASE("--shard-optimizer: each rank keeps AdamW's moments for about half of the parameters") {
  auto model = convnext_atto(DType::f32);
  nn::AdamW adamw(nn::single_group(*model), {.lr = 1e-3});
  distributed::OptimizerShards shards(adamw);
  std::vector<Tensor> params = model->parameters();
  for (Tensor& p : params) p.set_grad(Tensor::ones(p.shape()));
  adamw.step();
  double mine = 0, total = 0;
  for (size_t k = 0; k < params.size(); ++k) {
    const bool owned = shards.owner(k) == distributed::rank();
    CHECK(adamw.state_dict().count(model->named_parameters()[k].first + ".exp_avg") == size_t(owned));
    mine += owned ? double(params[k].numel()) : 0;
    total += double(params[k].numel());
    if (k > 0) CHECK(shards.owner(k) >= shards.owner(k - 1));  // a contiguous run each
  }
  CHECK(distributed::sum(mine) == total);
  MESSAGE("rank ", distributed::rank(), " steps ", mine, " of ", total, " parameters");
  CHECK(std::abs(mine / total - 0.5) < 0.1);
}

// Without NCCL (here: the emulated CUDA device, whose memory is the host's), the gradients of
// CUDA tensors go to the host, through MPI, and back.
TEST_CASE("gradients of CUDA tensors without NCCL are summed over MPI through the host") {
  test::TestDevice device;
  const Tensor weight = test::rand64({3, 5}, 40).to(DType::f32), bias = test::rand64({3}, 41).to(DType::f32);
  const Tensor x = test::rand64({4, 5}, 42).to(DType::f32);
  auto gradients = [&](Device on, size_t first, size_t last, bool reduce) {
    Tensor w = weight.to(on).detach().requires_grad_(), b = bias.to(on).detach().requires_grad_();
    Tensor y = linear(x.slice(0, int64_t(first), int64_t(last)).to(on), w, b);
    Tensor loss = mean(mul(y, y));
    distributed::GradientReducer reducer({w, b});
    if (reduce) {
      CHECK(std::string(reducer.communicator().name()) == "mpi");
      reducer.backward(loss, double(last - first) / 4);
    } else {
      loss.backward();
    }
    CHECK(w.grad().device() == on);
    return std::vector<Tensor>{w.grad().to(Device::cpu), b.grad().to(Device::cpu)};
  };
  auto [first, last] = data::rank_share(4, distributed::rank(), 2);
  const double difference = max_difference(gradients(Device::cuda, first, last, true), gradients(Device::cpu, 0, 4, false));
  CHECK(difference < 1e-6);
  CHECK(max_difference(gradients(Device::cpu, first, last, false), gradients(Device::cpu, 0, 4, false)) > 1e-3);
}
