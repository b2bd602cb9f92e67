#pragma once
// Data-parallel training across processes on MPI: `mpirun -np N seg_train ...`. Every rank holds
// the whole model and reads its share of each global batch (data::LoaderOptions::rank); the ranks
// sum their gradients, each weighted by its share of the batch's images, so every rank takes the
// AdamW step one process would take on the whole batch. Rank 0 alone prints and writes files.
//
// A build without MPI, or a process started without a launcher (mpirun, srun), is a world of one
// rank in which nothing here communicates: training is exactly the one-process training.
#include <functional>
#include <memory>
#include <vector>

#include "layers/module.h"
#include "tensor/tensor.h"
#include "tools/app/cli.h"

namespace sono::app::distributed {

bool available();  // this build has MPI
int rank();
int size();
inline bool is_root() { return rank() == 0; }

// Joins the MPI job when a launcher started this process, and leaves it on destruction. Lives
// in main(), around run_tool. On non-root ranks std::cout is muted (errors still reach stderr).
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

// --bucket-mb, --collective-timeout and --sync-bn (registered only in builds with MPI).
void add_options(Cli& cli);
void read_options(const Cli& cli);
// --sync-bn on more than one rank: BatchNorm layers normalise with the global batch's
// statistics (nn::BatchNorm2d::sum_over_ranks).
bool sync_batch_norm();

// t summed over the ranks, differentiably (the gradient is summed the same way).
Tensor sum_over_ranks(const Tensor& t);
size_t bucket_bytes();  // --bucket-mb

// Throws naming --batch-size unless the global batch divides evenly over the ranks.
void check_batch_size(int64_t batch_size);

// Every rank's x, summed; the same value on every rank.
double sum(double x);

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

 private:
  struct State;
  std::unique_ptr<State> state_;
};

}  // namespace sono::app::distributed
