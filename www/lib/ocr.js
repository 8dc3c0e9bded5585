// PP-OCR (det → cls → rec) pre- and post-processing for the demo page.
//
// The pure functions work on typed arrays and run in Node (tests/js/ocr_lib.test.mjs); the
// canvas helpers at the end only run in a browser. Nothing touches the DOM at import time.
// The conventions follow PaddleOCR's inference defaults (DBPostProcess, the rec/cls
// resize) so that the models see what they were trained on.

export const DET_MEAN = [0.485, 0.456, 0.406];
export const DET_STD = [0.229, 0.224, 0.225];
export const REC_HEIGHT = 48;
export const CLS_WIDTH = 192;
// PaddleOCR pads every rec batch to at least 320 wide (its rec_image_shape 3,48,320).
export const REC_MIN_WIDTH = 320;
export const REC_MAX_WIDTH = 1600;

// ---- det --------------------------------------------------------------------------------

/// The det input size for an image: the long side at most `limit`, each side rounded to a
/// multiple of 32 (the det network downsamples by 32), at least 32. The image is resized,
/// not padded; `sx`/`sy` map det coordinates back to the image.
export function detSize(width, height, limit = 960) {
  const ratio = Math.max(width, height) > limit ? limit / Math.max(width, height) : 1;
  const w = Math.max(32, Math.round((width * ratio) / 32) * 32);
  const h = Math.max(32, Math.round((height * ratio) / 32) * 32);
  return { width: w, height: h, sx: width / w, sy: height / h };
}

/// RGBA pixels (canvas ImageData order) → CHW float32, (x/255 − mean)/std per channel.
export function detInput(rgba, width, height, out = new Float32Array(3 * width * height)) {
  const plane = width * height;
  for (let c = 0; c < 3; c++) {
    const scale = 1 / (255 * DET_STD[c]);
    const shift = DET_MEAN[c] / DET_STD[c];
    const o = c * plane;
    for (let i = 0; i < plane; i++) out[o + i] = rgba[i * 4 + c] * scale - shift;
  }
  return out;
}

// ---- cls / rec --------------------------------------------------------------------------

/// Width of a line resized to `height` with its aspect ratio kept, capped at `maxWidth`.
export function lineWidth(width, height, maxWidth, targetHeight = REC_HEIGHT) {
  return Math.max(1, Math.min(maxWidth, Math.ceil((targetHeight * width) / height)));
}

/// The padded batch width for rec: the widest line rounded up to 8 (the rec network's
/// time step is 8 pixels), at least REC_MIN_WIDTH.
export function recBatchWidth(widths) {
  const w = Math.max(REC_MIN_WIDTH, ...widths);
  return Math.ceil(w / 8) * 8;
}

/// Lines already resized to height 48 ({ data: RGBA, width, height }) → one [N,3,48,padTo]
/// batch, (x/255 − 0.5)/0.5, each line at the left and zero (grey) on the right, as
/// PaddleOCR pads.
export function lineBatch(lines, padTo, height = REC_HEIGHT) {
  const out = new Float32Array(lines.length * 3 * height * padTo);
  lines.forEach((line, n) => {
    if (line.height !== height) throw new Error(`line ${n} is ${line.height} high, not ${height}`);
    const w = Math.min(line.width, padTo);
    for (let c = 0; c < 3; c++) {
      const base = (n * 3 + c) * height * padTo;
      for (let y = 0; y < height; y++) {
        for (let x = 0; x < w; x++) {
          out[base + y * padTo + x] = line.data[(y * line.width + x) * 4 + c] / 127.5 - 1;
        }
      }
    }
  });
  return out;
}

// ---- DB post-processing -----------------------------------------------------------------

export const DB_DEFAULTS = { thresh: 0.3, boxThresh: 0.6, unclipRatio: 1.5, minSize: 3, maxCandidates: 1000 };

