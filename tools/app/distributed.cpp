#include "tools/app/distributed.h"

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <iostream>
#include <set>
#include <thread>
#include <type_traits>
#include <unordered_map>

#include "autograd/node.h"
#include "cuda/emulated/emulated_backend.h"
#include "tensor/backend.h"
#include "tensor/ops.h"
#include "tools/data/loader.h"
#ifdef SONO_HAVE_CUDA
#include "cuda/cuda_backend.h"
#endif
#ifdef SONO_HAVE_NCCL
#include "cuda/nccl_communicator.h"
#endif

#ifdef SONO_MPI
#include <mpi.h>
#endif

namespace sono::app::distributed {

namespace {

struct World {
  int rank = 0, size = 1;
  double timeout_seconds = 600;
  size_t bucket_bytes = size_t{25} << 20;  // PyTorch DDP's default
  bool sync_batch_norm = false;
  bool shard_optimizer = false;
};

World& world() {
  static World w;
  return w;
}

#ifdef SONO_MPI
// Launchers announce the job in the environment: Open MPI's mpirun, and PMI / PMIx for MPICH,
// Slurm's srun and others. Without one, MPI_Init would start a singleton job for nothing.
bool launched_by_mpi() {
  for (const char* variable : {"OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "PMIX_RANK"})
    if (std::getenv(variable)) return true;
  return false;
}

#ifdef SONO_HAVE_CUDA
// Ranks on one machine share its GPUs round robin, by their place among the machine's ranks.
void take_local_gpu() {
  MPI_Comm local;
  MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, world().rank, MPI_INFO_NULL, &local);
  int local_rank = 0;
  MPI_Comm_rank(local, &local_rank);
  MPI_Comm_free(&local);
  if (const int gpus = cuda::device_count(); gpus > 0) cuda::use_device(local_rank % gpus);
}
#endif
#endif

[[noreturn]] void abort_job(int status) {
#ifdef SONO_MPI
  MPI_Abort(MPI_COMM_WORLD, status);
#endif
  std::exit(status);
}

// One non-blocking collective in flight. In a world of one there is nothing to wait for.
struct Pending {
#ifdef SONO_MPI
  MPI_Request request = MPI_REQUEST_NULL;
#endif
};
#ifdef SONO_MPI
static_assert(sizeof(Pending) == sizeof(MPI_Request), "a vector of Pending is an array of MPI_Request");
#endif

// Drives the collectives in flight (Open MPI progresses them only inside MPI calls); true when
// all are complete.
bool test(std::vector<Pending>& pending) {
#ifdef SONO_MPI
  int done = 1;
  if (size() > 1 && !pending.empty())
    MPI_Testall(static_cast<int>(pending.size()), &pending[0].request, &done, MPI_STATUSES_IGNORE);
  return done;
#else
  return true;
#endif
}

// Waits until `done`; a rank that waited --collective-timeout seconds gives the collectives up
// and stops the job rather than hang (a rank that died is caught sooner by mpirun, which ends
// the job).
void wait_until(const std::function<bool()>& done, const char* what, const std::function<void()>& give_up = {}) {
  auto start = std::chrono::steady_clock::now();
  while (!done()) {
    std::chrono::duration<double> waited = std::chrono::steady_clock::now() - start;
    if (waited.count() > world().timeout_seconds) {
      std::cerr << "rank " << rank() << ": no answer from the other ranks within --collective-timeout "
                << world().timeout_seconds << " s (" << what << "); stopping all ranks\n";
      if (give_up) give_up();
      abort_job(1);
    }
    std::this_thread::yield();
  }
}

// Waits for the collectives in flight.
void wait(std::vector<Pending>& pending, const char* what) {
  wait_until([&pending] { return test(pending); }, what);
  pending.clear();
}

// Starts summing `count` floats or doubles in place over the ranks.
template <typename T>
Pending start_sum(T* values, size_t count) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>);
  Pending p;
#ifdef SONO_MPI
  if (size() > 1)
    MPI_Iallreduce(MPI_IN_PLACE, values, static_cast<int>(count), std::is_same_v<T, float> ? MPI_FLOAT : MPI_DOUBLE,
                   MPI_SUM, MPI_COMM_WORLD, &p.request);
#endif
  return p;
}

// Each rank's `counts[rank]` floats from `mine`, concatenated in rank order into `all`; mine
// null: this rank's piece is already in its place in `all`.
Pending start_gather(const float* mine, float* all, const std::vector<int>& counts) {
  Pending p;
#ifdef SONO_MPI
  std::vector<int> offsets(counts.size(), 0);
  for (size_t r = 1; r < counts.size(); ++r) offsets[r] = offsets[r - 1] + counts[r - 1];
  MPI_Iallgatherv(mine ? mine : MPI_IN_PLACE, counts[rank()], MPI_FLOAT, all, counts.data(), offsets.data(),
                  MPI_FLOAT, MPI_COMM_WORLD, &p.request);
#else
  if (mine) std::memcpy(all, mine, counts[0] * sizeof(float));
#endif
  return p;
}

Pending start_broadcast(void* bytes, size_t count) {
  Pending p;
#ifdef SONO_MPI
  if (size() > 1) MPI_Ibcast(bytes, static_cast<int>(count), MPI_BYTE, 0, MPI_COMM_WORLD, &p.request);
#endif
  return p;
}

}  // namespace

