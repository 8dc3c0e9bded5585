#!/usr/bin/env python3
"""The compression results table (issue #6): every real model, float vs each technique,
and the best combination the accuracy guard allows, all made by `edgepredict compress`
and measured by `edgepredict evaluate --metric` on held-out data
(.cache/compress-data/<model>/eval, made by tools/make_compress_data.py).

    tools/compress_table.py [--models a,b] [--repeat N] [--out docs/compression.md]

Each row's command is printed in the table's notes, so every figure can be reproduced.
Writes bench/results/compress.{json,md}; with --out, also the markdown document.
Exits non-zero when a command fails or the guard lets a known-bad recipe through.
"""

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLI = os.environ.get("EDGEPREDICT_BIN", str(ROOT / "target/release/edgepredict"))
DATA = ROOT / ".cache/compress-data"
WORK = ROOT / "target/compress-table"

# Per model: file, the task metric (guard metric, output, tolerance, what it means),
# which techniques apply, and the combinations the guard may pick from.
MODELS = {
    "digits_mlp": dict(
        file="models/digits_mlp.onnx",
        metric="top1", output="probabilities", tol=0.01, task="top-1 agreement",
        int4=True, combos=[["--quantize", "int4"], ["--quantize", "dynamic"]],
    ),
    "magika": dict(
        file=".cache/models/magika.onnx",
        metric="top1", output=None, tol=0.01, task="top-1 agreement",
        int4=True,
        combos=[["--prune", "0.5", "--quantize", "static"], ["--quantize", "static"],
                ["--quantize", "dynamic"]],
    ),
    "ppocr_cls": dict(
        file=".cache/models/ppocr_cls.onnx",
        metric="top1", output=None, tol=0.01, task="top-1 agreement",
        int4=False,
        combos=[["--prune", "0.5", "--structured", "--quantize", "static"],
                ["--quantize", "static"], ["--quantize", "dynamic"]],
    ),
    "ppocr_det": dict(
        file=".cache/models/ppocr_det.onnx",
        metric="agree@0.3", output=None, tol=0.01, task="text-pixel agreement (p>0.3)",
        int4=False, combos=[["--quantize", "static"], ["--quantize", "dynamic"]],
    ),
    "ppocr_rec": dict(
        file=".cache/models/ppocr_rec.onnx",
        metric="top1", output=None, tol=0.02, task="per-step top-1 agreement",
        int4=True,
        combos=[["--quantize", "static"], ["--quantize", "dynamic"], ["--quantize", "int4,fp16"]],
    ),
    "silero_vad": dict(
        file=".cache/models/silero_vad.onnx",
        metric="agree@0.5", output="output", tol=0.02, task="speech-frame agreement (p>0.5)",
        int4=False, combos=[["--quantize", "static"], ["--quantize", "dynamic"]],
    ),
    "minilm_l3": dict(
        file=".cache/models/minilm_l3.onnx",
        metric="cosine", output="461", tol=0.01, task="embedding cosine",
        int4=True,
        combos=[["--low-rank", "0.95", "--quantize", "dynamic"], ["--quantize", "int4"],
                ["--quantize", "dynamic"]],
    ),
}

# The two recipes ../shared/models.md lists as breaking their model: the guard must not
# let them through.
KNOWN_BAD = {
    "ppocr_rec": ["--quantize", "static", "--per-tensor"],
    # onnxruntime's quantize_static defaults: every op, per-tensor weights.
    "silero_vad": ["--quantize", "static", "--op-types", "all", "--per-tensor"],
}


def techniques(m):
    rows = [
        ("int8 dynamic", ["--quantize", "dynamic"]),
        ("int8 static (QDQ, min-max)", ["--quantize", "static"]),
    ]
    if m["int4"]:
        rows.append(("int4 MatMulNBits", ["--quantize", "int4"]))
    rows += [
        ("fp16 weights", ["--quantize", "fp16"]),
        ("50 % pruned", ["--prune", "0.5"]),
        ("low-rank 95 % energy", ["--low-rank", "0.95"]),
    ]
    return rows


