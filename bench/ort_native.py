"""Times onnxruntime (PyPI, CPU) on one thread, like `edgepredict bench`: load, warm up,
N timed runs; prints one JSON line. With --compare DIR it also reports the largest
absolute difference to the outputs another runtime wrote there as DIR/<name>.npy.

    python bench/ort_native.py MODEL -i NAME=FILE.npy ... [--warmup 3] [--runs 20]
"""

import argparse
import json
import os
import statistics
import time

import numpy as np
import onnxruntime as ort


def safe_name(name):
    # The file name `edgepredict bench --output` uses for an output.
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


def peak_rss_bytes():
    # VmHWM, not getrusage: Linux carries ru_maxrss over fork and exec, so a child would
    # report its parent's peak.
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model")
    ap.add_argument("-i", "--input", action="append", default=[], metavar="NAME=FILE")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--compare", metavar="DIR")
    a = ap.parse_args()

    feeds = {}
    for spec in a.input:
        name, _, path = spec.partition("=")
        feeds[name] = np.load(path)

    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    t0 = time.perf_counter()
    sess = ort.InferenceSession(a.model, so, providers=["CPUExecutionProvider"])
    load_ms = (time.perf_counter() - t0) * 1e3
    names = [o.name for o in sess.get_outputs()]

    t1 = time.perf_counter()
    outs = sess.run(names, feeds)
    first_ms = (time.perf_counter() - t1) * 1e3
    for _ in range(1, a.warmup):
        sess.run(names, feeds)
    times = []
    for _ in range(max(1, a.runs)):
        t = time.perf_counter()
        outs = sess.run(names, feeds)
        times.append((time.perf_counter() - t) * 1e3)

    res = {
        "load_ms": load_ms,
        "first_ms": first_ms,
        "median_ms": statistics.median(times),
        "min_ms": min(times),
        "runs_ms": times,
        "peak_rss_bytes": peak_rss_bytes(),
        "ort_version": ort.__version__,
    }
    if a.compare:
        max_diff, scale, notes = 0.0, 0.0, []
        # The scale is over float outputs; integer ones such as shapes would inflate it.
        any_float = any(np.issubdtype(np.asarray(r).dtype, np.floating) for r in outs)
        for name, ref in zip(names, outs):
            p = os.path.join(a.compare, safe_name(name) + ".npy")
            if not os.path.exists(p):
                notes.append(f"no output {name}")
                continue
            got = np.load(p)
            ref = np.asarray(ref)
            if got.shape != ref.shape:
                notes.append(f"{name}: shape {got.shape} vs {ref.shape}")
                continue
            if ref.size:
                d = np.abs(got.astype(np.float64) - ref.astype(np.float64))
                max_diff = max(max_diff, float(np.max(d)))
                if not any_float or np.issubdtype(ref.dtype, np.floating):
                    scale = max(scale, float(np.max(np.abs(ref.astype(np.float64)))))
        res["agree"] = {"maxDiff": max_diff, "scale": scale, "notes": notes}
    print(json.dumps(res))


if __name__ == "__main__":
    main()
