"""Goldens for DeepLabV3+ (MiT and ResNet encoders) and U-Net (ResNet), from segmentation_models_pytorch 0.6.

Run with a virtualenv's python holding torch, timm and smp (e.g. /work/refenv/bin/python) from the repository root:
  deeplab_goldens.py             committed goldens (tiny MiT; ResNet-18 and -50 with formula
                                 weights) + name/shape lists
  deeplab_goldens.py --full DIR  full-size goldens (mit_b0 64x64, mit_b2 256x256; float32 and
                                 float64 runs, about 450 MB) into DIR
  deeplab_goldens.py --check-ours DIR
                                 loads the state dict that test_deeplab writes into its build dir
                                 (DIR/deeplab_ours_*.safetensors) into smp; prints the difference

Conventions shared with tests/test_deeplab.cpp:
- the input is a formula (no storage): x[i] = sin(0.37 i) + 0.5 cos(0.0021 i) over the NHWC flat
  index i, evaluated in float64;
- the target mask of sample n is a disc, centre (0.4 H + 5 n, 0.55 W - 3 n), radius H / 4;
- loss = BCE-with-logits (mean) + soft Dice (per sample, smooth 1, mean over the batch);
- train-mode goldens run with Dropout p = 0 and DropPath p = 0 (both are random), BN in train
  mode; then the eval-mode forward runs with the running stats the train forward updated;
- images and outputs are stored NHWC.
"""
import argparse
import copy
import os

import numpy as np
import torch
import torch.nn.functional as F
import segmentation_models_pytorch as smp
from safetensors.torch import load_file, save_file
from segmentation_models_pytorch.encoders import encoders
from segmentation_models_pytorch.encoders.mix_transformer import MixVisionTransformerEncoder

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
GOLDEN = os.path.join(REPO, "tests", "golden")

# A MiT small enough to commit that still has every path: sr convs 8/4/2, a stage without sr,
# two blocks in one stage, heads > 1, the dilated stage 4.
TINY = dict(embed_dims=[4, 8, 12, 16], num_heads=[1, 2, 3, 4], depths=[1, 2, 1, 1])
TINY_DECODER = dict(decoder_channels=8, decoder_atrous_rates=(2, 4, 6))


def register_tiny():
    params = copy.deepcopy(encoders["mit_b0"]["params"])
    params.update(TINY, out_channels=[3, 0] + TINY["embed_dims"])
    encoders["mit_tiny"] = {"encoder": MixVisionTransformerEncoder, "pretrained_settings": {}, "params": params}


def build(encoder, in_channels=3, classes=1, seed=0, **decoder):
    torch.manual_seed(seed)
    return smp.DeepLabV3Plus(encoder_name=encoder, encoder_weights=None, in_channels=in_channels,
                             classes=classes, **decoder)


def formula_input(n, h, w, c, dtype):
    i = np.arange(n * h * w * c, dtype=np.float64)
    x = np.sin(0.37 * i) + 0.5 * np.cos(0.0021 * i)
    return torch.from_numpy(x.reshape(n, h, w, c)).to(dtype).permute(0, 3, 1, 2).contiguous()


def formula_target(n, h, w, c, dtype):
    t = torch.zeros(n, c, h, w, dtype=dtype)
    yy, xx = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    for s in range(n):
        cy, cx, r = 0.4 * h + 5 * s, 0.55 * w - 3 * s, h / 4
        t[s, :] = (((yy - cy) ** 2 + (xx - cx) ** 2) < r * r).to(dtype)
    return t


