#pragma once
// A library of the CUDA toolkit opened when first used (dlopen), not linked. Linked, libcublas
// made every start of every tool load libcublasLt (540 MB) and run its initialisers: ~0.15 s and
// ~200 MB resident before main, on CPU-only runs as well. NCCL is opened the same way, so that
// the tools run on machines without it.
#include <dlfcn.h>

#include <string>
#include <utility>

namespace sono::cuda {

class SharedLibrary {
 public:
  explicit SharedLibrary(std::string file)
      : file_(std::move(file)), handle_(dlopen(file_.c_str(), RTLD_NOW | RTLD_LOCAL)) {
    if (!handle_) error_ = "cannot open " + file_ + " (" + dlerror() + ")";
  }

  // Sets f to the library's function `name`, or to null, and then error() names the first one
  // missing. The library stays open for the life of the process.
  template <typename F>
  void find(const char* name, F& f) {
    f = handle_ ? reinterpret_cast<F>(dlsym(handle_, name)) : nullptr;
    if (!f && error_.empty()) error_ = file_ + " has no " + name;
  }

  // Why the library or one of the functions asked for cannot be used; "" where all can.
  const std::string& error() const { return error_; }

 private:
  std::string file_, error_;
  void* handle_;
};

}  // namespace sono::cuda
