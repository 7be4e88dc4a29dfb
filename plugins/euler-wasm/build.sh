#!/usr/bin/env bash
# Builds euler-wasm.wasm from euler.c with clang + lld (no C library, no WASI):
#   plugins/euler-wasm/build.sh [OUTPUT]   (default: euler-wasm.wasm beside this script)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
out="${1:-$here/euler-wasm.wasm}"
clang --target=wasm32 -O2 -ffreestanding -nostdlib -Wl,--no-entry -Wl,--export-dynamic \
  -Wl,--strip-all -I "$here/../../plugin-sdk/include" -o "$out" "$here/euler.c"
