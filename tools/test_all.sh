#!/usr/bin/env bash
# The whole test suite, from a fresh machine: set-up, formatting and lints (native and
# wasm32), unit + conformance + real-model + bad-input tests, the wasm build and a real
# model inside wasm (Node), and a bounded fuzz smoke run.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
# Models are made by setup.sh here, so a missing one is a failure, not a skip.
export EDGEPREDICT_REQUIRE_MODELS=1
# The GPU tests run on lavapipe here; a missing adapter is a failure, not a skip.
export EDGEPREDICT_REQUIRE_GPU=1
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp/xdg-$(id -u)}"
mkdir -p -m 0700 "$XDG_RUNTIME_DIR"
export DENO_NO_UPDATE_CHECK=1 DENO_NO_PROMPT=1
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

step "set-up"
tools/setup.sh

step "fmt + clippy (native, wasm32)"
cargo fmt --all -- --check
cargo clippy --all-targets -- -D warnings
cargo clippy --lib --target wasm32-unknown-unknown --no-default-features -- -D warnings
cargo clippy --lib --target wasm32-unknown-unknown --no-default-features --features webgpu -- -D warnings

step "native tests"
cargo test 2>&1 | tee target/native-tests.log
grep -E "conformance total|suite " target/conformance-report.txt || true
grep -E "conformance total|suite " target/conformance-report-webgpu.txt || true

step "real models on the GPU backend (lavapipe)"
# Every real model, float and int8, on the GPU backend against onnxruntime's outputs.
EDGEPREDICT_BACKEND=webgpu cargo test --test real_models --test quantized_models 2>&1 | tee target/gpu-models.log
grep -E "nodes on the GPU" target/gpu-models.log || true

step "wasm32 build + size"
RUSTFLAGS="-C target-feature=+simd128" cargo build --release --lib --target wasm32-unknown-unknown \
  --no-default-features --target-dir target/wasm-simd
w=target/wasm-simd/wasm32-unknown-unknown/release/edgepredict.wasm
echo "wasm (simd128, before wasm-bindgen/wasm-opt): $(stat -c %s "$w") bytes, $(gzip -9c "$w" | wc -c) gzipped"

step "wasm test (Node)"
CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=wasm-bindgen-test-runner \
  cargo test --release --target wasm32-unknown-unknown --no-default-features --test wasm

step "wasm + WebGPU: headless Chromium (SwiftShader) and Deno (lavapipe)"
tools/build_web.sh
node --test tests/js/*.test.mjs
node_modules/.bin/deno test --allow-read --allow-env tests/js/webgpu_deno.test.ts

step "fuzz smoke"
tools/fuzz_smoke.sh "${FUZZ_SECONDS:-120}"