def run(cmd, check=True):
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if check and p.returncode != 0:
        raise RuntimeError(f"{shlex.join(cmd)} failed:\n{p.stdout}\n{p.stderr}")
    return p


def step_args(id_, m, args):
    out = list(args)
    if "static" in ",".join(args) and "--calib" not in out:
        out += ["--calib", str(DATA / id_ / "calib")]
    return out


def metric_args(m):
    a = ["--metric", m["metric"]]
    if m["output"]:
        a += ["--metric-output", m["output"]]
    return a


def evaluate(id_, m, cand, repeat):
    cmd = [CLI, "evaluate", m["file"], str(cand), "--data", str(DATA / id_ / "eval"),
           "--repeat", str(repeat), "--json"] + metric_args(m)
    r = json.loads(run(cmd).stdout)
    lat = r["latency"] or {}
    dev = r["task"]["deviation"]
    score = 1.0 - dev if dev is not None else None
    return dict(
        bytes=r["sizes"][1]["bytes"], gzip=r["sizes"][1]["gzip_bytes"],
        ref_bytes=r["sizes"][0]["bytes"], ref_gzip=r["sizes"][0]["gzip_bytes"],
        ms=(lat.get("candidate") or {}).get("median_ms"),
        ref_ms=(lat.get("reference") or {}).get("median_ms"),
        score=score,
    )


def compress(id_, m, label, args, guarded=False):
    slug = "".join(c if c.isalnum() else "_" for c in label.replace("%", "pct")).strip("_")
    out = WORK / f"{id_}.{'_'.join(filter(None, slug.split('_')))}.onnx"
    cmd = [CLI, "compress", m["file"], "-o", str(out)] + step_args(id_, m, args)
    if guarded:
        cmd += ["--eval", str(DATA / id_ / "eval")] + metric_args(m) + ["--tolerance", str(m["tol"])]
    t = time.time()
    p = run(cmd, check=False)
    return out, p, time.time() - t, cmd


def rel(cmd):
    """The command as a reader types it: `edgepredict …` with repository-relative paths."""
    parts = ["edgepredict"] + [a.replace(str(ROOT) + "/", "") for a in cmd[1:]]
    return shlex.join(parts)


