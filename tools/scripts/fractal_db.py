#!/usr/bin/env python3
"""FractalDB-style synthetic classes (Kataoka et al. 2020): each class an iterated function system,
its instances that system with one parameter scaled, rendered by the chaos game with a random
3x3 patch per point. Written in BUSI's layout (CLASS/X.png + X_mask.png, empty masks) so cls_train reads it.
Numpy and Pillow (the reference virtualenv); models/weights/README.md, row 68:
    python3 tools/scripts/fractal_db.py OUT CLASSES PER_CLASS SIZE    # e.g. OUT 200 60 128"""
import os, sys
import numpy as np
from PIL import Image

out, classes, per_class, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
rng = np.random.default_rng(0)

def chaos(maps, probs, walkers=2000, steps=40):
    pts = rng.uniform(-1, 1, (walkers, 2))
    keep = []
    for s in range(steps):
        k = rng.choice(len(maps), walkers, p=probs)
        A, t = maps[k, :, :2], maps[k, :, 2]
        pts = np.einsum('nij,nj->ni', A, pts) + t
        if s >= 8: keep.append(pts)
    return np.concatenate(keep)

def occupancy(pts, grid=64):
    lo, hi = pts.min(0), pts.max(0)
    if not np.all(np.isfinite(lo)) or np.any(hi - lo < 1e-6): return 0
    ij = ((pts - lo) / (hi - lo) * (grid - 1)).astype(int)
    return len(np.unique(ij[:, 0] * grid + ij[:, 1])) / grid ** 2

def system():
    while True:
        n = rng.integers(2, 9)
        maps = rng.uniform(-1, 1, (n, 2, 3))
        if np.any(np.linalg.svd(maps[:, :, :2], compute_uv=False)[:, 0] >= 1): continue
        det = np.abs(np.linalg.det(maps[:, :, :2]))
        probs = det / det.sum()
        if occupancy(chaos(maps, probs, 500, 30)) >= 0.12: return maps, probs

def render(maps, probs):
    pts = chaos(maps, probs)
    lo, hi = pts.min(0), pts.max(0)
    margin = size * rng.uniform(0.05, 0.2)
    scale = (size - 1 - 2 * margin) / (hi - lo).max()
    xy = ((pts - lo) * scale + margin + (size - 1 - 2 * margin - (hi - lo) * scale) / 2).astype(int)
    img = np.zeros((size + 2, size + 2), np.float32)
    patch = rng.integers(0, 2, (3, 3)) * rng.uniform(0.5, 1, (3, 3))
    for dy in range(3):
        for dx in range(3):
            if patch[dy, dx]:
                layer = np.zeros_like(img)
                layer[xy[:, 1] + dy, xy[:, 0] + dx] = patch[dy, dx]
                np.maximum(img, layer, out=img)
    img = img[1:-1, 1:-1]
    if rng.random() < 0.5: img = img[:, ::-1]
    bg = rng.uniform(0, 0.3)
    img = bg + (1 - bg) * img * rng.uniform(0.6, 1)
    return (np.clip(img, 0, 1) * 255).astype(np.uint8)

empty = Image.fromarray(np.zeros((size, size), np.uint8))
for c in range(classes):
    maps, probs = system()
    d = os.path.join(out, f"f{c:03d}")
    os.makedirs(d, exist_ok=True)
    for i in range(per_class):
        m = maps.copy()
        j = rng.integers(0, m.size)
        m.flat[j] *= rng.choice(np.arange(0.8, 1.21, 0.05))
        Image.fromarray(render(m, probs)).save(f"{d}/f{c:03d} ({i}).png")
        empty.save(f"{d}/f{c:03d} ({i})_mask.png")
    print(c, flush=True)
