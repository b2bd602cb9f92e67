// What model_bench measures with: the CPU backend's byte counters and the per-kernel timer.
#include "helpers.h"
#include "tensor/cpu/cpu_backend.h"
#include "tools/bench/kernel_timer.h"

using namespace sono;

TEST_CASE("CPU backend counts the bytes tensors hold, and their peak") {
  const int64_t before = cpu::memory_stats().in_use_bytes;
  {
    Tensor t = Tensor::empty({1000, 250}, DType::f64);  // 2,000,000 bytes
    const cpu::MemoryStats held = cpu::memory_stats();
    CHECK(held.in_use_bytes - before >= 2000000);
    CHECK(held.in_use_bytes - before <= 2000000 * 9 / 8);  // large blocks: 8 classes per 2^k
    CHECK(held.peak_bytes >= held.in_use_bytes);
  }
  CHECK(cpu::memory_stats().in_use_bytes == before);
  CHECK(cpu::memory_stats().peak_bytes >= before + 2000000);
  cpu::reset_peak_memory();
  CHECK(cpu::memory_stats().peak_bytes == before);
}

// Blocks of 1 MiB and more are reused once freed, by requests of the same size class or up to
// a third smaller, and cached plus live bytes stay within the peak plus a quarter of it (at
// least 64 MiB, at most 128): a request no cached block fits, with the cache over that, takes a
// cached block (whole up to twice its size, else shrunk; its pages stay resident) and unmaps
// others. Sizes are in hundreds of MB so that a quarter of the peak is over the floor; the
// blocks are mapped, never touched.
TEST_CASE("CPU backend reuses freed large blocks within the peak footprint") {
  {
    // Under a small peak the headroom is its floor of 64 MiB, not a quarter of the peak: a 4 MB
    // request that no cached block fits gets a fresh block, and the 12 MB one stays cached for
    // its size (a quarter would have resized it to 4 MB).
    const void* twelve;
    {
      Tensor t = Tensor::empty({3000, 1000});
      twelve = t.raw_data();
    }
    const int64_t cached_before = cpu::memory_stats().cached_bytes;
    Tensor four = Tensor::empty({1000, 1000});
    CHECK(four.raw_data() != twelve);
    CHECK(cpu::memory_stats().cached_bytes == cached_before);
  }
  const void* first;
  {
    Tensor t = Tensor::empty({75000, 1000});  // 300,000,000 bytes
    first = t.raw_data();
  }
  const int64_t cached = cpu::memory_stats().cached_bytes;
  {
    Tensor again = Tensor::empty({74999, 1001});  // same size class
    CHECK(again.raw_data() == first);
    const int64_t block = cached - cpu::memory_stats().cached_bytes;
    CHECK(block >= 300000000);
    CHECK(block <= int64_t{300000000} * 9 / 8);
  }
  {
    Tensor smaller = Tensor::empty({52500, 1000});  // 210 MB: the 300 MB block is within 1.5x
    CHECK(smaller.raw_data() == first);
  }
  {
    // 100 MB: too small to take the 300 MB block whole, and a fresh block would put the cache
    // over its budget (the 300 MB peak and a quarter): the cached block, shrunk in place.
    const int64_t cached_before = cpu::memory_stats().cached_bytes;
    Tensor much_smaller = Tensor::empty({25000, 1000});
    CHECK(much_smaller.raw_data() == first);
    CHECK(cpu::memory_stats().cached_bytes <= cached_before - 300000000);
  }
  int64_t footprint_at_peak;
  const void* big_block;
  {
    Tensor big = Tensor::empty({160, 1 << 20});  // 640 MiB, more than anything before
    big_block = big.raw_data();
    const cpu::MemoryStats s = cpu::memory_stats();
    footprint_at_peak = s.in_use_bytes + s.cached_bytes;
  }
  Tensor other = Tensor::empty({100, 1 << 20});  // 400 MiB: the 640 MiB block, whole
  CHECK(other.raw_data() == big_block);
  const cpu::MemoryStats s = cpu::memory_stats();
  CHECK(s.in_use_bytes + s.cached_bytes <= footprint_at_peak + footprint_at_peak / 4);
  CHECK(s.cached_bytes < int64_t{640} << 20);
}

TEST_CASE("kernel timer sees every backend call while registered, keyed by geometry") {
  Tensor a = Tensor::ones({3, 5}), b = Tensor::ones({5, 7});
  Tensor x = Tensor::ones({1, 9, 8, 6}), w = Tensor::ones({6, 1, 3, 3});
  std::map<std::string, bench::KernelTotal> totals;
  {
    autograd::NoGradGuard no_grad;
    bench::KernelTimer timer;
    CHECK(std::string(backend(Device::cpu).name()) == "cpu+timer");
    Tensor c = matmul(a, b);
    test::check_values(c.slice(0, 0, 1).slice(1, 0, 1), {5}, 0);
    conv2d(x, w, Tensor(), {.stride = 1, .padding = 2, .dilation = 2, .groups = 6});
    totals = timer.totals();
  }
  CHECK(std::string(backend(Device::cpu).name()) == "cpu");
  REQUIRE(totals.count("gemm") == 1);
  CHECK(totals["gemm"].calls == 1);
  CHECK(totals["gemm"].flops == 2.0 * 3 * 5 * 7);
  REQUIRE(totals.count("conv2d_forward dw 3x3 s1 d2") == 1);
  // 9x8 outputs (padding = dilation keeps the size) x 6 channels x 9 taps, 2 flops each.
  CHECK(totals["conv2d_forward dw 3x3 s1 d2"].flops == 2.0 * 9 * 8 * 6 * 9);
}
