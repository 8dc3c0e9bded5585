// Native comparison: our CLI (`edgepredict bench`, release) against onnxruntime from PyPI
// (bench/ort_native.py), one thread each, on the same .npy inputs the wasm bench wrote.
// Two rounds in ABBA order (ours, ORT, ORT, ours), run times pooled. Writes
// bench/results/native.json.
//
//   node bench/native_bench.mjs [--quick] [--models a,b]

import fs from 'node:fs';
import path from 'node:path';
import { spawnSync } from 'node:child_process';
import { MODELS, variants, makeFeeds, writeNpy } from './inputs.mjs';
import { opt, QUICK, only, RESULTS, median } from './common.mjs';
import { ROOT } from './runtimes.mjs';

const CLI = process.env.EDGEPREDICT_BIN || path.join(ROOT, 'target/release/edgepredict');
const PYTHON = process.env.PYTHON || path.join(ROOT, '.cache/venv/bin/python');

const short = (s) => String(s).replace(/^error: /, '').replace(/\s+/g, ' ').trim().slice(0, 160);

/** Runs a command that prints one JSON line; returns it or {error}. */
function call(cmd, argv) {
  const r = spawnSync(cmd, argv, { encoding: 'utf8', maxBuffer: 16 << 20 });
  if (r.error) return { error: short(r.error.message) };
  if (r.status !== 0) return { error: short(r.stderr || r.stdout || `exit ${r.status}`) };
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop());
  } catch {
    return { error: short(`unparsable output: ${r.stdout.slice(-200)}`) };
  }
}

const rows = [];
let ortVersion = null;
for (const model of MODELS.filter((m) => !only || only.includes(m.id))) {
  // The wasm bench wrote these; write them again (same seed, same bytes) when run alone.
  const inDir = path.join(RESULTS, 'inputs', model.id);
  fs.mkdirSync(inDir, { recursive: true });
  const feeds = makeFeeds(model);
  const inputArgs = [];
  for (const [name, t] of Object.entries(feeds)) {
    const f = path.join(inDir, `${name}.npy`);
    if (!fs.existsSync(f)) writeNpy(f, t);
    inputArgs.push('-i', `${name}=${f}`);
  }
  for (const v of variants(ROOT, model.id)) {
    const row = { id: model.id, variant: v.variant, file: path.relative(ROOT, v.file), ours: {}, ort: {} };
    rows.push(row);
    if (!v.exists) {
      row.missing = true;
      continue;
    }
    const outDir = path.join(RESULTS, 'native_out', `${model.id}_${v.variant.replace(/\W+/g, '_')}`);
    fs.rmSync(outDir, { recursive: true, force: true });
    const ours = (runs) => call(CLI, ['bench', v.file, ...inputArgs, '--warmup', '3', '--runs', String(runs), '--json', '--output', outDir]);
    const ort = (runs) => call(PYTHON, [path.join(ROOT, 'bench/ort_native.py'), v.file, ...inputArgs, '--warmup', '3', '--runs', String(runs), '--compare', outDir]);

    const r1 = QUICK ? 5 : 10;
    const a1 = ours(r1);
    const b1 = ort(r1);
    const rounds = [[a1, b1]];
    if (!QUICK && !a1.error && !b1.error) {
      const per = Math.max(a1.median_ms, b1.median_ms);
      const r2 = Math.max(10, Math.min(100, Math.floor(4000 / per)));
      const b2 = ort(r2);
      const a2 = ours(r2);
      rounds.push([a2, b2]);
    }
    for (const [side, k] of [['ours', 0], ['ort', 1]]) {
      const rs = rounds.map((x) => x[k]);
      const err = rs.find((x) => x.error);
      if (err) {
        row[side].error = err.error;
        continue;
      }
      const times = rs.flatMap((x) => x.runs_ms);
      row[side] = {
        median: median(times),
        min: Math.min(...times),
        runs: times.length,
        loadMs: rs[0].load_ms,
        peakRss: Math.max(...rs.map((x) => x.peak_rss_bytes ?? 0)),
      };
    }
    // ORT compared its outputs with the ones our CLI wrote in the last round it saw.
    const lastOrt = rounds[rounds.length - 1][1];
    if (!row.ours.error && lastOrt.agree) row.agree = lastOrt.agree;
    ortVersion ??= lastOrt.ort_version;
    const fmt = (c) => (c.error ? `error: ${c.error}` : `${c.median.toFixed(2)} ms`);
    console.error(`native ${model.id} ${v.variant}: ours ${fmt(row.ours)}, ORT ${fmt(row.ort)}`);
  }
}
fs.writeFileSync(
  path.join(RESULTS, 'native.json'),
  JSON.stringify({ date: new Date().toISOString(), quick: QUICK, ortVersion, cli: path.relative(ROOT, CLI), rows }, null, 1),
);
console.error('wrote bench/results/native.json');
