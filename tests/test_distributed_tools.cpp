// Data-parallel training through the tools' command lines: `mpirun -np 2 cls_train ...` against
// one process on the same data, resuming a 2-rank run in one process, and a rank that dies,
// hangs or fails making the whole job exit with an error instead of hanging.
#include <fstream>
#include <numeric>
#include <set>

#include "helpers.h"
#include "synthetic_blobs.h"
#include "tool_runs.h"
#include "tools/data/loader.h"

namespace fs = std::filesystem;
using namespace sono;

namespace {

using Run = test::CommandRun;
using test::run_command;

const fs::path kRoot = fs::path(SONO_BINARY_DIR) / "test_distributed_tools";
const std::string kTool = std::string(SONO_BINARY_DIR) + "/bin/cls_train";

// 27 images, 21 of them for training (checked below): a last batch of 1 at batch size 4 (rank 0's
// share empty), of 5 at batch size 8 (2 + 3).
const fs::path& blobs() {
  static const fs::path path = [] {
    fs::remove_all(kRoot);
    test::write_blob_dataset(kRoot / "blobs", 9, 32, 11);
    return kRoot / "blobs";
  }();
  return path;
}

std::string cls_args(const std::string& name, int epochs, int batch) {
  return " --images-dir " + (blobs() / "images").string() + " --masks-dir " + (blobs() / "masks").string() +
         " --arch convnext_atto --img-size 32 --lr 1e-3 --warmup-epochs 1 --drop-path 0 --label-smoothing 0"
         " --threads 1 --workers 1"
         " --epochs " + std::to_string(epochs) + " --batch-size " + std::to_string(batch) +
         " --save-path " + (kRoot / (name + ".safetensors")).string() + " --log-dir " + (kRoot / name).string();
}

Run one_process(const std::string& args) { return run_command(kTool + args); }
Run two_ranks(const std::string& args) { return run_command(std::string(SONO_MPIRUN) + " " + kTool + args); }

// The same run in one process (run `one`) and on 2 ranks (run `two`); both must succeed.
std::pair<Run, Run> one_process_and_two_ranks(const std::string& one, const std::string& two, int epochs, int batch,
                                              const std::string& extra = "") {
  Run r1 = one_process(cls_args(one, epochs, batch) + extra);
  INFO(r1.output);
  REQUIRE(r1.status == 0);
  Run r2 = two_ranks(cls_args(two, epochs, batch) + extra);
  INFO(r2.output);
  REQUIRE(r2.status == 0);
  return {r1, r2};
}

// The column of a run's CSV log, by name.
std::vector<double> log_column(const std::string& run_name, const std::string& column) {
  return test::csv_column(kRoot / run_name / "classification_log.csv", column);
}

size_t training_images(const std::string& run_name) {
  std::ifstream in(kRoot / run_name / "split.csv");
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) n += line.find(",train,") != std::string::npos;
  return n;
}

// The logs of two runs agree to float32 rounding: the same images in the same steps, the
// gradient sums in another order.
void check_same_curves(const std::string& a, const std::string& b) {
  for (const char* column : {"train_loss", "val_loss", "val_accuracy", "val_macro_f1", "lr"}) {
    std::vector<double> x = log_column(a, column), y = log_column(b, column);
    REQUIRE(x.size() == y.size());
    for (size_t i = 0; i < x.size(); ++i) {
      INFO(column << " at epoch " << i + 1 << ": " << a << " " << x[i] << ", " << b << " " << y[i]);
      CHECK(std::abs(x[i] - y[i]) <= 1e-4 * std::max(1.0, std::abs(x[i])));
    }
  }
}

}  // namespace

TEST_CASE("the ranks' shares of each batch are the one-process batches, each image once per epoch") {
  auto cache = std::make_shared<data::SampleCache>(data::scan_dataset((blobs() / "images").string(),
                                                                      (blobs() / "masks").string()), 32);
  std::vector<size_t> samples(cache->count());
  std::iota(samples.begin(), samples.end(), 0);
  samples.resize(13);  // the last batch of 4: 1 image, rank 0's share empty
  data::LoaderOptions options{.batch_size = 4, .augment = false, .workers = 1, .seed = 3};
  data::Loader whole(cache, samples, options);
  options.ranks = 2;
  data::Loader rank0(cache, samples, options);
  options.rank = 1;
  data::Loader rank1(cache, samples, options);
  for (int epoch = 0; epoch < 2; ++epoch) {
    whole.start_epoch(epoch), rank0.start_epoch(epoch), rank1.start_epoch(epoch);
    std::multiset<size_t> seen;
    while (auto batch = whole.next()) {
      auto a = rank0.next(), b = rank1.next();
      REQUIRE((a && b));
      std::vector<size_t> joined = a->samples;
      joined.insert(joined.end(), b->samples.begin(), b->samples.end());
      CHECK(joined == batch->samples);
      CHECK(a->global_images == batch->samples.size());
      CHECK(b->samples.size() - a->samples.size() <= 1);
      seen.insert(joined.begin(), joined.end());
    }
    CHECK_FALSE(rank0.next());
    CHECK(seen == std::multiset<size_t>(samples.begin(), samples.end()));
  }
}

