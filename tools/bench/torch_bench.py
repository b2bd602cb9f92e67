#!/opt/refenv/bin/python
"""PyTorch twin of model_bench: the same model, synthetic batch, loss, step and timing rules,
printed as one JSON line in model_bench's schema. Run with /opt/refenv/bin/python, one config
per process (compare.py does), so that the peak RSS belongs to that config alone.

Models: "mit_*" and "resnet*" are smp.DeepLabV3Plus on that encoder, "convnext_*" is timm's ConvNeXt. Tensors
and the model are channels_last (the layout our engine uses), torch.set_num_threads as given.
--device cuda runs on the GPU (timings after torch.cuda.synchronize(), and the allocator's peak
beside RSS); --amp bf16 wraps forward and loss in torch.autocast(dtype=torch.bfloat16).
"""
import contextlib
import argparse
import json
import os
import statistics
import sys
import time


def proc_status_mib(field):
    """A field of /proc/self/status (VmRSS, VmHWM) in MiB; model_bench reads the same ones."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    raise RuntimeError(f"no {field} in /proc/self/status")


def is_segmentation(model_name):
    return model_name.startswith(("mit_", "resnet", "unet_"))


def build_model(name, in_channels, classes):
    if is_segmentation(name):
        import segmentation_models_pytorch as smp
        if name.startswith("unet_"):  # our registry's name for smp's Unet on that encoder
            return smp.Unet(encoder_name=name[len("unet_"):], encoder_weights=None,
                            in_channels=in_channels, classes=classes)
        return smp.DeepLabV3Plus(encoder_name=name, encoder_weights=None,
                                 in_channels=in_channels, classes=classes)
    import timm
    return timm.create_model(name, pretrained=False, in_chans=in_channels, num_classes=classes)


def synthetic_batch(args, torch):
    gen = torch.Generator().manual_seed(0)
    shape = (args.batch, args.in_channels, args.size, args.size)
    images = torch.randn(shape, generator=gen).contiguous(memory_format=torch.channels_last)
    if is_segmentation(args.model):
        mask_shape = (args.batch, args.classes, args.size, args.size)
        target = (torch.rand(mask_shape, generator=gen) > 0.5).float()
    else:
        target = torch.arange(args.batch) % args.classes
    return images, target


def loss_of(segmentation, logits, target, F):
    """BCE + soft Dice (as sono::soft_dice_loss, smooth 1, per sample) or cross-entropy."""
    if not segmentation:
        return F.cross_entropy(logits, target)
    p = logits.sigmoid()
    dims = tuple(range(1, logits.dim()))
    dice = 1 - (2 * (p * target).sum(dims) + 1) / (p.sum(dims) + target.sum(dims) + 1)
    return F.binary_cross_entropy_with_logits(logits, target) + dice.mean()


def run_step(args, model, optimizer, images, target, torch, F):
    """Seconds per phase: forward (with loss), backward, optimizer; or forward only."""
    def elapsed(since):
        if args.device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - since

    amp = (torch.autocast(args.device, dtype=torch.bfloat16) if args.amp == "bf16"
           else contextlib.nullcontext())
    start = time.perf_counter()
    if args.mode == "infer":
        with torch.no_grad(), amp:
            model(images)
        return [elapsed(start)]
    optimizer.zero_grad()
    with amp:
        loss = loss_of(is_segmentation(args.model), model(images), target, F)
    forward = elapsed(start)
    start = time.perf_counter()
    loss.backward()
    backward = elapsed(start)
    start = time.perf_counter()
    optimizer.step()
    return [forward, backward, elapsed(start)]


def run_config(args):
    import torch
    import torch.nn.functional as F
    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(1)
    rss_base = proc_status_mib("VmRSS")
    torch.manual_seed(0)
    model = build_model(args.model, args.in_channels, args.classes)
    model = model.to(args.device, memory_format=torch.channels_last).train(args.mode == "train")
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.05)
    images, target = (t.to(args.device) for t in synthetic_batch(args, torch))

    for _ in range(args.warmup):
        run_step(args, model, optimizer, images, target, torch, F)
    runs = [run_step(args, model, optimizer, images, target, torch, F)
            for _ in range(args.repeats)]
    totals = [sum(r) for r in runs]
    phases = ["forward", "backward", "optimizer"] if args.mode == "train" else ["forward"]
    step_s = statistics.median(totals)
    rss_peak = proc_status_mib("VmHWM")
    line = {
        "impl": "torch", "model": args.model, "img_size": args.size, "batch": args.batch,
        "mode": args.mode, "device": args.device, "amp": args.amp,
        "threads": args.threads, "warmup": args.warmup,
        "repeats": args.repeats, "params": sum(p.numel() for p in model.parameters()),
        "median_ms": 1e3 * step_s, "min_ms": 1e3 * min(totals),
        "step_ms": [1e3 * t for t in totals],
        "images_per_s": args.batch / step_s,
        "phase_ms": {name: 1e3 * statistics.median(r[i] for r in runs)
                     for i, name in enumerate(phases)},
        "rss_base_mib": rss_base, "rss_peak_mib": rss_peak, "rss_delta_mib": rss_peak - rss_base,
        "torch": torch.__version__,
    }
    if args.device == "cuda":
        line["engine_peak_mib"] = torch.cuda.max_memory_allocated() / 1048576.0
    if args.profile_kernels:
        line.update(profile_ops(args, model, optimizer, images, target, torch, F))
    return line


def profile_ops(args, model, optimizer, images, target, torch, F):
    """The repeats again under torch.profiler: self time per aten op, as model_bench's kernels."""
    start = time.perf_counter()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(args.repeats):
            run_step(args, model, optimizer, images, target, torch, F)
    profiled_ms = 1e3 * (time.perf_counter() - start) / args.repeats
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    kernels = [{"kernel": e.key, "ms_per_step": e.self_cpu_time_total / 1e3 / args.repeats,
                "calls_per_step": e.count / args.repeats, "gflop_per_s": 0}
               for e in events if e.self_cpu_time_total > 0]
    return {"profiled_mean_ms": profiled_ms, "kernels": kernels}


def parse_args(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="mit_b2")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--mode", choices=["train", "infer"], default="train")
    parser.add_argument("--in-channels", type=int, help="default: 3 segmentation, 4 classification")
    parser.add_argument("--classes", type=int, help="default: 1 segmentation, 3 classification")
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--amp", choices=["off", "bf16"], default="off")
    parser.add_argument("--profile-kernels", action="store_true",
                        help="after timing, run the repeats again under torch.profiler")
    args = parser.parse_args(argv)
    segmentation = is_segmentation(args.model)
    if args.in_channels is None:
        args.in_channels = 3 if segmentation else 4
    if args.classes is None:
        args.classes = 1 if segmentation else 3
    return args


def main(argv):
    args = parse_args(argv)
    try:
        line, status = run_config(args), 0
    except Exception as e:  # one JSON line either way, as model_bench
        line, status = {"impl": "torch", "error": f"{type(e).__name__}: {e}"}, 1
    print(json.dumps(line), flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