def back_offs(stdout):
    """The guard's back-offs, as 'N node(s) backed off (M to a milder setting)'."""
    lines = [l.strip() for l in stdout.splitlines() if l.strip().startswith("backed off")]
    # "backed off Conv 'x' (step: setting; step: kept as it was): …"
    milder = 0
    for l in lines:
        grades = l.split(" (", 1)[1].split("):", 1)[0].split("; ") if " (" in l else []
        if any(not g.endswith("kept as it was") for g in grades):
            milder += 1
    note = f"{len(lines)} node(s) backed off"
    return note + (f" ({milder} to a milder setting)" if milder else "")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--out")
    ap.add_argument("--merge", action="store_true",
                    help="keep the other models' rows of bench/results/compress.json")
    a = ap.parse_args()
    WORK.mkdir(parents=True, exist_ok=True)
    results, failures = [], []
    for id_ in a.models.split(","):
        m = MODELS[id_]
        if not (ROOT / m["file"]).exists() or not (DATA / id_ / "eval").exists():
            failures.append(f"{id_}: model or data missing (run tools/setup.sh)")
            continue
        base = evaluate(id_, m, ROOT / m["file"], a.repeat)
        results.append(dict(model=id_, row="float", cmd="", **base, note=""))
        for label, args in techniques(m):
            out, p, secs, cmd = compress(id_, m, label, args)
            if p.returncode != 0:
                failures.append(f"{id_} {label}: {p.stderr.strip() or p.stdout.strip()}")
                continue
            r = evaluate(id_, m, out, a.repeat)
            results.append(dict(model=id_, row=label, cmd=rel(cmd), **r, note=""))
            print(f"{id_:11} {label:28} {r['bytes']/1e6:7.2f} MB  {m['task']} {r['score']:.4f}", flush=True)
        # The best combination the guard allows: the smallest gzipped model that passed.
        best = None
        for args in m["combos"]:
            label = "guarded " + " ".join(args)
            out, p, secs, cmd = compress(id_, m, label, args, guarded=True)
            if p.returncode != 0:
                continue
            r = evaluate(id_, m, out, a.repeat)
            if best is None or r["gzip"] < best[1]["gzip"]:
                best = (cmd, r, back_offs(p.stdout))
        if best:
            cmd, r, backed = best
            results.append(dict(model=id_, row="best under the guard", cmd=rel(cmd), **r,
                                note=backed))
        if id_ in KNOWN_BAD:
            args = KNOWN_BAD[id_]
            out, p, _, cmd = compress(id_, m, "known-bad", args)
            r = evaluate(id_, m, out, a.repeat)
            results.append(dict(model=id_, row="known-bad: " + " ".join(args[1:]), cmd=rel(cmd), **r,
                                note="unguarded"))
            out, p, _, cmd = compress(id_, m, "known-bad guarded", args, guarded=True)
            if p.returncode != 0:
                note = "guard refused: nothing written"
                results.append(dict(model=id_, row="known-bad under the guard", cmd=rel(cmd),
                                    bytes=None, gzip=None, ms=None, score=None, note=note,
                                    ref_bytes=None, ref_gzip=None, ref_ms=None))
            else:
                r = evaluate(id_, m, out, a.repeat)
                if r["score"] < 1.0 - m["tol"] - 1e-9:
                    failures.append(f"{id_}: the guard let the known-bad recipe through ({r['score']})")
                results.append(dict(model=id_, row="known-bad under the guard", cmd=rel(cmd), **r,
                                    note="guard " + back_offs(p.stdout)))
    saved = ROOT / "bench/results/compress.json"
    if a.merge and saved.exists():
        done = {r["model"] for r in results}
        old = [r for r in json.loads(saved.read_text()) if r["model"] not in done]
        order = list(MODELS)
        results = sorted(old + results, key=lambda r: order.index(r["model"]))
    md = table(results)
    (ROOT / "bench/results").mkdir(parents=True, exist_ok=True)
    (ROOT / "bench/results/compress.json").write_text(json.dumps(results, indent=1))
    (ROOT / "bench/results/compress.md").write_text(md)
    print(md)
    if a.out:
        Path(a.out).write_text(document(md))
    for f in failures:
        print("FAILED:", f, file=sys.stderr)
    return 1 if failures else 0


def table(results):
    lines = ["| model | variant | size | gzipped | CPU ms, eval sets (float) | task metric | note |",
             "|---|---|---:|---:|---:|---:|---|"]
    for r in results:
        m = MODELS[r["model"]]
        size = f"{r['bytes']/1e6:.2f} MB" if r["bytes"] else "—"
        gz = f"{r['gzip']/1e6:.2f} MB" if r["gzip"] else "—"
        ms = f"{r['ms']:.2f} ({r['ref_ms']:.2f})" if r.get("ms") and r.get("ref_ms") else "—"
        score = f"{m['task']} {r['score']:.4f}" if r["score"] is not None else "—"
        lines.append(f"| {r['model']} | {r['row']} | {size} | {gz} | {ms} | {score} | {r['note']} |")
    cmds = [f"- {r['model']} / {r['row']}: `{r['cmd']}`" for r in results if r["cmd"]]
    return "\n".join(lines) + "\n\nCommands:\n" + "\n".join(cmds) + "\n"


def document(md):
    day = datetime.date.today().isoformat()
    cpu = platform.processor() or platform.machine()
    return (f"# Compression results\n\nMade by `tools/compress_table.py` on {day} ({cpu}, "
            f"{os.cpu_count()} cores); latency is our CPU path, one thread: the median of "
            f"the repeats of one pass over all the eval sets, float model in brackets. Task metrics are measured against the float model on held-out "
            f"data (tools/make_compress_data.py).\n\n" + md)


if __name__ == "__main__":
    sys.exit(main())
