"""The official `openai` Python client against beeswax's OpenAI Images endpoint, unchanged.

Run by tests/server.rs with BEESWAX_URL set to a running server (tiny-sd pack, tiny-fast
pipeline). Exits non-zero with a message on the first failed check.
"""

import base64
import io
import os
import urllib.request

import openai
from openai import OpenAI
from PIL import Image

url = os.environ["BEESWAX_URL"]
client = OpenAI(base_url=f"{url}/v1", api_key="unused-without---api-key", max_retries=0)


def check_png(data: bytes, size=(64, 64)) -> str:
    image = Image.open(io.BytesIO(data))
    assert image.format == "PNG", image.format
    assert image.size == size, image.size
    params = image.info.get("parameters", "")
    assert "Steps:" in params and "Seed:" in params, params
    return params


# b64_json, two images, the pack by name.
r = client.images.generate(
    model="tiny-sd", prompt="a red fox", n=2, size="64x64", response_format="b64_json",
    extra_body={"steps": 4, "seed": 11},
)
assert len(r.data) == 2, r
params = [check_png(base64.b64decode(d.b64_json)) for d in r.data]
assert "Seed: 11" in params[0] and "Seed: 12" in params[1], params
assert r.created > 0

# url, a configured pipeline by name.
r = client.images.generate(model="tiny-fast", prompt="a blue bird", size="64x64", response_format="url")
assert len(r.data) == 1 and r.data[0].url.startswith(url), r
with urllib.request.urlopen(r.data[0].url) as response:
    assert response.headers["Content-Type"] == "image/png"
    assert "Sampler: DDIM" in check_png(response.read())

# Errors come back in OpenAI's shape, which the client parses into typed exceptions.
try:
    client.images.generate(model="dall-e-9", prompt="x")
    raise AssertionError("unknown model accepted")
except openai.NotFoundError as e:
    assert e.code == "model_not_found" and e.param == "model", (e.code, e.param, e.body)
    assert "dall-e-9" in e.message, e.message
try:
    client.images.generate(model="tiny-sd", prompt="x", n=-1)
    raise AssertionError("n=-1 accepted")
except openai.BadRequestError as e:
    assert e.param == "n" and "at least 1" in e.message, (e.param, e.message)
try:
    client.images.generate(model="tiny-sd", prompt="x", size="4096x4096")
    raise AssertionError("size over the limit accepted")
except openai.BadRequestError as e:
    assert e.param == "size" and "limit" in e.message, (e.param, e.message)

# Image edits (multipart): transparent mask pixels are repainted, opaque ones kept.
picture = Image.new("RGB", (64, 64))
picture.putdata([(x * 4, y * 4, (x + y) * 2) for y in range(64) for x in range(64)])
mask = Image.new("RGBA", (64, 64), (0, 0, 0, 255))
mask.paste((0, 0, 0, 0), (0, 0, 32, 64))


def png_bytes(image):
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


r = client.images.edit(
    model="tiny-sd", image=("image.png", png_bytes(picture), "image/png"),
    mask=("mask.png", png_bytes(mask), "image/png"), prompt="a red fox", n=1, size="64x64",
    response_format="b64_json", extra_body={"steps": 3, "seed": 5},
)
edited = Image.open(io.BytesIO(base64.b64decode(r.data[0].b64_json))).convert("RGB")
assert edited.size == (64, 64), edited.size
kept = [abs(a - b) for x in range(32, 64) for y in range(64)
        for a, b in zip(edited.getpixel((x, y)), picture.getpixel((x, y)))]
assert max(kept) <= 1, max(kept)
try:
    client.images.edit(model="tiny-sd", image=("x.png", b"not a picture", "image/png"), prompt="x")
    raise AssertionError("a non-picture accepted")
except openai.BadRequestError as e:
    assert e.param == "image" and "not a readable" in e.message, (e.param, e.message)

print("openai client ok")
