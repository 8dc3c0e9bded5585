"""Batch vs online throughput (issue #7), in one run on this machine: `edgepredict batch`
(all cores, inputs stacked along the batch dim, predictions written to SQLite) against a
loop of single predictions (`batch --threads 1 --batch-size 1`, same reading and writing),
and onnxruntime (PyPI, CPU) doing the same batch with the same thread count and the same
stacking, and the same single loop on one thread. Not a test; prints a Markdown table and
writes it to --out.

    python bench/batch.py [--models magika,ppocr_cls,minilm_l3,digits_mlp] [--n 256]
        [--threads N] [--batch-size 16] [--repeat 3] [--out bench/results/batch.md]

onnxruntime's side reads each input file and stacks like ours but stores nothing, so the
ratio is, if anything, in its favour. The CLI is EDGEPREDICT_BIN, else bench/run.sh's
target/bench-native/release/edgepredict (-C target-cpu=native: onnxruntime picks AVX2 at
run time, our kernels at build time), else target/release/edgepredict.
"""

import argparse
import os
import platform
import re
import shutil
import subprocess
import tempfile
import time
from datetime import date

import numpy as np
import onnxruntime as ort

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def make_inputs(model, n, d):
    """n input items under d: one .npy per item (one-input models) or a folder per item."""
    rng = np.random.default_rng(7)
    items = []
    for i in range(n):
        if model == "magika":
            items.append({"bytes": rng.integers(0, 257, (1, 2048), dtype=np.int32)})
        elif model == "ppocr_cls":
            items.append({"x": rng.random((1, 3, 48, 192), dtype=np.float32) - 0.5})
        elif model == "ppocr_rec":
            items.append({"x": rng.random((1, 3, 48, 320), dtype=np.float32) - 0.5})
        elif model == "minilm_l3":
            ids = rng.integers(1000, 30000, (1, 32), dtype=np.int64)
            ids[0, 0], ids[0, -1] = 101, 102
            items.append({"input_ids": ids, "attention_mask": np.ones((1, 32), np.int64)})
        elif model == "digits_mlp":
            x = np.load(os.path.join(ROOT, "models/digits_test.npy")).astype(np.float32)
            items.append({"X": x[i % len(x)][None, :]})
        else:
            raise SystemExit(f"no input recipe for {model}")
    for i, feeds in enumerate(items):
        if len(feeds) == 1:
            np.save(os.path.join(d, f"item{i:05}.npy"), next(iter(feeds.values())))
        else:
            sub = os.path.join(d, f"item{i:05}")
            os.makedirs(sub)
            for name, a in feeds.items():
                np.save(os.path.join(sub, f"{name}.npy"), a)


def model_path(model):
    p = os.path.join(ROOT, "models" if model == "digits_mlp" else ".cache/models", f"{model}.onnx")
    return p if os.path.exists(p) else None


def ours(bin_, model, inputs, threads, batch_size):
    """Predictions/s of one `edgepredict batch` run into a fresh store."""
    with tempfile.TemporaryDirectory() as t:
        r = subprocess.run(
            [bin_, "batch", model, "--inputs", inputs, "--store", os.path.join(t, "s.sqlite"),
             "--threads", str(threads), "--batch-size", str(batch_size), "--quiet"],
            capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(r.stderr.strip().splitlines()[-1])
        return float(re.search(r"\(([\d.]+) predictions/s\)", r.stderr).group(1))


def read_items(inputs):
    """The same files the CLI reads, in the same order, read again on each call."""
    out = []
    for e in sorted(os.listdir(inputs)):
        p = os.path.join(inputs, e)
        if os.path.isdir(p):
            out.append({f[:-4]: os.path.join(p, f) for f in sorted(os.listdir(p))})
        else:
            out.append(p)
    return out


def onnxruntime(model, inputs, threads, batch_size):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    first = sess.get_inputs()[0].name
    paths = read_items(inputs)
    sess.run(None, load(paths[0], first))  # warm-up, as our CLI's load does its packing
    t0 = time.perf_counter()
    for k in range(0, len(paths), batch_size):
        feeds = [load(p, first) for p in paths[k:k + batch_size]]
        stacked = {n: np.concatenate([f[n] for f in feeds]) for n in feeds[0]}
        outs = sess.run(None, stacked)
        assert all(o.shape[0] == len(feeds) for o in outs)
    return len(paths) / (time.perf_counter() - t0)


def load(p, first):
    if isinstance(p, dict):
        return {n: np.load(f) for n, f in p.items()}
    return {first: np.load(p)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", default="magika,ppocr_cls,minilm_l3,digits_mlp")
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench/results/batch.md"))
    a = ap.parse_args()
    native = os.path.join(ROOT, "target/bench-native/release/edgepredict")
    bin_ = os.environ.get("EDGEPREDICT_BIN") or (
        native if os.path.exists(native) else os.path.join(ROOT, "target/release/edgepredict"))
    t, b = a.threads, a.batch_size
    rows = []
    for m in a.models.split(","):
        path = model_path(m)
        if not path:
            rows.append(f"| {m} | missing (run tools/setup.sh) |||||||")
            continue
        d = tempfile.mkdtemp()
        try:
            make_inputs(m, a.n, d)
            best = lambda f: max(f() for _ in range(a.repeat))  # noqa: E731
            batch = best(lambda: ours(bin_, path, d, t, b))
            loop = best(lambda: ours(bin_, path, d, 1, 1))
            ort_batch = best(lambda: onnxruntime(path, d, t, b))
            ort_loop = best(lambda: onnxruntime(path, d, 1, 1))
        finally:
            shutil.rmtree(d)
        rows.append(f"| {m} | {a.n} | {batch:.1f} | {loop:.1f} | {batch / loop:.2f}× | "
                    f"{ort_batch:.1f} | {batch / ort_batch:.2f}× | {ort_loop:.1f} | {loop / ort_loop:.2f}× |")
        print(rows[-1], flush=True)
    head = (f"Batch vs online, predictions/s (best of {a.repeat}; {date.today()}, "
            f"{platform.machine()}, {os.cpu_count()} cores, {t} threads, batch size {b}; "
            f"onnxruntime {ort.__version__}; ours: {os.path.relpath(bin_, ROOT)})\n\n"
            f"| model | inputs | ours: batch | ours: online loop | batch / loop | onnxruntime: batch "
            f"| ours / ort (batch) | onnxruntime: loop | ours / ort (loop) |\n"
            f"|---|---:|---:|---:|---:|---:|---:|---:|---:|\n")
    table = head + "\n".join(rows) + "\n"
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        f.write(table)
    print("\n" + table)


if __name__ == "__main__":
    main()