/// Text boxes from the det probability map (`prob`: width×height floats).
///
/// Threshold at `thresh`, 8-connected components, then per component the minimum-area
/// rotated rectangle around its pixels (not the axis-aligned box: a slanted line's
/// axis-aligned box takes in the lines above and below it, and the crop of a rotated
/// rectangle comes out level, which is what rec reads). Keeps boxes whose mean probability
/// inside is ≥ `boxThresh`, grows each by DB's unclip distance area·ratio/perimeter on
/// every side (the network predicts shrunk text kernels), and drops boxes whose short side
/// is under `minSize` (+2 after unclip), as PaddleOCR does.
///
/// Returns [{ points: [[x,y] tl, tr, br, bl], score }] in prob-map pixels; tl→tr is along
/// the line (the axis nearer horizontal), tl→bl across it.
export function dbBoxes(prob, width, height, opts = {}) {
  const { thresh, boxThresh, unclipRatio, minSize, maxCandidates } = { ...DB_DEFAULTS, ...opts };
  const labels = new Int32Array(width * height);
  const stack = new Int32Array(width * height);
  const boxes = [];
  let next = 0;
  for (let start = 0; start < width * height && next < maxCandidates; start++) {
    if (labels[start] !== 0 || !(prob[start] > thresh)) continue;
    next++;
    // Flood fill; record each row's leftmost and rightmost pixel (enough for the hull).
    const rows = new Map();
    let top = 0;
    stack[top++] = start;
    labels[start] = next;
    while (top > 0) {
      const p = stack[--top];
      const y = (p / width) | 0;
      const x = p - y * width;
      const r = rows.get(y);
      if (r === undefined) rows.set(y, [x, x]);
      else if (x < r[0]) r[0] = x;
      else if (x > r[1]) r[1] = x;
      for (let dy = -1; dy <= 1; dy++) {
        const yy = y + dy;
        if (yy < 0 || yy >= height) continue;
        for (let dx = -1; dx <= 1; dx++) {
          const xx = x + dx;
          if (xx < 0 || xx >= width) continue;
          const q = yy * width + xx;
          if (labels[q] === 0 && prob[q] > thresh) {
            labels[q] = next;
            stack[top++] = q;
          }
        }
      }
    }
    const pts = [];
    for (const [y, [x0, x1]] of rows) {
      pts.push([x0, y]);
      if (x1 !== x0) pts.push([x1, y]);
    }
    const rect = minAreaRect(pts);
    if (Math.min(rect.w, rect.h) < minSize) continue;
    const score = rectMean(prob, width, height, rect);
    if (score < boxThresh) continue;
    const d = (rect.w * rect.h * unclipRatio) / (2 * (rect.w + rect.h));
    const grown = { ...rect, w: rect.w + 2 * d, h: rect.h + 2 * d };
    if (Math.min(grown.w, grown.h) < minSize + 2) continue;
    boxes.push({ points: rectPoints(grown), score });
  }
  return boxes;
}

/// Convex hull (Andrew's monotone chain), counter-clockwise in y-up terms, no collinear points.
export function convexHull(points) {
  const p = points.slice().sort((a, b) => a[0] - b[0] || a[1] - b[1]);
  if (p.length < 3) return p;
  const cross = (o, a, b) => (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]);
  const lower = [];
  for (const q of p) {
    while (lower.length >= 2 && cross(lower[lower.length - 2], lower[lower.length - 1], q) <= 0) lower.pop();
    lower.push(q);
  }
  const upper = [];
  for (let i = p.length - 1; i >= 0; i--) {
    const q = p[i];
    while (upper.length >= 2 && cross(upper[upper.length - 2], upper[upper.length - 1], q) <= 0) upper.pop();
    upper.push(q);
  }
  lower.pop();
  upper.pop();
  return lower.concat(upper);
}

/// Minimum-area enclosing rectangle: one side lies on a hull edge (rotating calipers,
/// O(h²) here; hulls of text blobs have few vertices). Returns { cx, cy, ux, uy, w, h }:
/// centre, unit axis u (w along u, h along v = (−uy, ux)), with u the axis nearer horizontal
/// and pointing right, so v points down.
export function minAreaRect(points) {
  const hull = convexHull(points);
  if (hull.length === 0) return { cx: 0, cy: 0, ux: 1, uy: 0, w: 0, h: 0 };
  let best = null;
  const n = hull.length;
  for (let i = 0; i < Math.max(1, n); i++) {
    const a = hull[i], b = hull[(i + 1) % n];
    let ux = b[0] - a[0], uy = b[1] - a[1];
    const len = Math.hypot(ux, uy);
    if (len === 0) { ux = 1; uy = 0; } else { ux /= len; uy /= len; }
    let u0 = Infinity, u1 = -Infinity, v0 = Infinity, v1 = -Infinity;
    for (const [x, y] of hull) {
      const u = x * ux + y * uy, v = -x * uy + y * ux;
      if (u < u0) u0 = u;
      if (u > u1) u1 = u;
      if (v < v0) v0 = v;
      if (v > v1) v1 = v;
    }
    const area = (u1 - u0) * (v1 - v0);
    if (best === null || area < best.area - 1e-9) best = { area, ux, uy, u0, u1, v0, v1 };
  }
  const { ux, uy, u0, u1, v0, v1 } = best;
  const cu = (u0 + u1) / 2, cv = (v0 + v1) / 2;
  return orient({ cx: cu * ux - cv * uy, cy: cu * uy + cv * ux, ux, uy, w: u1 - u0, h: v1 - v0 });
}

