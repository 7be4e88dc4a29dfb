#!/usr/bin/env python3
"""The bundled diffusers-layout configs of the shipped families (manifests/families/<family>/)
and the shared CLIP BPE tokenizer (manifests/families/clip-tokenizer/), used when a single-file
checkpoint carries no configs and no `--model-config DIR` is given. beeswax embeds them.

Run from the repository root (any Python 3 with open-clip-torch installed for the BPE file, e.g.
the reference virtualenv; open-clip-torch 3.x):

    /work/venv-ref/bin/python scripts/make_bundled_configs.py [--check]

Deterministic. The values are the public hyper-parameters of the released models (the configs
of runwayml/stable-diffusion-v1-5, runwayml/stable-diffusion-inpainting,
stabilityai/stable-diffusion-2-base, stabilityai/stable-diffusion-2-1,
stabilityai/stable-diffusion-2-inpainting, stabilityai/stable-diffusion-xl-base-1.0,
stabilityai/stable-diffusion-xl-refiner-1.0, diffusers/stable-diffusion-xl-1.0-inpainting-0.1,
black-forest-labs/FLUX.1-dev and FLUX.1-schnell), written here field by field.
`--check` instantiates every network on the meta device with diffusers/transformers and prints
its parameter count (SD 1.5 UNet 859.5M, SDXL UNet 2567.5M, refiner UNet 2518.6M, VAE 83.7M,
CLIP-L 123.1M, OpenCLIP-G with projection 694.7M, FLUX 11901.4M).

The tokenizer is built the way CLIP builds its vocabulary from open_clip's bundled
`bpe_simple_vocab_16e6.txt.gz`: the 256 byte symbols, the same with `</w>`, one token per merge
(the first 49152 - 256 - 2 merges), then `<|startoftext|>` and `<|endoftext|>` (49408 tokens),
written as transformers' vocab.json / merges.txt and gzipped (mtime 0). Each family's
`tokenizer*/` folder holds only its tokenizer_config.json / special_tokens_map.json (SD 2.x and
SDXL's second tokenizer pad with "!"); beeswax adds the shared vocab.json and merges.txt when it
expands the bundle. FLUX's T5 tokenizer is not bundled (no network here): FLUX single files
need `--model-config DIR`.
"""

import gzip
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "manifests" / "families"

SCALED_LINEAR = {"beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
                 "num_train_timesteps": 1000, "clip_sample": False, "set_alpha_to_one": False,
                 "skip_prk_steps": True, "steps_offset": 1, "trained_betas": None}


def pndm(prediction="epsilon"):
    return {"_class_name": "PNDMScheduler", **SCALED_LINEAR, "prediction_type": prediction,
            "timestep_spacing": "leading"}


def ddim(prediction):
    return {"_class_name": "DDIMScheduler", **SCALED_LINEAR, "prediction_type": prediction,
            "timestep_spacing": "leading", "rescale_betas_zero_snr": False}


def euler():
    return {"_class_name": "EulerDiscreteScheduler", **SCALED_LINEAR, "prediction_type": "epsilon",
            "interpolation_type": "linear", "sample_max_value": 1.0, "timestep_spacing": "leading",
            "use_karras_sigmas": False}


def flow(dev):
    return {"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000,
            "shift": 3.0 if dev else 1.0, "use_dynamic_shifting": dev, "base_shift": 0.5,
            "max_shift": 1.15, "base_image_seq_len": 256, "max_image_seq_len": 4096}


def unet_sd(in_channels, cross, heads, sample_size, linear=False, upcast=False):
    return {"_class_name": "UNet2DConditionModel", "act_fn": "silu", "attention_head_dim": heads,
            "block_out_channels": [320, 640, 1280, 1280], "center_input_sample": False,
            "cross_attention_dim": cross,
            "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
            "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True,
            "freq_shift": 0, "in_channels": in_channels, "layers_per_block": 2,
            "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
            "num_class_embeds": None, "only_cross_attention": False, "out_channels": 4,
            "sample_size": sample_size,
            "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
            "upcast_attention": upcast, "use_linear_projection": linear}


