// The benchmark's models and their deterministic inputs: the same bytes feed our wasm,
// onnxruntime-web, our native CLI and onnxruntime (PyPI), so every runtime sees one input.

import fs from 'node:fs';
import path from 'node:path';

/** mulberry32: a small seeded PRNG; uniform floats in [0, 1). */
export function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/**
 * A grey page with dark text-like strokes (rows of glyph boxes), RGB as h*w*3 bytes.
 * Realistic enough that PP-OCR's activations look like those of real text, and the same
 * on every run.
 */
function textImage(h, w, rand, lines) {
  const px = new Uint8Array(h * w * 3);
  for (let i = 0; i < px.length; i++) px[i] = 225 + Math.floor(rand() * 25);
  const lineH = Math.floor(h / lines);
  for (let l = 0; l < lines; l++) {
    const top = l * lineH + Math.floor(lineH * 0.2);
    const bottom = l * lineH + Math.floor(lineH * 0.8);
    let x = 4 + Math.floor(rand() * 8);
    const end = w - 4 - Math.floor(rand() * w * 0.3);
    while (x < end) {
      const gw = 3 + Math.floor(rand() * Math.max(4, (bottom - top) * 0.7));
      // A glyph: a few vertical and horizontal strokes inside its box.
      const strokes = 2 + Math.floor(rand() * 3);
      for (let s = 0; s < strokes; s++) {
        const vertical = rand() < 0.5;
        const sx = x + Math.floor(rand() * gw);
        const sy = top + Math.floor(rand() * (bottom - top));
        const ink = 20 + Math.floor(rand() * 60);
        const len = vertical ? bottom - top : gw;
        for (let k = 0; k < len; k++) {
          for (let t = 0; t < 2; t++) {
            const yy = vertical ? top + k : sy + t;
            const xx = vertical ? sx + t : x + k;
            if (yy < 0 || yy >= h || xx < 0 || xx >= w) continue;
            const o = (yy * w + xx) * 3;
            px[o] = px[o + 1] = px[o + 2] = ink;
          }
        }
      }
      x += gw + 2 + Math.floor(rand() * 4);
      if (rand() < 0.15) x += 6 + Math.floor(rand() * 10); // a space between words
    }
  }
  return px;
}

/** HWC bytes → CHW float32, (v/255 - mean[c]) / std[c], batch 1. */
function normalize(px, h, w, mean, std) {
  const out = new Float32Array(3 * h * w);
  for (let c = 0; c < 3; c++) {
    for (let i = 0; i < h * w; i++) {
      out[c * h * w + i] = (px[i * 3 + c] / 255 - mean[c]) / std[c];
    }
  }
  return out;
}

const f32 = (data, dims) => ({ type: 'float32', data, dims });
const i64 = (data, dims) => ({ type: 'int64', data: BigInt64Array.from(data, BigInt), dims });
const i32 = (data, dims) => ({ type: 'int32', data: Int32Array.from(data), dims });

/** A synthetic source file, as magika would see it: first and last 1024 bytes. */
function magikaBytes(rand) {
  const words = ['value', 'count', 'index', 'buffer', 'result', 'name', 'items', 'total'];
  let src = '#!/usr/bin/env python3\n"""Synthetic module for the benchmark."""\nimport os\nimport sys\n\n';
  for (let f = 0; src.length < 6000; f++) {
    const a = words[Math.floor(rand() * words.length)];
    const b = words[Math.floor(rand() * words.length)];
    src += `def ${a}_${f}(${b}, n=${Math.floor(rand() * 100)}):\n`;
    src += `    ${a} = [${b} * i for i in range(n)]\n`;
    src += `    if len(${a}) > ${Math.floor(rand() * 50)}:\n        return sum(${a})\n`;
    src += `    return ${b}\n\n`;
  }
  src += 'if __name__ == "__main__":\n    print(value_0(3))\n';
  const bytes = Buffer.from(src.trim(), 'utf8');
  const ids = new Array(2048);
  for (let i = 0; i < 1024; i++) ids[i] = bytes[i];
  for (let i = 0; i < 1024; i++) ids[1024 + i] = bytes[bytes.length - 1024 + i];
  return ids;
}