def loss_fn(logits, target):
    bce = F.binary_cross_entropy_with_logits(logits, target)
    p = torch.sigmoid(logits).flatten(1)
    t = target.flatten(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    return bce + dice.mean()


def disable_randomness(model):
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        if type(m).__name__ == "DropPath":
            m.drop_prob = 0.0


def nhwc(t):
    return t.detach().permute(0, 2, 3, 1).contiguous()


def run(model, state, x, target, dtype):
    """Train forward + loss + backward, then eval forward; returns the tensors to compare."""
    model = copy.deepcopy(model).to(dtype)
    model.load_state_dict({k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()})
    disable_randomness(model)
    model.train()
    out_train = model(x.to(dtype))
    loss = loss_fn(out_train, target.to(dtype))
    loss.backward()
    out = {"out_train": nhwc(out_train), "loss": loss.detach().reshape(())}
    for name, p in model.named_parameters():
        if p.grad is not None:  # smp keeps the layers past encoder_depth but never runs them
            out["grad." + name] = p.grad.detach()
    for name, b in model.named_buffers():
        out["running." + name] = b.detach().clone()
    model.eval()
    with torch.no_grad():
        out["out_eval"] = nhwc(model(x.to(dtype)))
    return out


def output_stride_8(state):
    """Eval output of the tiny model at output stride 8 (input 2x32x48): smp's make_dilated then
    also rewrites stage 3, whose 2x2 sr conv becomes stride 1, dilation 2, padding 2."""
    model = build("mit_tiny", encoder_output_stride=8, **TINY_DECODER).double()
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        return nhwc(model(formula_input(1, 32, 48, 3, torch.float64)))


def write_key_list(model, path):
    with open(path, "w") as f:
        for k, v in model.state_dict().items():
            f.write(f"{k} {list(v.shape)}\n".replace(" [", " ").replace("]", "").replace(", ", ","))


def committed():
    register_tiny()
    model = build("mit_tiny", **TINY_DECODER)
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    n, h, w = 2, 48, 32  # non-square catches H/W mix-ups
    x, target = formula_input(n, h, w, 3, torch.float64), formula_target(n, h, w, 1, torch.float64)
    ref = run(model, state, x, target, torch.float64)
    r32 = run(model, state, x, target, torch.float32)
    print("tiny: params", sum(p.numel() for p in model.parameters()),
          "| torch f32 vs f64: out_train", (r32["out_train"].double() - ref["out_train"]).abs().max().item(),
          "out_eval", (r32["out_eval"].double() - ref["out_eval"]).abs().max().item())
    # Weights float32 (what the model is); references from the float64 run. Gradients are stored
    # as float32 (relative precision 6e-8, ample for the 1e-3 / 1e-6 checks); outputs as float64.
    weights = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    save_file(weights, os.path.join(GOLDEN, "deeplab_tiny_weights.safetensors"),
              metadata={"embed_dims": "4,8,12,16", "num_heads": "1,2,3,4", "depths": "1,2,1,1",
                        "decoder_channels": "8", "atrous_rates": "2,4,6", "batch": str(n), "height": str(h),
                        "width": str(w)})
    train = {k: (v.float() if k.startswith("grad.") else v) for k, v in ref.items()
             if k != "out_eval" and not k.endswith("num_batches_tracked")}
    save_file(train, os.path.join(GOLDEN, "deeplab_tiny_train.safetensors"))
    save_file({"out_eval": ref["out_eval"], "out_eval_os8": output_stride_8(state)},
              os.path.join(GOLDEN, "deeplab_tiny_eval.safetensors"))
    # float32 gradients are compared with torch's float32 ones: where a ReLU input sits within
    # float32 rounding of 0, float32 and float64 take different sides of the kink, and some
    # gradients (those that train-mode BN nearly cancels) move by up to 2% relative in any
    # float32 implementation.
    save_file({k: v for k, v in r32.items() if k.startswith("grad.")},
              os.path.join(GOLDEN, "deeplab_tiny_grad_f32.safetensors"))

    b2 = build("mit_b2")
    write_key_list(b2, os.path.join(GOLDEN, "deeplab_mit_b2_keys.txt"))
    print("mit_b2 in 3, 1 class: params", sum(p.numel() for p in b2.parameters()))
    b2_in1 = build("mit_b2", in_channels=1, classes=3)
    print("mit_b2 in 1, 3 classes: params", sum(p.numel() for p in b2_in1.parameters()))
    for name in ["mit_b0", "mit_b1", "mit_b3", "mit_b4", "mit_b5"]:
        print(name, "params", sum(p.numel() for p in build(name).parameters()))

    resnet("resnet18", 2, 64, 48, full_checks=True)
    resnet("resnet50", 2, 64, 48, full_checks=False)
    resnet("resnet18", 2, 64, 48, full_checks=False, encoder_depth=4)
    write_key_list(build("resnet34"), os.path.join(GOLDEN, "deeplab_resnet34_keys.txt"))
    unet("resnet18", 2, 64, 48, encoder_depth=4, decoder_channels=(16, 8, 8, 4))
    for name in ["resnet18", "resnet50"]:
        print("unet", name, "params", sum(p.numel() for p in smp.Unet(encoder_name=name, encoder_weights=None).parameters()))
    print("unet resnet18 depth 4, decoder 128,64,32,16: params", sum(p.numel() for p in smp.Unet(
        encoder_name="resnet18", encoder_weights=None, encoder_depth=4, decoder_channels=(128, 64, 32, 16)).parameters()))
    for name in ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]:
        print(name, "params", sum(p.numel() for p in build(name).parameters()))


def hash_uniform(n, h):
    """n values in [-1, 1) from a 32-bit integer hash of (index, h): exact in any language, and
    without the periodic structure of a sine, whose sums cancel and turn rounding into noise."""
    x = (np.arange(n, dtype=np.uint64) * 2654435761 + h * 40503) & 0xFFFFFFFF
    for shift, mult in ((15, 2246822519), (13, 3266489917)):
        x ^= x >> np.uint64(shift)
        x = (x * np.uint64(mult)) & 0xFFFFFFFF
    x ^= x >> np.uint64(16)
    return torch.from_numpy(x.astype(np.float64) / 2.0**32 * 2 - 1)


