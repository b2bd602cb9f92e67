#!/opt/refenv/bin/python
"""Our engine against PyTorch on this machine, side by side.

Models: for every config (model and image size, batch, train or infer) runs model_bench and then
torch_bench.py, each in a fresh process (so peak RSS is the config's own), and prints a table:
median step time of both (best of --rounds), ratio ours/torch (above 1: we are slower), images/s, and peak RSS
growth over the process's RSS before the model was built, with its ratio.
--kernels: every Google Benchmark executable (bench_*) against torch_ops_bench.py, by name.
--profile: also times each of our kernels (and torch's ops, with torch.profiler) during the
model steps and prints where time goes.

  /opt/refenv/bin/python tools/bench/compare.py --build-dir /tmp/build --batches 1
"""
import argparse
import glob
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def run_json(cmd, timeout, env=None):
    """The last JSON line a command prints; an {"error"} line when it fails to print one."""
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout} s"}
    for line in reversed(done.stdout.splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    return {"error": f"exit {done.returncode}: {done.stderr.strip()[-300:]}"}


def cpu_idle_fraction(seconds=1.0):
    """Share of all CPUs' time idle over the next `seconds` (from /proc/stat)."""
    def sample():
        with open("/proc/stat") as stat:
            fields = list(map(int, stat.readline().split()[1:]))
        return fields[3] + fields[4], sum(fields)  # idle + iowait, total
    idle0, total0 = sample()
    time.sleep(seconds)
    idle1, total1 = sample()
    return (idle1 - idle0) / max(total1 - total0, 1)


def wait_for_quiet(max_wait):
    """Waits (up to max_wait seconds) until other processes leave the CPUs nearly idle: on a
    shared machine one busy neighbour slows a two-thread run several times over."""
    deadline = time.time() + max_wait
    while cpu_idle_fraction() < 0.9 and time.time() < deadline:
        pass


def is_segmentation(model):
    return model.startswith(("mit_", "resnet"))


def model_configs(args):
    """(model, size, batch, mode) in run order. DeepLabV3+ cannot train at batch 1 (BatchNorm
    sees one value per channel after ASPP pooling, an error in PyTorch and in ours): batch 2."""
    configs = []
    for spec in args.models.split(","):
        model, size = spec.split(":")
        for batch in map(int, args.batches.split(",")):
            for mode in args.modes.split(","):
                at_least = 2 if mode == "train" and is_segmentation(model) else 1
                configs.append((model, int(size), max(batch, at_least), mode))
    return configs


def common_flags(config, args):
    model, size, batch, mode = config
    return ["--model", model, "--size", str(size), "--batch", str(batch), "--mode", mode,
            "--warmup", str(args.warmup), "--repeats", str(args.repeats),
            "--threads", str(args.threads), "--device", args.device, "--amp", args.amp] + (
                ["--profile-kernels"] if args.profile else [])


def faster(a, b):
    """The run with the lower median step time (a run that failed loses)."""
    if a is None or "median_ms" not in b:
        return b if a is None else a
    return b if "median_ms" not in a or b["median_ms"] < a["median_ms"] else a


def run_pair(config, args):
    """Ours then torch, args.rounds times alternating; per side the fastest round, so that load
    from other processes on a shared machine disturbs the comparison least."""
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    ours_cmd = [os.path.join(args.build_dir, "tools", "bench", "model_bench")]
    torch_cmd = [sys.executable, os.path.join(HERE, "torch_bench.py")]
    ours_cmd += common_flags(config, args)
    torch_cmd += common_flags(config, args)
    ours = torch = None
    for _ in range(args.rounds):
        wait_for_quiet(args.quiet_wait)
        ours = faster(ours, run_json(ours_cmd, args.timeout, env))
        wait_for_quiet(args.quiet_wait)
        torch = faster(torch, run_json(torch_cmd, args.timeout, env))
    return ours, torch


def ratio(a, b, width):
    return f"{a / b:>{width}.2f}" if a and b else "-".rjust(width)


def fmt(value, width, decimals):
    return f"{value:>{width}.{decimals}f}" if value is not None else "-".rjust(width)


MODEL_HEADER = (f"{'model':<14}{'size':>5}{'batch':>6} {'mode':<6}{'ours ms':>10}{'torch ms':>10}"
                f"{'ratio':>7}{'ours img/s':>11}{'torch img/s':>12}{'ours MiB':>10}"
                f"{'torch MiB':>10}{'mem ratio':>10}{'engine MiB':>11}{'torch eng MiB':>14}")


def model_row(config, ours, torch):
    model, size, batch, mode = config
    row = (f"{model:<14}{size:>5}{batch:>6} {mode:<6}{fmt(ours.get('median_ms'), 10, 1)}"
           f"{fmt(torch.get('median_ms'), 10, 1)}"
           f"{ratio(ours.get('median_ms'), torch.get('median_ms'), 7)}"
           f"{fmt(ours.get('images_per_s'), 11, 2)}{fmt(torch.get('images_per_s'), 12, 2)}"
           f"{fmt(ours.get('rss_delta_mib'), 10, 0)}{fmt(torch.get('rss_delta_mib'), 10, 0)}"
           f"{ratio(ours.get('rss_delta_mib'), torch.get('rss_delta_mib'), 10)}"
           f"{fmt(ours.get('engine_peak_mib'), 11, 0)}{fmt(torch.get('engine_peak_mib'), 14, 0)}")
    errors = [f"  {side}: {r['error']}" for side, r in (("ours", ours), ("torch", torch))
              if "error" in r]
    return "\n".join([row] + errors)


def phase_line(ours, torch):
    """Forward/backward/optimizer split of a training step, both sides."""
    def split(r):
        return " ".join(f"{k} {v:.0f}" for k, v in r.get("phase_ms", {}).items())
    return f"    phases ms  ours: {split(ours)}  |  torch: {split(torch)}"


def print_profile(config, side, result, top):
    """Our kernels (KernelTimer) or torch's aten ops (torch.profiler self time) per step."""
    kernels = result.get("kernels", [])
    total = sum(k["ms_per_step"] for k in kernels)
    print(f"\nprofile, {side}: {' '.join(map(str, config))}: profiled step"
          f" {result['profiled_mean_ms']:.0f} ms (mean), in kernels {total:.0f} ms")
    for k in kernels[:top]:
        rate = f"{k['gflop_per_s']:>7.1f} GFLOP/s" if k["gflop_per_s"] else ""
        print(f"  {k['kernel']:<44}{k['ms_per_step']:>10.1f} ms{100 * k['ms_per_step'] / total:>7.1f}%"
              f"{k['calls_per_step']:>8.0f} calls{rate}")


def compare_models(args):
    results = []
    print(MODEL_HEADER, flush=True)
    for config in model_configs(args):
        ours, torch = run_pair(config, args)
        results.append({"config": config, "ours": ours, "torch": torch})
        print(model_row(config, ours, torch), flush=True)
        if config[3] == "train" and "error" not in ours and "error" not in torch:
            print(phase_line(ours, torch), flush=True)
    if args.profile:
        for r in results:
            for side in ("ours", "torch"):
                if r[side].get("kernels"):
                    print_profile(r["config"], side, r[side], args.profile_top)
    return results


def google_benchmark_ms(executable, args):
    """{run name: ms} from one Google Benchmark executable, the best of args.rounds repetitions."""
    cmd = [executable, "--benchmark_format=json", f"--benchmark_repetitions={args.rounds}"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout,
                          env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))
    if done.returncode != 0:
        print(f"{os.path.basename(executable)} failed: {done.stderr.strip()[-300:]}")
        return {}
    scale = {"ns": 1e-6, "us": 1e-3, "ms": 1.0, "s": 1e3}
    best = {}
    for b in json.loads(done.stdout)["benchmarks"]:
        if b.get("run_type") != "aggregate":
            ms = b["real_time"] * scale[b["time_unit"]]
            best[b["run_name"]] = min(ms, best.get(b["run_name"], ms))
    return best


