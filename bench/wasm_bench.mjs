// In-process A/B benchmark of our wasm build(s) against onnxruntime-web in Node, one
// thread each, then one fresh process per (runtime, model) for cold start and peak memory.
// Writes bench/results/wasm.json and the inputs as .npy for the native bench.
//
//   node bench/wasm_bench.mjs [--quick] [--models a,b] [--flavours simd128,relaxed]

import fs from 'node:fs';
import path from 'node:path';
import { execFileSync } from 'node:child_process';
import { MODELS, variants, makeFeeds, writeNpy } from './inputs.mjs';
import { opt, QUICK, only, RESULTS, median } from './common.mjs';
import { ROOT, ours, ortWeb, compare } from './runtimes.mjs';

const NODE_FLAGS = process.execArgv;

// Fewer, shorter runs with --quick; otherwise at least 20 timed runs per cell (10 for a
// model slower than ~1 s an iteration), more for fast models, up to a time budget.
// Run this under `node --no-liftoff` (bench/run.sh does): V8 then compiles all wasm with
// its optimising tier up front. With the default tiering, hot functions move to that tier
// in the background, which on a loaded machine takes dozens of runs for ORT's 14 MB module,
// so the timed runs would mix unoptimised code in. Cold starts run without the flag.
const WARMUP = QUICK ? 1 : 3;
const WARMUP_MS = QUICK ? 300 : 1000;
const TARGET_MS = QUICK ? 1500 : 6000;
function runsFor(iterMs) {
  if (QUICK) return 5;
  if (iterMs > 1000) return Math.max(10, Math.min(20, Math.floor(20000 / iterMs)));
  return Math.max(20, Math.min(200, Math.floor(TARGET_MS / iterMs)));
}

const short = (e) => String(e?.message ?? e).replace(/\s+/g, ' ').slice(0, 160);

