#!/usr/bin/env bash
# beeswax against PyTorch/diffusers on this machine, in alternating runs of the same job, so
# that both see the same load; prints both times and the ratio (beeswax / reference).
# scripts/bench-table runs every comparison of issue 22 and prints them as one table.
#
#   scripts/bench-vs-torch.sh unet [CONFIG] [SIZE] [BATCH] [ROUNDS]
#       UNet forward, random weights: `beeswax bench unet` vs ../shared/perf/torch_unet.py
#       (defaults: ../shared/perf/sd15-unet/config.json 256 2 2; 3 timed iterations per run).
#   scripts/bench-vs-torch.sh pipeline MODEL_DIR [STEPS] [SIZE] [ROUNDS]
#       whole DDIM generation with peak RSS: `beeswax bench pipeline` vs diffusers
#       (scripts/random-sd15.py time). Make MODEL_DIR with `scripts/random-sd15.py make DIR`.
#   scripts/bench-vs-torch.sh vae [SIZE]
#       VAE decode of SD 1.5's VAE (random weights), whole and tiled: `beeswax bench vae` vs
#       diffusers' AutoencoderKL.decode (enable_tiling() for tiled), time and peak RSS.
#
# Env: BEESWAX (binary, default target/release/beeswax), PYTHON (default ../venv-ref/bin/python).
set -euo pipefail
cd "$(dirname "$0")/.."
BEESWAX=${BEESWAX:-target/release/beeswax}
PYTHON=${PYTHON:-../venv-ref/bin/python}
[ -x "$BEESWAX" ] || cargo build --release -p beeswax --bin beeswax
field() { sed -n "s/.*\"$1\": \([0-9.]*\).*/\1/p"; }
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a / b }'; }

mode=${1:-unet}
case "$mode" in
unet)
    config=${2:-../shared/perf/sd15-unet/config.json}
    size=${3:-256}; batch=${4:-2}; rounds=${5:-2}
    echo "UNet forward ${size}x${size} batch $batch, min of 3 per run ($config)"
    for r in $(seq "$rounds"); do
        b=$("$BEESWAX" bench unet --config "$config" --width "$size" --height "$size" \
            --batch "$batch" --iters 3 --json | field min_s)
        t=$("$PYTHON" ../shared/perf/torch_unet.py "$(dirname "$config")" "$size" "$batch" 3 | field min_s)
        echo "round $r: beeswax ${b} s  torch ${t} s  ratio $(ratio "$b" "$t")"
    done
    ;;
pipeline)
    model=${2:?give the model folder made by scripts/random-sd15.py make}
    steps=${3:-20}; size=${4:-512}; rounds=${5:-1}
    echo "pipeline ${size}x${size}, $steps DDIM steps, guidance 7.5 ($model)"
    for r in $(seq "$rounds"); do
        b=$("$BEESWAX" bench pipeline --model "$model" --steps "$steps" --scheduler ddim \
            --width "$size" --height "$size" --json)
        d=$("$PYTHON" scripts/random-sd15.py time "$model" --steps "$steps" --width "$size" --height "$size")
        bt=$(echo "$b" | field total_s); dt=$(echo "$d" | field total_s)
        bm=$(echo "$b" | field peak_rss_mb); dm=$(echo "$d" | field peak_rss_mb)
        echo "round $r: beeswax ${bt} s ${bm} MB  diffusers ${dt} s ${dm} MB  time ratio $(ratio "$bt" "$dt")  memory ratio $(ratio "$bm" "$dm")"
        echo "  beeswax:   $b"
        echo "  diffusers: $d"
    done
    ;;
vae)
    size=${2:-512}
    config=$(mktemp -d)/config.json
    "$PYTHON" - "$config" <<'PY'
import json, sys
json.dump({"block_out_channels": [128, 256, 512, 512], "in_channels": 3, "out_channels": 3,
           "latent_channels": 4, "layers_per_block": 2, "norm_num_groups": 32,
           "scaling_factor": 0.18215, "sample_size": 512,
           "down_block_types": ["DownEncoderBlock2D"] * 4,
           "up_block_types": ["UpDecoderBlock2D"] * 4}, open(sys.argv[1], "w"))
PY
    for tiling in "" --tiling; do
        b=$("$BEESWAX" bench vae --config "$config" --width "$size" --height "$size" $tiling --json)
        t=$("$PYTHON" - "$config" "$size" "$tiling" <<'PY'
import json, resource, sys, time, torch
from diffusers import AutoencoderKL
torch.manual_seed(0)
vae = AutoencoderKL.from_config(json.load(open(sys.argv[1]))).eval()
if sys.argv[3]:
    vae.enable_tiling()
z = torch.randn(1, 4, int(sys.argv[2]) // 8, int(sys.argv[2]) // 8)
with torch.no_grad():
    vae.decode(z)
    t = time.perf_counter(); vae.decode(z); t = time.perf_counter() - t
print(json.dumps({"min_s": round(t, 4),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}))
PY
)
        echo "vae decode ${size}x${size} ${tiling:-(whole)}: beeswax $b  diffusers $t  time ratio $(ratio "$(echo "$b" | field min_s)" "$(echo "$t" | field min_s)")"
    done
    ;;
*)
    sed -n '2,17p' "$0"; exit 2 ;;
esac
