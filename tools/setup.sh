#!/usr/bin/env bash
# Installs what the tests need on a fresh machine (Debian 12, Rust stable, Python 3.11,
# Node 20), from the registries only. Idempotent: skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
need_apt=()
command -v espeak-ng >/dev/null || need_apt+=(espeak-ng)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
# The GPU backend's tests run on Mesa lavapipe (software Vulkan; GL as a fallback) and in
# headless Chromium (SwiftShader WebGPU).
[ -f /usr/share/vulkan/icd.d/lvp_icd.x86_64.json ] || need_apt+=(mesa-vulkan-drivers libvulkan1)
[ -f /usr/lib/x86_64-linux-gnu/libEGL_mesa.so.0 ] || need_apt+=(libegl1 libegl-mesa0 libgl1-mesa-dri)
command -v chromium >/dev/null || need_apt+=(chromium)
if [ ${#need_apt[@]} -gt 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
rustup component add rustfmt clippy >/dev/null 2>&1 || true
rustup target list --installed | grep -q wasm32-unknown-unknown || rustup target add wasm32-unknown-unknown
# wasm-bindgen-test-runner must equal the crate's wasm-bindgen version (no --locked: see
# ../shared/toolchain.md).
want=$(grep -A1 'name = "wasm-bindgen"' Cargo.lock | grep -oE '[0-9]+\.[0-9]+\.[0-9]+' | head -1)
if [ "$(wasm-bindgen --version 2>/dev/null | awk '{print $2}')" != "$want" ]; then
  cargo install wasm-bindgen-cli --version "$want" --no-default-features
fi
# Python venv for reference outputs (onnxruntime is the oracle) and the int8 variants
# (onnxruntime.quantization needs onnx; sympy for its symbolic shape inference).
if [ ! -x .cache/venv/bin/python ] || ! .cache/venv/bin/python -c "import onnxruntime, numpy, PIL, onnx, sympy" 2>/dev/null; then
  python3 -m venv .cache/venv
  .cache/venv/bin/pip install -q --disable-pip-version-check numpy==2.4.6 onnxruntime==1.32.0 pillow==13.0.0 \
    onnx==1.22.0 sympy==1.14.0 mpmath==1.3.0
fi
# npm: playwright-core (drives /usr/bin/chromium; never downloads a browser), deno,
# binaryen's wasm-opt, onnxruntime-web for the benchmark.
if [ ! -f node_modules/playwright-core/package.json ] || [ ! -x node_modules/.bin/deno ]; then
  npm ci --no-audit --no-fund >/dev/null
fi
tools/fetch_onnx_suite.sh
tools/fetch_models.sh
[ -f .cache/reference/.ok ] || .cache/venv/bin/python tools/make_reference.py
[ -f .cache/reference/int8/.ok ] || .cache/venv/bin/python tools/make_int8.py
# The demo page's fixtures (rendered text lines, an espeak-ng speech clip with its true intervals).
[ -f www/fixtures/generated/speech.json ] || .cache/venv/bin/python tools/make_demo_fixtures.py
# Calibration and evaluation sets of the compression CLI (issue #6).
[ -f .cache/compress-data/.ok ] || .cache/venv/bin/python tools/make_compress_data.py
