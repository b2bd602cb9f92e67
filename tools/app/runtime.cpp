#include "tools/app/runtime.h"

#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <thread>
#include <iostream>
#include <map>

#include "cuda/emulated/emulated_backend.h"
#include "tensor/autocast.h"
#include "tensor/cpu/cpu_backend.h"
#include "tensor/cpu/gemm.h"
#include "tensor/error.h"
#ifdef _OPENMP
#include <omp.h>
#endif
#ifdef SONO_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif

namespace sono::app {

namespace fs = std::filesystem;

Device select_device(const std::string& name) {
  if (name == "cpu") return Device::cpu;
  SONO_CHECK(name == "cuda", "--device ", name, ": expected cpu or cuda");
  const char* emulate = std::getenv("SONO_CUDA_EMULATOR");
  if (emulate && std::string(emulate) == "1") {
    register_backend(Device::cuda, &cuda::emulated_backend());
    return Device::cuda;
  }
#ifdef SONO_HAVE_CUDA
  SONO_CHECK(cuda::device_count() > 0, "--device cuda: no usable NVIDIA GPU on this machine (use --device cpu)");
  return Device::cuda;
#else
  fail("--device cuda: this build has no CUDA backend (nvcc was not found when it was configured); "
       "use --device cpu");
#endif
}

void check_thread_count(const std::string& flag, int64_t count, int64_t min) {
  const int64_t max = 4 * static_cast<int64_t>(std::max(1u, std::thread::hardware_concurrency()));
  SONO_CHECK(count >= min && count <= max, "--", flag, " ", count, ": must be from ", min, " to ", max,
             " (4 per core on this machine)");
}

void set_threads(int64_t threads) {
  check_thread_count("threads", threads, 0);  // 0: all cores
#ifdef _OPENMP
  if (threads > 0) omp_set_num_threads(static_cast<int>(threads));
#endif
}

int kernel_threads() {
#ifdef _OPENMP
  return omp_get_max_threads();
#else
  return 1;
#endif
}

void add_runtime_options(Cli& cli) {
  cli.option("device", "cpu", "cpu or cuda")
      .option("threads", "0", "CPU threads for the kernels (0: one per core)")
      .option("amp", "off", "mixed precision: off, or bf16 (bfloat16 matrix products, float32 "
                            "accumulation and weights; bfloat16 activations on cuda, float32 on the cpu)");
}

Device apply_training_runtime_options(const Cli& cli) {
  cpu::set_huge_pages(true);
  return apply_runtime_options(cli);
}

Device apply_runtime_options(const Cli& cli) {
  set_threads(cli.integer("threads"));
  const Device device = select_device(cli.str("device"));
  const Precision precision = parse_precision(cli.str("amp"));
  set_autocast(device, precision);
  if (device == Device::cpu && precision == Precision::bf16 && !cpu::cpu_multiplies_bf16())
    std::cerr << "note: --amp bf16: this CPU has no bfloat16 instructions (AMX or AVX512-BF16), so its "
                 "products are float32 FMAs of rounded values, slower than --amp off\n";
  return device;
}

void check_writable(const fs::path& file) {
  SONO_CHECK(!file.empty(), "an output path is empty");
  SONO_CHECK(!fs::is_directory(file), file.string(), ": is a folder, expected a file path");
  fs::path folder = file.has_parent_path() ? file.parent_path() : fs::path(".");
  SONO_CHECK(fs::is_directory(folder), file.string(), ": cannot be written (folder ", folder.string(),
             " does not exist)");
  SONO_CHECK(access(folder.c_str(), W_OK) == 0, file.string(), ": cannot be written (folder ",
             folder.string(), " is not writable)");
  SONO_CHECK(!fs::exists(file) || access(file.c_str(), W_OK) == 0, file.string(),
             ": cannot be written (read-only file)");
}

namespace {

// Equal for two paths to one file: device and inode where it exists, else the path with every
// existing link resolved.
std::string file_identity(const fs::path& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return std::to_string(st.st_dev) + ":" + std::to_string(st.st_ino);
  std::error_code ec;
  fs::path resolved = fs::weakly_canonical(fs::absolute(path), ec);
  return "path:" + (ec ? fs::absolute(path).lexically_normal() : resolved).string();
}

}  // namespace

void check_outputs(const std::vector<RunFile>& inputs, const std::vector<RunFile>& outputs, bool overwrite) {
  std::map<std::string, const RunFile*> inputs_by_identity, outputs_by_identity;
  for (const RunFile& in : inputs) inputs_by_identity.emplace(file_identity(in.path), &in);
  for (const RunFile& out : outputs) {
    const std::string identity = file_identity(out.path);
    if (auto in = inputs_by_identity.find(identity); in != inputs_by_identity.end())
      fail(out.path.string(), ": ", out.role, " would replace ", in->second->role, " (", in->second->path.string(),
           "); outputs never replace inputs");
    auto [other, added] = outputs_by_identity.emplace(identity, &out);
    SONO_CHECK(added, out.path.string(), ": ", out.role, " and ", other->second->role, " are the same file");
    SONO_CHECK(overwrite || !fs::exists(fs::symlink_status(out.path)), out.path.string(), ": ", out.role,
               " exists; pass --overwrite to replace it");
  }
}

void check_writable_folder(const std::string& flag, const fs::path& folder) {
  std::error_code ec;
  fs::path existing = folder.empty() ? fs::path(".") : folder;
  while (!fs::exists(existing, ec) && existing.has_parent_path() && existing != existing.parent_path())
    existing = existing.parent_path();
  if (!fs::exists(existing, ec)) existing = ".";  // a relative path: its first part is created in "."
  const std::string problem = existing == folder ? "" : " cannot be created:";
  SONO_CHECK(fs::is_directory(existing, ec), "--", flag, " ", folder.string(), ":", problem, " ", existing.string(),
             " is not a folder");
  SONO_CHECK(access(existing.c_str(), W_OK) == 0, "--", flag, " ", folder.string(), ":", problem, " ",
             existing.string(), " is not writable (", std::strerror(errno), ")");
}

int run_tool(const std::string& tool, const std::function<int()>& body) {
  try {
    return body();
  } catch (const Error& e) {
    std::cerr << tool << ": error: " << e.what() << "\n";
  } catch (const fs::filesystem_error& e) {  // a folder or file the checks could not foresee
    std::cerr << tool << ": error: " << e.path1().string() << ": " << e.code().message() << "\n";
  } catch (const std::exception& e) {
    std::cerr << tool << ": internal error: " << e.what() << "\n";
  }
  return 1;
}

}  // namespace sono::app
