"""Golden for timm's ResNet classifier (models/resnet.h, ResNetClassifier) with formula weights.

Run with a virtualenv's python holding torch and timm (e.g. /work/refenv/bin/python) from the
repository root; writes tests/golden/resnet18_cls_formula.safetensors.

timm.create_model("resnet18", in_chans=4, num_classes=3) with every state-dict entry from
deeplab_goldens.formula_state (no weights file), the input deeplab_goldens.formula_input
(2 x 64 x 48 x 4, NHWC), labels [0, 2], mean cross-entropy. Train forward + loss + backward, then
the eval forward with the running stats the train forward updated; all float64. Stored: the
logits of both passes, the loss, every parameter's gradient summed over all but its first dim
(gradsum.*), the first conv's whole gradient and the running stats (float32).
"""
import os

import timm
import torch
from safetensors.torch import save_file

from convnext_goldens import run
from deeplab_goldens import GOLDEN, formula_input, formula_state


def main():
    model = timm.create_model("resnet18", pretrained=False, in_chans=4, num_classes=3).double()
    model.load_state_dict(formula_state(model))
    ref = run(model, formula_input(2, 64, 48, 4, torch.float64), torch.tensor([0, 2]))
    out = {k: ref[k] for k in ("logits_train", "logits_eval", "loss")}
    out["grad.conv1.weight"] = ref["grad.conv1.weight"].float()
    for name, g in ref.items():
        if name.startswith("grad."):
            out["gradsum." + name[5:]] = (g.sum(dim=tuple(range(1, g.dim()))) if g.dim() > 1 else g).float()
    for name, b in model.named_buffers():
        if not name.endswith("num_batches_tracked"):
            out["running." + name] = b.float()
    save_file(out, os.path.join(GOLDEN, "resnet18_cls_formula.safetensors"))
    print("resnet18 classifier: params", sum(p.numel() for p in model.parameters()), "| loss", ref["loss"].item(),
          "| entries", len(out))


if __name__ == "__main__":
    main()