// Make u the axis nearer horizontal, pointing right (ties: the first found).
function orient(r) {
  let { ux, uy, w, h } = r;
  if (Math.abs(ux) < Math.abs(uy)) {
    [ux, uy] = [uy, -ux]; // v becomes u: rotating the frame by −90°
    [w, h] = [h, w];
  }
  if (ux < 0 || (ux === 0 && uy < 0)) { ux = -ux; uy = -uy; }
  return { ...r, ux, uy, w, h };
}

/// Corners tl, tr, br, bl of a rect from minAreaRect.
export function rectPoints({ cx, cy, ux, uy, w, h }) {
  const ax = (ux * w) / 2, ay = (uy * w) / 2; // half of u side
  const bx = (-uy * h) / 2, by = (ux * h) / 2; // half of v side
  return [
    [cx - ax - bx, cy - ay - by],
    [cx + ax - bx, cy + ay - by],
    [cx + ax + bx, cy + ay + by],
    [cx - ax + bx, cy - ay + by],
  ];
}

// Mean probability over the pixel centres inside the rect (its edges included, as a
// filled polygon's pixels are in PaddleOCR's box score).
function rectMean(prob, width, height, r) {
  const pts = rectPoints(r);
  const xs = pts.map((p) => p[0]), ys = pts.map((p) => p[1]);
  const x0 = Math.max(0, Math.floor(Math.min(...xs))), x1 = Math.min(width - 1, Math.ceil(Math.max(...xs)));
  const y0 = Math.max(0, Math.floor(Math.min(...ys))), y1 = Math.min(height - 1, Math.ceil(Math.max(...ys)));
  const hw = r.w / 2 + 0.5, hh = r.h / 2 + 0.5;
  let sum = 0, count = 0;
  for (let y = y0; y <= y1; y++) {
    for (let x = x0; x <= x1; x++) {
      const dx = x - r.cx, dy = y - r.cy;
      if (Math.abs(dx * r.ux + dy * r.uy) <= hw && Math.abs(-dx * r.uy + dy * r.ux) <= hh) {
        sum += prob[y * width + x];
        count++;
      }
    }
  }
  return count ? sum / count : 0;
}

/// Det-map boxes → image boxes: scaled by (sx, sy), clamped inside the image.
export function scaleBoxes(boxes, sx, sy, width, height) {
  const clamp = (v, hi) => Math.min(hi, Math.max(0, v));
  return boxes.map((b) => ({ ...b, points: b.points.map(([x, y]) => [clamp(x * sx, width), clamp(y * sy, height)]) }));
}

/// Reading order: top to bottom, then left to right among boxes on the same line (whose
/// vertical centres are closer than half the shorter box's height).
export function sortBoxes(boxes) {
  const info = boxes.map((b) => {
    const ys = b.points.map((p) => p[1]);
    const top = Math.min(...ys), bottom = Math.max(...ys);
    return { b, cy: (top + bottom) / 2, h: bottom - top, x: Math.min(...b.points.map((p) => p[0])) };
  });
  info.sort((a, b) => a.cy - b.cy);
  const lines = [];
  for (const it of info) {
    const line = lines[lines.length - 1];
    const ref = line?.[line.length - 1];
    if (ref && Math.abs(it.cy - ref.cy) < Math.min(it.h, ref.h) / 2) line.push(it);
    else lines.push([it]);
  }
  return lines.flatMap((line) => line.sort((a, b) => a.x - b.x).map((it) => it.b));
}

