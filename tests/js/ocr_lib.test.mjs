// Unit tests of the demo's pre- and post-processing (www/lib/{ocr,vad,audio}.js) in Node,
// no browser; only the VAD stream test loads a model (silero, through the package).
import test from "node:test";
import assert from "node:assert/strict";
import fs from "node:fs";
import path from "node:path";
import { root, readNpy } from "./support.mjs";
import {
  detSize, detInput, lineWidth, recBatchWidth, lineBatch, dbBoxes, convexHull, minAreaRect, rectPoints,
  sortBoxes, scaleBoxes, rotateBox180, cropBox, cropTransform, recCharset, ctcDecode, ctcDecodeBatch,
  DET_MEAN, DET_STD,
} from "../../www/lib/ocr.js";
import { SpeechTracker, speechSegments, padSegments, SileroVad, detectSpeech } from "../../www/lib/vad.js";
import { Resampler, Framer, downmix } from "../../www/lib/audio.js";

const close = (a, b, tol, msg) => assert.ok(Math.abs(a - b) <= tol, `${msg ?? ""} ${a} vs ${b} (±${tol})`);

// ---- CTC ---------------------------------------------------------------------------------

test("recCharset: blank first, space last, one character a line", () => {
  const chars = recCharset("a\nb\nc\n");
  assert.deepEqual(chars, ["", "a", "b", "c", " "]);
  assert.equal(recCharset("x\ny").length, 4);
});

test("ctcDecode merges repeats, drops blanks, keeps a repeat split by a blank", () => {
  const chars = recCharset("a\nb\nc");
  const C = chars.length; // 5: blank a b c space
  // steps: a a _ a b b _ _ space c c
  const seq = [1, 1, 0, 1, 2, 2, 0, 0, 4, 3, 3];
  const probs = new Float32Array(seq.length * C);
  seq.forEach((k, t) => {
    probs.fill(0.05, t * C, (t + 1) * C);
    probs[t * C + k] = t === 4 ? 0.6 : 0.8;
  });
  const { text, score } = ctcDecode(probs, seq.length, C, chars);
  assert.equal(text, "aab c");
  // Kept steps: t=0 (0.8), 3 (0.8), 4 (0.6), 8 (0.8), 9 (0.8).
  close(score, (0.8 * 4 + 0.6) / 5, 1e-6, "score");
  // Batch: the second line is all blank.
  const batch = new Float32Array(2 * seq.length * C);
  batch.set(probs);
  for (let t = 0; t < seq.length; t++) batch[(seq.length + t) * C] = 1;
  const out = ctcDecodeBatch(batch, [2, seq.length, C], chars);
  assert.deepEqual(out.map((o) => o.text), ["aab c", ""]);
  assert.equal(out[1].score, 0);
});

// ---- det / rec input --------------------------------------------------------------------

test("detSize: multiples of 32, long side limited to 960", () => {
  assert.deepEqual(
    [detSize(760, 330), detSize(2000, 1000), detSize(10, 10), detSize(960, 961)].map((s) => [s.width, s.height]),
    [[768, 320], [960, 480], [32, 32], [960, 960]],
  );
  const s = detSize(2000, 1000);
  close(s.sx, 2000 / 960, 1e-9);
  close(s.sy, 1000 / 480, 1e-9);
});

test("detInput: CHW, ImageNet mean and std", () => {
  const w = 3, h = 2;
  const rgba = new Uint8ClampedArray(w * h * 4);
  for (let i = 0; i < w * h; i++) rgba.set([255, 0, 128, 255], i * 4);
  rgba.set([10, 20, 30, 255], 4 * 4); // pixel (x=1, y=1)
  const x = detInput(rgba, w, h);
  assert.equal(x.length, 3 * w * h);
  close(x[0], (1 - DET_MEAN[0]) / DET_STD[0], 1e-5, "R white");
  close(x[w * h], (0 - DET_MEAN[1]) / DET_STD[1], 1e-5, "G black");
  close(x[2 * w * h + 4], (30 / 255 - DET_MEAN[2]) / DET_STD[2], 1e-5, "B of pixel 4");
});

