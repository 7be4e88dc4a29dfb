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
  random-sd15.py cold DIR OUT.png [--steps 20] [--guidance 7.5] [--taesd TAESD_DIR]
                              the cold job: imports, from_pretrained, generate, save OUT.png, in
                              this process (time it from outside: process start to exit).
  random-sd15.py make-turbo [DIR]
                              an SD-Turbo architecture (SD 2.1 UNet, OpenCLIP ViT-H text encoder,
                              Euler with trailing timesteps; about 5.2 GB; default
                              target/random-sd-turbo).
  random-sd15.py make-taesd [DIR]
                              a TAESD (diffusers AutoencoderTiny, default config; default
                              target/random-taesd).
  random-sd15.py time-turbo DIR TAESD_DIR [--steps 1] [--width 512] [--height 512]
                              diffusers' 1-step job with guidance 0, decoded by the TAESD, warm
                              (after one untimed job).
  random-sd15.py time-unet|time-unet-openvino UNET_DIR SIZE BATCH [ITERS]
                              one UNet forward (random weights from UNET_DIR/config.json) in
                              PyTorch, or converted to OpenVINO (f32, static shapes): min of
                              ITERS (3) after a warm-up.
  random-sd15.py time-taesd TAESD_DIR [--size 512]
                              AutoencoderTiny.decode of a 512x512 image's latents (min of 3).

The default architecture is SD 1.5's (UNet 860M, CLIP ViT-L/14 text encoder, the KL VAE); the
tokenizer is the real CLIP tokenizer shipped with tests/fixtures/models/tiny-sd. Needs torch,
diffusers and transformers (the reference venv; openvino for time-unet-openvino), never run
in CI. scripts/bench-table runs all of it against beeswax.
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


TURBO_UNET = {
    **UNET, "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
    "use_linear_projection": True, "upcast_attention": False,
}
# OpenCLIP ViT-H/14 as SD 2.x ships it: 23 of its 24 layers (the penultimate layer's states).
TURBO_CLIP = {
    **CLIP, "hidden_size": 1024, "intermediate_size": 4096, "num_attention_heads": 16,
    "num_hidden_layers": 23, "hidden_act": "gelu", "projection_dim": 512,
}
TURBO_SCHEDULER = {
    "beta_start": 0.00085, "beta_end": 0.012, "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000, "prediction_type": "epsilon", "timestep_spacing": "trailing",
    "steps_offset": 1, "interpolation_type": "linear", "use_karras_sigmas": False,
}


def shrink(*modules):
    """Keeps activations finite through the steps: halves the random matrices."""
    import torch
    with torch.no_grad():
        for module in modules:
            for p in module.parameters():
                if p.dim() > 1:
                    p.mul_(0.5)


def save_with_tokenizer(pipe, out: Path):
    if out.exists():
        shutil.rmtree(out)
    pipe.save_pretrained(out, safe_serialization=True)
    for f in (ROOT / "tests/fixtures/models/tiny-sd/tokenizer").iterdir():
        shutil.copy(f, out / "tokenizer" / f.name)
    print(f"wrote {out}")


def make_turbo(out: Path):
    """SD-Turbo's architecture (stabilityai/sd-turbo configs) with random weights."""
    import torch
    from diffusers import (AutoencoderKL, EulerDiscreteScheduler, StableDiffusionPipeline,
                           UNet2DConditionModel)
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    tokenizer = CLIPTokenizer.from_pretrained(ROOT / "tests/fixtures/models/tiny-sd/tokenizer")
    pipe = StableDiffusionPipeline(
        unet=UNet2DConditionModel(**TURBO_UNET), vae=AutoencoderKL(**VAE),
        text_encoder=CLIPTextModel(CLIPTextConfig(**TURBO_CLIP)), tokenizer=tokenizer,
        scheduler=EulerDiscreteScheduler(**TURBO_SCHEDULER), safety_checker=None,
        feature_extractor=None, requires_safety_checker=False,
    )
    shrink(pipe.unet, pipe.vae, pipe.text_encoder)
    save_with_tokenizer(pipe, out)


def make_taesd(out: Path):
    """diffusers' AutoencoderTiny with its default config (TAESD for SD 1.x/2.x)."""
    import torch
    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny().save_pretrained(out, safe_serialization=True)
    print(f"wrote {out}")


def cold(model: Path, png: Path, steps: int, guidance: float, taesd):
    """The whole job in this process: what `beeswax generate` does from start to PNG. Prints
    the load, job (as `time`: generation to pixels) and save times, and peak RSS."""
    import torch
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    start = time.perf_counter()
    # An fp16 folder (make --fp16) is read as diffusers reads it: variant="fp16", computed in f32.
    fp16 = (model / "unet/diffusion_pytorch_model.fp16.safetensors").exists()
    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32,
                                                   safety_checker=None,
                                                   variant="fp16" if fp16 else None)
    if taesd:
        pipe.vae = AutoencoderTiny.from_pretrained(taesd, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    load = time.perf_counter() - start
    gen = torch.Generator("cpu").manual_seed(0)
    start = time.perf_counter()
    with torch.no_grad():
        image = pipe("a red fox in the snow", num_inference_steps=steps, guidance_scale=guidance,
                     generator=gen, output_type="np").images[0]
    job = time.perf_counter() - start
    start = time.perf_counter()
    pipe.numpy_to_pil(image[None])[0].save(png)
    save = time.perf_counter() - start
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"load_s": round(load, 4), "job_s": round(job, 4), "save_s": round(save, 4),
                      "peak_rss_mb": round(peak_mb, 1)}))


