#!/usr/bin/env python3
"""Makes the small embedded default model: a scikit-learn MLPClassifier(128, 64) on the
bundled `load_digits` data, exported by skl2onnx 1.20.0 (zipmap off), plus held-out test
samples. Writes models/digits_mlp.onnx and models/digits_test.npy (+ labels). Deterministic;
committed outputs, so builds never need Python. Needs scikit-learn and skl2onnx==1.20.0.
"""
import os

import numpy as np
from skl2onnx import to_onnx
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X, y = load_digits(return_X_y=True)
X = X.astype(np.float32)
Xtr, Xte, ytr, yte = train_test_split(X, y, test_size=0.25, random_state=0)
clf = MLPClassifier((128, 64), max_iter=400, random_state=0).fit(Xtr, ytr)
print("test accuracy", clf.score(Xte, yte))
onx = to_onnx(clf, Xtr[:1], options={id(clf): {"zipmap": False}}, target_opset={"": 15, "ai.onnx.ml": 3})
onx.doc_string = "scikit-learn MLPClassifier(128,64) on load_digits (BSD-3), made by tools/make_digits_mlp.py"
os.makedirs(os.path.join(ROOT, "models"), exist_ok=True)
with open(os.path.join(ROOT, "models", "digits_mlp.onnx"), "wb") as f:
    f.write(onx.SerializeToString())
np.save(os.path.join(ROOT, "models", "digits_test.npy"), Xte)
np.save(os.path.join(ROOT, "models", "digits_test_labels.npy"), yte.astype(np.int64))
