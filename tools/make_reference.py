#!/usr/bin/env python3
"""Makes fixed inputs and onnxruntime reference outputs for the real-model tests.

For each model in .cache/models (see tools/fetch_models.sh) it writes
.cache/reference/<id>/ with input_<name>.npy, output_<k>.npy and meta.json, plus the task
data the tests check (rendered text, speech clip, labels). Run by .ci/run through
tools/setup_python.sh's venv (onnxruntime==1.32.0, numpy, pillow). Deterministic.
"""
import json
import os
import subprocess
import sys
import wave

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, ".cache", "models")
OUT = os.path.join(ROOT, ".cache", "reference")
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def session(mid):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(os.path.join(MODELS, mid + ".onnx"), opts, providers=["CPUExecutionProvider"])


def save(mid, inputs, outputs, **meta):
    d = os.path.join(OUT, mid)
    os.makedirs(d, exist_ok=True)
    for name, arr in inputs.items():
        np.save(os.path.join(d, f"input_{safe(name)}.npy"), arr)
    for k, arr in enumerate(outputs):
        np.save(os.path.join(d, f"output_{k}.npy"), arr)
    meta["inputs"] = [[n, f"input_{safe(n)}.npy"] for n in inputs]
    meta["outputs"] = len(outputs)
    with open(os.path.join(d, "meta.json"), "w") as f:
        json.dump(meta, f, indent=1)
    print(f"{mid}: {[a.shape for a in outputs]}")


def safe(name):
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in name)


# --- magika ---------------------------------------------------------------------------
def magika_features(data, cfg):
    block = min(cfg["block_size"], len(data))
    beg = data[:block].lstrip()[: cfg["beg_size"]]
    beg = list(beg) + [cfg["padding_token"]] * (cfg["beg_size"] - len(beg))
    end = data[len(data) - block:].rstrip()
    end = end[max(0, len(end) - cfg["end_size"]):]
    end = [cfg["padding_token"]] * (cfg["end_size"] - len(end)) + list(end)
    return beg + end


def magika():
    cfg = json.load(open(os.path.join(MODELS, "magika_config.json")))
    d = os.path.join(OUT, "magika")
    os.makedirs(d, exist_ok=True)
    png = os.path.join(d, "sample.png")
    render_line("magika reads bytes", 48).save(png)
    files = [(os.path.join(ROOT, "tools", "make_reference.py"), "python"), (png, "png")]
    feats = np.array([magika_features(open(p, "rb").read(), cfg) for p, _ in files], dtype=np.int32)
    out = session("magika").run(None, {"bytes": feats})
    labels = [cfg["target_labels_space"][i] for i in out[0].argmax(1)]
    assert labels == [l for _, l in files], labels
    save("magika", {"bytes": feats}, out, files=[[os.path.relpath(p, ROOT), l] for p, l in files])


# --- PP-OCR -----------------------------------------------------------------------------
TEXT = "edgepredict 2026"