def formula_state(model):
    """Every float entry of the state dict from its name and flat index, so a golden needs no
    weights file: v = hash_uniform(numel, h), h the sum of the name's character codes. Conv
    weights v * sqrt(6 / fan_in) (He's variance); norm weights 1 + 0.2 v; biases and running
    means 0.1 v; running variances 1 + 0.5 v^2. tests/test_deeplab.cpp (formula_state) is the same."""
    state = {}
    for name, t in model.state_dict().items():
        if not t.is_floating_point():
            state[name] = t.clone()
            continue
        v = hash_uniform(t.numel(), sum(name.encode()))
        if name.endswith("running_var"):
            v = 1 + 0.5 * v * v
        elif t.dim() >= 2:
            v = v * (6 / t[0].numel()) ** 0.5
        elif name.endswith(".weight"):
            v = 1 + 0.2 * v
        else:
            v = 0.1 * v
        state[name] = v.reshape(t.shape)
    return state


def resnet(name, n, h, w, full_checks, encoder_depth=5):
    """DeepLabV3+ on a ResNet encoder with formula weights (formula_golden). A smaller
    encoder_depth names the file deeplab_NAME_depthD_formula."""
    tag = name if encoder_depth == 5 else f"{name}_depth{encoder_depth}"
    formula_golden(build(name, encoder_depth=encoder_depth), f"deeplab_{tag}", n, h, w, full_checks)


def unet(name, n, h, w, encoder_depth, decoder_channels):
    """smp's Unet on a ResNet encoder with formula weights (formula_golden, full checks), into
    unet_NAME_depthD_formula; the decoder channels go in the file's metadata."""
    torch.manual_seed(0)
    model = smp.Unet(encoder_name=name, encoder_weights=None, in_channels=3, classes=1,
                     encoder_depth=encoder_depth, decoder_channels=decoder_channels)
    formula_golden(model, f"unet_{name}_depth{encoder_depth}", n, h, w, True,
                   {"decoder_channels": ",".join(map(str, decoder_channels))})


def formula_golden(model, tag, n, h, w, full_checks, metadata=None):
    """A model with formula weights, float64: outputs, loss and the first conv's gradient (the end
    of the backward chain); with full_checks also every parameter's gradient summed over all but
    its first dim and the running stats (float32). Into TAG_formula.safetensors."""
    x, target = formula_input(n, h, w, 3, torch.float64), formula_target(n, h, w, 1, torch.float64)
    ref = run(model, formula_state(model), x, target, torch.float64)
    keep = {"out_train": ref["out_train"], "out_eval": ref["out_eval"], "loss": ref["loss"],
            "grad.encoder.conv1.weight": ref["grad.encoder.conv1.weight"].float()}
    if full_checks:
        for k, v in ref.items():
            if k.startswith("grad."):
                keep["gradsum." + k[5:]] = (v.sum(dim=tuple(range(1, v.dim()))) if v.dim() > 1 else v).float()
            elif k.startswith("running.") and not k.endswith("num_batches_tracked"):
                keep[k] = v.float()
    save_file(keep, os.path.join(GOLDEN, f"{tag}_formula.safetensors"),
              metadata={"batch": str(n), "height": str(h), "width": str(w), **(metadata or {})})
    print(tag, "formula golden: loss", ref["loss"].item(), "| entries", len(keep))


def full(out_dir, which):
    os.makedirs(out_dir, exist_ok=True)
    configs = {"mit_b0": (2, 64, 64, True), "mit_b2": (2, 256, 256, True)}
    for name in which:
        n, h, w, with_f64 = configs[name]
        model = build(name)
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        x, target = formula_input(n, h, w, 3, torch.float64), formula_target(n, h, w, 1, torch.float64)
        files = {"f32": run(model, state, x, target, torch.float32)}
        if with_f64:
            files["f64"] = run(model, state, x, target, torch.float64)
        save_file(state, os.path.join(out_dir, f"deeplab_{name}_weights.safetensors"),
                  metadata={"batch": str(n), "height": str(h), "width": str(w)})
        for tag, ref in files.items():
            ref = {k: v for k, v in ref.items() if not k.endswith("num_batches_tracked")}
            save_file(ref, os.path.join(out_dir, f"deeplab_{name}_{tag}.safetensors"))
        print(name, "written:", n, "x", h, "x", w, "loss f32", files["f32"]["loss"].item())


def check_ours(directory):
    """Loads a state dict written by our C++ model into smp and compares the eval output."""
    io = load_file(os.path.join(directory, "deeplab_ours_io.safetensors"))
    state = load_file(os.path.join(directory, "deeplab_ours_state.safetensors"))
    in_channels = state["encoder.patch_embed1.proj.weight"].shape[1]
    classes = state["segmentation_head.0.weight"].shape[0]
    model = build("mit_b0", in_channels=in_channels, classes=classes)
    model.load_state_dict(state)  # strict: names and shapes must all agree
    model.eval()
    with torch.no_grad():
        out = nhwc(model(io["input"].permute(0, 3, 1, 2)))
    diff = (out - io["output"]).abs().max().item()
    print(f"our state dict in smp: {len(state)} keys loaded strictly, max |out_smp - out_ours| = {diff:.3e}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--full", metavar="DIR")
    parser.add_argument("--models", default="mit_b0,mit_b2")
    parser.add_argument("--check-ours", metavar="DIR")
    args = parser.parse_args()
    torch.set_num_threads(2)
    if args.full:
        full(args.full, args.models.split(","))
    elif args.check_ours:
        check_ours(args.check_ours)
    else:
        committed()