TEST_CASE("cls_train on 2 ranks logs one process's curve, also with a last batch shared unevenly") {
  for (int batch : {4, 8}) {
    const std::string one = "one_b" + std::to_string(batch), two = "two_b" + std::to_string(batch);
    one_process_and_two_ranks(one, two, 2, batch);
    CHECK(training_images(one) == 21);
    check_same_curves(one, two);
  }
}

// Also with --shard-optimizer (ZeRO-1), whose resume state holds the optimizer state that the
// ranks' shards gathered into one.
TEST_CASE("a 2-rank resume state continues in one process as one process's own state does") {
  // Two epochs on 2 ranks (the optimizer sharded or not) and on 1, each continued to a third
  // epoch in one process.
  for (std::string name : {"resume_two", "resume_sharded", "resume_one"}) {
    const std::string args = cls_args(name, 2, 8) + (name == "resume_sharded" ? " --shard-optimizer" : "");
    Run first = name == "resume_one" ? one_process(args) : two_ranks(args);
    INFO(first.output);
    REQUIRE(first.status == 0);
    const std::string state = (kRoot / (name + ".last.safetensors")).string();
    Run resumed = one_process(cls_args(name + "_3", 3, 8) + " --resume " + state + " --resume-anyway");
    INFO(resumed.output);
    REQUIRE(resumed.status == 0);
    CHECK(resumed.output.find("resumed from " + state + " after epoch 2") != std::string::npos);
    CHECK(resumed.output.find("although --epochs 3 (saved: 2)\n") != std::string::npos);  // the one difference
  }
  CHECK(log_column("resume_two_3", "epoch") == std::vector<double>{1, 2, 3});
  check_same_curves("resume_two_3", "resume_one_3");
  check_same_curves("resume_sharded_3", "resume_one_3");
  // And one process's state continues on 2 ranks, each keeping its shard of the optimizer state.
  const std::string state = (kRoot / "resume_one.last.safetensors").string();
  Run sharded = two_ranks(cls_args("resume_into_sharded", 3, 8) + " --shard-optimizer --resume " + state +
                          " --resume-anyway");
  INFO(sharded.output);
  REQUIRE(sharded.status == 0);
  check_same_curves("resume_into_sharded", "resume_one_3");
}

// Each fold trains across the ranks; rank 0 writes the fold's checkpoint, and all ranks score it
// (each its share of the fold's images), so the figures are one process's.
TEST_CASE("cls_train --folds 2 on 2 ranks gives one process's folds and scores") {
  one_process_and_two_ranks("folds_one", "folds_two", 2, 4, " --folds 2");
  for (const char* fold : {"fold1", "fold2"}) {
    check_same_curves(std::string("folds_one/") + fold, std::string("folds_two/") + fold);
    CHECK(fs::exists(kRoot / (std::string("folds_two.") + fold + ".safetensors")));
    std::vector<double> one = test::csv_column(kRoot / "folds_one" / "cross_validation.csv", fold);
    std::vector<double> two = test::csv_column(kRoot / "folds_two" / "cross_validation.csv", fold);
    REQUIRE(one.size() == two.size());
    for (size_t m = 0; m < one.size(); ++m) {
      INFO(fold << " metric " << m << ": " << one[m] << " against " << two[m]);
      CHECK(std::abs(one[m] - two[m]) <= 1e-4 * std::max(1.0, std::abs(one[m])));
    }
  }
  const auto images_scored = [](const std::string& run) {
    std::ifstream in(kRoot / run / "out_of_fold.csv");
    std::string line;
    size_t rows = 0;
    while (std::getline(in, line)) ++rows;
    return rows;
  };
  CHECK(images_scored("folds_one") == 28);  // the header and each of the 27 images once
  CHECK(images_scored("folds_two") == 28);
}

// Each rank predicts its share of the out-of-fold masks; every rank trains on all of them.
TEST_CASE("cls_train --seg-model with {fold} on 2 ranks trains on one process's out-of-fold masks") {
  const std::string seg_args = " --images-dir " + (blobs() / "images").string() + " --masks-dir " +
                               (blobs() / "masks").string() + " --arch mit_b0 --img-size 32 --lr 1e-3 --epochs 1"
                               " --batch-size 4 --threads 1 --workers 1 --folds 2 --save-path " +
                               (kRoot / "oof_seg.safetensors").string();
  Run seg = run_command(std::string(SONO_BINARY_DIR) + "/bin/seg_train" + seg_args);
  INFO(seg.output);
  REQUIRE(seg.status == 0);
  auto [r1, r2] = one_process_and_two_ranks(
      "oof_one", "oof_two", 1, 4, " --folds 2 --seg-model " + (kRoot / "oof_seg.fold{fold}.safetensors").string());
  const auto masks_line = [](const std::string& output) {
    const size_t at = output.find("masks: predicted by");
    return at == std::string::npos ? std::string() : output.substr(at, output.find('\n', at) - at);
  };
  CHECK(!masks_line(r1.output).empty());
  CHECK(masks_line(r1.output) == masks_line(r2.output));
  for (const char* fold : {"fold1", "fold2"})
    check_same_curves(std::string("oof_one/") + fold, std::string("oof_two/") + fold);
}

