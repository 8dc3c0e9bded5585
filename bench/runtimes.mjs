// The two runtimes behind one small interface: `open(modelBytes, feeds)` gives a session
// whose `run()` takes the prepared feeds from JS and returns every output as JS typed
// arrays ({name: {data, dims}}), so both sides are timed from JS inputs to JS outputs.

import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';

export const ROOT = path.resolve(path.dirname(new URL(import.meta.url).pathname), '..');
export const ORT_WASM = path.join(ROOT, 'node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.wasm');

/** Our wasm build from bench/pkg/<flavour> (wasm-bindgen --target web). */
export async function ours(flavour) {
  const dir = path.join(ROOT, 'bench/pkg', flavour);
  const wasmFile = path.join(dir, 'edgepredict_bg.wasm');
  const mod = await import(pathToFileURL(path.join(dir, 'edgepredict.js')).href);
  let exports = null;
  return {
    name: `ours-${flavour}`,
    wasmFile,
    /** Compiles and instantiates the module from bytes already in memory. */
    async init(wasmBytes) {
      exports = await mod.default({ module_or_path: wasmBytes ?? fs.readFileSync(wasmFile) });
    },
    /** Size of our module's linear memory in bytes (it only grows, so this is its peak). */
    memoryBytes() {
      return exports?.memory?.buffer.byteLength ?? null;
    },
    async open(modelBytes, feeds) {
      const model = new mod.EdgeModel(modelBytes);
      const f = new mod.Feeds();
      for (const [name, t] of Object.entries(feeds)) {
        const dims = Uint32Array.from(t.dims);
        if (t.type === 'float32') f.f32(name, t.data, dims);
        else if (t.type === 'int64') f.i64(name, t.data, dims);
        else if (t.type === 'int32') f.i32(name, t.data, dims);
        else throw new Error(`no feed type ${t.type}`);
      }
      return {
        async run() {
          const out = model.run(f);
          try {
            const res = {};
            for (let i = 0; i < out.len(); i++) {
              const dt = out.dtype(i);
              const data = dt.startsWith('float') || dt.startsWith('bfloat') ? out.f32(i) : out.i64(i);
              res[out.name(i)] = { data, dims: Array.from(out.shape(i)) };
            }
            return res;
          } finally {
            out.free();
          }
        },
        release() {
          f.free();
          model.free();
        },
      };
    },
  };
}

/** onnxruntime-web's wasm backend, one thread, SIMD (its only build). */
export async function ortWeb() {
  const ort = await import('onnxruntime-web');
  ort.env.wasm.numThreads = 1;
  ort.env.wasm.simd = true;
  ort.env.logLevel = 'error';
  return {
    name: 'ort-web',
    wasmFile: ORT_WASM,
    version: ort.env.versions?.web,
    /** ORT compiles its module inside the first session create; hand it the bytes. */
    async init(wasmBytes) {
      ort.env.wasm.wasmBinary = wasmBytes ?? fs.readFileSync(ORT_WASM);
    },
    async open(modelBytes, feeds) {
      const session = await ort.InferenceSession.create(modelBytes, {
        executionProviders: ['wasm'],
        graphOptimizationLevel: 'all',
        intraOpNumThreads: 1,
        interOpNumThreads: 1,
      });
      const tensors = {};
      for (const [name, t] of Object.entries(feeds)) tensors[name] = new ort.Tensor(t.type, t.data, t.dims);
      return {
        async run() {
          const out = await session.run(tensors);
          const res = {};
          for (const name of session.outputNames) {
            const t = out[name];
            res[name] = { data: t.data, dims: Array.from(t.dims) };
            t.dispose?.();
          }
          return res;
        },
        release() {
          session.release();
        },
      };
    },
  };
}

const isFloat = (d) => d instanceof Float32Array || d instanceof Float64Array;

/**
 * Largest |a-b| over all outputs both sides produced, and the largest |b| over the float
 * outputs (the scale; integer outputs such as shapes would only inflate it).
 */
export function compare(a, b) {
  let maxDiff = 0;
  let scale = 0;
  const notes = [];
  const anyFloat = Object.values(b).some((t) => isFloat(t.data));
  for (const [name, ref] of Object.entries(b)) {
    const got = a[name];
    if (!got) {
      notes.push(`no output ${name}`);
      continue;
    }
    if (got.data.length !== ref.data.length) {
      notes.push(`${name}: ${got.data.length} vs ${ref.data.length} values`);
      continue;
    }
    for (let i = 0; i < ref.data.length; i++) {
      const x = Number(got.data[i]);
      const y = Number(ref.data[i]);
      const d = Math.abs(x - y);
      if (!(d <= maxDiff)) maxDiff = Number.isNaN(d) ? NaN : Math.max(maxDiff, d);
    }
    if (!anyFloat || isFloat(ref.data)) for (const y of ref.data) scale = Math.max(scale, Math.abs(Number(y)));
  }
  return { maxDiff, scale, notes };
}
