"""Prints the AdamW golden values of tests/test_cuda_kernels.cpp (kTorchAdamW).

torch.optim.AdamW(fused=True) on the CPU, 3 steps; run with the reference virtualenv:
    /opt/refenv/bin/python tests/reference/cuda_adamw_golden.py
"""
import struct

import torch

p = torch.tensor([((i % 7) - 3) / 10.0 for i in range(64)], dtype=torch.float32, requires_grad=True)
opt = torch.optim.AdamW([p], lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.05, fused=True)
for t in range(1, 4):
    p.grad = torch.tensor([(((5 * i + 3 * t) % 11) - 5) * 0.03 for i in range(64)], dtype=torch.float32)
    opt.step()
bits = [struct.unpack("<I", struct.pack("<f", float(v)))[0] for v in p.detach()[:16]]
print(", ".join(f"0x{b:08x}u" for b in bits))