test("lineWidth, recBatchWidth and lineBatch: height 48, aspect kept, right-padded with 0", () => {
  assert.equal(lineWidth(500, 40, 1600), 600); // ceil(48 * 500 / 40)
  assert.equal(lineWidth(500, 40, 192), 192);
  assert.equal(lineWidth(1, 400, 192), 1);
  assert.equal(recBatchWidth([100, 200]), 320);
  assert.equal(recBatchWidth([601, 100]), 608);
  const mk = (w, v) => ({ data: new Uint8ClampedArray(w * 48 * 4).fill(v), width: w, height: 48 });
  const x = lineBatch([mk(10, 255), mk(20, 0)], 32);
  assert.equal(x.length, 2 * 3 * 48 * 32);
  assert.equal(x[0], 1); // white → +1
  assert.equal(x[9], 1);
  assert.equal(x[10], 0); // padding
  const second = 3 * 48 * 32;
  assert.equal(x[second + 2 * 48 * 32 + 47 * 32 + 19], -1); // black, last channel, last row
  assert.equal(x[second + 20], 0);
  assert.throws(() => lineBatch([{ data: new Uint8ClampedArray(4 * 10 * 40), width: 10, height: 40 }], 32));
});

// ---- DB post-processing -----------------------------------------------------------------

/// A prob map with filled rotated rectangles: { cx, cy, w, h, angle (rad), p }.
function probMap(W, H, rects) {
  const prob = new Float32Array(W * H).fill(0.02);
  for (const r of rects) {
    const ux = Math.cos(r.angle), uy = Math.sin(r.angle);
    for (let y = 0; y < H; y++) {
      for (let x = 0; x < W; x++) {
        const dx = x - r.cx, dy = y - r.cy;
        if (Math.abs(dx * ux + dy * uy) <= r.w / 2 && Math.abs(-dx * uy + dy * ux) <= r.h / 2) prob[y * W + x] = r.p;
      }
    }
  }
  return prob;
}

const side = (a, b) => Math.hypot(b[0] - a[0], b[1] - a[1]);

test("dbBoxes: components, min-area box, score filter, unclip, reading order", () => {
  const W = 320, H = 200;
  const prob = probMap(W, H, [
    { cx: 200, cy: 150, w: 81, h: 17, angle: 0, p: 0.9 }, // bottom line, right
    { cx: 60, cy: 152, w: 61, h: 15, angle: 0, p: 0.8 }, // bottom line, left (same line)
    { cx: 160, cy: 50, w: 161, h: 21, angle: (12 * Math.PI) / 180, p: 0.95 }, // top, slanted 12°
    { cx: 280, cy: 40, w: 30, h: 20, angle: 0, p: 0.45 }, // above thresh 0.3, but score < 0.6
    { cx: 20, cy: 20, w: 2, h: 2, angle: 0, p: 0.99 }, // too small (short side < 3)
  ]);
  const boxes = sortBoxes(dbBoxes(prob, W, H));
  assert.equal(boxes.length, 3, JSON.stringify(boxes));
  const [top, left, right] = boxes;
  // Order: the slanted top line, then the bottom line left to right.
  assert.ok(top.points[0][1] < 60 && left.points[0][0] < right.points[0][0], JSON.stringify(boxes.map((b) => b.points[0])));
  for (const b of boxes) assert.ok(b.score >= 0.6 && b.score <= 0.95 + 1e-6, `score ${b.score}`);
  close(right.score, 0.9, 0.02, "score of a clean blob");

  // Unclip: the pixel-centre rectangle (w0 × h0) grows by d = area·1.5/perimeter per side.
  const grown = (w0, h0) => {
    const d = (w0 * h0 * 1.5) / (2 * (w0 + h0));
    return [w0 + 2 * d, h0 + 2 * d];
  };
  const [ew, eh] = grown(80, 16); // 81 × 17 pixels span 80 × 16 between centres
  close(side(right.points[0], right.points[1]), ew, 0.01, "right box width");
  close(side(right.points[0], right.points[3]), eh, 0.01, "right box height");
  close((right.points[0][0] + right.points[2][0]) / 2, 200, 0.01, "centre x");

  // The slanted line: the box follows its angle (an axis-aligned box would be ~54 px high).
  const angle = Math.atan2(top.points[1][1] - top.points[0][1], top.points[1][0] - top.points[0][0]);
  close((angle * 180) / Math.PI, 12, 1.5, "angle of the slanted box");
  const [tw, th] = grown(160, 20);
  close(side(top.points[0], top.points[1]), tw, 3, "slanted width");
  close(side(top.points[0], top.points[3]), th, 3, "slanted height");
  // tl is top-left: y grows from tl to bl, x from tl to tr.
  assert.ok(top.points[3][1] > top.points[0][1] && top.points[1][0] > top.points[0][0]);
});