def unet_sdxl(in_channels):
    return {"_class_name": "UNet2DConditionModel", "act_fn": "silu",
            "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256, "attention_head_dim": [5, 10, 20],
            "block_out_channels": [320, 640, 1280], "center_input_sample": False,
            "cross_attention_dim": 2048,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
            "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True,
            "freq_shift": 0, "in_channels": in_channels, "layers_per_block": 2,
            "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
            "num_attention_heads": None, "out_channels": 4,
            "projection_class_embeddings_input_dim": 2816, "sample_size": 128,
            "transformer_layers_per_block": [1, 2, 10],
            "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
            "upcast_attention": None, "use_linear_projection": True}


def unet_refiner():
    return {"_class_name": "UNet2DConditionModel", "act_fn": "silu",
            "addition_embed_type": "text_time", "addition_embed_type_num_heads": 64,
            "addition_time_embed_dim": 256, "attention_head_dim": [6, 12, 24, 24],
            "block_out_channels": [384, 768, 1536, 1536], "center_input_sample": False,
            "cross_attention_dim": 1280,
            "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                                 "DownBlock2D"],
            "downsample_padding": 1, "dual_cross_attention": False, "flip_sin_to_cos": True,
            "freq_shift": 0, "in_channels": 4, "layers_per_block": 2,
            "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
            "num_attention_heads": None, "out_channels": 4,
            "projection_class_embeddings_input_dim": 2560, "sample_size": 128,
            "transformer_layers_per_block": 4,
            "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                               "UpBlock2D"],
            "upcast_attention": None, "use_linear_projection": True}


def vae(sample_size, scaling=0.18215, force_upcast=True, flux=False):
    config = {"_class_name": "AutoencoderKL", "act_fn": "silu",
              "block_out_channels": [128, 256, 512, 512],
              "down_block_types": ["DownEncoderBlock2D"] * 4, "force_upcast": force_upcast,
              "in_channels": 3, "latent_channels": 16 if flux else 4, "layers_per_block": 2,
              "norm_num_groups": 32, "out_channels": 3, "sample_size": sample_size,
              "scaling_factor": scaling, "up_block_types": ["UpDecoderBlock2D"] * 4}
    if flux:
        config.update({"shift_factor": 0.1159, "use_quant_conv": False,
                       "use_post_quant_conv": False, "mid_block_add_attention": True})
    return config


CLIP_COMMON = {"attention_dropout": 0.0, "bos_token_id": 0, "dropout": 0.0, "eos_token_id": 2,
               "initializer_factor": 1.0, "initializer_range": 0.02, "layer_norm_eps": 1e-05,
               "max_position_embeddings": 77, "model_type": "clip_text_model", "pad_token_id": 1,
               "torch_dtype": "float32", "vocab_size": 49408}


def clip_l(with_projection=False):
    return {"architectures": ["CLIPTextModelWithProjection" if with_projection
                              else "CLIPTextModel"], **CLIP_COMMON,
            "hidden_act": "quick_gelu", "hidden_size": 768, "intermediate_size": 3072,
            "num_attention_heads": 12, "num_hidden_layers": 12, "projection_dim": 768}


def open_clip_h():
    """SD 2.x: OpenCLIP ViT-H/14's text tower, 24 blocks of which the last is dropped."""
    return {"architectures": ["CLIPTextModel"], **CLIP_COMMON, "hidden_act": "gelu",
            "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
            "num_hidden_layers": 23, "projection_dim": 512}


def open_clip_g():
    return {"architectures": ["CLIPTextModelWithProjection"], **CLIP_COMMON,
            "hidden_act": "gelu", "hidden_size": 1280, "intermediate_size": 5120,
            "num_attention_heads": 20, "num_hidden_layers": 32, "projection_dim": 1280}


def t5_xxl():
    return {"architectures": ["T5EncoderModel"], "model_type": "t5", "d_ff": 10240, "d_kv": 64,
            "d_model": 4096, "decoder_start_token_id": 0, "dense_act_fn": "gelu_new",
            "dropout_rate": 0.1, "eos_token_id": 1, "feed_forward_proj": "gated-gelu",
            "initializer_factor": 1.0, "is_encoder_decoder": True, "is_gated_act": True,
            "layer_norm_epsilon": 1e-06, "num_decoder_layers": 24, "num_heads": 64,
            "num_layers": 24, "pad_token_id": 0, "relative_attention_max_distance": 128,
            "relative_attention_num_buckets": 32, "tie_word_embeddings": False,
            "torch_dtype": "bfloat16", "vocab_size": 32128}


