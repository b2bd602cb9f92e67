#include "tensor/atomic_file.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstring>
#include <mutex>
#include <random>
#include <set>
#include <string>

#include "tensor/error.h"

namespace sono {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view kTempMarker = ".tmp-";

// ".NAME.tmp-PID-RANDOM": the PID says whose it is (for the stale check), the random part
// makes the name unguessable, so nobody can plant something there ahead of time.
fs::path temp_path_for(const fs::path& target) {
  static std::mutex mutex;
  static std::mt19937_64 rng{std::random_device{}()};
  static constexpr char kAlphabet[] = "abcdefghijklmnopqrstuvwxyz0123456789";
  std::string name = ".";  // built by appending: GCC 12 warns falsely on "." + string
  name += target.filename().string();
  name += kTempMarker;
  name += std::to_string(getpid()) + "-";
  std::lock_guard lock(mutex);
  for (int i = 0; i < 12; ++i) name += kAlphabet[rng() % (sizeof kAlphabet - 1)];
  return target.parent_path() / name;
}

// The PID in a temp file's name, or 0 when the name is not one of ours.
pid_t writer_pid(const std::string& name) {
  if (name.empty() || name[0] != '.') return 0;
  size_t marker = name.rfind(kTempMarker);
  if (marker == std::string::npos) return 0;
  const char* begin = name.data() + marker + kTempMarker.size();
  const char* end = name.data() + name.size();
  pid_t pid = 0;
  auto [stop, error] = std::from_chars(begin, end, pid);
  bool ours = error == std::errc() && stop != begin && stop != end && *stop == '-' && pid > 0;
  return ours ? pid : 0;
}

// The PID in the name the checkpoint writer of earlier versions used for target's temp file,
// "TARGET.tmp<PID>", or 0 when the name is not that.
pid_t legacy_writer_pid(const std::string& name, const std::string& target) {
  const std::string prefix = target + ".tmp";
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return 0;
  const char* begin = name.data() + prefix.size();
  const char* end = name.data() + name.size();
  pid_t pid = 0;
  auto [stop, error] = std::from_chars(begin, end, pid);
  return error == std::errc() && stop == end && pid > 0 ? pid : 0;
}

bool process_is_gone(pid_t pid) { return ::kill(pid, 0) != 0 && errno == ESRCH; }

// Removes `path` when it is this user's regular file and its writer `pid` has died.
void remove_if_writer_died(const fs::path& path, pid_t pid) {
  struct stat st;
  if (pid == 0 || pid == getpid() || ::lstat(path.c_str(), &st) != 0) return;
  if (S_ISREG(st.st_mode) && st.st_uid == geteuid() && process_is_gone(pid)) {
    std::error_code ignored;
    fs::remove(path, ignored);
  }
}

// Once per process and target: a folder's other targets may have legacy temp files too.
void remove_stale_temp_files_once(const fs::path& target) {
  static std::mutex mutex;
  static std::set<std::string> cleaned;
  std::error_code ec;
  std::string key = fs::absolute(target, ec).lexically_normal().string();
  {
    std::lock_guard lock(mutex);
    if (!cleaned.insert(key).second) return;
  }
  remove_stale_temp_files(target.parent_path(), target.filename().string());
}

}  // namespace

int create_new_file(const fs::path& path) {
  return ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
}

void remove_stale_temp_files(const fs::path& folder, const std::string& target) {
  std::error_code ec;
  for (fs::directory_iterator it(folder.empty() ? "." : folder, ec), end; !ec && it != end; it.increment(ec)) {
    const std::string name = it->path().filename().string();
    const pid_t pid = writer_pid(name);
    remove_if_writer_died(it->path(), pid ? pid : legacy_writer_pid(name, target));
  }
}

AtomicFile::AtomicFile(fs::path target) : target_(std::move(target)) {
  SONO_CHECK(!target_.filename().empty(), "cannot write '", target_.string(), "': not a file name");
  remove_stale_temp_files_once(target_);
  for (int attempt = 0; fd_ < 0 && attempt < 8; ++attempt) {
    temp_ = temp_path_for(target_);
    fd_ = create_new_file(temp_);
    if (fd_ < 0 && errno != EEXIST) break;
  }
  if (fd_ < 0) {
    temp_.clear();  // never created: nothing of ours to remove
    fail("cannot write '", target_.string(), "': ", std::strerror(errno));
  }
}

AtomicFile::~AtomicFile() {
  if (fd_ >= 0) ::close(fd_);
  std::error_code ignored;
  if (!temp_.empty()) fs::remove(temp_, ignored);
}

void AtomicFile::fail_with(int error) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = -1;
  std::error_code ignored;
  fs::remove(temp_, ignored);
  temp_.clear();
  fail("cannot write '", target_.string(), "': ", std::strerror(error));
}

void AtomicFile::write(std::string_view bytes) {
  SONO_CHECK(fd_ >= 0, "cannot write '", target_.string(), "': already committed or failed");
  while (!bytes.empty()) {
    ssize_t n = ::write(fd_, bytes.data(), bytes.size());
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) fail_with(n < 0 ? errno : ENOSPC);
    bytes.remove_prefix(static_cast<size_t>(n));
  }
}

void AtomicFile::commit() {
  SONO_CHECK(fd_ >= 0, "cannot write '", target_.string(), "': already committed or failed");
  if (::fsync(fd_) != 0) fail_with(errno);
  int closed = ::close(fd_);
  fd_ = -1;
  if (closed != 0 || std::rename(temp_.c_str(), target_.c_str()) != 0) fail_with(errno);
  temp_.clear();
}

void write_file_atomic(const fs::path& path, std::string_view bytes) {
  AtomicFile file(path);
  file.write(bytes);
  file.commit();
}

}  // namespace sono