test("dbBoxes: nothing above the threshold, nothing found; a lower box threshold keeps the faint blob", () => {
  assert.deepEqual(dbBoxes(new Float32Array(64 * 64).fill(0.29), 64, 64), []);
  const prob = probMap(64, 64, [{ cx: 32, cy: 32, w: 30, h: 20, angle: 0, p: 0.45 }]);
  assert.equal(dbBoxes(prob, 64, 64).length, 0);
  assert.equal(dbBoxes(prob, 64, 64, { boxThresh: 0.4 }).length, 1);
  // The score is the mean over the box: a ramp from 0.5 to 0.9 along x averages 0.7.
  const ramp = new Float32Array(100 * 40).fill(0.02);
  for (let y = 10; y <= 25; y++) for (let x = 10; x <= 90; x++) ramp[y * 100 + x] = 0.5 + (0.4 * (x - 10)) / 80;
  const [b] = dbBoxes(ramp, 100, 40);
  close(b.score, 0.7, 1e-4, "ramp score");
});

test("convexHull and minAreaRect on a rotated rectangle's corners and inner points", () => {
  const rect = { cx: 50, cy: 40, ux: Math.cos(0.3), uy: Math.sin(0.3), w: 60, h: 10 };
  const pts = rectPoints(rect);
  const inner = [[50, 40], [52, 41], [48, 39]];
  const hull = convexHull([...pts, ...inner]);
  assert.equal(hull.length, 4);
  const r = minAreaRect([...pts, ...inner]);
  close(r.w, 60, 1e-6);
  close(r.h, 10, 1e-6);
  close(r.cx, 50, 1e-6);
  close(r.cy, 40, 1e-6);
  close(Math.atan2(r.uy, r.ux), 0.3, 1e-6);
  // A tall rectangle: u stays the axis nearer horizontal, so w is the short side here.
  const tall = minAreaRect(rectPoints({ cx: 0, cy: 0, ux: 1, uy: 0, w: 10, h: 50 }));
  close(tall.w, 10, 1e-9);
  close(tall.h, 50, 1e-9);
  assert.ok(tall.ux > 0.99);
});

test("scaleBoxes clamps; rotateBox180, cropBox and cropTransform map the box onto the crop", () => {
  const [b] = scaleBoxes([{ points: [[-1, 1], [10, 1], [10, 5], [-1, 5]], score: 1 }], 2, 3, 15, 100);
  assert.deepEqual(b.points, [[0, 3], [15, 3], [15, 15], [0, 15]]);

  const pts = rectPoints({ cx: 100, cy: 60, ux: Math.cos(0.2), uy: Math.sin(0.2), w: 120, h: 30 });
  const { points, width, height } = cropBox(pts);
  assert.deepEqual([width, height], [120, 30]);
  const m = cropTransform(points, width, height);
  const apply = ([x, y]) => [m[0] * x + m[2] * y + m[4], m[1] * x + m[3] * y + m[5]];
  const want = [[0, 0], [width, 0], [width, height], [0, height]];
  points.forEach((p, i) => apply(p).forEach((v, k) => close(v, want[i][k], 1e-9, `corner ${i}`)));

  // Turned: the old br lands at the crop's origin.
  const turned = rotateBox180(points);
  const m2 = cropTransform(turned, width, height);
  const o = [m2[0] * points[2][0] + m2[2] * points[2][1] + m2[4], m2[1] * points[2][0] + m2[3] * points[2][1] + m2[5]];
  close(o[0], 0, 1e-9);
  close(o[1], 0, 1e-9);

  // Vertical text (tall box): read turned 90°, so the crop comes out wide.
  const v = cropBox([[10, 10], [30, 10], [30, 110], [10, 110]]);
  assert.deepEqual([v.width, v.height], [100, 20]);
  assert.deepEqual(v.points[0], [30, 10]);
});

