#!/usr/bin/env python3
"""Synthetic breast-ultrasound-like scans with exact lesion masks, for segmentation pretraining:
layered tissue from smooth random fields under Rayleigh speckle, blurred more laterally than
axially; a lesion (an irregular, sometimes spiculated, hypoechoic blob, with a posterior shadow
or enhancement) in 80% of them, and dark fat lobules, which are not lesions, in all of them.
Flat layout: OUT/images/X.png, OUT/masks/X_mask.png. Numpy, SciPy and Pillow (the reference
virtualenv); models/weights/README.md, row 69:
    python3 tools/scripts/phantom_scans.py OUT COUNT SIZE    # e.g. OUT 6000 128"""
import os, sys
import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter, map_coordinates

out, count, size = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
rng = np.random.default_rng(1)
yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)

def smooth_field(sigma):
    return gaussian_filter(rng.standard_normal((size, size)), sigma) * sigma

def blob(cy, cx, r, spiky):
    """Star-shaped region: radius a smooth random function of angle, plus spicules."""
    t = np.arctan2(yy - cy, (xx - cx) / rng.uniform(1, 1.8))
    radius = np.full_like(t, r)
    for k in range(1, 6):
        radius += r * rng.normal(0, 0.12 / k) * np.cos(k * t + rng.uniform(0, 6.3))
    if spiky:
        for k in rng.integers(8, 20, 2):
            radius += r * rng.uniform(0.05, 0.2) * np.maximum(0, np.cos(k * t + rng.uniform(0, 6.3))) ** 6
    d = np.hypot(yy - cy, (xx - cx) / rng.uniform(1, 1.8))
    return d < radius

def scan():
    depth = yy / size
    tissue = 0.5 + 0.25 * np.tanh(smooth_field(6) * 1.5)                      # glandular texture
    tissue *= 0.7 + 0.6 * np.exp(-((depth - rng.uniform(0.3, 0.6)) / 0.25) ** 2)  # the bright band
    tissue[yy < size * rng.uniform(0.03, 0.08)] = 0.9                           # skin line
    for _ in range(rng.integers(2, 7)):                                         # fat lobules
        lob = blob(rng.uniform(0.15, 0.9) * size, rng.uniform(0, 1) * size, rng.uniform(0.04, 0.12) * size, False)
        tissue[lob] *= rng.uniform(0.3, 0.6)
    mask = np.zeros((size, size), bool)
    if rng.random() < 0.8:
        cy, cx, r = rng.uniform(0.3, 0.7) * size, rng.uniform(0.25, 0.75) * size, rng.uniform(0.05, 0.25) * size
        mask = blob(cy, cx, r, rng.random() < 0.4)
        tissue[mask] = rng.uniform(0.05, 0.3) * (1 + 0.3 * smooth_field(3)[mask])
        below = (yy > cy) & (np.abs(xx - cx) < r * 0.8)
        tissue[below & ~mask] *= rng.choice([rng.uniform(0.3, 0.7), rng.uniform(1.2, 1.6)])
    tissue *= 1 - 0.5 * depth * rng.uniform(0, 1)                              # attenuation
    speckle = np.abs(rng.standard_normal((size, size)) + 1j * rng.standard_normal((size, size))) / 1.25
    img = gaussian_filter(np.clip(tissue, 0, 1.5) * speckle, (rng.uniform(0.3, 0.8), rng.uniform(0.8, 2)))
    img = np.clip(img * rng.uniform(0.7, 1.1), 0, 1) ** rng.uniform(0.7, 1.4)
    # a sector-shaped field of view half the time, as curved probes give
    if rng.random() < 0.5:
        fan = np.abs(xx - size / 2) < size * 0.3 + yy * rng.uniform(0.1, 0.4)
        img[~fan] = 0
        mask &= fan
    return (img * 255).astype(np.uint8), mask

os.makedirs(f"{out}/images", exist_ok=True); os.makedirs(f"{out}/masks", exist_ok=True)
for i in range(count):
    img, mask = scan()
    Image.fromarray(np.stack([img] * 3, -1)).save(f"{out}/images/p{i:05d}.png")
    Image.fromarray((mask * 255).astype(np.uint8)).save(f"{out}/masks/p{i:05d}_mask.png")
    if i % 500 == 0: print(i, flush=True)
