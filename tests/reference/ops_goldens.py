"""Writes tests/golden/ops.safetensors: PyTorch references for the normalisation, softmax,
attention and loss ops (float64, small shapes, fixed seed). Images are NHWC on our side, so
BatchNorm inputs are permuted to NCHW for torch and the outputs permuted back.

Run: /opt/refenv/bin/python tests/reference/ops_goldens.py
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

torch.manual_seed(20240601)
f64 = torch.float64
out = {}


def randn(*shape, scale=1.0):
    return torch.randn(*shape, dtype=f64) * scale


def put(name, t):
    out[name] = t.detach().to(f64).contiguous() if t.dtype != torch.int64 else t.contiguous()


def layer_norm():
    x, w, b = randn(3, 5, 7, scale=3.0) + 2.0, randn(7), randn(7)
    put("layer_norm.x", x), put("layer_norm.weight", w), put("layer_norm.bias", b)
    put("layer_norm.y", F.layer_norm(x, (7,), w, b, eps=1e-6))


def batch_norm():
    x = randn(3, 4, 5, 6, scale=2.0) + 1.0  # NHWC, C = 6
    w, b = randn(6), randn(6)
    rm, rv = randn(6), randn(6).abs() + 0.5
    put("batch_norm.x", x), put("batch_norm.weight", w), put("batch_norm.bias", b)
    put("batch_norm.running_mean", rm), put("batch_norm.running_var", rv)
    nchw = x.permute(0, 3, 1, 2)
    rm_t, rv_t = rm.clone(), rv.clone()
    y = F.batch_norm(nchw, rm_t, rv_t, w, b, training=True, momentum=0.1, eps=1e-5)
    put("batch_norm.train_y", y.permute(0, 2, 3, 1))
    put("batch_norm.train_running_mean", rm_t), put("batch_norm.train_running_var", rv_t)
    y = F.batch_norm(nchw, rm, rv, w, b, training=False, momentum=0.1, eps=1e-5)
    put("batch_norm.eval_y", y.permute(0, 2, 3, 1))


def softmaxes():
    x = randn(3, 5, 7, scale=4.0)
    x[0, 0, 0] = 700.0  # exp would overflow without the max shift
    put("softmax.x", x)
    put("softmax.last", F.softmax(x, dim=-1)), put("softmax.dim1", F.softmax(x, dim=1))
    put("log_softmax.last", F.log_softmax(x, dim=-1)), put("log_softmax.dim1", F.log_softmax(x, dim=1))


def attention():
    q, k, v = randn(2, 3, 5, 4), randn(2, 3, 7, 4), randn(2, 3, 7, 6)  # Lq != Lk, Dv != D
    put("sdpa.q", q), put("sdpa.k", k), put("sdpa.v", v)
    put("sdpa.out", F.scaled_dot_product_attention(q, k, v))


def losses():
    logits = randn(7, 5, scale=2.0)
    labels = torch.tensor([0, 4, 2, 2, 1, 4, 3])
    weights = torch.tensor([0.5, 2.0, 1.0, 0.25, 3.0], dtype=f64)
    put("ce.logits", logits), put("ce.labels", labels), put("ce.weights", weights)
    put("ce.plain", F.cross_entropy(logits, labels).view(1))
    put("ce.weighted", F.cross_entropy(logits, labels, weight=weights).view(1))
    put("ce.smoothed", F.cross_entropy(logits, labels, label_smoothing=0.1).view(1))
    put("ce.weighted_smoothed",
        F.cross_entropy(logits, labels, weight=weights, label_smoothing=0.15).view(1))

    x = randn(3, 4, 5, scale=3.0)
    x[0, 0, :2] = torch.tensor([40.0, -40.0])  # saturated logits stay finite
    t = torch.rand(3, 4, 5, dtype=f64)
    put("bce.logits", x), put("bce.target", t)
    put("bce.loss", F.binary_cross_entropy_with_logits(x, t).view(1))

    x = randn(3, 4, 5, 1, scale=2.0)
    t = (torch.rand(3, 4, 5, 1, dtype=f64) > 0.6).to(f64)
    t[2] = 0.0  # an empty mask (a BUSI normal image)
    p = torch.sigmoid(x)
    dims = (1, 2, 3)
    dice = (2 * (p * t).sum(dims) + 1.0) / (p.sum(dims) + t.sum(dims) + 1.0)
    put("dice.logits", x), put("dice.target", t), put("dice.loss", (1 - dice.mean()).view(1))


layer_norm()
batch_norm()
softmaxes()
attention()
losses()
path = Path(__file__).resolve().parents[1] / "golden" / "ops.safetensors"
save_file(out, str(path))
print(f"wrote {path} ({path.stat().st_size} bytes, {len(out)} tensors)")
