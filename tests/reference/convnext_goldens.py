"""Goldens for tests/test_convnext.cpp, from timm's ConvNeXt (run with /opt/refenv/bin/python).

  convnext_goldens.py                 small goldens committed under tests/golden/
  convnext_goldens.py --full [DIR]    convnext_atto (64x64, batch 2) and convnext_base (224x224,
                                      batch 1) goldens, too big to commit (default /work/ref-goldens)
  convnext_goldens.py --roundtrip STATE IO
                                      loads a state dict written by our test into timm and
                                      prints the max error against the logits our test stored

Images are stored NHWC (our layout); parameters keep torch's layout. Parameters are drawn at
unit scale (weights ~ N(0, 1/fan_in), layer scale ~ 0.5) instead of timm's init, whose 1e-6
layer scale would hide every block from the output. float32 values are drawn first and cast to
float64, so a float64 run of the same parameters and input is exact on both sides.
"""
import argparse
import os

import timm
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from timm.models._manipulate import adapt_input_conv
from timm.models.convnext import ConvNeXt

HERE = os.path.dirname(os.path.abspath(__file__))
GOLDEN = os.path.join(HERE, "..", "golden")
IN_CHANS, NUM_CLASSES = 4, 3
# Small enough to commit; odd channel counts and spatial sizes that floor at each downsample
# (40x56 -> 10x14 -> 5x7 -> 2x3 -> 1x1).
TINY = dict(depths=(1, 1, 2, 1), dims=(8, 12, 16, 20))
TINY_INPUT = (2, IN_CHANS, 40, 56)
LABELS = [0, 2, 1]


def unit_scale_(model, gen):
    """Overwrites every parameter with values that let each layer matter for the output."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gamma"):
                p.copy_(0.5 + 0.25 * torch.randn(p.shape, generator=gen))
            elif p.dim() >= 2:
                fan_in = p[0].numel()
                p.copy_(torch.randn(p.shape, generator=gen) / fan_in ** 0.5)
            elif ".norm." in name or name.startswith("stem.1.") or ".downsample.0." in name:
                base = 1.0 if name.endswith("weight") else 0.0
                p.copy_(base + 0.2 * torch.randn(p.shape, generator=gen))
            else:  # conv / linear biases
                p.copy_(0.1 * torch.randn(p.shape, generator=gen))


def run(model, x_nchw, labels):
    """Logits in train and eval mode, the loss, and every parameter's gradient (train mode)."""
    model.zero_grad()
    model.train()
    logits_train = model(x_nchw)
    loss = F.cross_entropy(logits_train, labels)
    loss.backward()
    model.eval()
    with torch.no_grad():
        logits_eval = model(x_nchw)
    out = {"logits_train": logits_train.detach(), "logits_eval": logits_eval, "loss": loss.detach().reshape(())}
    for name, p in model.named_parameters():
        out["grad." + name] = p.grad.detach().clone()
    return out


def nhwc(x):
    return x.permute(0, 2, 3, 1).contiguous()


def contiguous(d):
    return {k: v.contiguous() for k, v in d.items()}


def make_case(model, input_shape, seed):
    gen = torch.Generator().manual_seed(seed)
    unit_scale_(model, gen)
    x = torch.randn(input_shape, generator=gen)
    labels = torch.tensor(LABELS[: input_shape[0]], dtype=torch.int64)
    return x, labels


def to_conv_mlp(state):
    """The same weights in the shapes of a conv_mlp=True model (fc weights [out, in, 1, 1])."""
    return {k: v[:, :, None, None] if ".mlp.fc" in k and v.dim() == 2 else v for k, v in state.items()}


def write_tiny():
    torch.manual_seed(0)
    model = ConvNeXt(in_chans=IN_CHANS, num_classes=NUM_CLASSES, **TINY)
    x, labels = make_case(model, TINY_INPUT, seed=1)
    params = {k: v.clone() for k, v in model.state_dict().items()}
    f32 = run(model, x, labels)
    f64 = run(model.double(), x.double(), labels)

    conv_mlp = ConvNeXt(in_chans=IN_CHANS, num_classes=NUM_CLASSES, conv_mlp=True, **TINY).double()
    conv_mlp.load_state_dict({k: v.double() for k, v in to_conv_mlp(params).items()})
    conv_mlp.eval()
    with torch.no_grad():
        conv_mlp_logits = conv_mlp(x.double())
    print("tiny: conv_mlp vs linear mlp, float64 max diff",
          (conv_mlp_logits - f64["logits_eval"]).abs().max().item())

    # Pretrained-weight adaptation: a 3-channel version of the stem, adapted as timm does.
    stem3 = params["stem.0.weight"][:, :3].contiguous()
    adapted = {f"adapt_input_conv.in{c}": adapt_input_conv(c, stem3.clone()) for c in (1, 2, 4, 5)}

    inputs = {"input": nhwc(x), "labels": labels}
    save_file(contiguous({**{"param." + k: v for k, v in params.items()}, **inputs,
                          "f32.logits_train": f32["logits_train"], "f32.logits_eval": f32["logits_eval"],
                          "f32.loss": f32["loss"]}),
              os.path.join(GOLDEN, "convnext_tiny.safetensors"),
              metadata={"depths": "1,1,2,1", "dims": "8,12,16,20", "in_chans": str(IN_CHANS),
                        "num_classes": str(NUM_CLASSES)})
    save_file(contiguous({**f64, "conv_mlp.logits_eval": conv_mlp_logits, **adapted}),
              os.path.join(GOLDEN, "convnext_tiny_f64.safetensors"))
    print("tiny: float32 vs float64 logits max diff",
          (f32["logits_train"].double() - f64["logits_train"]).abs().max().item())