// Rank 1 runs `before` in the background, then becomes cls_train (same process id, $$).
Run two_ranks_with_rank1(const std::string& before, const std::string& args) {
  return run_command(std::string(SONO_MPIRUN) + " sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then (" + before +
             ") & fi; exec " + kTool + args + "'");
}

// Waits (in shell) until run `name` has written its first resume state: training is under way.
std::string after_first_epoch(const std::string& name) {
  const fs::path state = kRoot / (name + ".last.safetensors");
  fs::remove(state);
  return "while [ ! -e " + state.string() + " ]; do sleep 0.1; done; ";
}

TEST_CASE("a rank killed mid-epoch ends the job with an error, not a hang") {
  Run r = two_ranks_with_rank1(after_first_epoch("killed") + "kill -9 $$", cls_args("killed", 500, 4));
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK(r.seconds < 60);
  CHECK(r.output.find("signal 9") != std::string::npos);  // mpirun says which rank died, and how
  CHECK(r.output.find(" at epoch ") == std::string::npos);  // the last line of a finished run
}

TEST_CASE("a rank that stops answering makes the others stop the job after --collective-timeout") {
  Run r = two_ranks_with_rank1(after_first_epoch("stopped") + "kill -STOP $$",
                               cls_args("stopped", 500, 4) + " --collective-timeout 5");
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK(r.seconds < 60);
  CHECK(r.output.find("rank 0: no answer from the other ranks within --collective-timeout 5 s") != std::string::npos);
}

TEST_CASE("an error on one rank stops all ranks") {
  Run r = run_command(std::string(SONO_MPIRUN) + " sh -c 'if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then exec " + kTool +
              cls_args("failing", 5, 4) + " --lr -1; else exec " + kTool + cls_args("failing", 5, 4) + "; fi'");
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK(r.seconds < 60);
  // (The ranks' lines may interleave: run_tool writes "cls_train", ": error: " and the message apart.)
  CHECK(r.output.find("--lr -1: must be positive") != std::string::npos);
  CHECK(r.output.find("rank 1 of 2 failed; stopping all ranks") != std::string::npos);
}

TEST_CASE("--batch-size must divide over the ranks") {
  Run r = two_ranks(cls_args("odd", 1, 5));
  INFO(r.output);
  CHECK(r.status != 0);
  CHECK(r.output.find("--batch-size 5: the global batch must divide evenly over the 2 MPI ranks") != std::string::npos);
}

// DeepLabV3+'s BatchNorm layers normalise with each rank's own statistics (as DDP); rank 0's
// running statistics are the model's. A last share of one image, which BatchNorm cannot train
// on, is dropped: 21 images at batch 4 leave shares of 0 + 1.
TEST_CASE("seg_train on 2 ranks trains mit_b0, BatchNorm per rank") {
  const std::string args = " --images-dir " + (blobs() / "images").string() + " --masks-dir " +
                           (blobs() / "masks").string() + " --arch mit_b0 --img-size 32 --lr 1e-3 --epochs 2"
                           " --batch-size 4 --threads 1 --workers 1 --save-path " +
                           (kRoot / "seg.safetensors").string() + " --log-dir " + (kRoot / "seg").string();
  Run r = run_command(std::string(SONO_MPIRUN) + " " + SONO_BINARY_DIR + "/bin/seg_train" + args);
  INFO(r.output);
  REQUIRE(r.status == 0);
  CHECK(r.output.find("epoch 2/2 train 20/21") != std::string::npos);  // the lone 21st image dropped
  std::ifstream log(kRoot / "seg" / "segmentation_log.csv");
  std::string header, line;
  std::getline(log, header);
  int rows = 0;
  while (std::getline(log, line)) rows += line.find("nan") == std::string::npos;
  CHECK(rows == 2);
  CHECK(fs::exists(kRoot / "seg.safetensors"));
}

// One image per rank: BatchNorm (the ASPP pooling branch sees one value per channel and image)
// trains on both ranks' images together.
TEST_CASE("seg_train --sync-bn trains mit_b0 with one image per rank") {
  const std::string args = " --images-dir " + (blobs() / "images").string() + " --masks-dir " +
                           (blobs() / "masks").string() + " --arch mit_b0 --img-size 32 --lr 1e-3 --epochs 1"
                           " --batch-size 2 --threads 1 --workers 1 --save-path " +
                           (kRoot / "sync.safetensors").string();
  Run per_rank = run_command(std::string(SONO_MPIRUN) + " " + SONO_BINARY_DIR + "/bin/seg_train" + args);
  CHECK(per_rank.status != 0);
  CHECK(per_rank.output.find("need at least 2 images per training batch on each MPI rank") != std::string::npos);
  Run synced = run_command(std::string(SONO_MPIRUN) + " " + SONO_BINARY_DIR + "/bin/seg_train" + args + " --sync-bn");
  INFO(synced.output);
  CHECK(synced.status == 0);
  CHECK(synced.output.find("epoch 1/1 train 20/21") != std::string::npos);  // no rank without an image
}
