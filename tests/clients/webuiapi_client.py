"""The `webuiapi` Python package (written for AUTOMATIC1111's API) against beeswax, unchanged.

Run by tests/server.rs with BEESWAX_URL set to a running server (tiny-sd pack, tiny-fast
pipeline). Exits non-zero with a message on the first failed check.
"""

import base64
import io
import os
import threading
import time
from urllib.parse import urlparse

import webuiapi
from PIL import Image

u = urlparse(os.environ["BEESWAX_URL"])
api = webuiapi.WebUIApi(host=u.hostname, port=u.port, sampler="Euler", steps=5)

# Lists: samplers from the scheduler registry, checkpoints from the pipelines.
samplers = api.util_get_sampler_names()
assert "Euler" in samplers and "DDIM" in samplers, samplers
models = api.util_get_model_names()
assert models == ["tiny-fast", "tiny-sd"], models
assert api.util_get_current_model() == "tiny-fast"
schedules = [s["name"] for s in api.get_schedulers()]
assert "automatic" in schedules and "karras" in schedules, schedules

# txt2img with A1111's field names: batch_size × n_iter images, seeds counting up.
r = api.txt2img(
    prompt="a red fox", negative_prompt="blurry", seed=7, width=64, height=64, steps=5,
    cfg_scale=6.5, sampler_name="DDIM", batch_size=2, n_iter=2,
    override_settings={"sd_model_checkpoint": "tiny-sd"}, enable_hr=False,
)
assert len(r.images) == 4, len(r.images)
assert all(i.size == (64, 64) for i in r.images)
assert r.info["seed"] == 7 and r.info["all_seeds"] == [7, 8, 9, 10], r.info
assert len(r.info["infotexts"]) == 4
assert r.info["sd_model_name"] == "tiny-sd"
assert r.images[3].info["parameters"].startswith("a red fox\nNegative prompt: blurry\nSteps: 5, Sampler: DDIM, CFG scale: 6.5, Seed: 10, Size: 64x64, Model: tiny-sd"), r.images[3].info
assert r.parameters["sampler_name"] == "DDIM"

# seed -1 draws a random seed; a combined sampler + schedule name; set the model via options.
api.util_set_model("tiny-sd", find_closest=False)
assert api.util_get_current_model() == "tiny-sd"
r = api.txt2img(prompt="x", width=64, height=64, steps=3, seed=-1, sampler_name="Euler", scheduler="karras")
assert r.info["seed"] >= 0 and r.info["sampler_name"] == "Euler Karras", r.info

# img2img from a 48x40 picture to 64x64, and inpainting the left half (white in the mask).
picture = Image.new("RGB", (48, 40))
picture.putdata([(x * 5, y * 6, (x + y) * 2) for y in range(40) for x in range(48)])
r = api.img2img(images=[picture], prompt="a red fox", width=64, height=64, steps=4, seed=3,
                denoising_strength=0.5, sampler_name="Euler")
assert len(r.images) == 1 and r.images[0].size == (64, 64), r.images
assert r.info["denoising_strength"] == 0.5, r.info
square = picture.resize((64, 64))
mask = Image.new("L", (64, 64))
mask.paste(255, (0, 0, 32, 64))
r = api.img2img(images=[square], mask_image=mask, prompt="a red fox", width=64, height=64,
                steps=4, seed=3, denoising_strength=1.0, mask_blur=0, inpainting_fill=1,
                inpaint_full_res=False, sampler_name="Euler")
out = r.images[0].convert("RGB")
assert out.size == (64, 64), out.size
kept = [abs(a - b) for x in range(32, 64) for y in range(64)
        for a, b in zip(out.getpixel((x, y)), square.getpixel((x, y)))]
assert max(kept) <= 1, max(kept)
r = api.img2img(images=[square], mask_image=mask, prompt="x", width=64, height=64, steps=4,
                seed=3, sampler_name="Euler")  # webuiapi's defaults: only masked, fill
assert r.images[0].size == (64, 64), r.images[0].size

# progress while a long job runs (with live previews), then interrupt.
result = {}
worker = threading.Thread(
    target=lambda: result.update(r=api.txt2img(prompt="long", width=64, height=64, steps=150, sampler_name="Euler"))
)
worker.start()
deadline = time.time() + 120
p = api.get_progress()
while p["current_image"] is None:
    assert time.time() < deadline, p
    time.sleep(0.02)
    p = api.get_progress()
assert 0 < p["progress"] < 1, p
assert p["state"]["sampling_steps"] == 150 and p["state"]["job_count"] >= 1, p
assert p["eta_relative"] >= 0, p
preview = Image.open(io.BytesIO(base64.b64decode(p["current_image"])))
assert preview.size == (8, 8), preview.size
api.interrupt()
worker.join(120)
assert not worker.is_alive(), "interrupted job did not return"
assert result["r"].info["interrupted"] is True and result["r"].images == [], result["r"].info

# Idle again.
while True:
    p = api.get_progress()
    if p["progress"] == 0 and p["state"]["job_count"] == 0:
        break
    assert time.time() < deadline, p
    time.sleep(0.02)

print("webuiapi client ok")
