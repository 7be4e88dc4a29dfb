#!/usr/bin/env bash
# Issue 16's memory figure: peak RSS of one 512x512 job on a full-size SD 1.5 (random weights)
# stored as ONE f16 original-layout single file, in beeswax (`--model FILE`, no --model-config:
# the bundled sd1 configs) and in diffusers (`from_single_file(config=<the same bundled folder>)`),
# and whether their images (2/255) and latents (2e-3 of their std) agree.
#
#   scripts/single-file-memory.sh [DIR] [STEPS]     (default target/single-file-memory, 4 steps)
#
# Needs the reference virtualenv ($PYTHON, default /work/venv-ref/bin/python) and GNU time
# (/usr/bin/time). Writes ~2 GB under DIR (not committed). Never run in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-target/single-file-memory}
STEPS=${2:-4}
PYTHON=${PYTHON:-/work/venv-ref/bin/python}
BIN=${BEESWAX:-target/release/beeswax}
[ -x "$BIN" ] || cargo build --release -p beeswax --bin beeswax
mkdir -p "$DIR"
[ -f "$DIR/sd15-random.f16.safetensors" ] || "$PYTHON" scripts/single-file-memory.py make "$DIR"
export BEESWAX_CACHE="$DIR/cache"
# An empty manifest folder: the shipped families and their bundled configs only.
export BEESWAX_MANIFESTS="$DIR/manifests"
mkdir -p "$BEESWAX_MANIFESTS"
rss() { awk -F': ' '/Maximum resident set size/ {printf "%.0f", $2 / 1024}' "$1"; }

/usr/bin/time -v "$BIN" generate --model "$DIR/sd15-random.f16.safetensors" \
    --prompt "a red fox in the snow, photograph" --negative-prompt "blurry, low quality" \
    --sampler euler --steps "$STEPS" --guidance 7.5 --width 512 --height 512 \
    --init-latents "$DIR/init.safetensors" --output "$DIR/beeswax.png" \
    --output-latents "$DIR/beeswax-latents.safetensors" 2> "$DIR/beeswax.time" \
    || { cat "$DIR/beeswax.time"; exit 1; }
CONFIG=$(ls -d "$BEESWAX_CACHE"/bundled-configs/*/sd1 | head -1)
/usr/bin/time -v "$PYTHON" scripts/single-file-memory.py diffusers "$DIR" "$CONFIG" \
    --steps "$STEPS" --size 512 2> "$DIR/diffusers.time" \
    || { cat "$DIR/diffusers.time"; exit 1; }

FILE_MB=$(( $(stat -c %s "$DIR/sd15-random.f16.safetensors") / 1048576 ))
echo "single file (f16): ${FILE_MB} MiB; bundled configs: $CONFIG"
echo "beeswax   peak RSS: $(rss "$DIR/beeswax.time") MiB  ($(grep 'Elapsed' "$DIR/beeswax.time" | awk '{print $NF}') wall)"
echo "diffusers peak RSS: $(rss "$DIR/diffusers.time") MiB  ($(grep 'Elapsed' "$DIR/diffusers.time" | awk '{print $NF}') wall)"
"$PYTHON" scripts/single-file-memory.py compare "$DIR"
