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

print("openai client ok")
