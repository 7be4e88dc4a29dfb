#!/usr/bin/env python3
"""Writes a FLUX.1-dev model of full-size architecture with random weights, for measuring
beeswax's memory and step time (scripts/flux-memory.sh runs it and the job):

    OUT/config/            a diffusers folder: configs, the miniature fixture's tokenizers,
                           random CLIP-L, T5-XXL and VAE weights (safetensors, DTYPE)
    OUT/flux-dev-q8_0.gguf the transformer in BFL names, linear layers Q8_0
    OUT/flux-dev-q4_k.gguf the same with Q4_K

    python make_flux_memory_model.py OUT [--reduced] [--dtype bf16|f16|f32] [--types q8_0,q4_k]

Every tensor is written as it is generated, a few MB at a time: nothing is held in memory.
Quantized blocks are random but valid (finite f16 scales, random quants). Norms, biases and
the high-precision layers (img_in, txt_in, time_in, vector_in, guidance_in, final_layer) are
F32/F16 as `beeswax quantize` writes them. `--reduced` writes a small model of the same layout
(hidden 256, one double and two single blocks, small text encoders and VAE) to test the script.

Needs numpy only (written for Python 3.9+; the weights are random, so no torch).
"""

import argparse
import json
import os
import shutil
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
FIXTURE = os.path.join(HERE, "..", "tests", "fixtures", "models", "tiny-flux-dev")
CHUNK = 1 << 22  # elements generated at a time

# ---------------------------------------------------------------------------------------------
# Architectures


def sizes(reduced):
    """The configs of the model: FLUX.1-dev's, or a small one of the same layout."""
    if reduced:
        return dict(
            flux=dict(heads=2, head_dim=128, double=1, single=2, context=64, pooled=48),
            clip=dict(hidden=48, inter=96, heads=2, layers=2, vocab=49408),
            t5=dict(d_model=64, d_kv=16, d_ff=96, layers=2, heads=4, vocab=32128),
            vae=dict(channels=[16, 16, 32, 32], layers=1, groups=8),
        )
    return dict(
        flux=dict(heads=24, head_dim=128, double=19, single=38, context=4096, pooled=768),
        clip=dict(hidden=768, inter=3072, heads=12, layers=12, vocab=49408),
        t5=dict(d_model=4096, d_kv=64, d_ff=10240, layers=24, heads=64, vocab=32128),
        vae=dict(channels=[128, 256, 512, 512], layers=2, groups=32),
    )


def flux_tensors(c):
    """(BFL name, PyTorch shape) of the FLUX-dev transformer, in file order."""
    h = c["heads"] * c["head_dim"]
    mlp = 4 * h
    out = []

    def linear(name, o, i):
        out.append((f"{name}.weight", (o, i)))
        out.append((f"{name}.bias", (o,)))

    linear("img_in", h, 64)
    for emb, width in [("time_in", 256), ("guidance_in", 256), ("vector_in", c["pooled"])]:
        linear(f"{emb}.in_layer", h, width)
        linear(f"{emb}.out_layer", h, h)
    linear("txt_in", h, c["context"])
    for i in range(c["double"]):
        for s in ["img", "txt"]:
            p = f"double_blocks.{i}.{s}"
            linear(f"{p}_mod.lin", 6 * h, h)
            linear(f"{p}_attn.qkv", 3 * h, h)
            out.append((f"{p}_attn.norm.query_norm.scale", (c["head_dim"],)))
            out.append((f"{p}_attn.norm.key_norm.scale", (c["head_dim"],)))
            linear(f"{p}_attn.proj", h, h)
            linear(f"{p}_mlp.0", mlp, h)
            linear(f"{p}_mlp.2", h, mlp)
    for i in range(c["single"]):
        p = f"single_blocks.{i}"
        linear(f"{p}.linear1", 3 * h + mlp, h)
        linear(f"{p}.linear2", h, h + mlp)
        out.append((f"{p}.norm.query_norm.scale", (c["head_dim"],)))
        out.append((f"{p}.norm.key_norm.scale", (c["head_dim"],)))
        linear(f"{p}.modulation.lin", 3 * h, h)
    linear("final_layer.linear", 64, h)
    linear("final_layer.adaLN_modulation.1", 2 * h, h)
    return out


