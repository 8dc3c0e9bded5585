"""Runs MODEL in onnxruntime on a reference folder's inputs and writes its outputs.

usage: ort_outputs.py MODEL REF_DIR OUT_DIR
REF_DIR is a folder made by tools/make_reference.py: meta.json lists the inputs as
[name, file.npy]. OUT_DIR gets output_K.npy, one per model output, in model order.
The tests use it to check that a model our compressor wrote runs in onnxruntime too.
"""
import json
import os
import sys

import numpy as np
import onnxruntime as ort


def main():
    model, ref, out = sys.argv[1:4]
    meta = json.load(open(os.path.join(ref, "meta.json")))
    feeds = {name: np.load(os.path.join(ref, f)) for name, f in meta["inputs"]}
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    os.makedirs(out, exist_ok=True)
    for k, v in enumerate(sess.run(None, feeds)):
        np.save(os.path.join(out, f"output_{k}.npy"), v)


if __name__ == "__main__":
    main()
