#!/usr/bin/env bash
# Builds the wasm package with the WebGPU backend for the browser, Deno and Workers
# (wasm-bindgen --target web) into target/web-pkg: edgepredict.js + edgepredict_bg.wasm.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="-C target-feature=+simd128" cargo build --release --lib --target wasm32-unknown-unknown \
  --no-default-features --features webgpu --target-dir target/wasm-gpu
w=target/wasm-gpu/wasm32-unknown-unknown/release/edgepredict.wasm
rm -rf target/web-pkg
wasm-bindgen --target web --out-dir target/web-pkg "$w"
echo '{"type":"module"}' > target/web-pkg/package.json
# wasm-opt -O3 takes minutes on this module: only for a release (WASM_OPT=1), not tests.
if [ "${WASM_OPT:-0}" = 1 ]; then
  node_modules/.bin/wasm-opt -O3 --enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int \
    --enable-sign-ext --enable-mutable-globals --enable-reference-types --enable-multivalue \
    target/web-pkg/edgepredict_bg.wasm -o target/web-pkg/edgepredict_bg.wasm
fi
f=target/web-pkg/edgepredict_bg.wasm
echo "web package (simd128 + webgpu): $(stat -c %s "$f") bytes, $(gzip -9c "$f" | wc -c) gzipped"