def render_line(text, height):
    font = ImageFont.truetype(FONT, int(height * 0.7))
    w = int(font.getlength(text)) + height // 2
    img = Image.new("RGB", (w, height), "white")
    ImageDraw.Draw(img).text((height // 4, height * 0.1), text, font=font, fill="black")
    return img


def ocr_tensor(img, h, w, pad_to=None):
    ratio = img.width / img.height
    rw = min(w, int(np.ceil(h * ratio)))
    im = np.asarray(img.resize((rw, h), Image.BILINEAR), dtype=np.float32)
    im = (im / 255.0 - 0.5) / 0.5
    out = np.zeros((3, h, pad_to or w), dtype=np.float32)
    out[:, :, :rw] = im.transpose(2, 0, 1)
    return out


def ctc_decode(probs, chars):
    idx = probs.argmax(-1)
    s, prev = [], 0
    for i in idx:
        if i != prev and i != 0:
            s.append(chars[i])
        prev = i
    return "".join(s)


def ppocr():
    rec = session("ppocr_rec")
    chars = rec.get_modelmeta().custom_metadata_map["character"].splitlines()
    chars = ["blank"] + chars + [" "]
    line = render_line(TEXT, 48)
    x = ocr_tensor(line, 48, 320)[None]
    out = rec.run(None, {"x": x})
    got = ctc_decode(out[0][0], chars)
    assert got == TEXT, got
    save("ppocr_rec", {"x": x}, out, text=TEXT)

    up = ocr_tensor(line, 48, 192)
    down = up[:, ::-1, ::-1].copy()
    x = np.stack([up, down])
    out = session("ppocr_cls").run(None, {"x": x})
    assert list(out[0].argmax(1)) == [0, 1], out[0]
    save("ppocr_cls", {"x": x}, out, labels=[0, 1])

    page = Image.new("RGB", (640, 256), "white")
    page.paste(line, (40, 60))
    page.paste(render_line("on the edge", 48), (200, 150))
    x = (np.asarray(page, dtype=np.float32) / 255.0 - np.array([0.485, 0.456, 0.406], np.float32)) / np.array(
        [0.229, 0.224, 0.225], np.float32
    )
    x = x.transpose(2, 0, 1)[None].astype(np.float32)
    out = session("ppocr_det").run(None, {"x": x})
    save("ppocr_det", {"x": x}, out)


# --- silero VAD -------------------------------------------------------------------------
def speech_clip():
    """About 17 s at 16 kHz: silences around three spoken sentences (espeak-ng)."""
    parts = []
    sr = 16000
    sentences = [
        "Inference moves from the cloud to the edge.",
        "The model must be small, and the runtime fast.",
        "Failure must be honest.",
    ]
    tmp = os.path.join(OUT, "silero_speech.wav")
    os.makedirs(OUT, exist_ok=True)
    labels = []
    for i, s in enumerate(sentences):
        silence = np.zeros(int(sr * (2.0 if i == 0 else 1.5)), np.float32)
        parts.append(silence)
        labels.append((0, len(silence)))
        subprocess.run(["espeak-ng", "-s", "140", "-w", tmp, s], check=True)
        with wave.open(tmp) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float32) / 32768.0
        t = np.arange(int(len(pcm) * sr / rate)) * rate / sr
        speech = np.interp(t, np.arange(len(pcm)), pcm).astype(np.float32) * 0.8
        parts.append(speech)
        labels.append((1, len(speech)))
    tail = int(sr * 17.0) - sum(len(p) for p in parts)
    parts.append(np.zeros(max(tail, sr), np.float32))
    labels.append((0, max(tail, sr)))
    clip = np.concatenate(parts)
    rng = np.random.default_rng(7)
    clip = (clip + rng.normal(0, 0.002, clip.shape)).astype(np.float32)
    return clip, labels


def silero(mid, clip, labels):
    s = session(mid)
    chunk, ctx = 512, 64
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, ctx), np.float32)
    probs = []
    n = len(clip) // chunk
    for i in range(n):
        x = clip[None, i * chunk:(i + 1) * chunk]
        inp = np.concatenate([context, x], axis=1)
        out, state = s.run(None, {"input": inp, "state": state, "sr": np.array(16000, np.int64)})
        probs.append(out[0, 0])
        context = x[:, -ctx:]
    probs = np.array(probs, np.float32)
    # Ground truth per frame from where speech was placed.
    truth = np.concatenate([np.full(l, v, np.int8) for v, l in labels])[: n * chunk].reshape(n, chunk).mean(1) > 0.5
    agree = float(((probs > 0.5) == truth).mean())
    print(f"{mid}: {n} frames, onnxruntime agreement with placed speech {agree:.3f}")
    d = os.path.join(OUT, mid)
    os.makedirs(d, exist_ok=True)
    np.save(os.path.join(d, "clip.npy"), clip)
    np.save(os.path.join(d, "probs.npy"), probs)
    np.save(os.path.join(d, "state_final.npy"), state)
    np.save(os.path.join(d, "speech_truth.npy"), truth.astype(np.uint8))
    json.dump({"chunk": chunk, "context": ctx, "frames": n, "ort_truth_agreement": agree}, open(os.path.join(d, "meta.json"), "w"))


# --- MiniLM -----------------------------------------------------------------------------
def minilm():
    # "[CLS] the quick brown fox jumps over the lazy dog [SEP]" and a shorter padded one,
    # in bert-base-uncased ids.
    a = [101, 1996, 4248, 2829, 4419, 14523, 2058, 1996, 13971, 3899, 102]
    b = [101, 7592, 2088, 102]
    ids = np.zeros((2, len(a)), np.int64)
    mask = np.zeros((2, len(a)), np.int64)
    ids[0], mask[0] = a, 1
    ids[1, : len(b)], mask[1, : len(b)] = b, 1
    out = session("minilm_l3").run(None, {"input_ids": ids, "attention_mask": mask})
    save("minilm_l3", {"input_ids": ids, "attention_mask": mask}, out)


def digits():
    s = ort.InferenceSession(os.path.join(ROOT, "models", "digits_mlp.onnx"), providers=["CPUExecutionProvider"])
    x = np.load(os.path.join(ROOT, "models", "digits_test.npy"))
    out = s.run(None, {"X": x})
    save("digits_mlp", {"X": x}, out)


def main():
    os.makedirs(OUT, exist_ok=True)
    digits()
    magika()
    ppocr()
    clip, labels = speech_clip()
    silero("silero_vad", clip, labels)
    silero("silero_vad_op15", clip, labels)
    minilm()
    open(os.path.join(OUT, ".ok"), "w").write(ort.__version__)


if __name__ == "__main__":
    sys.exit(main())