bool available() {
#ifdef SONO_MPI
  return true;
#else
  return false;
#endif
}

int rank() { return world().rank; }
int size() { return world().size; }

Session::Session() {
#ifdef SONO_MPI
  if (!launched_by_mpi()) return;
  int provided = 0;
  MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided);  // loader threads never call MPI
  joined_ = true;
  MPI_Comm_rank(MPI_COMM_WORLD, &world().rank);
  MPI_Comm_size(MPI_COMM_WORLD, &world().size);
  if (!is_root()) std::cout.rdbuf(nullptr);  // one log for the job: rank 0's
#ifdef SONO_HAVE_CUDA
  take_local_gpu();
#endif
#endif
}

Session::~Session() {
#ifdef SONO_MPI
  if (joined_) MPI_Finalize();
#endif
}

int Session::exit(int status) const {
  if (status != 0 && size() > 1) {
    std::cerr << "rank " << rank() << " of " << size() << " failed; stopping all ranks\n";
    abort_job(status);
  }
  return status;
}

void add_options(Cli& cli) {
  if (!available()) return;
  cli.option("bucket-mb", "25", "data-parallel (mpirun): gradients are all-reduced in buckets of about this many MiB")
      .option("collective-timeout", "600",
              "data-parallel: seconds a rank waits for the others before stopping the job")
      .flag("sync-bn", "data-parallel: BatchNorm with the statistics of the global batch, not each rank's")
      .flag("shard-optimizer", "data-parallel: each rank keeps AdamW's state for its share of the parameters (ZeRO-1)");
}

void read_options(const Cli& cli) {
  if (!available()) return;
  const double bucket_mb = cli.real("bucket-mb"), timeout = cli.real("collective-timeout");
  SONO_CHECK(bucket_mb > 0, "--bucket-mb ", cli.str("bucket-mb"), ": must be positive");
  SONO_CHECK(timeout > 0, "--collective-timeout ", cli.str("collective-timeout"), ": must be positive");
  world().bucket_bytes = static_cast<size_t>(bucket_mb * (1 << 20));
  world().timeout_seconds = timeout;
  world().sync_batch_norm = cli.is_set("sync-bn") && size() > 1;
  world().shard_optimizer = cli.is_set("shard-optimizer") && size() > 1;
}

bool sync_batch_norm() { return world().sync_batch_norm; }
bool shard_optimizer() { return world().shard_optimizer; }

