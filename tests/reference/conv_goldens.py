#!/opt/refenv/bin/python
"""Writes tests/golden/conv.safetensors: float64 inputs, weights and outputs of F.conv2d and
F.interpolate(mode="bilinear") for the configurations test_conv.cpp checks.

Images are stored NHWC (our layout), conv weights stay [out, in/groups, kh, kw]. Each case's
options are a metadata entry, so the C++ test needs no copy of this table:
  conv.<name>   = "stride padding dilation groups"   tensors <name>.x/.w/.b/.y
  resize.<name> = "out_h out_w align_corners"        tensors <name>.x/.y
Run: /opt/refenv/bin/python tests/reference/conv_goldens.py
"""
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

# name: (NHWC input shape, out channels, kernel, stride, padding, dilation, groups)
CONV_CASES = {
    "regular3x3_s1": ((2, 7, 6, 5), 6, 3, 1, 1, 1, 1),
    "regular3x3_s2": ((1, 9, 7, 3), 4, 3, 2, 1, 1, 1),
    "pointwise1x1": ((3, 5, 7, 6), 5, 1, 1, 0, 1, 1),
    "dense3x3_d2": ((1, 6, 7, 4), 5, 3, 1, 2, 2, 1),  # MiT patch_embed4 at output stride 16
    "grouped3x3_g2": ((1, 7, 5, 6), 4, 3, 1, 1, 1, 2),
    "stem4x4_s4": ((1, 9, 13, 3), 5, 4, 4, 0, 1, 1),  # sizes not multiples of the stride
    "downsample2x2_s2": ((3, 7, 9, 5), 6, 2, 2, 0, 1, 1),
    "depthwise7x7_p3": ((1, 7, 13, 6), 6, 7, 1, 3, 1, 6),
    "depthwise3x3_d2_c34": ((1, 5, 10, 34), 34, 3, 1, 2, 2, 34),  # a full channel block + tail
    "depthwise3x3_s2": ((1, 8, 17, 4), 4, 3, 2, 1, 1, 4),
    "atrous_dw3x3_d12": ((1, 13, 11, 3), 3, 3, 1, 12, 12, 3),  # ASPP: most taps in the padding
}

# name: (NHWC input shape, out_h, out_w, align_corners)
RESIZE_CASES = {
    "up4_align": ((1, 3, 4, 3), 12, 16, True),
    "up4_half_pixel": ((1, 3, 4, 3), 12, 16, False),
    "down_half_pixel": ((2, 9, 11, 2), 4, 5, False),
    "ratio_align": ((1, 5, 7, 2), 8, 11, True),
    "ratio_half_pixel": ((1, 5, 7, 2), 8, 11, False),
    "from_1x1": ((2, 1, 1, 3), 5, 7, False),  # ASPP image pooling back to the map
}


def nchw(t):
    return t.permute(0, 3, 1, 2)


def nhwc(t):
    return t.permute(0, 2, 3, 1).contiguous()


def main():
    torch.manual_seed(0)
    tensors, meta = {}, {}
    for name, (shape, cout, k, stride, padding, dilation, groups) in CONV_CASES.items():
        x = torch.randn(shape, dtype=torch.float64)
        w = torch.randn(cout, shape[3] // groups, k, k, dtype=torch.float64)
        b = torch.randn(cout, dtype=torch.float64)
        y = F.conv2d(nchw(x), w, b, stride, padding, dilation, groups)
        tensors.update({f"{name}.x": x, f"{name}.w": w, f"{name}.b": b, f"{name}.y": nhwc(y)})
        meta[f"conv.{name}"] = f"{stride} {padding} {dilation} {groups}"
    for name, (shape, out_h, out_w, align_corners) in RESIZE_CASES.items():
        x = torch.randn(shape, dtype=torch.float64)
        y = F.interpolate(nchw(x), size=(out_h, out_w), mode="bilinear", align_corners=align_corners)
        tensors.update({f"{name}.x": x, f"{name}.y": nhwc(y)})
        meta[f"resize.{name}"] = f"{out_h} {out_w} {int(align_corners)}"
    out = Path(__file__).resolve().parents[1] / "golden" / "conv.safetensors"
    save_file(tensors, str(out), metadata=meta)
    print(f"wrote {out} ({out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
