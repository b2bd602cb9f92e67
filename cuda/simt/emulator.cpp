// The SIMT emulator's scheduler: fibers (makecontext once per stack, then _setjmp/_longjmp,
// about 20 ns a switch against 350 ns for swapcontext, which also saves the signal mask), block
// and warp barriers, and the checks that turn a misused barrier into a clear simt::Fault.
// Built with AddressSanitizer it announces every stack switch; with ThreadSanitizer each CUDA
// thread is a TSan fiber and the only orderings between them are the barriers', so a race
// between threads of a block is reported whatever order the schedule ran them in.
//
// glibc's fortified longjmp refuses jumps between stacks, which is all a fiber switch does.
#undef _FORTIFY_SOURCE
#include "cuda/simt/emulator.h"

#include <setjmp.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

#include <algorithm>
#include <exception>
#include <memory>
#include <mutex>
#include <queue>
#include <random>
#include <sstream>
#include <vector>

#if defined(__SANITIZE_ADDRESS__)
#define SIMT_ASAN 1
#endif
#if defined(__SANITIZE_THREAD__)
#define SIMT_TSAN 1
#endif
#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SIMT_ASAN 1
#endif
#if __has_feature(thread_sanitizer)
#define SIMT_TSAN 1
#endif
#endif
#ifdef SIMT_ASAN
#include <sanitizer/common_interface_defs.h>
#endif
#ifdef SIMT_TSAN
#include <sanitizer/tsan_interface.h>
extern "C" {
void AnnotateIgnoreReadsBegin(const char* file, int line);
void AnnotateIgnoreReadsEnd(const char* file, int line);
void AnnotateIgnoreWritesBegin(const char* file, int line);
void AnnotateIgnoreWritesEnd(const char* file, int line);
}
#endif

uint3 threadIdx{};
uint3 blockIdx{};
dim3 blockDim;
dim3 gridDim;

namespace simt {

namespace {

constexpr size_t kStackBytes = 256 << 10;
constexpr unsigned kMaxBlockThreads = 1024;
constexpr size_t kMaxDynamicSmem = 48 << 10;  // more needs cudaFuncSetAttribute on a device
constexpr uint64_t kPoison = ~0ull;           // NaN as float or double, -1 as an integer

enum class State { ready, at_syncthreads, at_warp_op, exited };

// Where a thread waits: the barrier's name and source line.
struct Site {
  const char* what = "";
  const char* file = "";
  int line = 0;
  bool operator==(const Site& o) const {
    return line == o.line && std::strcmp(what, o.what) == 0 && std::strcmp(file, o.file) == 0;
  }
};

struct Fiber {
  jmp_buf context;
  char* stack = nullptr;  // kStackBytes above a guard page
  bool started = false;   // a context runs fiber_main on this stack
  State state = State::exited;
  unsigned index = 0;     // linear thread index in the block
  uint3 tid{};
  Site site;
  // The pending warp intrinsic: arguments in, result out.
  WarpOp op = WarpOp::sync;
  unsigned mask = 0;
  uint64_t value = 0, result = 0;
  int arg = 0, width = 32;
  void* asan_fake_stack = nullptr;
  void* tsan_fiber = nullptr;
  int tsan_ignores = 0;  // ThreadSanitizer ignore regions open in this fiber