async function main() {
  const selected = MODELS.filter((m) => !only || only.includes(m.id));
  if (only) {
    const unknown = only.filter((id) => !MODELS.some((m) => m.id === id));
    if (unknown.length) throw new Error(`unknown model(s): ${unknown.join(', ')}; known: ${MODELS.map((m) => m.id).join(', ')}`);
  }
  fs.mkdirSync(path.join(RESULTS, 'inputs'), { recursive: true });

  // Our flavours: simd128 always; relaxed when built and this Node validates it.
  const wanted = (opt('--flavours', 'simd128,relaxed') || '').split(',').filter(Boolean);
  const runners = [];
  const flavourNotes = [];
  for (const fl of wanted) {
    const wasm = path.join(ROOT, 'bench/pkg', fl, 'edgepredict_bg.wasm');
    if (!fs.existsSync(wasm)) {
      flavourNotes.push(`${fl}: not built`);
      continue;
    }
    if (!WebAssembly.validate(fs.readFileSync(wasm))) {
      flavourNotes.push(`${fl}: this Node (${process.version}, flags '${NODE_FLAGS.join(' ')}') cannot validate it`);
      continue;
    }
    const r = await ours(fl);
    await r.init();
    runners.push(r);
  }
  if (!runners.length) throw new Error(`no wasm build of ours to run (${flavourNotes.join('; ')}); run bench/run.sh`);
  const ort = await ortWeb();
  await ort.init();
  runners.push(ort);

  if (!NODE_FLAGS.includes('--no-liftoff')) console.error('warning: not run with node --no-liftoff; timings may include unoptimised wasm');
  const rows = [];
  for (const model of selected) {
    const feeds = makeFeeds(model);
    const inDir = path.join(RESULTS, 'inputs', model.id);
    fs.mkdirSync(inDir, { recursive: true });
    for (const [name, t] of Object.entries(feeds)) writeNpy(path.join(inDir, `${name}.npy`), t);

    for (const v of variants(ROOT, model.id)) {
      const row = { id: model.id, variant: v.variant, file: path.relative(ROOT, v.file), cells: {} };
      rows.push(row);
      if (!v.exists) {
        row.missing = true;
        console.error(`${model.id} ${v.variant}: no ${row.file}, skipped`);
        continue;
      }
      row.bytes = fs.statSync(v.file).size;
      const bytes = fs.readFileSync(v.file);
      const sessions = [];
      for (const r of runners) {
        const cell = (row.cells[r.name] = {});
        try {
          const s = await r.open(bytes, feeds);
          try {
            cell.first = await s.run();
            sessions.push({ r, s, cell, times: [] });
          } catch (e) {
            s.release();
            throw e;
          }
        } catch (e) {
          cell.error = short(e);
          console.error(`${model.id} ${v.variant} ${r.name}: ${cell.error}`);
        }
      }
      // Agreement with onnxruntime-web before timing anything, so a broken run never
      // counts as a fast one.
      const ref = row.cells['ort-web'].first;
      for (const { r, cell } of sessions) {
        if (r.name !== 'ort-web' && ref) cell.agree = compare(cell.first, ref);
      }
      for (const c of Object.values(row.cells)) delete c.first;

      let warm = 0;
      let iterMs = 0;
      const t0 = performance.now();
      while (warm < WARMUP || (performance.now() - t0 < WARMUP_MS * sessions.length && warm < 200)) {
        const t = performance.now();
        for (const x of sessions) await x.s.run();
        iterMs = performance.now() - t;
        warm++;
      }
      const n = runsFor(iterMs);
      // A/B(/C) alternation, rotating who goes first, so drift of a shared machine hits
      // every runtime alike.
      for (let i = 0; i < n; i++) {
        for (let k = 0; k < sessions.length; k++) {
          const x = sessions[(i + k) % sessions.length];
          const t = performance.now();
          await x.s.run();
          x.times.push(performance.now() - t);
        }
      }
      for (const x of sessions) {
        x.cell.median = median(x.times);
        x.cell.min = Math.min(...x.times);
        x.cell.runs = x.times.length;
        x.s.release();
      }
      const line = sessions.map((x) => `${x.r.name} ${x.cell.median.toFixed(2)} ms`).join(', ');
      console.error(`${model.id} ${v.variant}: ${line} (${n} runs after ${warm} warm-up)`);
    }
  }

  // Cold start and peak memory: a fresh Node process per cell.
  // Default Node, except the flag our relaxed build needs on Node 20.
  const cold = (runtime, file = '', id = '') => {
    const flags = runtime === 'ours-relaxed' ? NODE_FLAGS.filter((f) => f.includes('relaxed')) : [];
    const out = execFileSync(process.execPath, [...flags, path.join(ROOT, 'bench/cold.mjs'), runtime, file, id], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      maxBuffer: 1 << 20,
    });
    return JSON.parse(out.trim().split('\n').pop());
  };
  const baseline = cold('none');
  for (const row of rows) {
    if (row.missing) continue;
    for (const [name, cell] of Object.entries(row.cells)) {
      if (cell.error) continue;
      try {
        cell.cold = cold(name, path.join(ROOT, row.file), row.id);
      } catch (e) {
        cell.coldError = short(e.stderr || e);
      }
    }
    console.error(`${row.id} ${row.variant}: cold ${Object.entries(row.cells).map(([n, c]) => `${n} ${c.cold ? c.cold.coldMs.toFixed(0) + ' ms' : '-'}`).join(', ')}`);
  }

  const result = {
    date: new Date().toISOString(),
    node: process.version,
    nodeFlags: NODE_FLAGS,
    ortWeb: ort.version,
    quick: QUICK,
    warmup: WARMUP,
    warmupMs: WARMUP_MS,
    runtimes: runners.map((r) => r.name),
    flavourNotes,
    baselineRss: baseline.peakRss,
    rows,
  };
  fs.writeFileSync(path.join(RESULTS, 'wasm.json'), JSON.stringify(result, null, 1));
  console.error(`wrote ${path.relative(ROOT, path.join(RESULTS, 'wasm.json'))}`);
}

main().catch((e) => {
  console.error(e);
  process.exit(1);
});