namespace {

std::vector<int> as_ints(const std::vector<size_t>& counts) { return {counts.begin(), counts.end()}; }

class MpiCommunicator final : public Communicator {
 public:
  const char* name() const override { return "mpi"; }
  Device device() const override { return Device::cpu; }
  void start_sum(Tensor& flat) override {
    in_flight_.push_back(distributed::start_sum(flat.data<float>(), static_cast<size_t>(flat.numel())));
  }
  void start_gather(Tensor& flat, const std::vector<size_t>& counts) override {
    in_flight_.push_back(distributed::start_gather(nullptr, flat.data<float>(), as_ints(counts)));
  }
  void progress() override { test(in_flight_); }
  void wait(const char* what) override { distributed::wait(in_flight_, what); }

 private:
  std::vector<Pending> in_flight_;
};

#ifdef SONO_HAVE_NCCL
// Bootstrapped over MPI, as llm.c's: rank 0 makes the communicator's id, MPI broadcasts it.
class NcclCommunicator final : public Communicator {
 public:
  NcclCommunicator() : nccl_(shared_id(), rank(), size()) {
    std::cout << "data-parallel: NCCL sums the CUDA tensors' gradients, one GPU per rank\n";
  }
  const char* name() const override { return "nccl"; }
  Device device() const override { return Device::cuda; }
  void start_sum(Tensor& flat) override { nccl_.start_sum(flat.data<float>(), static_cast<size_t>(flat.numel())); }
  void start_gather(Tensor& flat, const std::vector<size_t>& counts) override {
    nccl_.start_gather(flat.data<float>(), counts);
  }
  void progress() override { nccl_.done(); }
  void wait(const char* what) override {
    wait_until([this] { return nccl_.done(); }, what, [this] { nccl_.abort(); });
    nccl_.join();
  }

 private:
  static cuda::NcclId shared_id() {
    cuda::NcclId id{};
    if (is_root()) id = cuda::make_nccl_id();
    std::vector<Pending> pending{start_broadcast(id.data(), id.size())};
    distributed::wait(pending, "broadcasting NCCL's id");
    return id;
  }

  cuda::NcclCommunicator nccl_;
};

// On every rank alike (collectives must match): the real GPU backend, and libnccl.so.2 on all.
bool nccl_for_cuda() {
  if (&backend(Device::cuda) == &cuda::emulated_backend()) return false;  // host memory
  const std::string why_not = cuda::nccl_unavailable_reason();
  const bool everywhere = sum(why_not.empty() ? 1.0 : 0.0) == size();
  if (!everywhere)
    std::cout << "note: NCCL not used (" << (why_not.empty() ? "not usable on another rank" : why_not)
              << "): gradients of CUDA tensors travel through the host over MPI\n";
  return everywhere;
}
#endif

}  // namespace

Communicator& communicator_for(Device device) {
  static MpiCommunicator mpi;
#ifdef SONO_HAVE_NCCL
  if (device == Device::cuda) {
    static const bool use_nccl = nccl_for_cuda();
    // Never destroyed: at exit, NCCL and the CUDA runtime tear themselves down.
    static NcclCommunicator* nccl = use_nccl ? new NcclCommunicator : nullptr;
    if (nccl) return *nccl;
  }
#endif
  return mpi;
}

namespace {
Tensor summed_over_ranks(const Tensor& t) {
  Tensor host = t.to(Device::cpu).contiguous().clone();
  std::vector<Pending> pending;
  if (host.dtype() == DType::f64)
    pending.push_back(start_sum(host.data<double>(), host.numel()));
  else
    pending.push_back(start_sum(host.data<float>(), host.numel()));
  wait(pending, "summing a tensor over the ranks (--sync-bn)");
  return host.to(t.device());
}
}  // namespace

Tensor sum_over_ranks(const Tensor& t) {
  // y = sum_k t_k on every rank, so the loss sum_k L_k has dL/dt_r = sum_k dL_k/dy.
  return autograd::record("sum_over_ranks", summed_over_ranks(t.detach()), {t},
                          [](const Tensor& g) { return std::vector<Tensor>{summed_over_ranks(g)}; });
}