def clip_tensors(c):
    out = [
        ("text_model.embeddings.token_embedding.weight", (c["vocab"], c["hidden"])),
        ("text_model.embeddings.position_embedding.weight", (77, c["hidden"])),
    ]
    h = c["hidden"]
    for i in range(c["layers"]):
        p = f"text_model.encoder.layers.{i}"
        for proj in ["q_proj", "k_proj", "v_proj", "out_proj"]:
            out += [(f"{p}.self_attn.{proj}.weight", (h, h)), (f"{p}.self_attn.{proj}.bias", (h,))]
        for norm in ["layer_norm1", "layer_norm2"]:
            out += [(f"{p}.{norm}.weight", (h,)), (f"{p}.{norm}.bias", (h,))]
        out += [
            (f"{p}.mlp.fc1.weight", (c["inter"], h)),
            (f"{p}.mlp.fc1.bias", (c["inter"],)),
            (f"{p}.mlp.fc2.weight", (h, c["inter"])),
            (f"{p}.mlp.fc2.bias", (h,)),
        ]
    out += [("text_model.final_layer_norm.weight", (h,)), ("text_model.final_layer_norm.bias", (h,))]
    return out


def t5_tensors(c):
    d, inner = c["d_model"], c["heads"] * c["d_kv"]
    out = [("shared.weight", (c["vocab"], d))]
    for i in range(c["layers"]):
        p = f"encoder.block.{i}.layer"
        for proj in "qkv":
            out.append((f"{p}.0.SelfAttention.{proj}.weight", (inner, d)))
        out.append((f"{p}.0.SelfAttention.o.weight", (d, inner)))
        if i == 0:
            out.append((f"{p}.0.SelfAttention.relative_attention_bias.weight", (32, c["heads"])))
        out.append((f"{p}.0.layer_norm.weight", (d,)))
        out.append((f"{p}.1.DenseReluDense.wi_0.weight", (c["d_ff"], d)))
        out.append((f"{p}.1.DenseReluDense.wi_1.weight", (c["d_ff"], d)))
        out.append((f"{p}.1.DenseReluDense.wo.weight", (d, c["d_ff"])))
        out.append((f"{p}.1.layer_norm.weight", (d,)))
    out.append(("encoder.final_layer_norm.weight", (d,)))
    return out