/** 64 samples of context + 512 new samples at 16 kHz: a voiced, vowel-like sound. */
function speechChunk(rand) {
  const n = 576;
  const wave = new Float32Array(n);
  const f0 = 140;
  for (let i = 0; i < n; i++) {
    const t = i / 16000;
    let v = 0;
    for (let k = 1; k <= 12; k++) {
      // Harmonics shaped by two formants (about 700 Hz and 1200 Hz).
      const f = k * f0;
      const g = Math.exp(-(((f - 700) / 250) ** 2)) + 0.6 * Math.exp(-(((f - 1200) / 300) ** 2)) + 0.05;
      v += g * Math.sin(2 * Math.PI * f * t + k);
    }
    wave[i] = 0.15 * v + 0.01 * (rand() * 2 - 1);
  }
  return wave;
}

function sileroFeeds(rand) {
  return {
    input: f32(speechChunk(rand), [1, 576]),
    state: f32(new Float32Array(2 * 128), [2, 1, 128]),
    sr: i64([16000], []),
  };
}

/**
 * The benchmarked models: id, float file, and a function making the feeds (name →
 * {type, data, dims}).
 */
export const MODELS = [
  {
    id: 'magika',
    what: 'bytes int32 [1,2048]',
    feeds: (rand) => ({ bytes: i32(magikaBytes(rand), [1, 2048]) }),
  },
  {
    id: 'ppocr_cls',
    what: 'x [1,3,48,192]',
    feeds: (rand) => ({ x: f32(normalize(textImage(48, 192, rand, 1), 48, 192, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]), [1, 3, 48, 192]) }),
  },
  {
    id: 'ppocr_det',
    what: 'x [1,3,256,640]',
    feeds: (rand) => ({
      x: f32(
        normalize(textImage(256, 640, rand, 6), 256, 640, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        [1, 3, 256, 640],
      ),
    }),
  },
  {
    id: 'ppocr_rec',
    what: 'x [1,3,48,320]',
    feeds: (rand) => ({ x: f32(normalize(textImage(48, 320, rand, 1), 48, 320, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5]), [1, 3, 48, 320]) }),
  },
  {
    id: 'minilm_l3',
    what: 'input_ids, attention_mask int64 [1,128]',
    feeds: (rand) => {
      const ids = [101];
      while (ids.length < 127) ids.push(1996 + Math.floor(rand() * 27000));
      ids.push(102);
      return { input_ids: i64(ids, [1, 128]), attention_mask: i64(new Array(128).fill(1), [1, 128]) };
    },
  },
  {
    id: 'silero_vad',
    what: 'input [1,576], state [2,1,128], sr int64 16000',
    feeds: sileroFeeds,
  },
  {
    // The 16 kHz-only export: the int8 variants are made from it, because the quantizer
    // does not reach into the If subgraphs that hold silero_vad's weights.
    id: 'silero_vad_op15',
    what: 'input [1,576], state [2,1,128], sr int64 16000',
    feeds: sileroFeeds,
  },
];

export const RECIPES = ['qdq', 'qop', 'dyn'];

/** Every variant of a model: float plus the int8 recipes, each with its file and whether it exists. */
export function variants(root, id) {
  const list = [{ variant: 'f32', file: path.join(root, '.cache/models', `${id}.onnx`) }];
  for (const r of RECIPES) list.push({ variant: `int8 ${r}`, file: path.join(root, '.cache/models/int8', `${id}_${r}.onnx`) });
  return list.map((v) => ({ ...v, exists: fs.existsSync(v.file) }));
}

/** The feeds of a model, from a fixed seed. */
export function makeFeeds(model, seed = 20261129) {
  return model.feeds(rng(seed));
}

/** Writes one feed as .npy (v1.0), little-endian. */
export function writeNpy(file, feed) {
  const descr = { float32: '<f4', int32: '<i4', int64: '<i8' }[feed.type];
  const shape = feed.dims.length === 0 ? '()' : feed.dims.length === 1 ? `(${feed.dims[0]},)` : `(${feed.dims.join(', ')})`;
  let header = `{'descr': '${descr}', 'fortran_order': False, 'shape': ${shape}, }`;
  const total = 10 + header.length + 1;
  header += ' '.repeat((64 - (total % 64)) % 64) + '\n';
  const pre = Buffer.alloc(10);
  Buffer.from([0x93]).copy(pre, 0);
  pre.write('NUMPY', 1, 'latin1');
  pre[6] = 1;
  pre[7] = 0;
  pre.writeUInt16LE(header.length, 8);
  const body = Buffer.from(feed.data.buffer, feed.data.byteOffset, feed.data.byteLength);
  fs.writeFileSync(file, Buffer.concat([pre, Buffer.from(header, 'latin1'), body]));
}
