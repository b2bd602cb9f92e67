// The one writer every output goes through: a link planted where it writes is never followed,
// a failed write leaves nothing behind, and the temp files of killed writers are cleaned up.
#include <sys/wait.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "helpers.h"
#include "layers/safetensors.h"
#include "tensor/atomic_file.h"

namespace fs = std::filesystem;
using namespace sono;

namespace {

fs::path fresh_folder(const std::string& name) {
  fs::path dir = fs::path(SONO_BINARY_DIR) / "test_atomic_file" / name;
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir;
}

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), {}};
}

void write_text(const fs::path& p, const std::string& text) { std::ofstream(p, std::ios::binary) << text; }

// A process id that no longer runs: a child that has exited and been reaped.
pid_t dead_pid() {
  pid_t child = fork();
  if (child == 0) _exit(0);
  REQUIRE(child > 0);
  waitpid(child, nullptr, 0);
  return child;
}

}  // namespace

// The name the checkpoint writer used to pick ("X.tmp<PID>"), planted as a link to another
// user's file: a write must neither follow it nor leave the target a link.
TEST_CASE("a checkpoint save never writes through a link planted beside it") {
  fs::path dir = fresh_folder("planted_link");
  fs::path victim = dir / "victim.txt", target = dir / "model.safetensors";
  write_text(victim, "someone else's file");
  fs::create_symlink(victim, dir / ("model.safetensors.tmp" + std::to_string(getpid())));
  nn::save_safetensors(target.string(), {{"w", Tensor::from_vector({1.0, 2.0}, {2})}});
  CHECK(read_file(victim) == "someone else's file");
  CHECK_FALSE(fs::is_symlink(target));
  CHECK(nn::load_safetensors(target.string()).tensors.at("w").to_vector() == std::vector<double>{1.0, 2.0});
}

TEST_CASE("a write into a folder removes the temp files of dead writers, not of live ones") {
  fs::path dir = fresh_folder("stale");
  fs::path dead = dir / (".mask.png.tmp-" + std::to_string(dead_pid()) + "-k3x9q2");
  fs::path live = dir / (".mask.png.tmp-" + std::to_string(getppid()) + "-a8f0zz");
  fs::path other = dir / "notes.tmp-1-x";  // not one of ours: not a dot file of this form
  for (const fs::path& p : {dead, live, other}) write_text(p, "half a file");
  write_file_atomic(dir / "out.csv", "a,b\n");
  CHECK_FALSE(fs::exists(dead));
  CHECK(fs::exists(live));
  CHECK(fs::exists(other));
  CHECK(read_file(dir / "out.csv") == "a,b\n");
}

TEST_CASE("a write removes its target's temp file left by earlier versions' writer, if that died") {
  fs::path dir = fresh_folder("legacy");
  fs::path dead = dir / ("model.safetensors.tmp" + std::to_string(dead_pid()));
  fs::path live = dir / ("model.safetensors.tmp" + std::to_string(getppid()));
  fs::path other = dir / ("other.safetensors.tmp" + std::to_string(dead_pid()));  // not this target
  fs::path suffixed = dir / ("model.safetensors.tmp" + std::to_string(dead_pid()) + "x");
  for (const fs::path& p : {dead, live, other, suffixed}) write_text(p, "half a checkpoint");
  write_file_atomic(dir / "model.safetensors", "new");
  CHECK_FALSE(fs::exists(dead));
  CHECK(fs::exists(live));
  CHECK(fs::exists(other));
  CHECK(fs::exists(suffixed));
  CHECK(read_file(dir / "model.safetensors") == "new");
}

TEST_CASE("the temp file is created only where nothing is: a planted link, dangling or not, is refused") {
  fs::path dir = fresh_folder("exclusive");
  fs::path victim = dir / "victim.txt";
  write_text(victim, "kept");
  fs::create_symlink(victim, dir / "link");
  fs::create_symlink(dir / "nowhere", dir / "dangling");
  for (const char* name : {"link", "dangling"}) {
    CAPTURE(name);
    errno = 0;
    CHECK(create_new_file(dir / name) == -1);
    CHECK(errno == EEXIST);
  }
  CHECK(read_file(victim) == "kept");
  CHECK_FALSE(fs::exists(dir / "nowhere"));
}

TEST_CASE("an uncommitted write leaves the target as it was and no temp file") {
  fs::path dir = fresh_folder("uncommitted");
  write_text(dir / "log.csv", "old");
  {
    AtomicFile file(dir / "log.csv");
    file.write("new, never committed");
  }
  CHECK(read_file(dir / "log.csv") == "old");
  CHECK(std::distance(fs::directory_iterator(dir), fs::directory_iterator()) == 1);
}
