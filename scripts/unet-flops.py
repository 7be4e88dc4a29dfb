#!/usr/bin/env python3
"""The floating-point work of one UNet forward, to read the Benchmarks table against.

    scripts/unet-flops.py CONFIG.json [--width 512] [--height 512] [--batch 1] [--peak GFLOPS]

Builds diffusers' `UNet2DConditionModel` from a `unet/config.json` on torch's meta device (no
weights, no memory, no arithmetic) and counts one forward's FLOPs (2 per multiply-add) by
aten op with `torch.utils.flop_counter.FlopCounterMode`. Then it counts the products as
beeswax runs them: each 3x3, stride-1 convolution by the tiling beeswax picks for its map
(`engine/src/kernels/winograd.rs`, `tiling`: F(4x4, 3x3) from 16 tiles of 4x4, else
F(2x2, 3x3) from 16 tiles of 2x2, else im2col; layers of at most 64 output channels need
more than 64 tiles), as the GEMMs of its transformed positions (36 or 16 per tile; the
transforms themselves are not counted). With `--peak` (the all-thread FMA peak that
`scripts/cpu-ceilings.sh` prints), it prints the time those products take at that peak: a
floor no f32 implementation of the same algorithms goes under.

Needs the reference venv (torch and diffusers); never run in CI.
"""

import argparse
import json

import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode

MIN_TILES = 16


def tiles(h, w, m):
    return -(-h // m) * -(-w // m)


def winograd_flops(conv, shape):
    """FLOPs of one convolution's products by the Winograd tiling beeswax picks, and its
    name; None where beeswax takes im2col (whose products are the direct convolution's)."""
    simple = conv.stride == (1, 1) and conv.padding == (1, 1) and conv.dilation == (1, 1)
    if conv.kernel_size != (3, 3) or conv.groups != 1 or not simple:
        return None
    b, c, h, w = shape
    co = conv.out_channels
    for name, m, positions in (("F(4x4, 3x3)", 4, 36), ("F(2x2, 3x3)", 2, 16)):
        t = tiles(h, w, m)
        if t >= MIN_TILES and (co > 64 or t > 64):
            return 2 * b * t * positions * c * co, name
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="a diffusers unet/config.json")
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--height", type=int, default=512)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--peak", type=float, help="FMA peak in GFLOP/s (scripts/cpu-ceilings.sh)")
    args = ap.parse_args()

    with open(args.config) as f:
        config = json.load(f)
    with torch.device("meta"):
        unet = UNet2DConditionModel.from_config(config)
    convs = []

    def record(conv, inputs, _out):
        convs.append((conv, inputs[0].shape))

    for module in unet.modules():
        if isinstance(module, torch.nn.Conv2d):
            module.register_forward_hook(record)

    b, h, w = args.batch, args.height // 8, args.width // 8
    x = torch.zeros(b, config.get("in_channels", 4), h, w, device="meta")
    t = torch.tensor([10] * b, device="meta")
    text = torch.zeros(b, 77, config["cross_attention_dim"], device="meta")
    kwargs = {}
    if config.get("addition_embed_type") == "text_time":
        pooled = config.get("projection_class_embeddings_input_dim", 2816) - 6 * 256
        kwargs["added_cond_kwargs"] = {
            "text_embeds": torch.zeros(b, pooled, device="meta"),
            "time_ids": torch.zeros(b, 6, device="meta"),
        }
    counter = FlopCounterMode(display=False)
    with counter:
        unet(x, t, text, **kwargs)

    by_op = counter.get_flop_counts()["Global"]
    total = counter.get_total_flops()
    print(f"UNet {args.width}x{args.height} batch {b}: {total / 1e9:.1f} GFLOP (direct)")
    for op, flops in sorted(by_op.items(), key=lambda kv: -kv[1]):
        print(f"  {str(op):24} {flops / 1e9:8.1f} GFLOP")

    conv3 = {}
    direct3 = other_conv = 0
    for conv, shape in convs:
        direct = 2 * shape[0] * conv.out_channels * conv.in_channels // conv.groups
        direct *= conv.kernel_size[0] * conv.kernel_size[1]
        oh = (shape[2] + 2 * conv.padding[0] - conv.kernel_size[0]) // conv.stride[0] + 1
        ow = (shape[3] + 2 * conv.padding[1] - conv.kernel_size[1]) // conv.stride[1] + 1
        direct *= oh * ow
        if conv.kernel_size == (3, 3) and conv.stride == (1, 1) and conv.groups == 1:
            flops, tiling = winograd_flops(conv, shape) or (direct, "im2col")
            conv3[tiling] = conv3.get(tiling, 0) + flops
            direct3 += direct
        else:
            other_conv += direct
    products = total - sum(f for op, f in by_op.items() if "convolution" in str(op))
    products += other_conv + sum(conv3.values())
    print(f"3x3 stride-1 convolutions: {direct3 / 1e9:.1f} GFLOP direct, as beeswax runs them:")
    for tiling, flops in sorted(conv3.items()):
        print(f"  {tiling:24} {flops / 1e9:8.1f} GFLOP")
    print(f"other convolutions (1x1, stride 2): {other_conv / 1e9:.1f} GFLOP")
    print(f"all products as beeswax runs them: {products / 1e9:.1f} GFLOP")
    if args.peak:
        print(f"at {args.peak:.0f} GFLOP/s: {products / 1e9 / args.peak:.2f} s")


if __name__ == "__main__":
    main()