def time_turbo(model: Path, taesd: Path, steps: int, width: int, height: int):
    """A warm few-step job (guidance 0: no negative pass) decoded by the TAESD: the faster of
    two runs (as `beeswax bench pipeline --repeat 2`)."""
    import torch
    from diffusers import AutoencoderTiny, StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(model, torch_dtype=torch.float32,
                                                   safety_checker=None)
    pipe.vae = AutoencoderTiny.from_pretrained(taesd, torch_dtype=torch.float32)
    pipe.set_progress_bar_config(disable=True)
    times = []
    for _ in range(2):
        gen = torch.Generator("cpu").manual_seed(0)
        start = time.perf_counter()
        with torch.no_grad():
            pipe("a red fox in the snow", num_inference_steps=steps, width=width,
                 height=height, guidance_scale=0.0, generator=gen, output_type="np")
        times.append(time.perf_counter() - start)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"total_s": round(min(times), 4), "first_s": round(times[0], 4),
                      "peak_rss_mb": round(peak_mb, 1)}))


def time_taesd(taesd: Path, size: int):
    """AutoencoderTiny.decode of one image's latents: min of 3 after a warm-up."""
    import torch
    from diffusers import AutoencoderTiny

    vae = AutoencoderTiny.from_pretrained(taesd, torch_dtype=torch.float32).eval()
    z = torch.randn(1, 4, size // 8, size // 8, generator=torch.Generator().manual_seed(0))
    times = []
    with torch.no_grad():
        vae.decode(z)
        for _ in range(3):
            start = time.perf_counter()
            vae.decode(z)
            times.append(time.perf_counter() - start)
    print(json.dumps({"min_s": round(min(times), 4)}))


def unet_inputs(config_dir: Path, size: int, batch: int):
    import torch
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel.from_config(UNet2DConditionModel.load_config(config_dir)).eval()
    latents = torch.randn(batch, unet.config.in_channels, size // 8, size // 8)
    context = torch.randn(batch, 77, unet.config.cross_attention_dim)
    return unet, latents, context


def time_unet(config_dir: Path, size: int, batch: int, iters: int):
    """One UNet forward in PyTorch (random weights): min of `iters` after a warm-up."""
    import torch

    unet, latents, context = unet_inputs(config_dir, size, batch)
    times = []
    with torch.no_grad():
        unet(latents, 500, context)
        for _ in range(iters):
            start = time.perf_counter()
            unet(latents, 500, context)
            times.append(time.perf_counter() - start)
    print(json.dumps({"min_s": round(min(times), 4), "threads": torch.get_num_threads()}))


def time_unet_openvino(config_dir: Path, size: int, batch: int, iters: int):
    """The same UNet converted to OpenVINO (f32 inference precision, static shapes, latency
    hint): min of `iters` after a warm-up; also its largest difference from PyTorch."""
    import openvino as ov
    import torch

    unet, latents, context = unet_inputs(config_dir, size, batch)
    timesteps = torch.tensor([500.0] * batch)

    class Wrap(torch.nn.Module):
        def __init__(self, u):
            super().__init__()
            self.u = u

        def forward(self, x, t, c):
            return self.u(x, t, c, return_dict=False)[0]

    with torch.no_grad():
        reference = unet(latents, timesteps, context).sample
        model = ov.convert_model(Wrap(unet), example_input=(latents, timesteps, context))
    compiled = ov.Core().compile_model(
        model, "CPU", {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32"})
    request = compiled.create_infer_request()
    inputs = [latents.numpy(), timesteps.numpy(), context.numpy()]
    out = request.infer(inputs)[0]
    err = float(abs(torch.from_numpy(out) - reference).max() / reference.std())
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        request.infer(inputs)
        times.append(time.perf_counter() - start)
    print(json.dumps({"min_s": round(min(times), 4), "max_err_over_std": err}))


def main(argv):
    if len(argv) >= 1 and argv[0] == "make":
        fp16 = "--fp16" in argv[1:]
        dirs = [a for a in argv[1:] if a != "--fp16"]
        default = "target/random-sd15-fp16" if fp16 else "target/random-sd15"
        make(Path(dirs[0]) if dirs else ROOT / default, fp16)
    elif len(argv) >= 1 and argv[0] == "make-turbo":
        make_turbo(Path(argv[1]) if len(argv) > 1 else ROOT / "target/random-sd-turbo")
    elif len(argv) >= 1 and argv[0] == "make-taesd":
        make_taesd(Path(argv[1]) if len(argv) > 1 else ROOT / "target/random-taesd")
    elif len(argv) >= 3 and argv[0] == "cold":
        opts = dict(zip(argv[3::2], argv[4::2]))
        cold(Path(argv[1]), Path(argv[2]), int(opts.get("--steps", 20)),
             float(opts.get("--guidance", 7.5)), opts.get("--taesd"))
    elif len(argv) >= 3 and argv[0] == "time-turbo":
        opts = dict(zip(argv[3::2], argv[4::2]))
        time_turbo(Path(argv[1]), Path(argv[2]), int(opts.get("--steps", 1)),
                   int(opts.get("--width", 512)), int(opts.get("--height", 512)))
    elif len(argv) >= 4 and argv[0] in ("time-unet", "time-unet-openvino"):
        run = time_unet if argv[0] == "time-unet" else time_unet_openvino
        run(Path(argv[1]), int(argv[2]), int(argv[3]), int(argv[4]) if len(argv) > 4 else 3)
    elif len(argv) >= 2 and argv[0] == "time-taesd":
        opts = dict(zip(argv[2::2], argv[3::2]))
        time_taesd(Path(argv[1]), int(opts.get("--size", 512)))
    elif len(argv) >= 2 and argv[0] == "time":
        opts = dict(zip(argv[2::2], argv[3::2]))
        time_diffusers(Path(argv[1]), int(opts.get("--steps", 20)), int(opts.get("--width", 512)),
                       int(opts.get("--height", 512)))
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
