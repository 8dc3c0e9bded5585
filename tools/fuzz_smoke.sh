#!/usr/bin/env bash
# Bounded fuzz smoke run of fuzz/fuzz_targets/load.rs (cargo fuzz, libFuzzer), seeded with
# the ONNX suite's models. Usage: tools/fuzz_smoke.sh [seconds]  (default 120).
# Prints the number of executions; exits non-zero on any crash.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-120}
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --version 0.13.2 --locked
tc=+nightly
rustup run nightly true 2>/dev/null || { tc=""; export RUSTC_BOOTSTRAP=1; }
corpus=fuzz/corpus/load
if [ ! -d "$corpus" ]; then
  mkdir -p "$corpus"
  suite=.cache/onnx-suite/onnx/backend/test/data
  i=0
  for m in "$suite"/node/*/model.onnx "$suite"/simple/*/model.onnx; do
    cp "$m" "$corpus/seed_$i.onnx"; i=$((i+1))
  done
  cp models/digits_mlp.onnx "$corpus/"
fi
log=target/fuzz-smoke.log
mkdir -p target
cargo $tc fuzz run load "$corpus" --sanitizer none -j 1 -- \
  -max_total_time="$secs" -rss_limit_mb=2048 -max_len=262144 -timeout=10 -print_final_stats=1 2>&1 | tee "$log" | grep -E "^(#[0-9]+ +(DONE|INITED)|==|stat::number_of_executed_units|SUMMARY)" || true
status=${PIPESTATUS[0]}
runs=$(grep -oE "stat::number_of_executed_units: *[0-9]+" "$log" | grep -oE "[0-9]+$" | tail -1)
echo "fuzz smoke: ${runs:-0} executions in ${secs}s, exit status $status"
[ "$status" = 0 ] && [ -n "$runs" ]
