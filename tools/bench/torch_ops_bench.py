#!/opt/refenv/bin/python
"""PyTorch timings of the kernels our Google Benchmark files time (tools/bench/bench_*.cpp), at
the same shapes and under the same names, one JSON line per case: {"name", "ms"} (see time_case). compare.py --kernels joins them with the Google Benchmark results by name.
Tensors are channels_last where they are images, float32, torch.set_num_threads as given.
"""
import argparse
import functools
import json
import os
import sys
import time

import torch
import torch.nn.functional as F

CASES = {}


def case(name):
    """Registers a factory returning the zero-argument function to time."""
    def register(factory):
        CASES[name] = factory
        return factory
    return register


def nhwc(n, h, w, c):
    return torch.randn(n, c, h, w).contiguous(memory_format=torch.channels_last)


def conv(x_shape, out_channels, kernel, stride, padding, dilation, depthwise, backward):
    """F.conv2d on channels_last input; with `backward`, also the input and weight gradients
    from a given output gradient (as BM_ConvForwardBackward)."""
    c = x_shape[3]
    groups = c if depthwise else 1
    x = nhwc(*x_shape).requires_grad_(backward)
    w = torch.randn(out_channels, c // groups, kernel, kernel, requires_grad=backward)
    forward = lambda: F.conv2d(x, w, None, stride, padding, dilation, groups)
    if not backward:
        return forward
    grad_y = torch.randn_like(forward().detach())

    def step():
        x.grad = w.grad = None
        forward().backward(grad_y)
    return step


# ---- bench_conv.cpp: input NHWC, out channels, kernel, stride, padding, dilation, depthwise ----
CONV_CASES = {
    "convnext_dw7x7": ((8, 56, 56, 128), 128, 7, 1, 3, 1, True),
    "convnext_dw7x7_s3_b1": ((1, 14, 14, 512), 512, 7, 1, 3, 1, True),
    "mit_dw3x3_s1_b1": ((1, 64, 64, 256), 256, 3, 1, 1, 1, True),
    "aspp_dw3x3_d12": ((8, 16, 16, 512), 512, 3, 1, 12, 12, True),
    "dense3x3_s2": ((8, 64, 64, 64), 128, 3, 2, 1, 1, False),
    "pointwise1x1": ((8, 56, 56, 128), 512, 1, 1, 0, 1, False),
}
for _name, _spec in CONV_CASES.items():
    CASES[f"BM_Conv/{_name}"] = functools.partial(conv, *_spec, backward=False)
    CASES[f"BM_ConvForwardBackward/{_name}"] = functools.partial(conv, *_spec, backward=True)


# ---- bench_norm_attention.cpp ---------------------------------------------------------------
def layer_norm_inputs(requires_grad):
    rows, c = 8 * 56 * 56, 128
    return [torch.randn(shape, requires_grad=requires_grad) for shape in ((rows, c), (c,), (c,))]


@case("BM_LayerNormForward")
def _():
    x, w, b = layer_norm_inputs(False)
    return lambda: F.layer_norm(x, (x.shape[-1],), w, b, 1e-6)


@case("BM_LayerNormForwardBackward")
def _():
    x, w, b = layer_norm_inputs(True)
    grad_y = torch.randn_like(x)

    def step():
        for t in (x, w, b):
            t.grad = None
        F.layer_norm(x, (x.shape[-1],), w, b, 1e-6).backward(grad_y)
    return step


def attention(batch, heads, lq, lk, d):
    q = torch.randn(batch, heads, lq, d)
    k, v = torch.randn(batch, heads, lk, d), torch.randn(batch, heads, lk, d)
    return lambda: F.scaled_dot_product_attention(q, k, v)


@case("BM_Attention/mit_b2_stage1")
def _():
    return attention(8, 1, 64 * 64, 8 * 8, 64)


@case("BM_Attention/mit_b2_stage4")
def _():
    return attention(8, 8, 16 * 16, 16 * 16, 64)


# ---- bench_elementwise.cpp: ConvNeXt-Base's stage-2 Mlp hidden layer ------------------------
def gelu_forward_backward(with_bias):
    x = torch.randn(8 * 28 * 28, 1024, requires_grad=True)
    b = torch.randn(1024, requires_grad=True)
    grad_y = torch.randn_like(x)

    def step():
        x.grad = b.grad = None
        F.gelu(x + b if with_bias else x).backward(grad_y)
    return step


CASES["BM_GeluForwardBackward"] = functools.partial(gelu_forward_backward, False)
CASES["BM_BiasGeluForwardBackward"] = functools.partial(gelu_forward_backward, True)


@case("BM_SumRows")
def _():
    x = torch.randn(8 * 28 * 28, 1024)
    return lambda: x.sum(0)


# ---- bench_gemm_adamw.cpp -------------------------------------------------------------------
def linear(m, k, n):
    x, w, b = torch.randn(m, k), torch.randn(n, k), torch.randn(n)
    return lambda: F.linear(x, w, b)


# Rows (M), in features (K), out features (N), as kGemmCases in bench_gemm_adamw.cpp.
LINEAR_CASES = {
    "convnext_s1_fc1": (8 * 56 * 56, 128, 512),
    "convnext_s3_fc1": (8 * 14 * 14, 512, 2048),
    "mit_b2_s1_fc1": (8 * 64 * 64, 64, 256),
    "convnext_s3_fc1_b1": (7 * 7, 1024, 4096),
    "convnext_s2_fc2_b1": (14 * 14, 2048, 512),
    "mit_b2_s1_fc2_b1": (64 * 64, 256, 64),
    "mit_b2_s4_fc1_b1": (16 * 16, 512, 2048),
    "mit_b2_s4_fc2_b1": (16 * 16, 2048, 512),
    "mit_b2_s4_q_b1": (16 * 16, 512, 512),
}
for _name, _spec in LINEAR_CASES.items():
    CASES[f"BM_Linear/{_name}"] = functools.partial(linear, *_spec)


@case("BM_LinearWeightGrad/convnext_s1_fc1")
def _():
    x, grad_y = torch.randn(8 * 56 * 56, 128), torch.randn(8 * 56 * 56, 512)
    return lambda: torch.mm(grad_y.t(), x)


def adamw(shapes):
    params = [torch.nn.Parameter(torch.randn(s)) for s in shapes]
    for p in params:
        p.grad = torch.randn_like(p)
    optimizer = torch.optim.AdamW(params, lr=1e-4, betas=(0.9, 0.999), eps=1e-8,
                                  weight_decay=0.05)
    return optimizer.step


@case("BM_AdamW_OneWeight")
def _():
    return adamw([(4096, 1024)])


@case("BM_AdamW_ConvNeXtBase")
def _():
    import timm
    model = timm.create_model("convnext_base", pretrained=False, in_chans=4, num_classes=3)
    return adamw([p.shape for p in model.parameters()])


def time_case(fn, warmup, repetitions, min_seconds, min_iterations):
    """Milliseconds per call: the best of `repetitions` blocks, each the mean over at least
    min_iterations calls and min_seconds (as Google Benchmark's repetitions; the best block is
    the least disturbed by other load on a shared machine). Forward cases take inputs without
    requires_grad, so they record no graph (as our no_grad benchmarks)."""
    for _ in range(warmup):
        fn()
    best = float("inf")
    for _ in range(repetitions):
        calls, start = 0, time.perf_counter()
        while calls < min_iterations or time.perf_counter() - start < min_seconds:
            fn()
            calls += 1
        best = min(best, (time.perf_counter() - start) / calls)
    return 1e3 * best


def main(argv):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--filter", default="", help="only cases whose name contains this")
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repetitions", type=int, default=3)
    parser.add_argument("--min-seconds", type=float, default=0.5)
    parser.add_argument("--min-iterations", type=int, default=5)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    for name, factory in CASES.items():
        if args.filter not in name:
            continue
        ms = time_case(factory(), args.warmup, args.repetitions, args.min_seconds,
                       args.min_iterations)
        print(json.dumps({"impl": "torch", "name": name, "ms": ms, "threads": args.threads}),
              flush=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
