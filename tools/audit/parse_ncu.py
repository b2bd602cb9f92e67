#!/usr/bin/env python3
"""Turns ncu's per-kernel summaries (`ncu --print-summary per-kernel`, as in
shared/measurements/h200-2026-12-04/ncu_*.txt) into the CSV launch_audit compares against:
one row per (config, launch name, grid, block) with invocations and the mean duration in us.

Our kernels are named by the name launch() is given (what the audit records): most are the
kernel's name less "_kernel"; the exceptions are mapped below from ncu's template arguments.
cuBLAS/cuDNN kernels become one "library" row per config (the audit records a library call,
not its grid).

usage: parse_ncu.py 'CONFIG=FILE' ... > ncu_h200.csv
"""
import re
import sys

HEADER = re.compile(r"^\s+(?:void )?(?P<kernel>.+?) \((?P<grid>\d+, \d+, \d+)\)x\((?P<block>\d+, \d+, \d+)\), "
                    r"Device \d+, CC [\d.]+, Invocations (?P<calls>\d+)$")
TIME = re.compile(r"gpu__time_duration\.sum\s+(?P<unit>ns|us|ms)\s+\S+\s+\S+\s+(?P<avg>[\d.,]+)")
US_PER = {"ns": 1e-3, "us": 1.0, "ms": 1e3}
RENAMED = {
    "adamw_kernel": "adamw_multi_tensor",
    "depthwise_weight_partial_kernel": "depthwise_conv_weight_partial",
    "depthwise_weight_window_kernel": "depthwise_conv_weight_partial",
    "batch_mean_kernel": "batch_norm_mean",
    "batch_var_kernel": "batch_norm_var",
}


def template_args(kernel):
    """Top-level template arguments of `kernel`."""
    inner = kernel[kernel.index("<") + 1:]
    args, depth, current = [], 0, ""
    for ch in inner:
        if ch == "<":
            depth += 1
        elif ch == ">":
            if depth == 0:
                break
            depth -= 1
        if ch == "," and depth == 0:
            args.append(current.strip())
            current = ""
        else:
            current += ch
    return args + [current.strip()]


def launch_name(kernel):
    if not kernel.startswith("sono::"):
        return "library"
    base = re.match(r"sono::(\w+)", kernel).group(1)
    if base == "bias_act_kernel":
        return ["bias_add", "bias_gelu", "relu"][int(template_args(kernel)[0])]
    if base in ("depthwise_gather_kernel", "depthwise_window_kernel"):
        input_grad = template_args(kernel)[4] in ("1", "true")  # <Src, Dst, K, V, InputGrad, Bf16>
        return "depthwise_conv_backward_input" if input_grad else "depthwise_conv_forward"
    if base == "implicit_gemm_kernel":
        gemm = template_args(kernel)[0]
        if "ConvWeightGradGemm" in gemm:
            return "conv_backward_weight"
        return "conv_backward_input" if template_args(gemm)[0] == "1" else "conv_forward"
    if base in ("softmax_forward_kernel", "softmax_backward_kernel"):
        log = template_args(kernel)[0] in ("1", "true")
        return ("log_" if log else "") + base[: -len("_kernel")]
    return RENAMED.get(base, base[: -len("_kernel")] if base.endswith("_kernel") else base)


def rows(config, path):
    header = None
    for line in open(path):
        m = HEADER.match(line.rstrip("\n"))
        if m:
            header = m
            continue
        t = TIME.search(line)
        if t and header:
            avg = float(t.group("avg").replace(",", "")) * US_PER[t.group("unit")]
            kernel = header.group("kernel")
            short = re.sub(r"\(.*$", "", kernel.split(" (")[0]) if kernel.startswith("sono::") else kernel
            yield (config, launch_name(kernel), header.group("grid").replace(" ", ""),
                   header.group("block").replace(" ", ""), int(header.group("calls")), avg, short)
            header = None


def main():
    print("config,launch,grid,block,invocations,avg_us,ncu_kernel")
    for arg in sys.argv[1:]:
        config, path = arg.split("=", 1)
        for r in rows(config, path):
            print(",".join([r[0], r[1], r[2].replace(",", "x"), r[3].replace(",", "x"), str(r[4]),
                            f"{r[5]:.2f}", '"' + r[6].replace('"', "'") + '"']))


if __name__ == "__main__":
    main()
