#pragma once
// Data-parallel training across processes on MPI: `mpirun -np N seg_train ...`. Every rank holds
// the whole model and reads its share of each global batch (data::LoaderOptions::rank); the ranks
// sum their gradients, each weighted by its share of the batch's images, so every rank takes the
// AdamW step one process would take on the whole batch. Rank 0 alone prints and writes files.
//
// The ranks' gradients and ZeRO-1's parameter shards travel through a Communicator: MPI on host
// buffers for CPU tensors, NCCL on device buffers for CUDA tensors (one GPU per rank, picked by
// the rank's place on its machine), or MPI through the host where NCCL is not available.
//
// A build without MPI, or a process started without a launcher (mpirun, srun), is a world of one
// rank in which nothing here communicates: training is exactly the one-process training.
#include <functional>
#include <memory>
#include <vector>

#include "layers/module.h"
#include "layers/optim.h"
#include "tensor/tensor.h"
#include "tools/app/cli.h"

namespace sono::app::distributed {

bool available();  // this build has MPI
int rank();
int size();
inline bool is_root() { return rank() == 0; }

// Joins the MPI job when a launcher started this process, and leaves it on destruction. Lives
// in main(), around run_tool. On non-root ranks std::cout is muted (errors still reach stderr).
// On a machine with GPUs, each rank there takes the next one (round robin).
class Session {
 public:
  Session();
  ~Session();
  Session(const Session&) = delete;
  Session& operator=(const Session&) = delete;
  // A tool's exit status; a failure on one rank of several aborts the job (MPI_Abort), since the
  // others would wait for it in their next collective forever.
  int exit(int status) const;

 private:
  bool joined_ = false;
};

// --bucket-mb, --collective-timeout, --sync-bn and --shard-optimizer (registered only in builds
// with MPI).
void add_options(Cli& cli);
void read_options(const Cli& cli);
// --sync-bn on more than one rank: BatchNorm layers normalise with the global batch's
// statistics (nn::BatchNorm2d::sum_over_ranks).
bool sync_batch_norm();
// --shard-optimizer on more than one rank: ZeRO-1 (OptimizerShards).
bool shard_optimizer();

// Sums and gathers float32 buffers over the ranks without blocking; one collective after
// another, in the same order on every rank.
class Communicator {
 public:
  virtual ~Communicator() = default;
  virtual const char* name() const = 0;  // "mpi" or "nccl"
  virtual Device device() const = 0;     // where its buffers must be
  // Starts summing the contiguous float32 `flat` in place.
  virtual void start_sum(Tensor& flat) = 0;
  // Starts filling `flat` with counts[r] floats from each rank r, in rank order, each rank's
  // own piece already in place.
  virtual void start_gather(Tensor& flat, const std::vector<size_t>& counts) = 0;
  // Drives the collectives in flight (Open MPI progresses them only inside MPI calls).
  virtual void progress() = 0;
  // Waits for them; a rank that waited --collective-timeout seconds stops the job.
  virtual void wait(const char* what) = 0;
};

// The communicator for tensors on `device`, one per kind for the process: NCCL for CUDA tensors
// on a GPU where this build has NCCL and libnccl.so.2 loads, else MPI (in a world of one rank,
// MPI's collectives leave the buffers as they are; NCCL's run on the one rank).
Communicator& communicator_for(Device device);

// t summed over the ranks, differentiably (the gradient is summed the same way).
Tensor sum_over_ranks(const Tensor& t);
size_t bucket_bytes();  // --bucket-mb

// Throws naming --batch-size unless the global batch divides evenly over the ranks.
void check_batch_size(int64_t batch_size);

// Every rank's x, summed; the same value on every rank.
double sum(double x);
// Returns when every rank has reached it (a rank that waits --collective-timeout seconds stops
// the job, naming `what`): e.g. before the others read a file rank 0 has written.
void wait_for_all_ranks(const char* what);

// Runs `f` on this rank's rank_share of the rows of `rows`, and returns the outputs of all ranks
// concatenated in rank order (the rows of one process's f(rows)) on every rank. A batch with
// fewer rows than ranks is computed whole on every rank.
Tensor map_rows(const std::function<Tensor(const Tensor&)>& f, const Tensor& rows);

// Rank 0's buffers (BatchNorm's running statistics) copied into every rank's model: each rank's
// statistics follow its own batches (per-rank BatchNorm, as DDP), rank 0's are the model's.
void broadcast_buffers_from_root(nn::Module& model);

// Averages gradients over the ranks in buckets of about --bucket-mb, in reverse parameter order
// (the order backward makes them). A bucket's non-blocking all-reduce starts as soon as all its
// gradients are final (autograd::GradReadyHook), while the backward goes on through the layers
// before it; the first all-reduce starts after the model's last layers.
class GradientReducer {
 public:
  // Buckets on the device of communicator_for(the parameters' device).
  explicit GradientReducer(std::vector<Tensor> params, size_t bucket_bytes = distributed::bucket_bytes());
  ~GradientReducer();
  // (share * loss).backward() (none where this rank has no image in the step), then every
  // parameter's .grad set to the sum of the ranks' gradients: `share` is this rank's fraction
  // of the step's images, so the result is the gradient of the global batch's mean loss (also
  // where SyncBatchNorm carries gradients from one rank's loss to another's parameters).
  void backward(const Tensor& loss, double share);
  size_t buckets() const;
  size_t bucket_of(size_t parameter) const;  // parameter: an index into the constructor's params
  // Of the last backward: the buckets whose all-reduce was in flight while the backward was
  // still computing gradients (all but those the backward's last node completes).
  size_t overlapped_buckets() const;
  // Seconds the backwards since the last call waited for the all-reduce after their last
  // gradient (what the overlap did not hide), per backward; resets the count.
  double take_wait_per_step();
  const Communicator& communicator() const;

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// ZeRO-1 (--shard-optimizer): the optimizer's parameters, in its groups' order, split into one
// run per rank of about equal size; each rank's optimizer steps, and keeps AdamW's moments for,
// its run alone (nn::Optimizer::keep_only). Every rank still holds all parameters and all
// (averaged) gradients: after each step, gather_parameters() brings each run from its rank.
class OptimizerShards {
 public:
  explicit OptimizerShards(nn::Optimizer& optimizer);
  int owner(size_t parameter) const;  // parameter: an index into the groups' parameters, in order
  // After optimizer.step(), on every rank: each parameter the value its owner stepped it to.
  void gather_parameters();
  // On every rank: the state an unsharded optimizer would hold (as nn::Optimizer::state_dict),
  // for a resume state that any number of ranks can continue.
  nn::StateDict state_dict() const;

 private:
  nn::Optimizer& optimizer_;
  nn::NamedTensors params_;
  std::vector<int64_t> offsets_;  // of each parameter in a flat buffer of all, and the total
  std::vector<int> owner_;
  std::vector<size_t> counts_;  // floats per rank
  Communicator& communicator_;

  // The parameters' `field`s (a tensor or its zeros) flattened into one buffer, whose runs are
  // then gathered from their owners.
  Tensor gathered(const std::function<Tensor(size_t)>& field) const;
};

}  // namespace sono::app::distributed
