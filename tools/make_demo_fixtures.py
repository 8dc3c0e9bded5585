#!/usr/bin/env python3
"""Makes the inputs of the demo page's OCR and voice tests in www/fixtures/generated/.

- ocr_lines.png (+ ocr_lines.json): three lines of DejaVuSans text on white; the last one is
  rotated 180 degrees, so the page must use the angle classifier to read it.
- speech.wav (+ speech.json): 44.1 kHz mono 16-bit (not 16 kHz, so the page must resample):
  silence, a sentence, silence, a sentence, silence, spoken by espeak-ng. The JSON holds the
  true speech intervals: each utterance's non-silent span as espeak rendered it.

Deterministic. Run with .cache/venv/bin/python (numpy, pillow); needs espeak-ng and
fonts-dejavu-core (tools/setup.sh installs both).
"""
import json
import os
import subprocess
import sys
import tempfile
import wave

import numpy as np
from PIL import Image, ImageDraw, ImageFont

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "www", "fixtures", "generated")
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"

# Letters and digits only: every one is in PP-OCR's charset and none is ambiguous in
# DejaVuSans at this size (no l/I/1, no O/0 pairs next to each other).
LINES = ["Edge inference in the browser", "Models run on your device 2026", "Read this upside down"]
UPSIDE_DOWN = [False, False, True]

SENTENCES = ["Speech starts here after a pause.", "Then a second sentence follows."]
RATE = 44100


def ocr_page():
    font = ImageFont.truetype(FONT, 34)
    page = Image.new("RGB", (760, 330), "white")
    y = 40
    boxes = []
    for text, flip in zip(LINES, UPSIDE_DOWN):
        w = int(font.getlength(text)) + 24
        line = Image.new("RGB", (w, 52), "white")
        ImageDraw.Draw(line).text((12, 6), text, font=font, fill=(20, 20, 20))
        if flip:
            line = line.rotate(180)
        x = 40 if not flip else 760 - 40 - w
        page.paste(line, (x, y))
        boxes.append([x, y, x + w, y + 52])
        y += 95
    png = os.path.join(OUT, "ocr_lines.png")
    page.save(png)
    meta = {"lines": LINES, "upside_down": UPSIDE_DOWN, "boxes": boxes, "size": list(page.size)}
    json.dump(meta, open(os.path.join(OUT, "ocr_lines.json"), "w"), indent=1)
    print(f"{os.path.relpath(png, ROOT)}: {page.size[0]}x{page.size[1]}, {len(LINES)} lines")


def espeak(text):
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "s.wav")
        subprocess.run(["espeak-ng", "-s", "150", "-w", path, text], check=True)
        with wave.open(path) as w:
            rate = w.getframerate()
            pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16).astype(np.float64) / 32768.0
    # Resample to RATE by linear interpolation (espeak-ng writes 22050 Hz: exactly 2x).
    t = np.arange(int(len(pcm) * RATE / rate)) * rate / RATE
    return np.interp(t, np.arange(len(pcm)), pcm)


def nonsilent_span(x):
    """First and last sample where a 10 ms moving average of |x| passes 1 % of full scale."""
    win = RATE // 100
    env = np.convolve(np.abs(x), np.ones(win) / win, mode="same")
    idx = np.nonzero(env > 0.01)[0]
    return int(idx[0]), int(idx[-1]) + 1


def speech_wav():
    gaps = [1.5, 2.0, 1.5]  # seconds of silence before, between and after the sentences
    parts, intervals, pos = [], [], 0
    for i, text in enumerate(SENTENCES):
        silence = np.zeros(int(gaps[i] * RATE))
        parts.append(silence)
        pos += len(silence)
        speech = espeak(text) * 0.8
        a, b = nonsilent_span(speech)
        intervals.append([round((pos + a) / RATE, 3), round((pos + b) / RATE, 3)])
        parts.append(speech)
        pos += len(speech)
    parts.append(np.zeros(int(gaps[-1] * RATE)))
    clip = np.concatenate(parts)
    # A little noise, so that the silence is not digital zero (as from a real microphone).
    clip += np.random.default_rng(5).normal(0, 0.002, clip.shape)
    pcm = (np.clip(clip, -1, 1) * 32767).astype("<i2")
    path = os.path.join(OUT, "speech.wav")
    with wave.open(path, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm.tobytes())
    meta = {"sample_rate": RATE, "duration": round(len(pcm) / RATE, 3), "sentences": SENTENCES, "speech": intervals}
    json.dump(meta, open(os.path.join(OUT, "speech.json"), "w"), indent=1)
    print(f"{os.path.relpath(path, ROOT)}: {meta['duration']} s at {RATE} Hz, speech {intervals}")


def main():
    os.makedirs(OUT, exist_ok=True)
    ocr_page()
    speech_wav()


if __name__ == "__main__":
    sys.exit(main())