size_t bucket_bytes() { return world().bucket_bytes; }

void check_batch_size(int64_t batch_size) {
  SONO_CHECK(batch_size % size() == 0, "--batch-size ", batch_size, ": the global batch must divide evenly over the ",
             size(), " MPI ranks (each rank takes batch / ranks images)");
}

double sum(double x) {
  std::vector<Pending> pending{start_sum(&x, 1)};
  wait(pending, "summing a value");
  return x;
}

void wait_for_all_ranks(const char* what) {
  double nothing = 0;
  std::vector<Pending> pending{start_sum(&nothing, 1)};
  wait(pending, what);
}

Tensor map_rows(const std::function<Tensor(const Tensor&)>& f, const Tensor& rows) {
  const size_t n = static_cast<size_t>(rows.size(0));
  if (size() == 1 || n < static_cast<size_t>(size())) return f(rows);
  auto [first, last] = data::rank_share(n, rank(), size());
  Tensor mine = f(rows.slice(0, static_cast<int64_t>(first), static_cast<int64_t>(last)));
  SONO_CHECK(mine.dtype() == DType::f32, "map_rows: float32 outputs expected");
  const Device device = mine.device();
  mine = mine.to(Device::cpu).contiguous();
  const int64_t per_row = mine.numel() / static_cast<int64_t>(last - first);
  std::vector<int> counts;
  for (int r = 0; r < size(); ++r) {
    auto [a, b] = data::rank_share(n, r, size());
    counts.push_back(static_cast<int>((b - a) * per_row));
  }
  Shape shape = mine.shape();
  shape[0] = static_cast<int64_t>(n);
  Tensor all = Tensor::empty(shape);
  std::vector<Pending> pending{start_gather(mine.data<float>(), all.data<float>(), counts)};
  wait(pending, "gathering the ranks' rows");
  return all.to(device);
}

void broadcast_buffers_from_root(nn::Module& model) {
  if (size() == 1) return;
  nn::StateDict buffers;
  std::vector<Pending> pending;
  for (auto& [name, buffer] : model.named_buffers()) {
    Tensor host = buffer.to(Device::cpu).contiguous().clone();
    pending.push_back(start_broadcast(host.raw_data(), host.numel() * dtype_size(host.dtype())));
    buffers[name] = host;
  }
  wait(pending, "broadcasting rank 0's buffers");
  model.load_state_dict(buffers, false);
}

// One bucket: a run of consecutive parameters (in reverse order) whose gradients travel as one
// flat float32 buffer on the communicator's device.
struct Bucket {
  std::vector<size_t> params;
  std::vector<int64_t> offsets;  // of each parameter's gradient in `flat`
  std::vector<Tensor> pieces;    // the gradients flattened, until the bucket is complete
  Tensor flat;
  size_t waiting = 0;  // gradients not final yet in this backward
};

struct GradientReducer::State {
  State(std::vector<Tensor> params, Communicator& communicator)
      : params(std::move(params)), communicator(communicator) {}
  std::vector<Tensor> params;
  Communicator& communicator;
  std::vector<Bucket> buckets;
  std::vector<size_t> bucket_of, slot;  // each parameter's bucket and place in it
  std::unordered_map<const TensorImpl*, size_t> index;
  std::vector<bool> ready;
  size_t launched = 0, overlapped = 0;
  double waited_seconds = 0;
  size_t backwards = 0;

  void mark_ready(size_t i);
  void launch_ready_buckets();
  void write_gradients();
};