def flux_transformer(dev):
    return {"_class_name": "FluxTransformer2DModel", "attention_head_dim": 128,
            "axes_dims_rope": [16, 56, 56], "guidance_embeds": dev, "in_channels": 64,
            "joint_attention_dim": 4096, "num_attention_heads": 24, "num_layers": 19,
            "num_single_layers": 38, "patch_size": 1, "pooled_projection_dim": 768}


def tokenizer(pad):
    specials = {"bos_token": "<|startoftext|>", "eos_token": "<|endoftext|>",
                "unk_token": "<|endoftext|>", "pad_token": pad}
    config = {"add_prefix_space": False, **specials, "do_lower_case": True, "errors": "replace",
              "model_max_length": 77, "tokenizer_class": "CLIPTokenizer"}
    return {"special_tokens_map.json": specials, "tokenizer_config.json": config}


def index(pipeline, parts, **extra):
    out = {"_class_name": pipeline, "_diffusers_version": "0.25.0"}
    for name, cls in parts:
        out[name] = None if cls is None else cls
    out.update(extra)
    return out


LIB = {"unet": ["diffusers", "UNet2DConditionModel"], "vae": ["diffusers", "AutoencoderKL"],
       "transformer": ["diffusers", "FluxTransformer2DModel"],
       "text_encoder": ["transformers", "CLIPTextModel"],
       "text_encoder_proj": ["transformers", "CLIPTextModelWithProjection"],
       "t5": ["transformers", "T5EncoderModel"], "tokenizer": ["transformers", "CLIPTokenizer"],
       "t5_tokenizer": ["transformers", "T5TokenizerFast"]}


def sd_family(pipeline, unet, text, scheduler, pad, vae_size, **extra):
    parts = [("scheduler", ["diffusers", scheduler["_class_name"]]),
             ("text_encoder", LIB["text_encoder"]), ("tokenizer", LIB["tokenizer"]),
             ("unet", LIB["unet"]), ("vae", LIB["vae"]), ("safety_checker", [None, None]),
             ("feature_extractor", [None, None])]
    return {"model_index.json": index(pipeline, parts, requires_safety_checker=False, **extra),
            "unet/config.json": unet, "vae/config.json": vae(vae_size, force_upcast=True),
            "text_encoder/config.json": text, "scheduler/scheduler_config.json": scheduler,
            **{f"tokenizer/{k}": v for k, v in tokenizer(pad).items()}}


def sdxl_family(pipeline, unet, refiner=False):
    parts = [("scheduler", ["diffusers", "EulerDiscreteScheduler"]),
             ("text_encoder", None if refiner else LIB["text_encoder"]),
             ("text_encoder_2", LIB["text_encoder_proj"]),
             ("tokenizer", None if refiner else LIB["tokenizer"]),
             ("tokenizer_2", LIB["tokenizer"]), ("unet", LIB["unet"]), ("vae", LIB["vae"])]
    out = {"model_index.json": index(pipeline, parts, force_zeros_for_empty_prompt=not refiner,
                                     requires_aesthetics_score=refiner),
           "unet/config.json": unet, "vae/config.json": vae(1024, scaling=0.13025),
           "text_encoder_2/config.json": open_clip_g(),
           "scheduler/scheduler_config.json": euler(),
           **{f"tokenizer_2/{k}": v for k, v in tokenizer("!").items()}}
    if not refiner:
        out["text_encoder/config.json"] = clip_l()
        out.update({f"tokenizer/{k}": v for k, v in tokenizer("<|endoftext|>").items()})
    return out


def flux_family(dev):
    parts = [("scheduler", ["diffusers", "FlowMatchEulerDiscreteScheduler"]),
             ("text_encoder", LIB["text_encoder"]), ("text_encoder_2", LIB["t5"]),
             ("tokenizer", LIB["tokenizer"]), ("tokenizer_2", LIB["t5_tokenizer"]),
             ("transformer", LIB["transformer"]), ("vae", LIB["vae"])]
    return {"model_index.json": index("FluxPipeline", parts),
            "transformer/config.json": flux_transformer(dev),
            "vae/config.json": vae(1024, scaling=0.3611, flux=True),
            "text_encoder/config.json": clip_l(), "text_encoder_2/config.json": t5_xxl(),
            "scheduler/scheduler_config.json": flow(dev),
            **{f"tokenizer/{k}": v for k, v in tokenizer("<|endoftext|>").items()}}


