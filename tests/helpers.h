#pragma once
// Shared test helpers: random inputs, closeness checks, golden-file paths.
#include <doctest/doctest.h>

#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <filesystem>
#include <initializer_list>
#include <string>

#include "autograd/gradcheck.h"
#include "autograd/node.h"
#include "tensor/cpu/gemm.h"
#include "tensor/ops.h"

namespace sono::test {

inline Tensor rand64(const Shape& shape, uint64_t seed, double scale = 1.0) {
  Generator gen(seed);
  return mul(randn(shape, gen, DType::f64), scale);
}

inline double max_abs_diff(const Tensor& a, const Tensor& b) {
  REQUIRE(a.shape() == b.shape());
  auto x = a.to_vector(), y = b.to_vector();
  double m = 0;
  for (size_t i = 0; i < x.size(); ++i) m = std::max(m, std::abs(x[i] - y[i]));
  return m;
}

inline void check_values(const Tensor& t, const std::vector<double>& expected, double tol) {
  auto v = t.to_vector();
  REQUIRE(v.size() == expected.size());
  for (size_t i = 0; i < v.size(); ++i) CHECK(v[i] == doctest::Approx(expected[i]).epsilon(std::max(tol, 1e-12)));
}

// Asserts every input's analytic gradient matches central differences to 1e-6 relative.
inline void expect_gradcheck(const std::function<Tensor(const std::vector<Tensor>&)>& fn,
                             const std::vector<Tensor>& inputs, double tol = 1e-6) {
  auto r = autograd::gradcheck(fn, inputs);
  for (size_t i = 0; i < r.max_rel_error.size(); ++i) {
    INFO("input " << i);
    CHECK(r.max_rel_error[i] < tol);
  }
}

// A fresh folder under the system temp folder, removed with everything in it at the end.
struct TempDir {
  std::filesystem::path path;
  TempDir() {
    static int count = 0;
    path = std::filesystem::temp_directory_path() /
           ("sono_test_" + std::to_string(getpid()) + "_" + std::to_string(count++));
    std::filesystem::remove_all(path);
    std::filesystem::create_directories(path);
  }
  ~TempDir() { std::filesystem::remove_all(path); }
  std::filesystem::path operator/(const std::string& name) const { return path / name; }
};

inline std::string source_path(const std::string& rel) { return std::string(SONO_SOURCE_DIR) + "/" + rel; }

// Goldens too big to commit, written by tests/reference/*_goldens.py --full into
// $SONO_REF_GOLDENS (default /work/ref-goldens). Tests that need them are decorated
// `* doctest::skip(!has_ref_goldens({...}))`, so that without them they count as skipped.
inline std::string ref_golden(const std::string& name) {
  const char* dir = std::getenv("SONO_REF_GOLDENS");
  return std::string(dir ? dir : "/work/ref-goldens") + "/" + name;
}
inline bool has_ref_goldens(std::initializer_list<const char*> names) {
  for (const char* name : names)
    if (!std::filesystem::exists(ref_golden(name))) return false;
  return true;
}
// Runs `check` once for each Bf16Math this CPU runs (AMX, AVX512-BF16 dot products, rounded
// float32 FMAs), each as the fastest the CPU GEMM may use; says which ones it skips. Without
// sgemm (no AVX-512, no AVX2): once, on Eigen's GEMM of rounded copies.
template <typename Check>
void for_each_bf16_math(Check&& check) {
  using cpu::Bf16Math;
  if constexpr (!cpu::kHaveSgemm) {
    MESSAGE("bf16 products on Eigen's GEMM only: no sgemm for this CPU");
    check();
  } else {
    for (Bf16Math math : {Bf16Math::amx, Bf16Math::dot_products, Bf16Math::rounded}) {
      const std::string name = math == Bf16Math::amx ? "AMX" : math == Bf16Math::dot_products ? "AVX512-BF16" : "rounded FMA";
      if (!cpu::cpu_runs(math)) {
        MESSAGE("skipped bf16 products on " << name << ": not on this CPU");
        continue;
      }
      CAPTURE(name);
      cpu::limit_bf16_math(math);
      check();
    }
    cpu::limit_bf16_math(Bf16Math::amx);
  }
}

// Whether a batch's CPU results are bit for bit those of its images one at a time: with sgemm
// (AVX-512 or AVX2), whose sums do not depend on the batch; Eigen's GEMM, on other CPUs, sums in
// an order that depends on the matrices' sizes.
inline constexpr bool kBatchBitForBit = cpu::kHaveSgemm;

// Full-size parity runs take minutes of CPU: only with SONO_FULL_PARITY=1.
inline bool full_parity_enabled() { return std::getenv("SONO_FULL_PARITY") != nullptr; }

}  // namespace sono::test
