#!/usr/bin/env bash
# The benchmark, one command: builds our wasm (simd128, and relaxed-SIMD when this Node can
# run it) and the native CLI, installs the npm peers if absent, runs the wasm bench (ours vs
# onnxruntime-web in Node) and the native bench (our CLI vs onnxruntime from PyPI), writes
# bench/results/latest.md and prints it. Not part of the test suite.
#
#   bench/run.sh [--quick] [--models magika,ppocr_cls] [--no-native] [--no-relaxed] [--no-build]
#
# Needs: the models in .cache/models (tools/fetch_models.sh), int8 variants in
# .cache/models/int8 (optional; missing ones are listed as such), the Python venv in
# .cache/venv (tools/setup.sh), Node 20 + npm, rustup with wasm32-unknown-unknown.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

JS_ARGS=()
NATIVE=1
RELAXED=1
BUILD=1
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) JS_ARGS+=(--quick) ;;
    --models) JS_ARGS+=(--models "$2"); shift ;;
    --no-native) NATIVE=0 ;;
    --no-relaxed) RELAXED=0 ;;
    --no-build) BUILD=0 ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
  shift
done

export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-1}"
say() { echo "== $*" >&2; }
LOAD_BEFORE=$(cut -d' ' -f1-3 /proc/loadavg 2>/dev/null || echo '?')

# --- npm peers (onnxruntime-web, binaryen's wasm-opt); never downloads a browser.
if [ ! -f node_modules/onnxruntime-web/package.json ] || [ ! -x node_modules/.bin/wasm-opt ]; then
  say "npm ci"
  ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund >&2
fi
WASM_OPT="$ROOT/node_modules/.bin/wasm-opt"

# --- wasm-bindgen CLI equal to the crate's version in Cargo.lock.
WB_VERSION=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
WASM_BINDGEN=$(command -v wasm-bindgen || echo "$HOME/.cargo/bin/wasm-bindgen")
if [ "$BUILD" = 1 ] && ! "$WASM_BINDGEN" --version 2>/dev/null | grep -qF "$WB_VERSION"; then
  say "cargo install wasm-bindgen-cli $WB_VERSION"
  cargo install wasm-bindgen-cli --version "$WB_VERSION" --no-default-features >&2
  WASM_BINDGEN="$HOME/.cargo/bin/wasm-bindgen"
fi

# Relaxed SIMD: Node 20 (V8 11.3) only behind a flag; newer Node runs it without one.
NODE_FLAGS=()
# The smallest module using a relaxed-SIMD op (i32x4.relaxed_trunc_f32x4_s), to ask this
# Node whether it can run the relaxed build, and with which flag.
RELAXED_PROBE="new Uint8Array([0,97,115,109,1,0,0,0,1,5,1,96,0,1,123,3,2,1,0,10,25,1,23,0,253,12,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,0,253,129,2,11])"
relaxed_ok() { node "$@" -e "process.exit(WebAssembly.validate($RELAXED_PROBE) ? 0 : 1)" 2>/dev/null; }
if [ "$RELAXED" = 1 ]; then
  if relaxed_ok; then :
  elif relaxed_ok --experimental-wasm-relaxed-simd; then NODE_FLAGS=(--experimental-wasm-relaxed-simd)
  else say "this Node cannot run relaxed SIMD: skipping that build"; RELAXED=0
  fi
fi

