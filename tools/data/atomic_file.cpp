#include "tools/data/atomic_file.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstring>
#include <string>

#include "tensor/error.h"

namespace sono::data {

namespace {

// A name unique across threads and processes writing into the same folder.
std::filesystem::path temp_path_for(const std::filesystem::path& path) {
  static std::atomic<uint64_t> counter{0};
  std::string name = ".";  // built by appending: GCC 12 warns falsely on "." + string
  name += path.filename().string();
  name += ".tmp-" + std::to_string(getpid()) + "-" + std::to_string(counter++);
  return path.parent_path() / name;
}

bool write_all(int fd, std::string_view bytes) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) return false;
    bytes.remove_prefix(static_cast<size_t>(n));
  }
  return true;
}

}  // namespace

void write_file_atomic(const std::filesystem::path& path, std::string_view bytes) {
  SONO_CHECK(!path.filename().empty(), "cannot write '", path.string(), "': not a file name");
  std::filesystem::path temp = temp_path_for(path);
  int fd = ::open(temp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
  if (fd < 0) fail("cannot write '", path.string(), "': ", std::strerror(errno));
  bool ok = write_all(fd, bytes) && ::fsync(fd) == 0;
  int error = errno;
  if (::close(fd) != 0 && ok) ok = false, error = errno;
  if (ok && std::rename(temp.c_str(), path.c_str()) == 0) return;
  if (ok) error = errno;
  std::error_code ignored;
  std::filesystem::remove(temp, ignored);
  fail("cannot write '", path.string(), "': ", std::strerror(error));
}

}  // namespace sono::data
