// One cold start in a fresh process: with the runtime's .wasm, the model and the inputs
// already in memory, times compile + instantiate + model load + first run, then runs a few
// more times and reports the process's peak RSS. Prints one JSON line.
//
//   node bench/cold.mjs <ours-simd128|ours-relaxed|ort-web|none> <model.onnx> <model id>

import fs from 'node:fs';
import { MODELS, makeFeeds } from './inputs.mjs';
import { ours, ortWeb } from './runtimes.mjs';

const [runtime, file, id] = process.argv.slice(2);
// VmHWM, not getrusage: Linux carries ru_maxrss over fork and exec, so a child would
// report its parent's peak.
const peakRss = () => {
  const m = /VmHWM:\s+(\d+) kB/.exec(fs.readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : null;
};

if (runtime === 'none') {
  // An idle Node process: the floor under every peak RSS below.
  console.log(JSON.stringify({ peakRss: peakRss() }));
  process.exit(0);
}

const r = runtime === 'ort-web' ? await ortWeb() : await ours(runtime.replace(/^ours-/, ''));
const wasmBytes = fs.readFileSync(r.wasmFile);
const modelBytes = fs.readFileSync(file);
const model = MODELS.find((m) => m.id === id);
if (!model) throw new Error(`unknown model id ${id}`);
const feeds = makeFeeds(model);

const t0 = performance.now();
await r.init(wasmBytes);
const t1 = performance.now();
const s = await r.open(modelBytes, feeds);
const t2 = performance.now();
await s.run();
const t3 = performance.now();
for (let i = 0; i < 5; i++) await s.run();
console.log(
  JSON.stringify({
    coldMs: t3 - t0,
    // For ORT the module is compiled inside its first session create, so init is ~0
    // and load includes compile + instantiate.
    initMs: t1 - t0,
    loadMs: t2 - t1,
    firstRunMs: t3 - t2,
    peakRss: peakRss(),
    wasmMemory: r.memoryBytes ? r.memoryBytes() : null,
  }),
);
s.release();
