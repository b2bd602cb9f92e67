#!/usr/bin/env python3
"""Side-by-side table of model_bench and torch_bench.py results: step time and device peak
memory per config, ours over torch, and bf16 training time over our float32 training time.
Reads their JSON lines from the files given (other lines are skipped: gpu_check.sh's step
headers, errors), the last line of each config and engine winning.
  python3 tools/bench/gpu_table.py BENCH_JSONL...
"""
import json
import sys

COLUMNS = "model          size  bs mode  amp   ours ms torch ms  ratio ours MiB torch MiB"


def results(paths):
    """{(model, size, batch, mode, amp): {"sono"|"torch": line}}."""
    table = {}
    for path in paths:
        with open(path, errors="replace") as f:
            for text in f:
                if not text.startswith("{"):
                    continue
                try:
                    line = json.loads(text)
                except json.JSONDecodeError:
                    continue
                if "model" not in line or "median_ms" not in line:
                    continue
                key = (line["model"], line["img_size"], line["batch"], line["mode"], line["amp"])
                table.setdefault(key, {})[line["impl"]] = line
    return table


def cell(line, field, fmt):
    return format(line[field], fmt) if line and field in line else "-"


def row(key, engines):
    ours, torch = engines.get("sono"), engines.get("torch")
    ratio = ours["median_ms"] / torch["median_ms"] if ours and torch else None
    model, size, batch, mode, amp = key
    return (f"{model:<14} {size:5d} {batch:3d} {mode:<5} {amp:<4} {cell(ours, 'median_ms', '9.1f'):>9}"
            f" {cell(torch, 'median_ms', '8.1f'):>8} {format(ratio, '6.2f') if ratio else '-':>6}"
            f" {cell(ours, 'engine_peak_mib', '8.0f'):>8} {cell(torch, 'engine_peak_mib', '9.0f'):>9}")


def bf16_speedups(table):
    """Our bf16 training step over our float32 one, per model and size."""
    out = []
    for (model, size, batch, mode, amp), engines in sorted(table.items()):
        if mode != "train" or amp != "bf16" or "sono" not in engines:
            continue
        fp32 = table.get((model, size, batch, mode, "off"), {}).get("sono")
        if fp32:
            out.append(f"{model} {size} bs{batch} train: ours bf16 / ours fp32 "
                       f"{engines['sono']['median_ms'] / fp32['median_ms']:.2f}")
    return out


def main(paths):
    if not paths:
        sys.exit("usage: gpu_table.py BENCH_JSONL...")
    table = results(paths)
    order = sorted(table, key=lambda k: (k[4] != "off", k[3] != "train", k[0], k[1], k[2]))
    print(COLUMNS)
    for key in order:
        print(row(key, table[key]))
    for line in bf16_speedups(table):
        print(line)
    return 0 if table else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
