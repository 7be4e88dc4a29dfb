#!/usr/bin/env bash
# Peak memory and step time of a FLUX.1-dev job at full-size architecture (random weights):
# writes the model with scripts/make_flux_memory_model.py (transformer as Q8_0 and Q4_K GGUF,
# CLIP-L, T5-XXL and VAE as safetensors; about 32 GB of disk at full size), then runs a 512x512
# job with --low-memory under /usr/bin/time -v for each type (1 step by default: peak RSS from
# time -v, the step's time from the progress bar, which starts at the first denoising step),
# and prints a summary.
#
#   scripts/flux-memory.sh [--reduced] [OUT_DIR]
#
# --reduced: a small model of the same layout (to test this script; seconds, not hours).
# Environment: PYTHON (with numpy; default /work/venv-ref/bin/python), DTYPE (compute dtype,
# default f16: candle's CPU matmul has no bf16), STORE (the text encoders' and VAE's stored
# dtype, default bf16 as in the FLUX.1-dev repository), TYPES (default "q8_0 q4_k"),
# BEESWAX (default target/release/beeswax, built if missing), STEPS (default 1), KEEP=1 to
# keep the files, SKIP_MAKE=1 to reuse the files a KEEP=1 run left in OUT_DIR.
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
steps="${STEPS:-1}"
beeswax="${BEESWAX:-target/release/beeswax}"

if [[ ! -x "$beeswax" ]]; then
  cargo build --release -p beeswax --bin beeswax
fi
mkdir -p "$out"
if [[ "${SKIP_MAKE:-0}" != "1" ]]; then
  "$python" scripts/make_flux_memory_model.py "$out" $reduced --dtype "$store" \
    --types "$(echo "$types" | tr ' ' ',')"
fi
load=$(cut -d' ' -f1-3 /proc/loadavg)

summary="$out/summary.txt"
: > "$summary"
for ty in $types; do
  log="$out/$ty.time"
  if ! /usr/bin/time -v "$beeswax" --low-memory --dtype "$dtype" generate \
    --model "$out/flux-dev-$ty.gguf" --model-config "$out/config" \
    --prompt "a lighthouse on a cliff at dusk" --steps "$steps" \
    --width 512 --height 512 --seed 1 --output "$out/$ty.png" 2> "$log"; then
    echo "the $ty job failed:" >&2
    tail -5 "$log" >&2
    exit 1
  fi
  rss=$(awk -F': ' '/Maximum resident set size/ {print $2}' "$log")
  wall=$(awk -F': ' '/Elapsed \(wall clock\)/ {print $2}' "$log" | \
    awk -F: '{ s = 0; for (i = 1; i <= NF; i++) s = s * 60 + $i; print s }')
  # The progress bar's last reading: "N s/step" when a step takes a second or more, else
  # "N steps/s"; the bar counts from the first denoising step, so loading and encoding are out.
  step=$(tr '\r' '\n' < "$log" | awk '/ s\/step/ { for (i = 1; i < NF; i++) if ($(i+1) == "s/step") v = $i }
    / steps\/s/ { for (i = 1; i < NF; i++) if ($(i+1) == "steps/s") v = 1 / $i } END { print v }')
  printf '%s: peak RSS %.2f GiB; wall %ss for %s step(s); one step %.1fs\n' \
    "$ty" "$(awk -v k="$rss" 'BEGIN { print k / 1048576 }')" "$wall" "$steps" "$step" \
    | tee -a "$summary"
done
echo "512x512, --low-memory, dtype $dtype (stored $store)${reduced:+, REDUCED model}; $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //'), load average before: $load; logs in $out" | tee -a "$summary"
if [[ "${KEEP:-0}" != "1" ]]; then
  rm -f "$out"/flux-dev-*.gguf
  rm -rf "$out/config"
fi
