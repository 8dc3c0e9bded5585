#!/usr/bin/env bash
# Fetches the ONNX 1.22.0 backend conformance data (node, pytorch-converted,
# pytorch-operator, simple, light) from the onnx wheel on PyPI, pinned by sha256.
# Output: .cache/onnx-suite/onnx/backend/test/data/
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/onnx-suite
marker=$dest/.ok-1.22.0
[ -f "$marker" ] && exit 0
whl=onnx-1.22.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl
sha=1d0a2bdb15eb2b3cb65c438f3423d9620d14fdce32f92380e6bb1b2e09568ef5
mkdir -p .cache/wheels "$dest"
if [ ! -f ".cache/wheels/$whl" ] || ! echo "$sha  .cache/wheels/$whl" | sha256sum -c --quiet; then
  python3 -m pip download --quiet --no-deps --only-binary :all: --python-version 3.11 \
    --implementation cp --platform manylinux_2_28_x86_64 onnx==1.22.0 -d .cache/wheels
fi
echo "$sha  .cache/wheels/$whl" | sha256sum -c --quiet
rm -rf "$dest/onnx"
python3 - "$dest" ".cache/wheels/$whl" <<'PY'
import sys, zipfile
dest, whl = sys.argv[1], sys.argv[2]
with zipfile.ZipFile(whl) as z:
    for n in z.namelist():
        if n.startswith("onnx/backend/test/data/"):
            z.extract(n, dest)
PY
touch "$marker"
echo "ONNX suite ready in $dest/onnx/backend/test/data"