  Fiber() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    void* p = mmap(nullptr, kStackBytes + page, PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
    if (p == MAP_FAILED) throw Fault("simt: cannot map a fiber stack");
    mprotect(p, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    stack = static_cast<char*>(p) + page;
  }
  ~Fiber() {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    munmap(stack - page, kStackBytes + page);
  }
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;
};

struct Emulator {
  std::vector<std::unique_ptr<Fiber>> fibers;  // reused by every launch
  jmp_buf scheduler;
  Fiber* current = nullptr;
  // The running launch.
  const char* kernel = "";
  unsigned threads = 0;
  void (*body)(void*) = nullptr;
  void* ctx = nullptr;
  std::vector<float> smem;  // dynamic shared memory
  std::exception_ptr error;
  Schedule schedule = Schedule::forward;
  std::mt19937_64 rng{1};
  // Ready threads by (key, index), smallest key first; the key is the schedule: the index
  // (forward), minus the index (reversed) or a random draw when the thread became ready.
  std::priority_queue<std::pair<uint64_t, unsigned>, std::vector<std::pair<uint64_t, unsigned>>,
                      std::greater<>> ready;
  // The scheduler's side of stack switches, for the sanitizers.
  void* asan_fake_stack = nullptr;
  const void* stack_bottom = nullptr;
  size_t stack_size = 0;
  void* tsan_fiber = nullptr;
  int tsan_ignores = 0;
  // Addresses whose release/acquire order the CUDA threads for ThreadSanitizer: the grid's start
  // and end, and this block's barriers (block-wide, then one per warp). Fresh for every block.
  char grid_start = 0, grid_end = 0;
  std::unique_ptr<char[]> barrier_tokens;
};

Emulator& emu() {
  static Emulator e;
  return e;
}

std::mutex& grid_lock() {
  static std::mutex m;
  return m;
}

std::string describe(uint3 v) {
  std::ostringstream os;
  os << "(" << v.x << "," << v.y << "," << v.z << ")";
  return os.str();
}

[[noreturn]] void fault(const std::string& what) {
  std::ostringstream os;
  os << "simt: kernel '" << emu().kernel << "' block " << describe(blockIdx) << " ("
     << schedule_name(emu().schedule) << " schedule): " << what;
  throw Fault(os.str());
}

// ---- sanitizer hooks (no-ops in a plain build) --------------------------------------------------

// ThreadSanitizer ignores the emulator's own bookkeeping, shared by all fibers by design.
// `depth` counts the regions open in the running fiber (or the host).
void tsan_ignore(bool on, int& depth) {
  depth += on ? 1 : -1;
#ifdef SIMT_TSAN
  if (on) {
    AnnotateIgnoreReadsBegin(__FILE__, __LINE__);
    AnnotateIgnoreWritesBegin(__FILE__, __LINE__);
  } else {
    AnnotateIgnoreReadsEnd(__FILE__, __LINE__);
    AnnotateIgnoreWritesEnd(__FILE__, __LINE__);
  }
#else
  (void)on;
#endif
}
int& fiber_ignores() { return emu().current->tsan_ignores; }
int& host_ignores() { return emu().tsan_ignores; }

void tsan_release(void* token) {
#ifdef SIMT_TSAN
  __tsan_release(token);
#else
  (void)token;
#endif
}
void tsan_acquire(void* token) {
#ifdef SIMT_TSAN
  __tsan_acquire(token);
#else
  (void)token;
#endif
}

// Ends a fiber's ThreadSanitizer life: the host takes over what it did (a fiber a fault
// abandoned mid-kernel never reaches the grid's end) and its open ignore regions are closed.
void tsan_retire(Fiber* f) {
#ifdef SIMT_TSAN
  if (!f->tsan_fiber) return;
  void* host = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(f->tsan_fiber, 0);
  while (f->tsan_ignores > 0) tsan_ignore(false, f->tsan_ignores);
  __tsan_switch_to_fiber(host, 0);
  __tsan_destroy_fiber(f->tsan_fiber);
  f->tsan_fiber = nullptr;
#else
  (void)f;
#endif
}

// A fiber (re)started on a fresh stack gets fresh sanitizer state too.
void fresh_fiber(Fiber* f) {
  f->asan_fake_stack = nullptr;
  tsan_retire(f);
#ifdef SIMT_TSAN
  f->tsan_fiber = __tsan_create_fiber(0);
#endif
}

void switching_to_fiber(Fiber* f) {
  Emulator& e = emu();
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(&e.asan_fake_stack, f->stack, kStackBytes);
#endif
#ifdef SIMT_TSAN
  e.tsan_fiber = __tsan_get_current_fiber();
  __tsan_switch_to_fiber(f->tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  (void)e;
  (void)f;
}
void switching_to_scheduler(Fiber* f) {
  Emulator& e = emu();
#ifdef SIMT_ASAN
  __sanitizer_start_switch_fiber(&f->asan_fake_stack, e.stack_bottom, e.stack_size);
#endif
#ifdef SIMT_TSAN
  __tsan_switch_to_fiber(e.tsan_fiber, __tsan_switch_to_fiber_no_sync);
#endif
  (void)e;
  (void)f;
}
// On arrival in a fiber (first_time: its stack is fresh) or back in the scheduler (f null).
void switched(Fiber* f, bool first_time = false) {
  Emulator& e = emu();
#ifdef SIMT_ASAN
  if (f)
    __sanitizer_finish_switch_fiber(first_time ? nullptr : f->asan_fake_stack, &e.stack_bottom,
                                    &e.stack_size);
  else
    __sanitizer_finish_switch_fiber(e.asan_fake_stack, nullptr, nullptr);
#endif
  (void)e;
  (void)f;
  (void)first_time;
}

void lane_exited(const Fiber& f);  // (barriers, below)

// ---- switching ----------------------------------------------------------------------------------

[[gnu::noinline]] void park(Fiber* f) {
  if (!_setjmp(f->context)) {
    switching_to_scheduler(f);
    _longjmp(emu().scheduler, 1);
  }
  switched(f);
}

// Runs the kernel body for the current fiber's thread, forever: after a thread exits, the
// fiber parks and the next block (or launch) resumes it here. Kernel code runs with
// ThreadSanitizer watching; the bookkeeping around it does not.
void fiber_main() {
  switched(emu().current, true);
  tsan_ignore(true, fiber_ignores());
  for (;;) {
    Emulator& e = emu();
    Fiber* f = e.current;
    tsan_acquire(&e.grid_start);
    tsan_ignore(false, f->tsan_ignores);
    try {
      e.body(e.ctx);
    } catch (...) {
      if (!e.error) e.error = std::current_exception();
    }
    tsan_ignore(true, f->tsan_ignores);
    tsan_release(&e.grid_end);
    f->state = State::exited;
    lane_exited(*f);
    park(f);
  }
}

[[gnu::noinline]] void resume(Fiber* f) {
  Emulator& e = emu();
  e.current = f;
  threadIdx = f->tid;
  if (_setjmp(e.scheduler)) {
    switched(nullptr);
    return;
  }
  if (f->started) {
    switching_to_fiber(f);
    _longjmp(f->context, 1);
  }
  f->started = true;
  fresh_fiber(f);
  ucontext_t uc;
  getcontext(&uc);
  uc.uc_stack.ss_sp = f->stack;
  uc.uc_stack.ss_size = kStackBytes;
  uc.uc_link = nullptr;
  makecontext(&uc, fiber_main, 0);
  switching_to_fiber(f);
  setcontext(&uc);
}

// ---- barriers -----------------------------------------------------------------------------------

template <typename T>
void put_in_order(std::vector<T>& items) {
  Emulator& e = emu();
  if (e.schedule == Schedule::reversed) std::reverse(items.begin(), items.end());
  if (e.schedule == Schedule::shuffled) std::shuffle(items.begin(), items.end(), e.rng);
}

Fiber& fiber(unsigned index) { return *emu().fibers[index]; }

void make_ready(Fiber& f) {
  Emulator& e = emu();
  f.state = State::ready;
  uint64_t key = f.index;
  if (e.schedule == Schedule::reversed) key = ~uint64_t{f.index};
  if (e.schedule == Schedule::shuffled) key = e.rng();
  e.ready.push({key, f.index});
}

unsigned lanes_in_warp(unsigned warp_base) { return std::min(32u, emu().threads - warp_base); }

// Lanes of the warp at warp_base that take part in an intrinsic with this mask: CUDA asks only
// the non-exited threads named in the mask to call it (lanes past the end of the block count as
// exited).
unsigned participants(unsigned warp_base, unsigned mask) {
  unsigned live = 0;
  for (unsigned l = 0; l < lanes_in_warp(warp_base); ++l)
    if (fiber(warp_base + l).state != State::exited) live |= 1u << l;
  return mask & live;
}

// The lane whose value `lane` reads in a shuffle, or -1 where that lane does not take part.
int shuffle_source(const Fiber& f, unsigned lane, unsigned taking_part) {
  const int w = f.width, l = static_cast<int>(lane);
  const int segment = l & ~(w - 1);
  int src = l;
  switch (f.op) {
    case WarpOp::shfl_idx: src = segment + (f.arg & (w - 1)); break;
    // Lanes may read earlier groups of `width` lanes but read their own value past their group.
    case WarpOp::shfl_xor: src = (l ^ f.arg) < segment + w ? (l ^ f.arg) : l; break;
    default: break;
  }
  if (src < 0 || src > 31) src = l;
  return (taking_part >> src) & 1u ? src : -1;
}

// Completes the warp intrinsic that lanes `lanes` of the warp at warp_base all wait at.
void complete_warp_op(unsigned warp_base, unsigned lanes) {
  for (unsigned l = 0; l < 32; ++l) {
    if (!((lanes >> l) & 1u)) continue;
    Fiber& f = fiber(warp_base + l);
    switch (f.op) {
      case WarpOp::sync: f.result = 0; break;
      default: {
        // Reading an exited or absent lane is undefined in CUDA: poison shows it.
        int src = shuffle_source(f, l, lanes);
        f.result = src < 0 ? kPoison : fiber(warp_base + src).value;
      }
    }
  }
  for (unsigned l = 0; l < 32; ++l)
    if ((lanes >> l) & 1u) make_ready(fiber(warp_base + l));
}

// Completes f's warp intrinsic if every lane taking part waits at it (same line and mask).
void try_complete_warp_op(unsigned warp_base, const Fiber& f) {
  const unsigned lanes = participants(warp_base, f.mask);
  for (unsigned l = 0; l < 32; ++l) {
    if (!((lanes >> l) & 1u)) continue;
    const Fiber& g = fiber(warp_base + l);
    if (g.state != State::at_warp_op || !(g.site == f.site) || g.mask != f.mask) return;
  }
  complete_warp_op(warp_base, lanes);
}

// A lane exited: an intrinsic its warp waits at may no longer need it.
void lane_exited(const Fiber& f) {
  const unsigned base = f.index - f.index % 32;
  for (unsigned l = 0; l < lanes_in_warp(base); ++l) {
    const Fiber& g = fiber(base + l);
    if (g.state == State::at_warp_op) try_complete_warp_op(base, g);
  }
}

// "N threads (first (x,y,z)) at __syncthreads file:line", one line per distinct wait.
std::string describe_waits() {
  struct Group {
    Site site;
    bool exited;
    unsigned count;
    uint3 first;
  };
  std::vector<Group> groups;
  for (unsigned t = 0; t < emu().threads; ++t) {
    const Fiber& f = fiber(t);
    const bool exited = f.state == State::exited;
    auto same = [&](const Group& g) { return g.exited == exited && (exited || g.site == f.site); };
    auto it = std::find_if(groups.begin(), groups.end(), same);
    if (it == groups.end()) groups.push_back({f.site, exited, 1, f.tid});
    else ++it->count;
  }
  std::ostringstream os;
  for (const Group& g : groups) {
    os << "\n  " << g.count << " thread(s), first " << describe(g.first) << ": ";
    if (g.exited) os << "exited";
    else os << "wait at " << g.site.what << " (" << g.site.file << ":" << g.site.line << ")";
  }
  return os.str();
}

// Called when no thread is ready (warp intrinsics complete as their last lane arrives): either
// every live thread waits at one __syncthreads (release them) or the block is stuck (fault).
void release_syncthreads() {
  const Fiber* waiting = nullptr;
  bool consistent = true, any_exited = false;
  for (unsigned t = 0; t < emu().threads; ++t) {
    const Fiber& f = fiber(t);
    if (f.state == State::exited) {
      any_exited = true;
    } else if (f.state == State::at_syncthreads) {
      if (!waiting) waiting = &f;
      consistent = consistent && f.site == waiting->site;
    } else {
      consistent = false;  // a warp intrinsic that cannot complete
    }
  }
  if (!waiting && consistent) return;  // every thread exited
  if (consistent && !any_exited) {
    for (unsigned t = 0; t < emu().threads; ++t) make_ready(fiber(t));
    return;
  }
  if (consistent)
    fault("threads exited while others wait at __syncthreads (every thread of a block must "
          "reach each barrier):" + describe_waits());
  fault("deadlock: threads wait at different barriers, or at a warp intrinsic whose lanes "
        "never all arrive:" + describe_waits());
}

// Runs ready threads one at a time, each until it blocks, in schedule order: a thread made
// ready again (its warp intrinsic complete) may run ahead of threads that were ready before,
// so warps drift apart as far as their barriers allow, as on a device.
void run_block(uint3 block_index) {
  Emulator& e = emu();
  blockIdx = block_index;
  std::fill(e.smem.begin(), e.smem.end(), from_bits<float>(kPoison));
  e.barrier_tokens.reset(new char[1 + (e.threads + 31) / 32]);
  for (unsigned t = 0; t < e.threads; ++t) {
    Fiber& f = fiber(t);
    f.index = t;
    f.tid = {t % blockDim.x, t / blockDim.x % blockDim.y, t / (blockDim.x * blockDim.y)};
    make_ready(f);
  }
  for (;;) {
    while (!e.ready.empty()) {
      Fiber& f = fiber(e.ready.top().second);
      e.ready.pop();
      resume(&f);
      if (e.error) std::rethrow_exception(e.error);
    }
    bool all_exited = true;
    for (unsigned t = 0; t < e.threads; ++t) all_exited &= fiber(t).state == State::exited;
    if (all_exited) return;
    release_syncthreads();
  }
}

void check_config(dim3 grid, dim3 block, size_t smem) {
  const uint64_t threads = uint64_t{block.x} * block.y * block.z;
  if (threads == 0 || threads > kMaxBlockThreads || block.z > 64)
    fault("invalid configuration: block " + describe({block.x, block.y, block.z}) +
          " (at most 1024 threads, z at most 64)");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 ||
      grid.x > 0x7fffffffu)
    fault("invalid configuration: grid " + describe({grid.x, grid.y, grid.z}));
  if (smem > kMaxDynamicSmem)
    fault(std::to_string(smem) + " bytes of dynamic shared memory: more than 48 KiB needs "
          "cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize)");
}

// Restores the emulator after a launch, however it ended: fibers left mid-kernel by a fault
// are abandoned (their stacks are reused from a fresh context next time).
struct LaunchScope {
  std::unique_lock<std::mutex> lock{grid_lock()};
  LaunchScope() {
    tsan_release(&emu().grid_start);  // the host's writes before the launch
    tsan_ignore(true, host_ignores());
  }
  ~LaunchScope() {
    Emulator& e = emu();
    if (e.error || std::uncaught_exceptions()) {
      for (auto& f : e.fibers) {
        tsan_retire(f.get());
        f->started = false;
      }
    }
    e.ready = {};
    e.error = nullptr;
    e.current = nullptr;
    e.kernel = "";
    tsan_ignore(false, host_ignores());
    tsan_acquire(&e.grid_end);  // the kernel's writes, for the host
  }
};

thread_local bool in_grid = false;

}  // namespace

const char* schedule_name(Schedule s) {
  switch (s) {
    case Schedule::forward: return "forward";
    case Schedule::reversed: return "reversed";
    default: return "shuffled";
  }
}

void set_schedule(Schedule s, uint64_t seed) {
  std::lock_guard<std::mutex> lock(grid_lock());
  emu().schedule = s;
  emu().rng.seed(seed);
}

Schedule schedule() { return emu().schedule; }

void* dynamic_smem() { return emu().smem.empty() ? nullptr : emu().smem.data(); }

void run_grid_impl(const char* kernel, dim3 grid, dim3 block, size_t dynamic_smem_bytes,
                   void (*body)(void*), void* ctx) {
  if (in_grid) fault(std::string("launch of '") + kernel + "' from inside a kernel");
  in_grid = true;
  struct Reset {
    ~Reset() { in_grid = false; }
  } reset;
  LaunchScope scope;
  Emulator& e = emu();
  e.kernel = kernel;
  blockIdx = {0, 0, 0};
  check_config(grid, block, dynamic_smem_bytes);
  e.threads = block.x * block.y * block.z;
  e.body = body;
  e.ctx = ctx;
  e.smem.assign((dynamic_smem_bytes + sizeof(float) - 1) / sizeof(float), 0.0f);
  while (e.fibers.size() < e.threads) e.fibers.push_back(std::make_unique<Fiber>());
  blockDim = block;
  gridDim = grid;
  std::vector<uint3> blocks;
  blocks.reserve(size_t{grid.x} * grid.y * grid.z);
  for (unsigned z = 0; z < grid.z; ++z)
    for (unsigned y = 0; y < grid.y; ++y)
      for (unsigned x = 0; x < grid.x; ++x) blocks.push_back({x, y, z});
  put_in_order(blocks);
  for (uint3 b : blocks) run_block(b);
}

void syncthreads(const char* file, int line) {
  Fiber* f = emu().current;
  if (!in_grid || !f) throw Fault("simt: __syncthreads outside a kernel");
  tsan_ignore(true, f->tsan_ignores);  // a fault leaves it open: tsan_retire closes it
  char* token = &emu().barrier_tokens[0];
  tsan_release(token);
  f->state = State::at_syncthreads;
  f->site = {"__syncthreads", file, line};
  park(f);
  tsan_acquire(token);
  tsan_ignore(false, f->tsan_ignores);
}

uint64_t warp_op(WarpOp op, unsigned mask, uint64_t value, int arg, int width, const char* name,
                 const char* file, int line) {
  Fiber* f = emu().current;
  if (!in_grid || !f) throw Fault(std::string("simt: ") + name + " outside a kernel");
  tsan_ignore(true, f->tsan_ignores);  // a fault leaves it open: tsan_retire closes it
  const unsigned lane = f->index % 32, base = f->index - lane;
  auto misuse = [&](const std::string& what) {
    std::ostringstream os;
    os << name << " at " << file << ":" << line << " in thread " << describe(f->tid) << " (lane "
       << lane << ", mask 0x" << std::hex << mask << "): " << what;
    fault(os.str());
  };
  if (!((mask >> lane) & 1u)) misuse("the mask leaves out the calling lane");
  if (width < 1 || width > 32 || (width & (width - 1)))
    misuse("width " + std::to_string(width) + " is not a power of 2 up to 32");
  char* token = &emu().barrier_tokens[1 + f->index / 32];
  tsan_release(token);
  f->state = State::at_warp_op;
  f->site = {name, file, line};
  f->op = op;
  f->mask = mask;
  f->value = value;
  f->arg = arg;
  f->width = width;
  try_complete_warp_op(base, *f);
  park(f);
  tsan_acquire(token);
  const uint64_t result = f->result;
  tsan_ignore(false, f->tsan_ignores);
  return result;
}

}  // namespace simt