// ---- VAD segments -----------------------------------------------------------------------

const FRAME = 512; // samples; 32 ms at 16 kHz
const seq = (...runs) => runs.flatMap(([n, p]) => Array(n).fill(p));

test("speechSegments: hysteresis, min silence, min speech, end of audio, padding", () => {
  const probs = seq(
    [10, 0.1], // 0–9 silence
    [10, 0.9], // 10–19 speech: starts at frame 10
    [3, 0.1], // 20–22: 96 ms of silence < 100 ms: not an end
    [5, 0.9], // 23–27
    [10, 0.4], // 28–37: between the thresholds: still speech
    [20, 0.1], // 38–57: silence from frame 38; ends once it has lasted 100 ms (frame 42)
    [5, 0.8], // 58–62: 160 ms < 250 ms: dropped
    [20, 0.1], // 63–82
    [8, 0.7], // 83–90: to the end of the audio
  );
  const t = new SpeechTracker();
  const closed = probs.map((p) => t.push(p)).map((s, i) => (s ? [i, s] : null)).filter(Boolean);
  // The first segment closes at frame 42 (4 frames = 128 ms after 38); the blip closes but is dropped.
  assert.deepEqual(closed, [[42, { start: 10 * FRAME, end: 38 * FRAME }]]);
  assert.equal(t.speaking, true);
  const last = t.finish(probs.length * FRAME);
  assert.deepEqual(last, { start: 83 * FRAME, end: 91 * FRAME });

  const segs = speechSegments(probs);
  const pad = 0.03;
  const sec = (f) => Math.round(((f * FRAME) / 16000) * 1000) / 1000;
  assert.deepEqual(segs, [
    { start: +(sec(10) - pad).toFixed(3), end: +(sec(38) + pad).toFixed(3) },
    { start: +(sec(83) - pad).toFixed(3), end: sec(91) }, // not padded past the end
  ]);
});

test("speechSegments: a segment at the start, a lone frame, all silence", () => {
  assert.deepEqual(speechSegments(seq([30, 0.1])), []);
  assert.deepEqual(speechSegments(seq([1, 0.99], [30, 0.1])), []); // 32 ms of speech: too short
  const s = speechSegments(seq([20, 0.9], [30, 0.1]));
  assert.equal(s.length, 1);
  assert.equal(s[0].start, 0); // padding stops at 0
  // Exactly 250 ms (not more) is dropped; silero keeps only longer segments.
  const t = new SpeechTracker({ frame: 400 }); // 25 ms frames
  for (const p of seq([10, 0.9], [10, 0.1])) t.push(p);
  assert.equal(t.segments.length, 0);
});

test("padSegments splits a gap shorter than twice the pad", () => {
  const s = padSegments([{ start: 16000, end: 32000 }, { start: 32640, end: 48000 }], 64000);
  // The gap is 640 samples (40 ms) < 60 ms: each side takes 320.
  assert.deepEqual(s, [{ start: 0.97, end: 2.02 }, { start: 2.02, end: 3.03 }]);
});

