#!/usr/bin/env python3
"""A full-size Stable Diffusion 1.5 with random weights, for whole-pipeline speed and memory.

  random-sd15.py make [DIR] [--fp16]
                              writes the model folder (diffusers layout, f32 safetensors,
                              about 4.3 GB; default target/random-sd15). Not committed. With
                              --fp16: the same weights in f16 as diffusers' `variant="fp16"`
                              files (`*.fp16.safetensors`, about 2.1 GB; default
                              target/random-sd15-fp16), which beeswax keeps 16-bit in memory.
  random-sd15.py time DIR [--steps 20] [--width 512] [--height 512]
                              times diffusers' StableDiffusionPipeline on it (DDIM, CPU, f32) and
                              prints one JSON line: total seconds and peak RSS in MB.

The architecture is SD 1.5's (UNet 860M, CLIP ViT-L/14 text encoder, the KL VAE); the
tokenizer is the real CLIP tokenizer shipped with tests/fixtures/models/tiny-sd. Needs torch,
diffusers and transformers (the reference venv), never run in CI.
"""
import json, os, resource, shutil, sys, time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

UNET = {
    "act_fn": "silu", "attention_head_dim": 8, "block_out_channels": [320, 640, 1280, 1280],
    "center_input_sample": False, "cross_attention_dim": 768,
    "down_block_types": ["CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D",
                         "DownBlock2D"],
    "downsample_padding": 1, "flip_sin_to_cos": True, "freq_shift": 0, "in_channels": 4,
    "layers_per_block": 2, "mid_block_scale_factor": 1, "norm_eps": 1e-05, "norm_num_groups": 32,
    "out_channels": 4, "sample_size": 64,
    "up_block_types": ["UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D",
                       "CrossAttnUpBlock2D"],
}
VAE = {
    "act_fn": "silu", "block_out_channels": [128, 256, 512, 512],
    "down_block_types": ["DownEncoderBlock2D"] * 4, "in_channels": 3, "latent_channels": 4,
    "layers_per_block": 2, "norm_num_groups": 32, "out_channels": 3, "sample_size": 512,
    "scaling_factor": 0.18215, "up_block_types": ["UpDecoderBlock2D"] * 4,
}
CLIP = {
    "hidden_size": 768, "intermediate_size": 3072, "num_attention_heads": 12,
    "num_hidden_layers": 12, "max_position_embeddings": 77, "vocab_size": 49408,
    "hidden_act": "quick_gelu", "projection_dim": 768, "bos_token_id": 0, "eos_token_id": 2,
    "pad_token_id": 1,
}
SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1,
    "num_train_timesteps": 1000, "prediction_type": "epsilon",
}


def make(out: Path, fp16: bool = False):
    import torch
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(ROOT / "tests/fixtures/models/tiny-sd/tokenizer")
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**UNET), vae=AutoencoderKL(**VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**CLIP)), tokenizer=tokenizer,
        scheduler=DDIMScheduler(**SCHEDULER), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
    # Keep activations finite through 20 steps: shrink the random weights a little.
    with torch.no_grad():
        for module in (pipe.unet, pipe.vae, pipe.text_encoder):
            for p in module.parameters():
                if p.dim() > 1:
                    p.mul_(0.5)
    if out.exists():
        shutil.rmtree(out)
    if fp16:
        pipe.to(torch.float16)
        pipe.save_pretrained(out, safe_serialization=True, variant="fp16")
    else:
        pipe.save_pretrained(out, safe_serialization=True)
    # transformers saves only tokenizer.json; add the vocab.json/merges.txt files beeswax reads.
    for f in (ROOT / "tests/fixtures/models/tiny-sd/tokenizer").iterdir():
        shutil.copy(f, out / "tokenizer" / f.name)
    print(f"wrote {out}")


def time_diffusers(model: Path, steps: int, width: int, height: int):
    import torch
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    start = time.perf_counter()
    # An fp16 folder (make --fp16) is read as diffusers reads it: variant="fp16", computed in f32.
    fp16 = (model / "unet/diffusion_pytorch_model.fp16.safetensors").exists()
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32,
                                                   safety_checker=None,
                                                   variant="fp16" if fp16 else None)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start
    gen = torch.Generator("cpu").manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        pipe("a red fox in the snow", num_inference_steps=steps, width=width, height=height,
             guidance_scale=7.5, generator=gen, output_type="np")
    total = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"total_s": round(total, 4), "load_s": round(load, 4),
                      "peak_rss_mb": round(peak_mb, 1), "threads": torch.get_num_threads()}))


def main(argv):
    if len(argv) >= 1 and argv[0] == "make":
        fp16 = "--fp16" in argv[1:]
        dirs = [a for a in argv[1:] if a != "--fp16"]
        default = "target/random-sd15-fp16" if fp16 else "target/random-sd15"
        make(Path(dirs[0]) if dirs else ROOT / default, fp16)
    elif len(argv) >= 2 and argv[0] == "time":
        opts = dict(zip(argv[2::2], argv[3::2]))
        time_diffusers(Path(argv[1]), int(opts.get("--steps", 20)), int(opts.get("--width", 512)),
                       int(opts.get("--height", 512)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