def torch_kernel_ms(args):
    cmd = [sys.executable, os.path.join(HERE, "torch_ops_bench.py"), "--threads", str(args.threads),
           "--repetitions", str(args.rounds)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout)
    return {r["name"]: r["ms"] for r in map(json.loads, done.stdout.splitlines())}


def compare_kernels(args):
    ours = {}
    for exe in sorted(glob.glob(os.path.join(args.build_dir, "tools", "bench", "bench_*"))):
        wait_for_quiet(args.quiet_wait)
        ours.update(google_benchmark_ms(exe, args))
    wait_for_quiet(args.quiet_wait)
    torch = torch_kernel_ms(args)
    print(f"\n{'kernel':<64}{'ours ms':>10}{'torch ms':>10}{'ratio':>7}")
    for name, ms in ours.items():
        # Our run names carry argument values ("BM_Attention/mit_b2_stage1/B:8/.../real_time").
        match = next((t for t in torch if name == t or name.startswith(t + "/")), None)
        torch_ms = torch.get(match)
        print(f"{name:<64}{ms:>10.2f}{fmt(torch_ms, 10, 2)}{ratio(ms, torch_ms, 7)}")
    return {"ours": ours, "torch": torch}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--build-dir", default="build", help="CMake build folder with tools/bench")
    parser.add_argument("--models", default="mit_b2:256,convnext_base:224,convnext_base:256",
                        help="comma list of model:image_size")
    parser.add_argument("--batches", default="1,8")
    parser.add_argument("--modes", default="infer,train")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu",
                        help="cuda: both sides on the GPU; 'engine MiB' is then each allocator's peak")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off",
                        help="bf16: our --amp bf16 beside torch.autocast(dtype=torch.bfloat16)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="runs per side and config (kernels: repetitions); the best is kept")
    parser.add_argument("--quiet-wait", type=float, default=120,
                        help="seconds to wait, before each run, for other load to stop")
    parser.add_argument("--timeout", type=int, default=3600, help="seconds per process")
    parser.add_argument("--no-models", action="store_true", help="skip the model comparison")
    parser.add_argument("--kernels", action="store_true", help="compare kernel micro-benchmarks")
    parser.add_argument("--profile", action="store_true", help="per-kernel time per config")
    parser.add_argument("--profile-top", type=int, default=15)
    parser.add_argument("--json-out", help="write every result here as JSON")
    return parser.parse_args(argv)


def main(argv):
    args = parse_args(argv)
    results = {}
    if not args.no_models:
        results["models"] = compare_models(args)
    if args.kernels:
        results["kernels"] = compare_kernels(args)
    if args.json_out:
        with open(args.json_out, "w") as out:
            json.dump(results, out, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
