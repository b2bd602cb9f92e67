#pragma once
// What every tool does around its real work: the device and thread count from the command
// line, writable-output checks, and one exit path that turns errors into a line and a status.
#include <filesystem>
#include <functional>
#include <string>
#include <vector>

#include "tensor/dtype.h"
#include "tools/app/cli.h"

namespace sono::app {

// "cpu" or "cuda". cuda is refused with the reason when this build has no CUDA backend or the
// machine has no usable GPU; with SONO_CUDA_EMULATOR=1 in the environment it is the emulated
// device (cuda/emulated: the CUDA kernels run on the CPU, slowly), GPU or not.
Device select_device(const std::string& name);

// OpenMP threads for the kernels; 0 keeps the default (one per core). It sets the calling
// thread's count: a thread of the tool's own starts with the default.
void set_threads(int64_t threads);
// The calling thread's kernel threads.
int kernel_threads();

// Throws naming --flag unless min <= count <= 4 threads per core: more only adds overhead,
// and far more makes libgomp or std::thread fail (--threads 100000 crashed inside libgomp).
void check_thread_count(const std::string& flag, int64_t count, int64_t min);

// Flags every tool takes: --device, --threads, --amp.
void add_runtime_options(Cli& cli);
// Applies --threads and --amp (autocast on the device; bf16 is refused on the CPU) and returns
// --device.
Device apply_runtime_options(const Cli& cli);
// The same for a training run, whose CPU blocks also ask for huge pages (cpu::set_huge_pages):
// its steps reuse their blocks, so the first touch's wait pays.
Device apply_training_runtime_options(const Cli& cli);

// Throws naming `file` when it could not be written: its folder is missing or read-only, or
// it is a folder. Checked before long work, so a run does not fail at its end.
void check_writable(const std::filesystem::path& file);

// A file a run reads or writes, with what it is to the user ("--image", "the mask of x.png").
struct RunFile {
  std::filesystem::path path;
  std::string role;
};

// Checked before any work: no output is the same file as an input or as another output (by
// identity: another spelling of the path, a link or a hard link to it is the same file), and
// no output exists unless `overwrite`. Throws naming the file and both roles.
void check_outputs(const std::vector<RunFile>& inputs, const std::vector<RunFile>& outputs, bool overwrite);

// Throws naming `flag` and `folder` unless the folder exists and is writable, or can be
// created: its nearest existing ancestor is a writable folder.
void check_writable_folder(const std::string& flag, const std::filesystem::path& folder);

// Runs a tool's body: --help exits 0; a sono::Error prints "<tool>: error: <message>" and
// exits 1; so does a filesystem error (as "<path>: <problem>") and any other exception,
// marked as internal.
int run_tool(const std::string& tool, const std::function<int()>& body);

}  // namespace sono::app
