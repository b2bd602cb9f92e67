#pragma once
// What the fuzz targets share: the input as a file the real loaders open by path, and the rule
// every target checks.
#include <sys/mman.h>
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <cstdlib>
#include <exception>
#include <string>
#include <typeinfo>

#include "tensor/error.h"

namespace sono::fuzz {

// The loaders take a path, so the input goes through an in-memory file (memfd): the same code
// path as a file on disk, without a disk write per run. /proc/self/fd/N opens it afresh.
class MemoryFile {
 public:
  MemoryFile() : fd_(memfd_create("sono-fuzz", 0)) {
    if (fd_ < 0) {
      std::perror("memfd_create");
      std::abort();
    }
    path_ = "/proc/self/fd/" + std::to_string(fd_);
  }
  ~MemoryFile() { close(fd_); }
  MemoryFile(const MemoryFile&) = delete;
  MemoryFile& operator=(const MemoryFile&) = delete;

  const std::string& write(const uint8_t* data, size_t size) {
    if (ftruncate(fd_, 0) != 0 || pwrite(fd_, data, size, 0) != static_cast<ssize_t>(size)) {
      std::perror("memfd write");
      std::abort();
    }
    return path_;
  }

 private:
  int fd_;
  std::string path_;
};

// The rule: the code under test succeeds or throws sono::Error, the one-line message the tools
// print as "<tool>: error: ...", or a filesystem error, which run_tool prints as one line naming
// the path and the problem (a path too long for the OS, say). Crashes, sanitizer reports, leaks
// and oversized allocations stop libFuzzer by themselves; any other exception would reach the
// user as "internal error: ..." (run_tool), so it is a finding too and aborts here with its
// type and message.
template <typename Body>
void expect_clean_outcome(const char* what, Body&& body) {
  try {
    body();
  } catch (const Error&) {
  } catch (const std::filesystem::filesystem_error&) {
  } catch (const std::exception& e) {
    std::fprintf(stderr, "FINDING: %s let %s through (users would see \"internal error: %s\")\n", what,
                 typeid(e).name(), e.what());
    std::abort();
  }
}

}  // namespace sono::fuzz
