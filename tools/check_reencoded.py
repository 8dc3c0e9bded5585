#!/usr/bin/env python3
"""Checks that onnxruntime accepts re-encoded models and computes the same thing.

For every pair X.onnx / X.reencoded.onnx in DIR, loads both with onnxruntime (one thread,
so results are deterministic), feeds both the same random inputs of the declared shapes
and requires the outputs to be identical, bit for bit (NaN equal to NaN).

Symbolic or missing dims take --size (default 1); --shape NAME=D0,D1,... sets one input's
shape (an input named in no model is ignored). Floats are standard normal; integers are
drawn from [0, --int-high); booleans are random. --value NAME=V fills an input with V
(e.g. silero's `sr=16000`, which picks a branch). Exits 1 if any pair differs or fails to load,
2 if DIR holds no pair.

Usage: check_reencoded.py DIR [--size N] [--shape NAME=D0,D1 ...] [--int-high N]
                           [--value NAME=V ...] [--seed S]
"""

import argparse
import pathlib
import sys

import numpy as np
import onnxruntime as ort

DTYPES = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(float16)": np.float16,
    "tensor(int8)": np.int8,
    "tensor(uint8)": np.uint8,
    "tensor(int16)": np.int16,
    "tensor(uint16)": np.uint16,
    "tensor(int32)": np.int32,
    "tensor(uint32)": np.uint32,
    "tensor(int64)": np.int64,
    "tensor(uint64)": np.uint64,
    "tensor(bool)": np.bool_,
}


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def make_inputs(sess, args, rng):
    feeds = {}
    for i in sess.get_inputs():
        if i.type not in DTYPES:
            raise ValueError(f"input {i.name}: unsupported type {i.type}")
        dt = DTYPES[i.type]
        shape = args.shape.get(i.name) or [
            d if isinstance(d, int) and d >= 0 else args.size for d in (i.shape or [])
        ]
        if i.name in args.value:
            feeds[i.name] = np.full(shape, args.value[i.name], dtype=dt)
        elif dt == np.bool_:
            feeds[i.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        elif np.issubdtype(dt, np.floating):
            feeds[i.name] = rng.standard_normal(size=shape).astype(dt)
        else:
            feeds[i.name] = rng.integers(0, args.int_high, size=shape).astype(dt)
    return feeds


def same_bits(a, b):
    a, b = np.asarray(a), np.asarray(b)
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "f":
        return bool(np.array_equal(a, b, equal_nan=True)) and bool(
            np.array_equal(np.signbit(a), np.signbit(b))
        )
    return bool(np.array_equal(a, b))


def check_pair(orig, reenc, args):
    """Returns None when the pair agrees, else the reason."""
    s0 = session(orig)
    try:
        s1 = session(reenc)
    except Exception as e:  # noqa: BLE001 -- onnxruntime raises several types
        return f"onnxruntime refuses the re-encoded model: {e}"
    sig = lambda s: [(i.name, i.type, i.shape) for i in s.get_inputs()]  # noqa: E731
    if sig(s0) != sig(s1):
        return f"inputs differ: {sig(s0)} vs {sig(s1)}"
    if [o.name for o in s0.get_outputs()] != [o.name for o in s1.get_outputs()]:
        return "output names differ"
    feeds = make_inputs(s0, args, np.random.default_rng(args.seed))
    out0 = s0.run(None, feeds)
    out1 = s1.run(None, feeds)
    for o, a, b in zip(s0.get_outputs(), out0, out1):
        if not same_bits(a, b):
            a, b = np.asarray(a), np.asarray(b)
            diff = ""
            if a.shape == b.shape and a.dtype.kind == "f":
                diff = f", max abs diff {np.nanmax(np.abs(a.astype(np.float64) - b)):.3e}"
            return f"output {o.name} differs ({a.dtype}{list(a.shape)} vs {b.dtype}{list(b.shape)}{diff})"
    shapes = ", ".join(f"{o.name}{list(np.shape(a))}" for o, a in zip(s0.get_outputs(), out0))
    print(f"ok   {orig.name}: {len(out0)} outputs identical ({shapes})")
    return None


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("dir", type=pathlib.Path)
    p.add_argument("--size", type=int, default=1, help="value of symbolic dims")
    p.add_argument("--int-high", type=int, default=2, help="integer inputs in [0, N)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--value", action="append", default=[], metavar="NAME=V")
    p.add_argument("--shape", action="append", default=[], metavar="NAME=D0,D1")
    args = p.parse_args()
    args.shape = {k: [int(d) for d in v.split(",")] for k, v in (kv.split("=", 1) for kv in args.shape)}
    args.value = {k: float(v) for k, v in (kv.split("=", 1) for kv in args.value)}

    pairs = []
    for re_path in sorted(args.dir.glob("*.reencoded.onnx")):
        orig = re_path.with_name(re_path.name.replace(".reencoded.onnx", ".onnx"))
        if orig.exists():
            pairs.append((orig, re_path))
    if not pairs:
        print(f"no X.onnx / X.reencoded.onnx pairs in {args.dir}", file=sys.stderr)
        return 2
    failed = 0
    for orig, reenc in pairs:
        try:
            why = check_pair(orig, reenc, args)
        except Exception as e:  # noqa: BLE001
            why = f"{type(e).__name__}: {e}"
        if why:
            failed += 1
            print(f"FAIL {orig.name}: {why}")
    print(f"{len(pairs) - failed} of {len(pairs)} pairs identical in onnxruntime {ort.__version__}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