def write_key_lists():
    """Names and shapes of every state-dict entry, in torch's order, plus parameter counts."""
    lines = []
    for variant in ("atto", "femto", "pico", "nano", "tiny", "small", "base", "large"):
        model = timm.create_model("convnext_" + variant, in_chans=IN_CHANS, num_classes=NUM_CLASSES)
        count = sum(p.numel() for p in model.parameters())
        lines.append(f"count convnext_{variant} {count}")
        if variant in ("atto", "base"):
            for name, t in model.state_dict().items():
                lines.append(f"key convnext_{variant} {name} {','.join(map(str, t.shape))}")
    with open(os.path.join(GOLDEN, "convnext_keys.txt"), "w") as f:
        f.write("\n".join(lines) + "\n")


def write_full(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    for variant, shape, dtypes in (("atto", (2, IN_CHANS, 64, 64), ("f32", "f64")),
                                   ("base", (1, IN_CHANS, 224, 224), ("f32", "f64"))):
        torch.manual_seed(0)
        model = timm.create_model("convnext_" + variant, in_chans=IN_CHANS, num_classes=NUM_CLASSES)
        x, labels = make_case(model, shape, seed=2)
        params = {k: v.clone() for k, v in model.state_dict().items()}
        save_file(contiguous({**{"param." + k: v for k, v in params.items()},
                              "input": nhwc(x), "labels": labels}),
                  os.path.join(out_dir, f"convnext_{variant}_case.safetensors"))
        for dt in dtypes:
            m = model.double() if dt == "f64" else model
            res = run(m, x.double() if dt == "f64" else x, labels)
            save_file(contiguous(res), os.path.join(out_dir, f"convnext_{variant}_{dt}.safetensors"))
            print(f"{variant} {dt}: loss {res['loss'].item():.10f}")
        model.float()
    write_pretrained_case(out_dir)


def write_pretrained_case(out_dir):
    """timm's own pretrained loading path: 3-channel 1000-class weights into in_chans=4, 3 classes."""
    torch.manual_seed(3)
    src = timm.create_model("convnext_atto")
    path = os.path.join(out_dir, "convnext_atto_in3_pretrained.safetensors")
    save_file(contiguous(src.state_dict()), path)
    model = timm.create_model("convnext_atto", pretrained=True, pretrained_cfg_overlay=dict(file=path),
                              in_chans=IN_CHANS, num_classes=NUM_CLASSES)
    save_file(contiguous(model.state_dict()), os.path.join(out_dir, "convnext_atto_in4_from_pretrained.safetensors"))


def roundtrip(state_path, io_path):
    state = load_file(state_path)
    io = load_file(io_path)
    meta = io_metadata(io_path)
    model = timm.create_model(meta["arch"], in_chans=int(meta["in_chans"]), num_classes=int(meta["num_classes"]))
    model.load_state_dict(state)  # strict: every name and shape must match
    model.eval()
    x = io["input"].permute(0, 3, 1, 2)
    with torch.no_grad():
        logits = model(x.to(torch.float32))
    err = (logits - io["logits"].to(torch.float32)).abs().max().item()
    print(f"roundtrip: our state dict in timm, max |logits_timm - logits_ours| = {err:.3e}")


def io_metadata(io_path):
    with safe_open(io_path, "pt") as f:
        return f.metadata()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--full", nargs="?", const="/work/ref-goldens")
    ap.add_argument("--roundtrip", nargs=2, metavar=("STATE", "IO"))
    args = ap.parse_args()
    if args.roundtrip:
        roundtrip(*args.roundtrip)
    elif args.full:
        write_full(args.full)
    else:
        write_tiny()
        write_key_lists()
