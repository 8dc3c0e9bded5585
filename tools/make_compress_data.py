#!/usr/bin/env python3
"""Makes the calibration and evaluation input sets of the compression CLI (issue #6).

For each real model it writes .cache/compress-data/<model>/{calib,eval}/set_KKK/<input>.npy:
one folder per set (one run of the model), one .npy per model input, named after the input
(what `edgepredict compress --data DIR` and `evaluate --data DIR` read). Calibration and
evaluation sets come from disjoint samples. Where there is ground truth,
<model>/eval/labels.json holds it:
  {"kind": "class" | "text" | "speech", "source": "...", "labels": {"set_000": ..., ...}}
("class": class index of the set's one row; "text": the rendered string; "speech": 1 if
the frame is speech). <model>/info.json says how the sets were made.

Deterministic (seeded; magika's files are picked from sorted listings of this machine).
Run with .cache/venv/bin/python after tools/fetch_models.sh and tools/make_reference.py.
"""
import json
import os
import shutil
import sys

import numpy as np
import onnxruntime as ort
from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = os.path.join(ROOT, ".cache", "models")
REF = os.path.join(ROOT, ".cache", "reference")
OUT = os.path.join(ROOT, ".cache", "compress-data")
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def session(path):
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def model_session(mid):
    return session(os.path.join(MODELS, mid + ".onnx"))


def write_sets(mid, split, sets, labels=None, kind=None, source=None):
    """sets: list of {input name: array}; labels: list, parallel to sets."""
    d = os.path.join(OUT, mid, split)
    for k, feeds in enumerate(sets):
        sd = os.path.join(d, f"set_{k:03d}")
        os.makedirs(sd, exist_ok=True)
        for name, arr in feeds.items():
            np.save(os.path.join(sd, f"{name}.npy"), arr)
    if labels is not None:
        json.dump(
            {"kind": kind, "source": source, "labels": {f"set_{k:03d}": l for k, l in enumerate(labels)}},
            open(os.path.join(d, "labels.json"), "w"),
            indent=0,
        )


def write_info(mid, **info):
    json.dump(info, open(os.path.join(OUT, mid, "info.json"), "w"), indent=1)
    print(f"{mid}: {info.get('eval')} eval, {info.get('calib')} calib sets")


# --- digits -------------------------------------------------------------------------------
def digits():
    x = np.load(os.path.join(ROOT, "models", "digits_test.npy")).astype(np.float32)
    y = np.load(os.path.join(ROOT, "models", "digits_test_labels.npy"))
    order = np.random.default_rng(11).permutation(len(x))
    ev, ca = order[:150], order[150:200]
    write_sets("digits_mlp", "eval", [{"X": x[i : i + 1]} for i in ev], [int(y[i]) for i in ev], "class",
               "models/digits_test_labels.npy")
    write_sets("digits_mlp", "calib", [{"X": x[i : i + 1]} for i in ca])
    write_info("digits_mlp", eval=len(ev), calib=len(ca), source="models/digits_test.npy rows, seeded split")


# --- magika -------------------------------------------------------------------------------
def magika_features(data, cfg):
    # As tools/make_reference.py.
    block = min(cfg["block_size"], len(data))
    beg = data[:block].lstrip()[: cfg["beg_size"]]
    beg = list(beg) + [cfg["padding_token"]] * (cfg["beg_size"] - len(beg))
    end = data[len(data) - block :].rstrip()
    end = end[max(0, len(end) - cfg["end_size"]) :]
    end = [cfg["padding_token"]] * (cfg["end_size"] - len(end)) + list(end)
    return beg + end


MAGIKA_EXTS = [".py", ".json", ".html", ".so", ".png", ".txt", ".gz", ".xml", ".css", ".js", ".h", ".c", ".sh",
               ".svg", ".ttf", ".pyi", ".md", ".csv", ".pem", ".zip"]


def magika_files(per_ext=3, max_visit=60000):
    roots = [os.path.join(ROOT, ".cache", "venv"), "/usr/share", "/usr/include", "/etc"]
    found = {e: [] for e in MAGIKA_EXTS}
    visited = 0
    for r in roots:
        for dirpath, dirnames, filenames in os.walk(os.path.realpath(r)):
            dirnames.sort()
            for f in sorted(filenames):
                visited += 1
                ext = os.path.splitext(f)[1].lower()
                p = os.path.join(dirpath, f)
                # Enough of each kind: keep a few per folder-tree, at most 4 × per_ext.
                if ext in found and len(found[ext]) < 4 * per_ext and os.path.isfile(p) and not os.path.islink(p):
                    try:
                        if os.path.getsize(p) >= 64:
                            found[ext].append(p)
                    except OSError:
                        pass
            if visited > max_visit:
                break
    rng = np.random.default_rng(3)
    picked = []
    for e in MAGIKA_EXTS:
        fs = found[e]
        if fs:
            idx = rng.permutation(len(fs))[: per_ext]
            picked += [(fs[i], e) for i in sorted(idx)]
    return picked


