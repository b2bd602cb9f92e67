"""Writes tests/golden/optim.safetensors: ten steps of torch.optim.AdamW (timm's weight-decay
parameter groups) and of torch.optim.Adam (L2 decay) on a fixed least-squares problem, in
float32 and float64; timm's cosine-with-warmup LR values; clip_grad_norm_ on the initial grads.
All stored as float64 (float32 runs are exact in float64).

Problem: h = x W1^T + b1, out = h W2^T, loss = mean((out - z)^2) + mean((s * d - e)^2), with
fc.weight [3, 5], fc.bias [3], head.weight [4, 3], norm.weight [7] (= s), and frozen.weight
[2, 2], which takes no part in the loss: it has no grad, so the optimisers skip it.

Run: /opt/refenv/bin/python tests/reference/optim_goldens.py
"""
from pathlib import Path

import torch
from safetensors.torch import save_file
from timm.optim import param_groups_weight_decay
from timm.scheduler import CosineLRScheduler

torch.manual_seed(20240607)
f64 = torch.float64
STEPS = 10
ADAMW = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
ADAM = dict(lr=0.05, betas=(0.9, 0.99), eps=1e-8, weight_decay=0.1)
out = {}


def put(name, t):
    out[name] = t.detach().to(f64).clone()


data = {"x": torch.randn(9, 5, dtype=f64), "z": torch.randn(9, 4, dtype=f64),
        "d": torch.randn(7, dtype=f64), "e": torch.randn(7, dtype=f64)}
init = {"fc.weight": torch.randn(3, 5, dtype=f64), "fc.bias": torch.randn(3, dtype=f64),
        "head.weight": torch.randn(4, 3, dtype=f64), "norm.weight": torch.randn(7, dtype=f64) + 1,
        "frozen.weight": torch.randn(2, 2, dtype=f64)}
for k, v in {**data, **init}.items():
    put(f"{'data' if k in data else 'init'}.{k}", v)


class Problem(torch.nn.Module):
    def __init__(self, dtype):
        super().__init__()
        self.fc = torch.nn.Linear(5, 3).to(dtype)
        self.head = torch.nn.Linear(3, 4, bias=False).to(dtype)
        self.norm = torch.nn.Module()
        self.norm.weight = torch.nn.Parameter(torch.zeros(7, dtype=dtype))
        self.frozen = torch.nn.Module()
        self.frozen.weight = torch.nn.Parameter(torch.zeros(2, 2, dtype=dtype))
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(init[name])
        self.data = {k: v.to(dtype) for k, v in data.items()}

    def loss(self):
        x, z, d, e = (self.data[k] for k in "xzde")
        fit = (self.head(self.fc(x)) - z).pow(2).mean()
        return fit + (self.norm.weight * d - e).pow(2).mean()


def run(name, make_optimizer, dtype):
    model = Problem(dtype)
    opt = make_optimizer(model)
    for step in range(1, STEPS + 1):
        opt.zero_grad()
        model.loss().backward()
        opt.step()
        for pname, p in model.named_parameters():
            if pname != "frozen.weight":  # never has a grad: stays at its initial value
                    put(f"{name}.{'f32' if dtype == torch.float32 else 'f64'}.{step}.{pname}", p)


def adamw(model):
    groups = param_groups_weight_decay(model, ADAMW["weight_decay"])
    return torch.optim.AdamW(groups, **ADAMW)


def adam(model):
    return torch.optim.Adam(model.parameters(), **ADAM)


for dtype in (torch.float32, torch.float64):
    run("adamw", adamw, dtype)
    run("adam", adam, dtype)


def cosine_schedule():
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
    sched = CosineLRScheduler(opt, t_initial=9, lr_min=1e-3, warmup_t=3, warmup_lr_init=1e-4,
                              warmup_prefix=True, t_in_epochs=False)
    lrs = []
    for t in range(15):  # past the end: stays at lr_min
        sched.step_update(t)
        lrs.append(opt.param_groups[0]["lr"])
    put("cosine.lr", torch.tensor(lrs, dtype=f64))


def clipping():
    model = Problem(f64)
    model.loss().backward()
    for max_norm in (0.5, 1e3):
        params = list(model.parameters())
        saved = [p.grad.clone() if p.grad is not None else None for p in params]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
        put(f"clip.{max_norm:g}.norm", norm.reshape(1))
        for (pname, p) in model.named_parameters():
            if p.grad is not None:
                put(f"clip.{max_norm:g}.{pname}", p.grad)
        for p, g in zip(params, saved):
            p.grad = g


cosine_schedule()
clipping()
path = Path(__file__).resolve().parents[1] / "golden" / "optim.safetensors"
path.parent.mkdir(exist_ok=True)
save_file(out, str(path))
print(f"wrote {len(out)} tensors to {path} ({path.stat().st_size} bytes)")
