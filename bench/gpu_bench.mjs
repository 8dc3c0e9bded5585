// GPU vs CPU, natively: our CLI (`edgepredict bench`, release) on each real model and
// int8 variant with `--backend cpu` and `--backend webgpu`, same inputs, ABBA order
// (cpu, gpu, gpu, cpu) with run times pooled. Prints a table and writes
// bench/results/gpu.json.
//
// Here (no GPU) the webgpu backend runs on Mesa lavapipe, a software Vulkan driver on
// the same CPU cores: the ratio tracks regressions, it says nothing about real GPUs. On
// a machine with a GPU, the same command measures it (wgpu picks Vulkan; set
// WGPU_BACKEND=gl or vulkan to force one):
//
//   node bench/gpu_bench.mjs [--quick] [--models a,b]
//   EDGEPREDICT_BIN=path/to/edgepredict node bench/gpu_bench.mjs

import fs from 'node:fs';
import path from 'node:path';
import os from 'node:os';
import { spawnSync } from 'node:child_process';
import { MODELS, variants, makeFeeds, writeNpy } from './inputs.mjs';
import { QUICK, only, RESULTS, median } from './common.mjs';
import { ROOT } from './runtimes.mjs';

const CLI = process.env.EDGEPREDICT_BIN || path.join(ROOT, 'target/release/edgepredict');
const short = (s) => String(s).replace(/^error: /, '').replace(/\s+/g, ' ').trim().slice(0, 160);

function bench(file, inputArgs, backend, runs) {
  const r = spawnSync(CLI, ['--backend', backend, 'bench', file, ...inputArgs, '--warmup', '3', '--runs', String(runs), '--json'],
    { encoding: 'utf8', maxBuffer: 16 << 20, env: { ...process.env, XDG_RUNTIME_DIR: process.env.XDG_RUNTIME_DIR || os.tmpdir() } });
  if (r.error) return { error: short(r.error.message) };
  if (r.status !== 0) return { error: short(r.stderr || r.stdout || `exit ${r.status}`) };
  try {
    return JSON.parse(r.stdout.trim().split('\n').pop());
  } catch {
    return { error: short(`unparsable output: ${r.stdout.slice(-200)}`) };
  }
}

const rows = [];
let adapter = null;
for (const model of MODELS.filter((m) => !only || only.includes(m.id))) {
  const inDir = path.join(RESULTS, 'inputs', model.id);
  fs.mkdirSync(inDir, { recursive: true });
  const inputArgs = [];
  for (const [name, t] of Object.entries(makeFeeds(model))) {
    const f = path.join(inDir, `${name}.npy`);
    if (!fs.existsSync(f)) writeNpy(f, t);
    inputArgs.push('-i', `${name}=${f}`);
  }
  for (const v of variants(ROOT, model.id)) {
    if (!v.exists) continue;
    const runs = QUICK ? 3 : 8;
    const rounds = [
      ['cpu', bench(v.file, inputArgs, 'cpu', runs)],
      ['webgpu', bench(v.file, inputArgs, 'webgpu', runs)],
      ['webgpu', bench(v.file, inputArgs, 'webgpu', runs)],
      ['cpu', bench(v.file, inputArgs, 'cpu', runs)],
    ];
    const row = { id: model.id, variant: v.variant };
    for (const b of ['cpu', 'webgpu']) {
      const rs = rounds.filter(([k]) => k === b).map(([, r]) => r);
      const err = rs.find((r) => r.error);
      if (err) {
        row[b] = { error: err.error };
        continue;
      }
      row[b] = { median_ms: median(rs.flatMap((r) => r.runs_ms)), first_ms: rs[0].first_ms, load_ms: rs[0].load_ms };
      if (b === 'webgpu') {
        row.gpu_nodes = rs[0].gpu_nodes;
        row.nodes = rs[0].nodes;
        adapter ??= rs[0].adapter;
      }
    }
    if (row.cpu.median_ms && row.webgpu?.median_ms) row.ratio = row.webgpu.median_ms / row.cpu.median_ms;
    rows.push(row);
    const f = (x) => (x?.median_ms != null ? x.median_ms.toFixed(1) : x?.error ?? '-');
    console.log(`${model.id} ${v.variant}: cpu ${f(row.cpu)} ms, webgpu ${f(row.webgpu)} ms${row.ratio ? `, ratio ${row.ratio.toFixed(2)}` : ''}, ${row.gpu_nodes ?? '?'}/${row.nodes ?? '?'} nodes on the GPU`);
  }
}

const when = new Date().toISOString().slice(0, 16) + 'Z';
const machine = `${os.cpus().length}× ${os.cpus()[0]?.model?.trim()}`;
let table = `GPU vs CPU (native, edgepredict bench, ${when}, ${machine}; adapter: ${adapter ?? 'none'})\n\n`;
table += '| model | variant | CPU ms | WebGPU ms | WebGPU/CPU | nodes on GPU |\n|---|---|---:|---:|---:|---:|\n';
for (const r of rows) {
  const f = (x) => (x?.median_ms != null ? x.median_ms.toFixed(1) : `error: ${x?.error ?? '?'}`.slice(0, 60));
  table += `| ${r.id} | ${r.variant} | ${f(r.cpu)} | ${f(r.webgpu)} | ${r.ratio ? r.ratio.toFixed(2) : '-'} | ${r.gpu_nodes ?? '?'}/${r.nodes ?? '?'} |\n`;
}
console.log('\n' + table);
fs.mkdirSync(RESULTS, { recursive: true });
fs.writeFileSync(path.join(RESULTS, 'gpu.json'), JSON.stringify({ when, machine, adapter, rows }, null, 1));
fs.writeFileSync(path.join(RESULTS, 'gpu.md'), table);