/// The box's corners turned by 180° (tl↔br, tr↔bl): re-cropping with them turns the crop.
export function rotateBox180(points) {
  const [tl, tr, br, bl] = points;
  return [br, bl, tl, tr];
}

/// The crop size of a box: its side lengths, rounded (at least 1). A line at least 1.5×
/// taller than wide is read turned 90° counter-clockwise (vertical text), as PaddleOCR does:
/// the corners are rotated so that tl→tr runs along the text.
export function cropBox(points) {
  let pts = points;
  const side = (a, b) => Math.hypot(b[0] - a[0], b[1] - a[1]);
  let w = Math.max(side(pts[0], pts[1]), side(pts[3], pts[2]));
  let h = Math.max(side(pts[0], pts[3]), side(pts[1], pts[2]));
  if (h >= 1.5 * w) {
    pts = [pts[1], pts[2], pts[3], pts[0]];
    [w, h] = [h, w];
  }
  return { points: pts, width: Math.max(1, Math.round(w)), height: Math.max(1, Math.round(h)) };
}

/// The affine map (canvas setTransform's a, b, c, d, e, f) that takes the box's tl, tr,
/// bl to (0,0), (width,0), (0,height) of the crop.
export function cropTransform(points, width, height) {
  const [tl, tr, , bl] = points;
  // Columns of B map crop → image: p = tl + B·(x', y'); invert B.
  const b11 = (tr[0] - tl[0]) / width, b21 = (tr[1] - tl[1]) / width;
  const b12 = (bl[0] - tl[0]) / height, b22 = (bl[1] - tl[1]) / height;
  const det = b11 * b22 - b12 * b21;
  if (Math.abs(det) < 1e-12) throw new Error("degenerate box");
  const a = b22 / det, c = -b12 / det, b = -b21 / det, d = b11 / det;
  return [a, b, c, d, -(a * tl[0] + c * tl[1]), -(b * tl[0] + d * tl[1])];
}

// ---- CTC ---------------------------------------------------------------------------------

/// rec's classes: blank, the model's charset (metadata_props "character", one per line),
/// then space.
export function recCharset(character) {
  const chars = character.split("\n");
  if (chars.length && chars[chars.length - 1] === "") chars.pop();
  return ["", ...chars, " "];
}

/// Greedy CTC decode of one line: argmax per step, repeats merged, blanks (0) dropped.
/// `probs` holds T×C values from `offset`. The score is the mean probability of the kept
/// characters (PaddleOCR's), 0 for an empty line.
export function ctcDecode(probs, T, C, chars, offset = 0) {
  let text = "", sum = 0, kept = 0, prev = 0;
  for (let t = 0; t < T; t++) {
    const base = offset + t * C;
    let best = 0, bestP = probs[base];
    for (let k = 1; k < C; k++) {
      const p = probs[base + k];
      if (p > bestP) { bestP = p; best = k; }
    }
    if (best !== 0 && best !== prev) {
      text += chars[best] ?? "";
      sum += bestP;
      kept++;
    }
    prev = best;
  }
  return { text, score: kept ? sum / kept : 0 };
}

/// Decode every line of an [N,T,C] output.
export function ctcDecodeBatch(probs, dims, chars) {
  const [N, T, C] = dims;
  return Array.from({ length: N }, (_, n) => ctcDecode(probs, T, C, chars, n * T * C));
}

// ---- browser: canvas and the pipeline ---------------------------------------------------

// Lines per cls/rec run: bounds the batch tensor on pages with many lines.
const BATCH = 8;

function batches(items, size) {
  const out = [];
  for (let i = 0; i < items.length; i += size) out.push(items.slice(i, i + size));
  return out;
}

function canvas(w, h) {
  if (typeof OffscreenCanvas !== "undefined") return new OffscreenCanvas(w, h);
  const c = document.createElement("canvas");
  c.width = w;
  c.height = h;
  return c;
}

function context2d(c) {
  const g = c.getContext("2d", { willReadFrequently: true });
  g.imageSmoothingEnabled = true;
  g.imageSmoothingQuality = "high";
  return g;
}

