#!/usr/bin/env python3
"""What lesion outlines say about the class, without the scan's pixels (models/weights/README.md,
ninth session of 2026-12-06). Needs numpy, Pillow, scipy and scikit-learn (the reference venv).

  mask_shape.py truth BUSI FOLDS
      BUSI: Dataset_BUSI_with_GT; FOLDS: a `--folds 5` run's log folder (foldK/split.csv).
      Each descriptor's AUROC (malignant against benign) on the ground-truth outlines, solidity's
      after smoothing the outlines through 32..256 px, and a logistic regression on the
      descriptors alone, fitted on four folds and scored on the fifth.
  mask_shape.py predicted ROWS.csv
      ROWS: predict's CSV rows of every fold's validation images, each through its fold's pair,
      with columns fold and truth added. The same AUROCs on the predicted outlines, and whether
      the descriptors stacked on the classifier's log-probabilities beat them alone (nested).
"""
import csv
import sys

import numpy as np
from PIL import Image
from scipy import ndimage
from scipy.spatial import ConvexHull
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, recall_score, roc_auc_score

CLASSES = ["benign", "malignant", "normal"]
# name, and whether a low value means malignant (the AUROC is then of the negated value)
DESCRIPTORS = [("area (log share of the scan)", False), ("taller than wide (log h/w of the box)", False),
               ("solidity (area / convex hull)", True), ("circularity (4 pi A / P^2)", True),
               ("extent (area / box)", True), ("components (log count)", False)]


def descriptors(mask):
    """[empty, the DESCRIPTORS] of a boolean mask; zeros for an empty one."""
    area = mask.sum()
    if area < 5:
        return [1] + [0] * len(DESCRIPTORS)
    ys, xs = np.nonzero(mask)
    box_h, box_w = ys.max() - ys.min() + 1, xs.max() - xs.min() + 1
    try:
        hull = ConvexHull(np.stack([xs, ys], 1)).volume
    except Exception:  # a line of pixels has no hull area
        hull = area
    padded = np.pad(mask, 1)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    perimeter = (mask & ~inner).sum()
    return [0, np.log(area / mask.size), np.log(box_h / box_w), min(area / max(hull, 1), 1),
            4 * np.pi * area / perimeter**2, area / (box_h * box_w), np.log(ndimage.label(mask)[1])]


def read_mask(path, smooth_to=0):
    m = Image.open(path).convert("L")
    if smooth_to:
        m = m.resize((smooth_to, smooth_to), Image.BILINEAR).resize(m.size, Image.BILINEAR)
    return np.array(m) > 127


def descriptor_aurocs(X, y, title):
    lesion = (y != 2) & (X[:, 0] == 0)
    print(f"{title}: {lesion.sum()} lesion images with an outline")
    for i, (name, low_malignant) in enumerate(DESCRIPTORS, 1):
        v = -X[lesion, i] if low_malignant else X[lesion, i]
        print(f"  {name:40s} AUROC {roc_auc_score(y[lesion] == 1, v):.3f}")


def figures(prob, y, fold):
    ks = sorted(set(fold))
    f1 = [f1_score(y[fold == k], prob[fold == k].argmax(1), average="macro") for k in ks]
    au = [roc_auc_score(y[fold == k] == 1, prob[fold == k, 1]) for k in ks]
    recall = recall_score(y, prob.argmax(1), average=None)
    return (f"macro-F1 {np.mean(f1):.3f} +- {np.std(f1, ddof=1):.3f}, AUROC malignant {np.mean(au):.3f} +- "
            f"{np.std(au, ddof=1):.3f}, recall {' / '.join(f'{r:.3f}' for r in recall)}")


def nested_logistic(F, y, fold):
    """Each fold's probabilities from a logistic regression fitted on the other folds' rows."""
    out = np.zeros((len(y), len(CLASSES)))
    for k in sorted(set(fold)):
        train, test = fold != k, fold == k
        mean, std = F[train].mean(0), F[train].std(0) + 1e-9
        model = LogisticRegression(max_iter=2000, class_weight="balanced").fit((F[train] - mean) / std, y[train])
        out[test] = model.predict_proba((F[test] - mean) / std)
    return out


def truth(busi, folds_dir):
    rows = []
    for k in range(1, 6):
        for r in csv.DictReader(open(f"{folds_dir}/fold{k}/split.csv")):
            if r["side"] == "val":
                rows.append((f"{busi}/{r['image']}_mask.png", CLASSES.index(r["class"]), k))
    y, fold = np.array([r[1] for r in rows]), np.array([r[2] for r in rows])
    X = np.array([descriptors(read_mask(path)) for path, _, _ in rows], float)
    descriptor_aurocs(X, y, "ground-truth outlines")
    lesion = y != 2
    for side in (32, 64, 128, 256):
        S = np.array([descriptors(read_mask(path, side)) for path, c, _ in rows if c != 2], float)
        print(f"  solidity after smoothing through {side} px: AUROC {roc_auc_score(y[lesion] == 1, -S[:, 3]):.3f}")
    print("descriptors alone, logistic regression (nested):", figures(nested_logistic(X, y, fold), y, fold))


def predicted(rows_csv):
    rows = list(csv.DictReader(open(rows_csv)))
    y = np.array([CLASSES.index(r["truth"]) for r in rows])
    fold = np.array([int(r["fold"]) for r in rows])
    P = np.array([[float(r["p_" + c]) for c in CLASSES] for r in rows])
    X = np.array([descriptors(read_mask(r["mask"])) for r in rows], float)
    descriptor_aurocs(X, y, "predicted outlines")
    log_p = np.log(np.clip(P, 1e-6, 1))
    print("classifier as is:                       ", figures(P, y, fold))
    print("its log-probabilities refitted (nested):", figures(nested_logistic(log_p, y, fold), y, fold))
    print("the same with the descriptors (nested): ", figures(nested_logistic(np.hstack([log_p, X]), y, fold), y, fold))


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "truth":
        truth(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 3 and sys.argv[1] == "predicted":
        predicted(sys.argv[2])
    else:
        sys.exit(__doc__)
