#!/usr/bin/env bash
# Builds sharpen-wasm.wasm from sharpen.c with clang + lld (no C library, no WASI):
#   plugins/sharpen-wasm/build.sh [OUTPUT]   (default: sharpen-wasm.wasm beside this script)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/sharpen-wasm.wasm}"
clang --target=wasm32 -O2 -ffreestanding -nostdlib -Wl,--no-entry -Wl,--export-dynamic \
  -Wl,--strip-all -I "$here/../../plugin-sdk/include" -o "$out" "$here/sharpen.c"