EOT = "<|endoftext|>"
FAMILIES = {
    "sd1": sd_family("StableDiffusionPipeline", unet_sd(4, 768, 8, 64), clip_l(), pndm(), EOT,
                     512),
    "sd1-inpaint": sd_family("StableDiffusionInpaintPipeline", unet_sd(9, 768, 8, 64), clip_l(),
                             ddim("epsilon"), EOT, 512),
    "sd2": sd_family("StableDiffusionPipeline",
                     unet_sd(4, 1024, [5, 10, 20, 20], 64, linear=True), open_clip_h(),
                     pndm(), "!", 512),
    "sd2-v": sd_family("StableDiffusionPipeline",
                       unet_sd(4, 1024, [5, 10, 20, 20], 96, linear=True, upcast=True),
                       open_clip_h(), ddim("v_prediction"), "!", 768),
    "sd2-inpaint": sd_family("StableDiffusionInpaintPipeline",
                             unet_sd(9, 1024, [5, 10, 20, 20], 64, linear=True), open_clip_h(),
                             ddim("epsilon"), "!", 512),
    "sdxl": sdxl_family("StableDiffusionXLPipeline", unet_sdxl(4)),
    "sdxl-refiner": sdxl_family("StableDiffusionXLImg2ImgPipeline", unet_refiner(), refiner=True),
    "sdxl-inpaint": sdxl_family("StableDiffusionXLInpaintPipeline", unet_sdxl(9)),
    "flux-dev": flux_family(True),
    "flux-schnell": flux_family(False),
}


def bytes_to_unicode():
    """CLIP's reversible byte -> printable character table (the 256 byte symbols, in order)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) \
        + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def clip_tokenizer():
    import open_clip
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1:49152 - 256 - 2 + 1]]
    symbols = bytes_to_unicode()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408, len(vocab)
    vocab_json = json.dumps({t: i for i, t in enumerate(vocab)}, ensure_ascii=False)
    merges_txt = "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges)
    return vocab_json.encode("utf-8"), merges_txt.encode("utf-8")


def write_gz(path, data):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=9) as f:
            f.write(data)


def main():
    for name, files in FAMILIES.items():
        for rel, content in files.items():
            path = OUT / name / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(content, indent=2) + "\n")
    vocab, merges = clip_tokenizer()
    write_gz(OUT / "clip-tokenizer" / "vocab.json.gz", vocab)
    write_gz(OUT / "clip-tokenizer" / "merges.txt.gz", merges)
    if "--check" in sys.argv:
        check(vocab, merges)


def check(vocab, merges):
    import tempfile
    import torch
    import diffusers
    import transformers
    from accelerate import init_empty_weights
    with tempfile.TemporaryDirectory() as tmp:
        tok = Path(tmp)
        (tok / "vocab.json").write_bytes(vocab)
        (tok / "merges.txt").write_bytes(merges)
        for k, v in tokenizer("!").items():
            (tok / k).write_text(json.dumps(v))
        t = transformers.CLIPTokenizer.from_pretrained(tok)
        print("tokenizer", len(t), t("a photograph of an astronaut riding a horse").input_ids,
              "pad", t.pad_token_id)
    for name, files in FAMILIES.items():
        counts = []
        for rel, config in files.items():
            if not rel.endswith("/config.json"):
                continue
            with init_empty_weights():
                if config.get("_class_name") == "UNet2DConditionModel":
                    m = diffusers.UNet2DConditionModel.from_config(config)
                elif config.get("_class_name") == "AutoencoderKL":
                    m = diffusers.AutoencoderKL.from_config(config)
                elif config.get("_class_name") == "FluxTransformer2DModel":
                    m = diffusers.FluxTransformer2DModel.from_config(config)
                elif config.get("model_type") == "t5":
                    m = transformers.T5EncoderModel(transformers.T5Config(**config))
                else:
                    cls = getattr(transformers, config["architectures"][0])
                    m = cls(transformers.CLIPTextConfig(**config))
            counts.append(f"{rel.split('/')[0]} {sum(p.numel() for p in m.parameters()) / 1e6:.1f}M")
        print(name, ", ".join(counts))
    del torch


if __name__ == "__main__":
    main()
