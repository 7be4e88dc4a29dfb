#!/usr/bin/env python3
"""The memory figure of issue 16: a full-size Stable Diffusion 1.5 with random weights as ONE
f16 single file in the original (CompVis) layout, run by beeswax (`--model FILE`, the bundled
configs) and by diffusers' `from_single_file(config=<the same bundled folder>)` on the same job.
Driven by scripts/single-file-memory.sh; never run in CI (needs torch, writes ~2 GB).

  single-file-memory.py make DIR              DIR/sd15-random.f16.safetensors (the UNet, VAE and
                                              CLIP ViT-L/14 of manifests/families/sd1/, default
                                              init, seed 0) and DIR/init.safetensors (`latents`,
                                              the starting noise, seed 4242)
  single-file-memory.py diffusers DIR CONFIG  StableDiffusionPipeline.from_single_file(DIR/...,
          [--steps 4] [--size 512]            config=CONFIG) in f32 (as beeswax computes), Euler,
                                              guidance 7.5: DIR/diffusers.safetensors
                                              (`latents`, `image`)
  single-file-memory.py compare DIR           beeswax.png / beeswax-latents.safetensors against
                                              diffusers': max pixel difference (/255) and the
                                              latents' max difference relative to their std

Needs torch, diffusers, transformers (the reference virtualenv).
"""
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "fixtures"))
BUNDLED = ROOT / "manifests" / "families" / "sd1"
PROMPT, NEGATIVE = "a red fox in the snow, photograph", "blurry, low quality"
FILE = "sd15-random.f16.safetensors"


def make(out):
    import diffusers
    import transformers
    from make_single_file_fixtures import clip_to_open_clip, prefixed, unet_to_ldm, vae_to_ldm  # noqa: F401

    out.mkdir(parents=True, exist_ok=True)
    config = lambda part: json.loads((BUNDLED / part / "config.json").read_text())
    torch.manual_seed(0)
    unet = diffusers.UNet2DConditionModel.from_config(config("unet")).half()
    sd = prefixed("model.diffusion_model.", unet_to_ldm(unet.state_dict(), 2))
    del unet
    vae = diffusers.AutoencoderKL.from_config(config("vae")).half()
    sd.update(prefixed("first_stage_model.", vae_to_ldm(vae.state_dict(), 4)))
    del vae
    te = transformers.CLIPTextModel(transformers.CLIPTextConfig(**config("text_encoder"))).half()
    text = {k if k.startswith("text_model.") else "text_model." + k: v for k, v in te.state_dict().items()}
    text = {k: v for k, v in text.items() if not k.endswith("position_ids")}
    sd.update(prefixed("cond_stage_model.transformer.", text))
    save_file({k: v.contiguous() for k, v in sd.items()}, out / FILE)
    init = torch.randn([1, 4, 64, 64], generator=torch.Generator().manual_seed(4242))
    save_file({"latents": init}, out / "init.safetensors")
    print(f"wrote {out / FILE} ({(out / FILE).stat().st_size / 2**20:.0f} MiB, {len(sd)} tensors)")


def run_diffusers(out, config, steps, size):
    import diffusers

    pipe = diffusers.StableDiffusionPipeline.from_single_file(
        str(out / FILE), config=str(config), torch_dtype=torch.float32, safety_checker=None,
        requires_safety_checker=False)
    pipe.scheduler = diffusers.EulerDiscreteScheduler.from_config(pipe.scheduler.config)
    init = load_file(out / "init.safetensors")["latents"]
    f = size // 8
    init = init[:, :, :f, :f].contiguous()
    with torch.no_grad():
        latents = pipe(prompt=PROMPT, negative_prompt=NEGATIVE, width=size, height=size,
                       num_inference_steps=steps, guidance_scale=7.5, latents=init,
                       output_type="latent").images
        image = pipe.vae.decode(latents / pipe.vae.config.scaling_factor).sample
    image = (image / 2 + 0.5).clamp(0, 1).permute(0, 2, 3, 1).contiguous()
    save_file({"latents": latents.contiguous(), "image": image}, out / "diffusers.safetensors")


def compare(out):
    import numpy as np
    from PIL import Image

    ref = load_file(out / "diffusers.safetensors")
    got = np.asarray(Image.open(out / "beeswax.png").convert("RGB")).astype(np.int32)
    want = (ref["image"][0].numpy() * 255).round().astype(np.int32)
    pixel = int(np.abs(got - want).max())
    lat = load_file(out / "beeswax-latents.safetensors")["latents"]
    rel = float((lat - ref["latents"]).abs().max() / ref["latents"].std())
    ok = pixel <= 2 and rel <= 2e-3
    print(json.dumps({"image_max_diff_255": pixel, "latents_max_diff_over_std": rel,
                      "agree": ok}))


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    out = Path(argv[1])
    if argv[0] == "make":
        make(out)
    elif argv[0] == "diffusers":
        steps = int(argv[argv.index("--steps") + 1]) if "--steps" in argv else 4
        size = int(argv[argv.index("--size") + 1]) if "--size" in argv else 512
        run_diffusers(out, Path(argv[2]), steps, size)
    elif argv[0] == "compare":
        compare(out)
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv[1:])
