#!/usr/bin/env python3
"""Per-kernel table from `ncu --metrics gpu__time_duration.sum --print-summary per-kernel`.

ncu prints one entry per kernel and launch shape (name, grid x block, invocations, min/max/average
duration); this sums average x invocations per kernel name, without template arguments and
parameters, and prints the kernels by total time: 'ms, % of the run, launches, kernel'.
A file may hold several ncu runs, each after a '=== <command>' line (gpu_check.sh's step header).
  python3 tools/bench/ncu_summary.py [--top N] NCU_OUTPUT...
"""
import argparse
import re
import sys

ENTRY = re.compile(r"^  (?P<name>\S.*) \(\d+, \d+, \d+\)x\(\d+, \d+, \d+\), Device \d+, CC [\d.]+, "
                   r"Invocations (?P<count>\d+)\s*$")
DURATION = re.compile(r"^\s+gpu__time_duration\.sum\s+(?P<unit>\S+)\s+\S+\s+\S+\s+(?P<avg>[\d.,]+)\s*$")
TO_MS = {"ns": 1e-6, "nsecond": 1e-6, "us": 1e-3, "usecond": 1e-3, "ms": 1.0, "msecond": 1.0,
         "s": 1e3, "second": 1e3}
NAME_WIDTH = 80  # long cuBLAS/cuDNN names are shown cut here


def base_name(name):
    """'void ns::k<float, 3>(const float *, long)' -> 'ns::k': no return type, template
    arguments or parameters, which differ per instantiation of one kernel."""
    if name.startswith("void "):
        name = name[len("void "):]
    out, depth = [], 0
    for ch in name:
        if ch in "<(":
            depth += 1
        elif ch in ">)":
            depth = max(depth - 1, 0)
        elif depth == 0:
            out.append(ch)
    return "".join(out).strip()


def sections(lines):
    """(header, lines) per ncu run: split at '=== ' lines; the header is '' before the first."""
    header, body = "", []
    for line in lines:
        if line.startswith("=== "):
            if body:
                yield header, body
            header, body = line, []
        else:
            body.append(line)
    if body:
        yield header, body


def kernel_times(lines):
    """{kernel: [total ms, launches]} from one run's summary."""
    kernels, current = {}, None
    for line in lines:
        entry = ENTRY.match(line)
        if entry:
            current = (base_name(entry["name"]), int(entry["count"]))
            continue
        duration = DURATION.match(line)
        if duration and current:
            unit = duration["unit"]
            if unit not in TO_MS:
                raise ValueError(f"unknown duration unit '{unit}' in: {line.strip()}")
            name, count = current
            total = kernels.setdefault(name, [0.0, 0])
            total[0] += float(duration["avg"].replace(",", "")) * TO_MS[unit] * count
            total[1] += count
            current = None
    return kernels


def run_label(path, header, several):
    if not several:
        return path
    model = re.search(r"--model (\S+)", header)
    amp = re.search(r"--amp (\S+)", header)
    return f"{path} {model[1] if model else '?'} amp {amp[1] if amp else 'off'}"


def summarize(path, top, out):
    with open(path, errors="replace") as f:
        runs = [(h, kernel_times(body)) for h, body in sections(f.read().splitlines())]
    runs = [(h, k) for h, k in runs if k]
    if not runs:
        out.write(f"== {path}: no ncu per-kernel summary found\n")
        return False
    for header, kernels in runs:
        total_ms = sum(ms for ms, _ in kernels.values())
        launches = sum(n for _, n in kernels.values())
        out.write(f"== {run_label(path, header, len(runs) > 1)}: total kernel time "
                  f"{total_ms:.1f} ms over {launches} launches\n")
        ranked = sorted(kernels.items(), key=lambda kv: -kv[1][0])
        for name, (ms, n) in ranked[:top]:
            out.write(f"{ms:11.2f} ms {100 * ms / total_ms:5.1f}% {n:6d}x  {name[:NAME_WIDTH]}\n")
    return True


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--top", type=int, default=25, help="kernels shown per run")
    parser.add_argument("files", nargs="+")
    args = parser.parse_args(argv)
    found = [summarize(path, args.top, sys.stdout) for path in args.files]
    return 0 if all(found) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