test("detectSpeech streams silero through Model.stream: onnxruntime's per-chunk probabilities", async (t) => {
  const file = path.join(root, ".cache/models/silero_vad.onnx");
  const ref = path.join(root, ".cache/reference/silero_vad");
  if (!fs.existsSync(file) || !fs.existsSync(path.join(ref, "clip.npy"))) {
    if (process.env.EDGEPREDICT_REQUIRE_MODELS) throw new Error("silero_vad missing: run tools/setup.sh");
    return t.skip("silero_vad not fetched");
  }
  const { Model, Tensor } = await import("edgepredict");
  const model = await Model.load(fs.readFileSync(file), { backend: "cpu" });
  const samples = Float32Array.from(readNpy(path.join(ref, "clip.npy")).data);
  const want = readNpy(path.join(ref, "probs.npy")).data;
  const vad = new SileroVad(model, Tensor);
  const { probs, segments } = await detectSpeech(vad, samples);
  assert.equal(probs.length, Math.ceil(samples.length / 512), "the last partial frame is zero-padded");
  let worst = 0;
  for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(probs[i] - want[i]));
  assert.ok(worst < 1e-4, `max |ours - onnxruntime| ${worst}`);
  assert.ok(segments.length > 0);
  // Run again: detectSpeech resets the stream, so the same clip gives the same numbers.
  assert.deepEqual((await detectSpeech(vad, samples)).probs, probs);
  vad.dispose();
  model.dispose();
});

// ---- audio --------------------------------------------------------------------------------

test("Resampler 48 kHz → 16 kHz: keeps a 440 Hz tone in phase, cuts a 12 kHz one, any block sizes", () => {
  const from = 48000, to = 16000, n = 48000;
  const tone = (f) => Float32Array.from({ length: n }, (_, i) => Math.sin((2 * Math.PI * f * i) / from));
  const whole = new Resampler(from, to).push(tone(440));
  close(whole.length, n / 3, 20, "length");
  let worst = 0;
  for (let k = 40; k < whole.length - 40; k++) worst = Math.max(worst, Math.abs(whole[k] - Math.sin((2 * Math.PI * 440 * k) / to)));
  assert.ok(worst < 0.02, `440 Hz error ${worst}`);

  // In blocks of 128 (the worklet's quantum) and of odd sizes: the same samples.
  for (const sizes of [[128], [1, 7, 300, 5]]) {
    const rs = new Resampler(from, to);
    const x = tone(440);
    const parts = [];
    for (let i = 0, j = 0; i < n; j++) {
      const len = sizes[j % sizes.length];
      parts.push(rs.push(x.subarray(i, i + len)));
      i += len;
    }
    const joined = Float32Array.from(parts.flatMap((p) => Array.from(p)));
    assert.equal(joined.length, whole.length, `block sizes ${sizes}`);
    for (let k = 0; k < joined.length; k++) close(joined[k], whole[k], 1e-5, `sample ${k} (blocks ${sizes})`);
  }

  // 12 kHz would fold to 4 kHz without the low-pass.
  const alias = new Resampler(from, to).push(tone(12000));
  const rms = Math.sqrt(alias.slice(40).reduce((a, v) => a + v * v, 0) / (alias.length - 40));
  assert.ok(rms < 0.05, `12 kHz after resampling: rms ${rms}`);
});

test("Resampler 8 kHz → 16 kHz interpolates; Framer cuts 512-sample frames; downmix averages", () => {
  const up = new Resampler(8000, 16000).push(Float32Array.of(0, 1, 2, 3));
  assert.deepEqual(Array.from(up), [0, 0.5, 1, 1.5, 2, 2.5]);

  const fr = new Framer(512);
  assert.equal(fr.push(new Float32Array(500)).length, 0);
  const x = Float32Array.from({ length: 600 }, (_, i) => i);
  const frames = fr.push(x);
  assert.equal(frames.length, 2);
  assert.equal(frames[0][500], 0);
  assert.equal(frames[0][511], 11);
  assert.equal(frames[1][0], 12);
  assert.equal(fr.fill, 1100 - 1024);

  assert.deepEqual(Array.from(downmix([Float32Array.of(1, 2), Float32Array.of(3, 4)])), [2, 3]);
});