# --- our wasm: release lib per feature set, own target dir, wasm-bindgen, wasm-opt -O3.
build_wasm() {
  local flavour=$1 features=$2 opt_flags=$3
  say "wasm build $flavour ($features)"
  RUSTFLAGS="-C target-feature=$features" cargo build --lib --release \
    --target wasm32-unknown-unknown --no-default-features --target-dir "target/bench-$flavour" >&2
  local out="bench/pkg/$flavour" tmp="bench/pkg/.$flavour.new"
  rm -rf "$tmp"
  "$WASM_BINDGEN" --target web --out-dir "$tmp" \
    "target/bench-$flavour/wasm32-unknown-unknown/release/edgepredict.wasm"
  # wasm-opt -O3 takes minutes on a big module: skip it when wasm-bindgen's output is
  # unchanged since the last optimised build.
  if [ -f "$out/edgepredict_bg.wasm" ] && cmp -s "$tmp/edgepredict_bg.wasm" "$out/edgepredict_bg.pre-opt.wasm"; then
    say "wasm-opt $flavour: input unchanged, keeping $out/edgepredict_bg.wasm"
    rm -rf "$tmp"
    return
  fi
  say "wasm-opt -O3 $flavour"
  mv "$tmp/edgepredict_bg.wasm" "$tmp/edgepredict_bg.pre-opt.wasm"
  # shellcheck disable=SC2086
  "$WASM_OPT" -O3 $opt_flags "$tmp/edgepredict_bg.pre-opt.wasm" -o "$tmp/edgepredict_bg.wasm"
  # wasm-bindgen's --target web output is ES modules.
  echo '{"type":"module"}' > "$tmp/package.json"
  rm -rf "$out"
  mv "$tmp" "$out"
}
if [ "$BUILD" = 1 ]; then
  rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown ||
    rustup target add wasm32-unknown-unknown >&2
  # Rust 1.95's wasm32 default features, plus SIMD (and relaxed SIMD).
  BASE_FEATURES="--enable-simd --enable-bulk-memory --enable-nontrapping-float-to-int --enable-sign-ext --enable-mutable-globals --enable-multivalue --enable-reference-types"
  build_wasm simd128 +simd128 "$BASE_FEATURES"
  if [ "$RELAXED" = 1 ]; then
    build_wasm relaxed +simd128,+relaxed-simd "$BASE_FEATURES --enable-relaxed-simd"
  fi
  if [ "$NATIVE" = 1 ]; then
    # target-cpu=native: onnxruntime picks AVX2 at run time, our kernels pick at build time.
    say "native build (release, -C target-cpu=native)"
    RUSTFLAGS="-C target-cpu=native" cargo build --release --bin edgepredict \
      --target-dir target/bench-native >&2
  fi
fi
FLAVOURS=simd128
[ "$RELAXED" = 1 ] && FLAVOURS=simd128,relaxed

# --- sizes: our final .wasm (and before wasm-opt) and the one onnxruntime-web loads in Node.
mkdir -p bench/results
size_json() { # build-name file
  printf '{"build":"%s","file":"%s","raw":%s,"gzip":%s}' "$1" "$2" "$(stat -c %s "$2")" "$(gzip -9 -c "$2" | wc -c)"
}
{
  echo "["
  sep=""
  for fl in ${FLAVOURS//,/ }; do
    for f in "bench/pkg/$fl/edgepredict_bg.wasm:ours $fl (wasm-opt -O3)" "bench/pkg/$fl/edgepredict_bg.pre-opt.wasm:ours $fl (before wasm-opt)"; do
      if [ -f "${f%%:*}" ]; then echo "$sep$(size_json "${f#*:}" "${f%%:*}")"; sep=","; fi
    done
  done
  ORT_WASM=node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm
  echo "$sep$(size_json "onnxruntime-web 1.30 (loaded in Node, SIMD)" "$ORT_WASM")"
  echo "]"
} > bench/results/sizes.json

# --- the benchmarks.
say "wasm bench (ours: $FLAVOURS; onnxruntime-web)"
node --no-liftoff "${NODE_FLAGS[@]}" bench/wasm_bench.mjs --flavours "$FLAVOURS" "${JS_ARGS[@]}"
if [ "$NATIVE" = 1 ]; then
  say "native bench (our CLI vs onnxruntime from PyPI)"
  EDGEPREDICT_BIN="$ROOT/target/bench-native/release/edgepredict" node bench/native_bench.mjs "${JS_ARGS[@]}"
else
  rm -f bench/results/native.json
fi

# --- machine and report.
CPU=$(lscpu 2>/dev/null | sed -n 's/^Model name:[[:space:]]*//p' | head -1)
cat > bench/results/machine.json <<EOF
{"date":"$(date -u +%Y-%m-%dT%H:%MZ)","cpu":"${CPU:-?}","cores":$(nproc),"memGiB":$(awk '/MemTotal/ {printf "%.0f", $2/1048576}' /proc/meminfo),
 "loadBefore":"$LOAD_BEFORE","loadAfter":"$(cut -d' ' -f1-3 /proc/loadavg)","node":"$(node --version)",
 "rustc":"$(rustc --version | cut -d' ' -f1-2)","nativeTarget":"release, -C target-cpu=native"}
EOF
node bench/report.mjs