def magika():
    cfg = json.load(open(os.path.join(MODELS, "magika_config.json")))
    files = magika_files()
    feats = np.array([magika_features(open(p, "rb").read(), cfg) for p, _ in files], dtype=np.int32)
    top = model_session("magika").run(None, {"bytes": feats})[0].argmax(1)
    order = np.random.default_rng(5).permutation(len(files))
    ne = min(32, len(files) * 2 // 3)
    ev, ca = order[:ne], order[ne : ne + 16]
    names = cfg["target_labels_space"]
    write_sets("magika", "eval", [{"bytes": feats[i : i + 1]} for i in ev], [int(top[i]) for i in ev], "class",
               "the float model's top-1 (onnxruntime); the file kind is in info.json")
    write_sets("magika", "calib", [{"bytes": feats[i : i + 1]} for i in ca])
    write_info("magika", eval=len(ev), calib=len(ca),
               files={f"set_{k:03d}": [files[i][0], files[i][1], names[top[i]]] for k, i in enumerate(ev)},
               calib_files=[files[i][0] for i in ca])


# --- PP-OCR -------------------------------------------------------------------------------
WORDS = ("river stone cloud paper seven garden window orange market silver winter bridge yellow "
         "planet coffee rabbit morning station letter number forest engine camera violet mountain "
         "summer bottle pencil marble castle signal harbor candle ticket basket rocket butter "
         "jacket circle dragon button").split()


def render_line(text, height):
    font = ImageFont.truetype(FONT, int(height * 0.7))
    w = int(font.getlength(text)) + height // 2
    img = Image.new("RGB", (w, height), "white")
    ImageDraw.Draw(img).text((height // 4, height * 0.1), text, font=font, fill="black")
    return img


def ocr_tensor(img, h, w):
    ratio = img.width / img.height
    rw = min(w, int(np.ceil(h * ratio)))
    im = np.asarray(img.resize((rw, h), Image.BILINEAR), dtype=np.float32)
    im = (im / 255.0 - 0.5) / 0.5
    out = np.zeros((3, h, w), dtype=np.float32)
    out[:, :, :rw] = im.transpose(2, 0, 1)
    return out


def phrases(n, seed):
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 3))
        words = [WORDS[i] for i in rng.choice(len(WORDS), k, replace=False)]
        if rng.random() < 0.5:
            words.append(str(int(rng.integers(10, 2000))))
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        out.append(" ".join(words))
    return out


def ppocr():
    texts = phrases(24 + 8, 21)
    ev, ca = texts[:24], texts[24:]
    lines = {t: render_line(t, 48) for t in texts}

    # rec: 48×320 as make_reference.py.
    write_sets("ppocr_rec", "eval", [{"x": ocr_tensor(lines[t], 48, 320)[None]} for t in ev], ev, "text",
               "the rendered string (DejaVuSans); compare after strip(): CTC may add edge spaces")
    write_sets("ppocr_rec", "calib", [{"x": ocr_tensor(lines[t], 48, 320)[None]} for t in ca])
    write_info("ppocr_rec", eval=len(ev), calib=len(ca), shape=[1, 3, 48, 320])

    # cls: each line at 0° and 180° (label 0 / 1), 48×192.
    def both(ts):
        sets, labels = [], []
        for t in ts:
            up = ocr_tensor(lines[t], 48, 192)
            sets.append({"x": up[None]})
            labels.append(0)
            sets.append({"x": np.ascontiguousarray(up[:, ::-1, ::-1])[None]})
            labels.append(1)
        return sets, labels

    s, l = both(ev[:12])
    write_sets("ppocr_cls", "eval", s, l, "class", "0 = upright, 1 = rotated 180°")
    s, _ = both(ca[:4])
    write_sets("ppocr_cls", "calib", s)
    write_info("ppocr_cls", eval=24, calib=8, shape=[1, 3, 48, 192])

    # det: 192×192 pages with two lines each, ImageNet-normalized as make_reference.py.
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    rng = np.random.default_rng(8)

    def page(k):
        p = Image.new("RGB", (192, 192), "white")
        for j in range(2):
            t = texts[(2 * k + j) % len(texts)]
            ln = render_line(t, 32)
            p.paste(ln, (int(rng.integers(4, 24)), 24 + 84 * j + int(rng.integers(0, 30))))
        x = (np.asarray(p, dtype=np.float32) / 255.0 - mean) / std
        return {"x": x.transpose(2, 0, 1)[None].astype(np.float32)}

    write_sets("ppocr_det", "eval", [page(k) for k in range(6)])
    write_sets("ppocr_det", "calib", [page(k) for k in range(6, 10)])
    write_info("ppocr_det", eval=6, calib=4, shape=[1, 3, 192, 192])


# --- silero VAD ---------------------------------------------------------------------------
def silero(mid):
    ref = os.path.join(REF, "silero_vad")
    clip = np.load(os.path.join(ref, "clip.npy"))
    truth = np.load(os.path.join(ref, "speech_truth.npy"))
    s = model_session(mid)
    chunk, ctx = 512, 64
    state = np.zeros((2, 1, 128), np.float32)
    context = np.zeros((1, ctx), np.float32)
    n = len(clip) // chunk
    frames = []
    for i in range(n):
        x = clip[None, i * chunk : (i + 1) * chunk]
        inp = np.concatenate([context, x], axis=1).astype(np.float32)
        frames.append((inp, state))
        _, state = s.run(None, {"input": inp, "state": state, "sr": np.array(16000, np.int64)})
        context = x[:, -ctx:]
    # Evenly spread and disjoint: eval frames are multiples of 3, calib ones 1 past.
    ev = [3 * j for j in np.linspace(0, (n - 2) // 3, 64).astype(int)]
    ca = [3 * j + 1 for j in np.linspace(0, (n - 2) // 3, 32).astype(int)]
    sr = np.array(16000, np.int64)

    def sets(idx):
        return [{"input": frames[i][0], "state": frames[i][1], "sr": sr} for i in idx]

    write_sets(mid, "eval", sets(ev), [int(truth[i]) for i in ev], "speech",
               "where make_reference.py placed espeak-ng speech (speech_truth.npy)")
    write_sets(mid, "calib", sets(ca))
    write_info(mid, eval=len(ev), calib=len(ca), frames={"eval": [int(i) for i in ev], "calib": [int(i) for i in ca]},
               source=".cache/reference/silero_vad/clip.npy; state = the float model's (onnxruntime) before each frame")


# --- MiniLM -------------------------------------------------------------------------------
SENTENCES = [
    "the cat sits on the mat", "a dog runs in the park", "it is raining today", "i like green tea",
    "the train leaves at noon", "she reads a book every night", "we bought fresh bread", "the sky is clear",
    "my phone battery is low", "he plays the guitar", "the meeting was cancelled", "birds fly south in winter",
    "this soup is too hot", "the store opens at nine", "they won the football match", "please close the door",
    "the river flows to the sea", "our team fixed the bug", "the museum is free on sunday", "coffee keeps me awake",
    "the children are playing outside", "a small boat crossed the lake", "the model runs on the phone",
    "snow covered the mountain road",
]
CALIB_SENTENCES = [
    "the weather is nice", "he cooked dinner for everyone", "the bus was late again", "music helps me focus",
    "a new bridge opened downtown", "she painted the wall blue", "the library has many books", "we walked along the beach",
]


def wordpiece(text, vocab):
    import unicodedata

    words, cur = [], ""
    for ch in text.lower():
        if ch.isspace():
            if cur:
                words.append(cur)
            cur = ""
        elif unicodedata.category(ch).startswith("P"):
            if cur:
                words.append(cur)
            words.append(ch)
            cur = ""
        else:
            cur += ch
    if cur:
        words.append(cur)
    ids = []
    for w in words:
        start, pieces = 0, []
        while start < len(w):
            end = len(w)
            while end > start:
                piece = w[start:end] if start == 0 else "##" + w[start:end]
                if piece in vocab:
                    pieces.append(vocab[piece])
                    break
                end -= 1
            if end == start:
                pieces = [vocab["[UNK]"]]
                break
            start = end
        ids += pieces
    return ids


def minilm():
    vocab = json.load(open(os.path.join(MODELS, "minilm_tokenizer.json")))["model"]["vocab"]
    seq = 16

    def sets(sents):
        out = []
        for s in sents:
            ids = [vocab["[CLS]"]] + wordpiece(s, vocab)[: seq - 2] + [vocab["[SEP]"]]
            x = np.zeros((1, seq), np.int64)
            m = np.zeros((1, seq), np.int64)
            x[0, : len(ids)], m[0, : len(ids)] = ids, 1
            out.append({"input_ids": x, "attention_mask": m})
        return out

    write_sets("minilm_l3", "eval", sets(SENTENCES))
    write_sets("minilm_l3", "calib", sets(CALIB_SENTENCES))
    write_info("minilm_l3", eval=len(SENTENCES), calib=len(CALIB_SENTENCES), seq=seq,
               sentences={f"set_{k:03d}": s for k, s in enumerate(SENTENCES)},
               note="no ground truth: compare embeddings with the float model (cosine)")


def main():
    if os.path.isdir(OUT):
        shutil.rmtree(OUT)
    os.makedirs(OUT)
    digits()
    magika()
    ppocr()
    silero("silero_vad")
    if os.path.exists(os.path.join(MODELS, "silero_vad_op15.onnx")):
        silero("silero_vad_op15")
    minilm()
    open(os.path.join(OUT, ".ok"), "w").write("1")


if __name__ == "__main__":
    sys.exit(main())
