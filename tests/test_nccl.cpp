// NCCL's path of data-parallel training (tools/app/distributed.h) in a world of one process:
// convnext_atto's gradients, on the GPU, all-reduced by NCCL in buckets that overlap the backward.
// NCCL works on device memory, so this test needs a real GPU (the emulated device's memory is
// the host's) and libnccl.so.2; without them it is skipped and says why. Built where the CUDA
// backend and nccl.h are; tools/scripts/gpu_check.sh runs it on a GPU.
#include <iostream>

#include "cuda/nccl_communicator.h"
#include "helpers.h"
#include "models/registry.h"
#include "tensor/random.h"
#include "tools/app/distributed.h"

using namespace sono;
namespace distributed = sono::app::distributed;

namespace {

const std::string& why_skipped() {
  static const std::string why = [] {
    std::string reason = cuda::nccl_unavailable_reason();
    if (!reason.empty()) std::cerr << "test_nccl: skipped: " << reason << "\n";
    return reason;
  }();
  return why;
}

std::vector<Tensor> gradients_on_host(nn::Module& model) {
  std::vector<Tensor> grads;
  for (Tensor& p : model.parameters()) grads.push_back(p.grad().to(Device::cpu));
  return grads;
}

}  // namespace

TEST_CASE("NCCL sums convnext_atto's gradients on the GPU, the buckets overlapping the backward" *
          doctest::skip(!why_skipped().empty())) {
  manual_seed(5);
  auto model = models::create_model("convnext_atto", {.in_channels = 4, .num_classes = 3});
  model->to(Device::cuda);
  Generator gen(7);
  const Tensor images = randn({4, 32, 32, 4}, gen).to(Device::cuda);
  const Tensor labels = Tensor::from_labels({0, 1, 2, 1}).to(Device::cuda);
  auto loss = [&] { return cross_entropy((*model)(images), labels); };

  loss().backward();
  const std::vector<Tensor> alone = gradients_on_host(*model);
  model->zero_grad();
  distributed::GradientReducer reducer(model->parameters(), 64 << 10);
  CHECK(std::string(reducer.communicator().name()) == "nccl");
  reducer.backward(loss(), 1.0);  // one rank: the sum is its own gradient
  const std::vector<Tensor> reduced = gradients_on_host(*model);
  CHECK(reducer.buckets() > 10);
  CHECK(reducer.overlapped_buckets() + 2 >= reducer.buckets());
  double largest = 0, difference = 0;
  for (size_t k = 0; k < alone.size(); ++k) {
    largest = std::max(largest, test::max_abs_diff(alone[k], Tensor::zeros(alone[k].shape())));
    difference = std::max(difference, test::max_abs_diff(reduced[k], alone[k]));
  }
  CHECK(largest > 1e-3);
  CHECK(difference <= 1e-5 * largest);  // cuDNN may pick another algorithm on the second pass
  CHECK(model->parameters()[0].grad().device() == Device::cuda);
}

TEST_CASE("NCCL gathers each rank's piece of a device buffer (ZeRO-1's parameters)" *
          doctest::skip(!why_skipped().empty())) {
  distributed::Communicator& nccl = distributed::communicator_for(Device::cuda);
  REQUIRE(std::string(nccl.name()) == "nccl");
  const Tensor values = Tensor::from_vector({1, 2, 3, 4, 5}, {5}).to(DType::f32);
  Tensor flat = values.to(Device::cuda).clone();
  nccl.start_gather(flat, {5});
  nccl.wait("the test's gather");
  CHECK(test::max_abs_diff(flat.to(Device::cpu), values) == 0);
}
