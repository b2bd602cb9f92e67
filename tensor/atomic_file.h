#pragma once
// The one way every tool writes an output file (checkpoints, masks, overlays, CSV, logs,
// curves, exports): never half a file, never through a link or file someone planted.
#include <filesystem>
#include <string_view>

namespace sono {

// A file written under a fresh temp name in the target's folder, ".NAME.tmp-PID-RANDOM",
// created with O_CREAT|O_EXCL|O_NOFOLLOW: whatever already sits at that name (another user's
// link in a shared /tmp included) is never opened. commit() flushes the data to disk and renames
// the temp file over the target (a link at the target is replaced, not followed). Destroyed
// without commit(), the temp file is removed and the target keeps its old content. Errors are
// sono::Error naming the target.
class AtomicFile {
 public:
  explicit AtomicFile(std::filesystem::path target);
  ~AtomicFile();
  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(std::string_view bytes);
  void commit();

 private:
  [[noreturn]] void fail_with(int error);

  std::filesystem::path target_, temp_;
  int fd_ = -1;
};

void write_file_atomic(const std::filesystem::path& path, std::string_view bytes);

// A new file at `path` for writing, refused (-1, errno EEXIST) when anything, a dangling link
// included, is already there.
int create_new_file(const std::filesystem::path& path);

// Removes from `folder` the temp files of writers that died mid-write (SIGKILL, power loss):
// this user's regular files named ".X.tmp-PID-..." whose PID no longer runs, and "TARGET.tmpPID"
// (the name earlier versions wrote `target` through). The first AtomicFile to a target calls
// it, once per process.
void remove_stale_temp_files(const std::filesystem::path& folder, const std::string& target = {});

}  // namespace sono