/// Draws `source` (an ImageBitmap, image or canvas) at w×h and returns its RGBA pixels.
export function pixels(source, w, h, sw = source.width, sh = source.height) {
  const c = canvas(w, h);
  const g = context2d(c);
  g.drawImage(source, 0, 0, sw, sh, 0, 0, w, h);
  return { data: g.getImageData(0, 0, w, h).data, width: w, height: h, canvas: c };
}

/// Cuts the box out of the image, level, at its own size (a canvas).
export function cropLine(image, points) {
  const { points: pts, width, height } = cropBox(points);
  const c = canvas(width, height);
  const g = context2d(c);
  g.fillStyle = "#fff";
  g.fillRect(0, 0, width, height);
  g.setTransform(...cropTransform(pts, width, height));
  g.drawImage(image, 0, 0);
  return c;
}

/// Runs det → cls → rec on an image. `models`: { det, cls, rec } (edgepredict Models),
/// `Tensor` the package's Tensor class, `chars` from recCharset. `time(label, fn)` wraps
/// each stage (the page shows latencies); default runs fn.
export async function readText(image, { det, cls, rec }, Tensor, chars, { time = (l, f) => f(), limit = 960 } = {}) {
  const W = image.width, H = image.height;
  const size = detSize(W, H, limit);
  const detPix = pixels(image, size.width, size.height);
  const detOut = await time("det", () =>
    det.run({ [det.inputs[0].name]: new Tensor("float32", detInput(detPix.data, size.width, size.height), [1, 3, size.height, size.width]) }),
  );
  const probMap = Object.values(detOut)[0];
  const [, , mh, mw] = probMap.dims;
  let boxes = dbBoxes(probMap.data, mw, mh);
  boxes = sortBoxes(scaleBoxes(boxes, W / mw, H / mh, W, H));
  if (boxes.length === 0) return { lines: [], text: "", det: { width: size.width, height: size.height } };

  // Angle classifier: lines it finds upside down (class 1, confidently) are cut again turned.
  const clsLines = boxes.map((b) => {
    const crop = cropLine(image, b.points);
    return pixels(crop, lineWidth(crop.width, crop.height, CLS_WIDTH), REC_HEIGHT);
  });
  const rotated = new Array(boxes.length);
  await time("cls", async () => {
    for (const idx of batches(clsLines.map((_, i) => i), BATCH)) {
      const x = lineBatch(idx.map((i) => clsLines[i]), CLS_WIDTH);
      const out = Object.values(await cls.run({ [cls.inputs[0].name]: new Tensor("float32", x, [idx.length, 3, REC_HEIGHT, CLS_WIDTH]) }))[0];
      idx.forEach((i, k) => {
        const p0 = out.data[k * 2], p1 = out.data[k * 2 + 1];
        rotated[i] = p1 > p0 && p1 > 0.9;
      });
    }
  });

  const recLines = boxes.map((b, i) => {
    const crop = cropLine(image, rotated[i] ? rotateBox180(b.points) : b.points);
    return pixels(crop, lineWidth(crop.width, crop.height, REC_MAX_WIDTH), REC_HEIGHT);
  });
  // Batches of lines of similar width (sorted), each padded to its widest, as PaddleOCR
  // does: one padded batch of everything would cost the longest line's width for every line.
  const decoded = new Array(boxes.length);
  const byWidth = recLines.map((_, i) => i).sort((a, b) => recLines[a].width - recLines[b].width);
  await time("rec", async () => {
    for (const idx of batches(byWidth, BATCH)) {
      const padTo = recBatchWidth(idx.map((i) => recLines[i].width));
      const x = lineBatch(idx.map((i) => recLines[i]), padTo);
      const out = Object.values(await rec.run({ [rec.inputs[0].name]: new Tensor("float32", x, [idx.length, 3, REC_HEIGHT, padTo]) }))[0];
      ctcDecodeBatch(out.data, out.dims, chars).forEach((d, k) => (decoded[idx[k]] = d));
    }
  });
  const lines = boxes.map((b, i) => ({
    text: decoded[i].text,
    score: +decoded[i].score.toFixed(4),
    boxScore: +b.score.toFixed(4),
    rotated: rotated[i],
    box: b.points.map(([x, y]) => [Math.round(x), Math.round(y)]),
  }));
  return { lines, text: lines.map((l) => l.text).join("\n"), det: { width: size.width, height: size.height } };
}