GradientReducer::GradientReducer(std::vector<Tensor> params, size_t bucket_bytes)
    : state_(std::make_unique<State>(params, communicator_for(params.at(0).device()))) {
  State& s = *state_;
  s.bucket_of.resize(s.params.size());
  s.slot.resize(s.params.size());
  size_t bytes = 0;
  for (size_t k = s.params.size(); k-- > 0;) {
    const Tensor& p = s.params[k];
    SONO_CHECK(p.dtype() == DType::f32, "data-parallel training: float32 parameters expected");
    const size_t n = static_cast<size_t>(p.numel());
    if (s.buckets.empty() || (bytes > 0 && bytes + n * sizeof(float) > bucket_bytes)) {
      s.buckets.emplace_back();
      bytes = 0;
    }
    Bucket& b = s.buckets.back();
    s.slot[k] = b.params.size();
    b.offsets.push_back(b.params.empty() ? 0 : b.offsets.back() + s.params[b.params.back()].numel());
    b.params.push_back(k);
    bytes += n * sizeof(float);
    s.bucket_of[k] = s.buckets.size() - 1;
    s.index[p.impl_ptr().get()] = k;
  }
}

GradientReducer::~GradientReducer() = default;

size_t GradientReducer::buckets() const { return state_->buckets.size(); }
size_t GradientReducer::bucket_of(size_t parameter) const { return state_->bucket_of.at(parameter); }
size_t GradientReducer::overlapped_buckets() const { return state_->overlapped; }
const Communicator& GradientReducer::communicator() const { return state_->communicator; }

double GradientReducer::take_wait_per_step() {
  const double per_step = state_->backwards ? state_->waited_seconds / state_->backwards : 0;
  state_->waited_seconds = 0, state_->backwards = 0;
  return per_step;
}

// Parameter i's gradient into its bucket; zeros where it has none (this rank had no image in
// the step, or the loss does not reach it).
void GradientReducer::State::mark_ready(size_t i) {
  if (ready[i]) return;
  ready[i] = true;
  Bucket& b = buckets[bucket_of[i]];
  const Device device = communicator.device();
  Tensor g = params[i].grad();
  b.pieces[slot[i]] = g.defined() ? g.to(device).reshape({params[i].numel()}) : Tensor::zeros({params[i].numel()}, DType::f32, device);
  --b.waiting;
  launch_ready_buckets();
}

// In bucket order, which is the same on every rank: collectives are matched by their order.
void GradientReducer::State::launch_ready_buckets() {
  while (launched < buckets.size() && buckets[launched].waiting == 0) {
    Bucket& b = buckets[launched++];
    b.flat = cat(b.pieces, 0);
    b.pieces.assign(b.params.size(), Tensor());
    communicator.start_sum(b.flat);
  }
  communicator.progress();
}

void GradientReducer::State::write_gradients() {
  for (Bucket& b : buckets)
    for (size_t at = 0; at < b.params.size(); ++at) {
      Tensor& p = params[b.params[at]];
      p.set_grad(b.flat.slice(0, b.offsets[at], b.offsets[at] + p.numel()).reshape(p.shape()).to(p.device()));
    }
}

void GradientReducer::backward(const Tensor& loss, double share) {
  State& s = *state_;
  s.ready.assign(s.params.size(), false);
  for (Bucket& b : s.buckets) {
    b.waiting = b.params.size();
    b.pieces.assign(b.params.size(), Tensor());
  }
  s.launched = s.overlapped = 0;
  if (loss.defined()) {
    autograd::GradReadyHook hook([&s](TensorImpl& leaf) {
      auto it = s.index.find(&leaf);
      if (it == s.index.end()) return;
      s.overlapped = s.launched;  // in flight while this gradient was still being computed
      s.mark_ready(it->second);
    });
    mul(loss, share).backward();
  }
  for (size_t i = 0; i < s.params.size(); ++i) s.mark_ready(i);
  auto start = std::chrono::steady_clock::now();
  s.communicator.wait("averaging gradients");
  s.waited_seconds += std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  ++s.backwards;
  s.write_gradients();
}

