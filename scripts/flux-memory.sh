#!/usr/bin/env bash
# Peak memory and step time of a FLUX.1-dev job at full-size architecture (random weights):
# writes the model with scripts/make_flux_memory_model.py (transformer as Q8_0 and Q4_K GGUF,
# CLIP-L, T5-XXL and VAE as safetensors; about 32 GB of disk at full size), then runs a 512x512
# job with --low-memory under /usr/bin/time -v for each type, with 1 step (peak RSS) and
# 2 steps (the difference is the time of one step), and prints a summary.
#
#   scripts/flux-memory.sh [--reduced] [OUT_DIR]
#
# --reduced: a small model of the same layout (to test this script; seconds, not hours).
# Environment: PYTHON (with numpy; default /work/venv-ref/bin/python), DTYPE (compute dtype,
# default f16: candle's CPU matmul has no bf16), STORE (the text encoders' and VAE's stored
# dtype, default bf16 as in the FLUX.1-dev repository), TYPES (default "q8_0 q4_k"),
# BEESWAX (default target/release/beeswax, built if missing), KEEP=1 to keep the files.
set -euo pipefail
cd "$(dirname "$0")/.."

reduced=""
if [[ "${1:-}" == "--reduced" ]]; then
  reduced="--reduced"
  shift
fi
out="${1:-target/flux-memory}"
python="${PYTHON:-/work/venv-ref/bin/python}"
dtype="${DTYPE:-f16}"
store="${STORE:-bf16}"
types="${TYPES:-q8_0 q4_k}"
beeswax="${BEESWAX:-target/release/beeswax}"

if [[ ! -x "$beeswax" ]]; then
  cargo build --release -p beeswax --bin beeswax
fi
mkdir -p "$out"
"$python" scripts/make_flux_memory_model.py "$out" $reduced --dtype "$store" \
  --types "$(echo "$types" | tr ' ' ',')"

summary="$out/summary.txt"
: > "$summary"
for ty in $types; do
  for steps in 1 2; do
    log="$out/$ty-$steps-steps.time"
    if ! /usr/bin/time -v "$beeswax" --low-memory --dtype "$dtype" generate \
      --model "$out/flux-dev-$ty.gguf" --model-config "$out/config" \
      --prompt "a lighthouse on a cliff at dusk" --steps "$steps" \
      --width 512 --height 512 --seed 1 --output "$out/$ty-$steps.png" 2> "$log"; then
      echo "the $ty job with $steps steps failed:" >&2
      head -5 "$log" >&2
      exit 1
    fi
  done
  rss1=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out/$ty-1-steps.time")
  rss2=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$out/$ty-2-steps.time")
  wall() { awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$1" | \
    awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }'; }
  w1=$(wall "$out/$ty-1-steps.time")
  w2=$(wall "$out/$ty-2-steps.time")
  step=$(awk -v a="$w1" -v b="$w2" 'BEGIN { printf "%.1f", b - a }')
  printf '%s: peak RSS %.2f GiB (1 step), %.2f GiB (2 steps); wall %ss (1 step), %ss (2 steps); one step about %ss\n' \
    "$ty" "$(awk -v k="$rss1" 'BEGIN { print k / 1048576 }')" \
    "$(awk -v k="$rss2" 'BEGIN { print k / 1048576 }')" "$w1" "$w2" "$step" | tee -a "$summary"
done
echo "512x512, --low-memory, dtype $dtype (stored $store)${reduced:+, REDUCED model}; logs in $out" | tee -a "$summary"
if [[ "${KEEP:-0}" != "1" ]]; then
  rm -f "$out"/flux-dev-*.gguf
  rm -rf "$out/config"
fi
