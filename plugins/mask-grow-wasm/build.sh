#!/usr/bin/env bash
# Builds mask-grow-wasm.wasm from mask_grow.c with clang + lld (no C library, no WASI):
#   plugins/mask-grow-wasm/build.sh [OUTPUT]   (default: mask-grow-wasm.wasm beside this script)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/mask-grow-wasm.wasm}"
clang --target=wasm32 -O2 -ffreestanding -nostdlib -Wl,--no-entry -Wl,--export-dynamic \
  -Wl,--strip-all -I "$here/../../plugin-sdk/include" -o "$out" "$here/mask_grow.c"