def vae_tensors(c):
    """diffusers AutoencoderKL names (no quant convs, as FLUX's)."""
    ch, layers = c["channels"], c["layers"]
    out = []

    def conv(name, o, i, k=3):
        out.append((f"{name}.weight", (o, i, k, k)))
        out.append((f"{name}.bias", (o,)))

    def norm(name, n):
        out.append((f"{name}.weight", (n,)))
        out.append((f"{name}.bias", (n,)))

    def resnet(name, i, o):
        norm(f"{name}.norm1", i)
        conv(f"{name}.conv1", o, i)
        norm(f"{name}.norm2", o)
        conv(f"{name}.conv2", o, o)
        if i != o:
            conv(f"{name}.conv_shortcut", o, i, 1)

    def mid(prefix, n):
        resnet(f"{prefix}.mid_block.resnets.0", n, n)
        norm(f"{prefix}.mid_block.attentions.0.group_norm", n)
        for proj in ["to_q", "to_k", "to_v", "to_out.0"]:
            out.append((f"{prefix}.mid_block.attentions.0.{proj}.weight", (n, n)))
            out.append((f"{prefix}.mid_block.attentions.0.{proj}.bias", (n,)))
        resnet(f"{prefix}.mid_block.resnets.1", n, n)

    conv("encoder.conv_in", ch[0], 3)
    prev = ch[0]
    for i, n in enumerate(ch):
        for j in range(layers):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", prev if j == 0 else n, n)
        prev = n
        if i + 1 < len(ch):
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", n, n)
    mid("encoder", ch[-1])
    norm("encoder.conv_norm_out", ch[-1])
    conv("encoder.conv_out", 32, ch[-1])
    conv("decoder.conv_in", ch[-1], 16)
    mid("decoder", ch[-1])
    rev = list(reversed(ch))
    prev = rev[0]
    for i, n in enumerate(rev):
        for j in range(layers + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", prev if j == 0 else n, n)
        prev = n
        if i + 1 < len(rev):
            conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", n, n)
    norm("decoder.conv_norm_out", ch[0])
    conv("decoder.conv_out", 3, ch[0])
    return out


# ---------------------------------------------------------------------------------------------
# Random values


def values(rng, shape, name):
    """Chunks of f32 values for tensor `name`: norm scales near 1, biases small, weights
    scaled by 1/sqrt(fan_in)."""
    n = int(np.prod(shape))
    if len(shape) == 1:
        scale, offset = (0.1, 1.0) if name.endswith((".weight", ".scale")) else (0.02, 0.0)
    else:
        scale, offset = 1.0 / np.sqrt(np.prod(shape[1:])), 0.0
    done = 0
    while done < n:
        k = min(CHUNK, n - done)
        yield (rng.standard_normal(k, dtype=np.float32) * scale + offset).astype(np.float32)
        done += k


def as_dtype(x, dtype):
    if dtype == "f32":
        return x.astype("<f4").tobytes()
    if dtype == "f16":
        return x.astype("<f2").tobytes()
    bits = x.astype("<f4").view("<u4")
    return ((bits + 0x7FFF + ((bits >> 16) & 1)) >> 16).astype("<u2").tobytes()  # bf16, RNE


# ---------------------------------------------------------------------------------------------
# safetensors, streamed

ST_DTYPE = {"f32": ("F32", 4), "f16": ("F16", 2), "bf16": ("BF16", 2)}


def write_safetensors(path, tensors, dtype, rng):
    name, size = ST_DTYPE[dtype]
    header, offset = {}, 0
    for t, shape in tensors:
        n = int(np.prod(shape)) * size
        header[t] = {"dtype": name, "shape": list(shape), "data_offsets": [offset, offset + n]}
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t, shape in tensors:
            for chunk in values(rng, shape, t):
                f.write(as_dtype(chunk, dtype))
    print(f"wrote {path} ({offset / 2**30:.2f} GiB)", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# GGUF, streamed

GGML = {"f32": (0, 1, 4), "f16": (1, 1, 2), "q8_0": (8, 32, 34), "q4_k": (12, 256, 144)}
HIGH_PRECISION = ("img_in.", "txt_in.", "time_in.", "vector_in.", "guidance_in.", "final_layer.")
ALIGN = 32


def gguf_type(name, shape, target):
    if len(shape) == 1 or int(np.prod(shape)) <= 1024:
        return "f32"
    if name.startswith(HIGH_PRECISION):
        return "f16"
    return target


def nbytes(shape, ty):
    _, block, size = GGML[ty]
    n = int(np.prod(shape))
    assert n % block == 0, (shape, ty)
    return n // block * size


def random_blocks(rng, shape, ty, name):
    """The tensor's stored bytes, chunk by chunk: floats as written, quantized types as
    random valid blocks of about the magnitude of the float weights."""
    if ty in ("f32", "f16"):
        for chunk in values(rng, shape, name):
            yield as_dtype(chunk, ty)
        return
    _, block, size = GGML[ty]
    blocks = int(np.prod(shape)) // block
    scale = 1.0 / np.sqrt(shape[-1])
    per = max(1, CHUNK // block)
    done = 0
    while done < blocks:
        k = min(per, blocks - done)
        raw = rng.integers(0, 256, size=(k, size), dtype=np.uint8)
        if ty == "q8_0":  # d (f16), 32 x int8
            d = np.full(k, scale / 64, dtype="<f2")
            raw[:, 0:2] = d.view(np.uint8).reshape(k, 2)
        else:  # q4_k: d, dmin (f16), 12 scale bytes, 128 quant bytes
            d = np.full(k, scale / 64, dtype="<f2")
            dmin = np.full(k, scale / 32, dtype="<f2")
            raw[:, 0:2] = d.view(np.uint8).reshape(k, 2)
            raw[:, 2:4] = dmin.view(np.uint8).reshape(k, 2)
        yield raw.tobytes()
        done += k


def gguf_string(s):
    b = s.encode()
    return struct.pack("<Q", len(b)) + b


def write_gguf(path, tensors, target, rng):
    plan, offset = [], 0
    for name, shape in tensors:
        ty = gguf_type(name, shape, target)
        n = nbytes(shape, ty)
        plan.append((name, shape, ty, offset, n))
        offset += n + (-n % ALIGN)
    kv = [("general.architecture", gguf_string("flux")), ("general.quantization_version", None)]
    with open(path, "wb") as f:
        f.write(b"GGUF" + struct.pack("<IQQ", 3, len(plan), len(kv)))
        f.write(gguf_string("general.architecture") + struct.pack("<I", 8) + gguf_string("flux"))
        f.write(gguf_string("general.quantization_version") + struct.pack("<II", 4, 2))
        for name, shape, ty, off, _ in plan:
            f.write(gguf_string(name) + struct.pack("<I", len(shape)))
            for dim in reversed(shape):
                f.write(struct.pack("<Q", dim))
            f.write(struct.pack("<IQ", GGML[ty][0], off))
        f.write(b"\0" * (-f.tell() % ALIGN))
        for name, shape, ty, _, n in plan:
            written = 0
            for chunk in random_blocks(rng, shape, ty, name):
                f.write(chunk)
                written += len(chunk)
            assert written == n, (name, written, n)
            f.write(b"\0" * (-n % ALIGN))
    print(f"wrote {path} ({offset / 2**30:.2f} GiB, linear layers {target})", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# The folder


def write_configs(out, s):
    f, c, t, v = s["flux"], s["clip"], s["t5"], s["vae"]
    for d in ["tokenizer", "tokenizer_2", "scheduler"]:
        shutil.copytree(os.path.join(FIXTURE, d), os.path.join(out, d), dirs_exist_ok=True)
    shutil.copy(os.path.join(FIXTURE, "model_index.json"), out)

    def edit(component, changes):
        os.makedirs(os.path.join(out, component), exist_ok=True)
        with open(os.path.join(FIXTURE, component, "config.json")) as fh:
            config = json.load(fh)
        config.update(changes)
        with open(os.path.join(out, component, "config.json"), "w") as fh:
            json.dump(config, fh, indent=2)

    edit("transformer", dict(
        attention_head_dim=f["head_dim"], axes_dims_rope=[16, 56, 56],
        num_attention_heads=f["heads"], num_layers=f["double"], num_single_layers=f["single"],
        joint_attention_dim=f["context"], pooled_projection_dim=f["pooled"],
        guidance_embeds=True, in_channels=64,
    ))
    edit("text_encoder", dict(
        hidden_size=c["hidden"], intermediate_size=c["inter"], num_attention_heads=c["heads"],
        num_hidden_layers=c["layers"], vocab_size=c["vocab"], projection_dim=c["hidden"],
    ))
    edit("text_encoder_2", dict(
        d_model=t["d_model"], d_kv=t["d_kv"], d_ff=t["d_ff"], num_layers=t["layers"],
        num_heads=t["heads"], vocab_size=t["vocab"],
    ))
    edit("vae", dict(block_out_channels=v["channels"], layers_per_block=v["layers"],
                     norm_num_groups=v["groups"], sample_size=1024))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--reduced", action="store_true")
    ap.add_argument("--dtype", default="bf16", choices=["bf16", "f16", "f32"])
    ap.add_argument("--types", default="q8_0,q4_k")
    a = ap.parse_args()
    s = sizes(a.reduced)
    rng = np.random.default_rng(0)
    config = os.path.join(a.out, "config")
    os.makedirs(config, exist_ok=True)
    write_configs(config, s)
    parts = [
        ("text_encoder", "model", clip_tensors(s["clip"])),
        ("text_encoder_2", "model", t5_tensors(s["t5"])),
        ("vae", "diffusion_pytorch_model", vae_tensors(s["vae"])),
    ]
    for component, stem, tensors in parts:
        path = os.path.join(config, component, f"{stem}.safetensors")
        write_safetensors(path, tensors, a.dtype, rng)
    flux = flux_tensors(s["flux"])
    for ty in a.types.split(","):
        write_gguf(os.path.join(a.out, f"flux-dev-{ty}.gguf"), flux, ty, rng)


if __name__ == "__main__":
    main()