OptimizerShards::OptimizerShards(nn::Optimizer& optimizer)
    : optimizer_(optimizer),
      params_([&optimizer] {
        nn::NamedTensors all;
        for (const nn::ParamGroup& group : optimizer.groups())
          all.insert(all.end(), group.params.begin(), group.params.end());
        return all;
      }()),
      counts_(static_cast<size_t>(size()), 0),
      communicator_(communicator_for(params_.at(0).second.device())) {
  offsets_.push_back(0);
  for (auto& [name, p] : params_) offsets_.push_back(offsets_.back() + p.numel());
  const double total = static_cast<double>(offsets_.back());
  std::set<std::string> mine;
  for (size_t k = 0; k < params_.size(); ++k) {
    const Tensor& p = params_[k].second;
    SONO_CHECK(p.dtype() == DType::f32, "--shard-optimizer: float32 parameters expected");
    // By the middle of its run of floats: each rank gets a contiguous run of parameters.
    const double middle = static_cast<double>(offsets_[k]) + 0.5 * static_cast<double>(p.numel());
    owner_.push_back(std::min(size() - 1, static_cast<int>(middle / total * size())));
    counts_[owner_.back()] += static_cast<size_t>(p.numel());
    if (owner_.back() == rank()) mine.insert(params_[k].first);
  }
  optimizer_.keep_only([mine](const std::string& name) { return mine.count(name) > 0; });
}

int OptimizerShards::owner(size_t parameter) const { return owner_.at(parameter); }

Tensor OptimizerShards::gathered(const std::function<Tensor(size_t)>& field) const {
  std::vector<Tensor> pieces;
  for (size_t k = 0; k < params_.size(); ++k) {
    const Tensor& p = params_[k].second;
    Tensor value = owner_[k] == rank() ? field(k) : Tensor();
    pieces.push_back(value.defined() ? value.to(communicator_.device()).reshape({p.numel()})
                                     : Tensor::zeros({p.numel()}, DType::f32, communicator_.device()));
  }
  Tensor flat = cat(pieces, 0);
  communicator_.start_gather(flat, counts_);
  communicator_.wait("gathering the optimizer's shards");
  return flat;
}

void OptimizerShards::gather_parameters() {
  autograd::NoGradGuard no_grad;
  Tensor flat = gathered([this](size_t k) { return params_[k].second; });
  for (size_t k = 0; k < params_.size(); ++k) {
    Tensor& p = params_[k].second;
    if (owner_[k] == rank()) continue;
    const int64_t at = offsets_[k];
    backend_of(p).copy(flat.slice(0, at, at + p.numel()).reshape(p.shape()).to(p.device()), p);
  }
}

nn::StateDict OptimizerShards::state_dict() const {
  const nn::StateDict mine = optimizer_.state_dict();
  auto moment = [&](const char* field) {
    return gathered([&](size_t k) {
      auto it = mine.find(params_[k].first + field);
      return it == mine.end() ? Tensor() : it->second;
    });
  };
  const Tensor exp_avg = moment(".exp_avg").to(Device::cpu), exp_avg_sq = moment(".exp_avg_sq").to(Device::cpu);
  // Each parameter's step count from its owner (0: no state yet), summed as the others give 0.
  std::vector<double> steps(params_.size(), 0.0);
  for (size_t k = 0; k < params_.size(); ++k)
    if (auto it = mine.find(params_[k].first + ".step"); it != mine.end()) steps[k] = it->second.item();
  std::vector<Pending> pending{start_sum(steps.data(), steps.size())};
  wait(pending, "summing the optimizer's step counts");
  nn::StateDict all{{"steps", mine.at("steps")}};
  for (size_t k = 0; k < params_.size(); ++k) {
    if (steps[k] == 0) continue;
    const auto& [name, p] = params_[k];
    const int64_t at = offsets_[k];
    all[name + ".step"] = Tensor::from_labels({static_cast<int64_t>(steps[k])}).reshape({});
    all[name + ".exp_avg"] = exp_avg.slice(0, at, at + p.numel()).reshape(p.shape()).clone();
    all[name + ".exp_avg_sq"] = exp_avg_sq.slice(0, at, at + p.numel()).reshape(p.shape()).clone();
  }
  return all;
}

}  // namespace sono::app::distributed
