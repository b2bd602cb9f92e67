#!/usr/bin/env python3
"""What a `seg_train --malignancy-map` segmenter's second channel knows out of fold, alone and
stacked on a classifier's out-of-fold probabilities (models/weights/README.md, tenth session of
2026-12-06). Needs torch, segmentation-models-pytorch, safetensors, Pillow and scikit-learn (the
reference venv): smp's DeepLabV3Plus loads our checkpoints by name.

  malignancy_channel.py IMAGES SEGMENTERS OUT_OF_FOLD [ENCODER]
      IMAGES: the folder the folds were made from (BUSI's layout); SEGMENTERS: the `--folds 5`
      run's checkpoints with {fold} for the fold (each validates fold K, its log beside it in
      log/foldK/split.csv: SEGMENTERS' folder/log); OUT_OF_FOLD: cls_train --folds 5's
      out_of_fold.csv on the same folds; ENCODER: smp's encoder name (resnet18).
      Each validation scan through its fold's segmenter at the card's size with the mirror
      image: the mean malignancy over the lesion the segmenter marks (its most likely 1% where it
      marks none). Prints the AUROCs, and macro-F1 / AUROC of a logistic regression on the
      classifier's log-probabilities with and without that score, fitted on four folds and
      scored on the fifth.
"""
import csv
import os
import sys

import numpy as np
import segmentation_models_pytorch as smp
import torch
from PIL import Image
from safetensors import safe_open
from safetensors.torch import load_file
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, recall_score, roc_auc_score

CLASSES = ["benign", "malignant", "normal"]
FOLDS = 5


def load_segmenter(path, encoder):
    with safe_open(path, "pt") as f:
        card = f.metadata()
    assert card["classes"] == '["lesion","malignancy"]', f"{path}: no malignancy channel (seg_train --malignancy-map)"
    model = smp.DeepLabV3Plus(encoder, encoder_weights=None, classes=2,
                              encoder_depth=int(card.get("encoder_depth", 5)))
    # smp 0.6 builds a ResNet's layer4 at encoder_depth 4 too, unused; our checkpoints leave it out
    missing, unexpected = model.load_state_dict(load_file(path), strict=False)
    assert not unexpected and all(k.startswith("encoder.layer4.") for k in missing), (path, missing, unexpected)
    return model.eval(), int(card["img_size"]), card["normalisation"]


def malignancy_score(model, size, image_path):
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    image = Image.open(image_path).convert("RGB").resize((size, size), Image.BILINEAR)
    x = torch.tensor(((np.asarray(image) / 255.0 - mean) / std).transpose(2, 0, 1)[None], dtype=torch.float32)
    with torch.no_grad():
        y = (model(x) + model(x.flip(3)).flip(3)) / 2
    lesion, malignancy = torch.sigmoid(y[0, 0]).numpy(), torch.sigmoid(y[0, 1]).numpy()
    region = lesion > 0.5
    if not region.any():
        region = lesion >= np.quantile(lesion, 0.99)
    return float(malignancy[region].mean())


def scores(images, segmenters, encoder):
    rows = {}
    for fold in range(1, FOLDS + 1):
        path = segmenters.replace("{fold}", str(fold))
        model, size, normalisation = load_segmenter(path, encoder)
        assert '"mean":[0.485,0.456,0.406]' in normalisation, f"{path}: not ImageNet normalisation"
        split = os.path.join(os.path.dirname(path), "log", f"fold{fold}", "split.csv")
        for r in csv.DictReader(open(split)):
            if r["side"] == "val":
                rows[r["image"]] = (r["class"], fold, malignancy_score(model, size, f"{images}/{r['image']}.png"))
    return rows


def nested(features, truth, folds):
    predicted, f1s, aurocs = np.zeros(len(truth), int), [], []
    for fold in range(1, FOLDS + 1):
        train, test = folds != fold, folds == fold
        fit = LogisticRegression(max_iter=2000, class_weight="balanced").fit(features[train], truth[train])
        p = fit.predict_proba(features[test])
        predicted[test] = p.argmax(1)
        f1s.append(f1_score(truth[test], predicted[test], average="macro"))
        aurocs.append(roc_auc_score(truth[test] == 1, p[:, 1]))
    return f"macro-F1 {np.mean(f1s):.3f} +- {np.std(f1s):.3f}, AUROC {np.mean(aurocs):.3f} +- {np.std(aurocs):.3f}, " \
           f"recall {np.round(recall_score(truth, predicted, average=None), 3)}"


def main(images, segmenters, out_of_fold, encoder="resnet18"):
    torch.set_num_threads(1)
    channel = scores(images, segmenters, encoder)
    classifier = {r["image"]: r for r in csv.DictReader(open(out_of_fold))}
    names = sorted(channel)
    truth = np.array([CLASSES.index(channel[n][0]) for n in names])
    folds = np.array([channel[n][1] for n in names])
    score = np.clip([channel[n][2] for n in names], 1e-6, 1 - 1e-6)
    probabilities = np.array([[float(classifier[n]["p_" + c]) for c in CLASSES] for n in names])
    lesion = truth != CLASSES.index("normal")
    malignant = truth == CLASSES.index("malignant")
    print(f"AUROC malignant against benign over {lesion.sum()} lesion scans: the channel "
          f"{roc_auc_score(malignant[lesion], score[lesion]):.3f}, the classifier "
          f"{roc_auc_score(malignant[lesion], probabilities[lesion, 1]):.3f}")
    log_probabilities = np.log(np.clip(probabilities, 1e-6, 1))
    print("classifier's log-probabilities:", nested(log_probabilities, truth, folds))
    print("the same and the channel's logit:",
          nested(np.c_[log_probabilities, np.log(score / (1 - score))], truth, folds))


if __name__ == "__main__":
    if len(sys.argv) not in (4, 5):
        sys.exit(__doc__)
    main(*sys.argv[1:])
