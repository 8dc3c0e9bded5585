// Turns bench/results/{wasm,native,sizes,machine}.json into bench/results/latest.md.

import fs from 'node:fs';
import path from 'node:path';
import { ROOT } from './runtimes.mjs';

const RESULTS = path.join(ROOT, 'bench/results');
const load = (f) => {
  const p = path.join(RESULTS, f);
  return fs.existsSync(p) ? JSON.parse(fs.readFileSync(p, 'utf8')) : null;
};
const wasm = load('wasm.json');
const native = load('native.json');
const sizes = load('sizes.json');
const machine = load('machine.json') ?? {};

const ms = (x) => (x == null ? '–' : x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));
const mb = (b) => (b == null ? '–' : (b / 1048576).toFixed(0));
const ratio = (a, b) => (a == null || b == null ? '–' : (a / b).toFixed(2));
const sci = (x) => (x == null ? '–' : Number.isNaN(x) ? 'NaN' : x === 0 ? '0' : x.toExponential(1));
const esc = (s) => String(s).replace(/\|/g, '\\|');
const agree = (a) => {
  if (!a) return '–';
  const notes = a.notes?.length ? ` (${esc(a.notes.join('; '))})` : '';
  return `${sci(a.maxDiff)} / ${a.scale == null ? '–' : a.scale.toPrecision(2)}${notes}`;
};
const cut = (e) => (e.length > 110 ? `${e.slice(0, 110)}…` : e);
const cellOr = (c, f) => (c?.error ? `unsupported: ${esc(cut(c.error))}` : f(c));

const out = [];
out.push(`# edgepredict benchmark${wasm?.quick || native?.quick ? ' (--quick: few runs, rough)' : ''}`);
out.push('');
out.push(`- date: ${machine.date ?? wasm?.date ?? native?.date ?? '?'}`);
out.push(`- machine: ${machine.cpu ?? '?'}, ${machine.cores ?? '?'} cores, ${machine.memGiB ?? '?'} GiB; load average ${machine.loadBefore ?? '?'} before, ${machine.loadAfter ?? '?'} after. **Shared and loaded** (other jobs run on it), so single numbers move by ±20 %; A/B alternation in one process keeps the ratios fairer than the absolute times.`);
out.push(`- Node ${wasm?.node ?? machine.node ?? '?'}${wasm?.nodeFlags?.length ? ` (flags of the timing process: \`${wasm.nodeFlags.join(' ')}\`)` : ''}; onnxruntime-web ${wasm?.ortWeb ?? '?'} (wasm, numThreads 1, SIMD); onnxruntime ${native?.ortVersion ?? '?'} (PyPI, intra/inter-op threads 1); ${machine.rustc ?? 'rustc ?'}.`);
out.push('');

if (wasm) {
  const rt = wasm.runtimes;
  const oursMain = rt.find((r) => r.startsWith('ours-simd128')) ?? rt[0];
  const relaxed = rt.includes('ours-relaxed');
  out.push('## wasm in Node, one thread');
  out.push('');
  out.push(
    `Median ms of the timed runs (${wasm.quick ? 'quick' : 'at least 20, 10 for the slowest'}), JS feeds in → JS arrays out, after a warm-up of at least ${wasm.warmup} run(s) and ${((wasm.warmupMs ?? 0) / 1000).toFixed(1)} s per runtime, runtimes alternating in one process${wasm.nodeFlags?.includes('--no-liftoff') ? ' run with `node --no-liftoff` (all wasm compiled by V8\'s optimising tier up front, so no run times half-tiered code; without it ORT needs dozens of runs to get there)' : ''}. ` +
      '*diff*: largest |ours − ORT| over all outputs / largest |ORT float output|. *cold*: fresh process, wasm and model bytes in memory → first output (compile + instantiate + model load + first run). ' +
      `*RSS*: peak resident memory of that fresh process (an idle Node process: ${mb(wasm.baselineRss)} MB). *int8/f32*: the runtime's own int8 median over its f32 median.`,
  );
  out.push('');
  const head = ['model', 'variant', 'ours ms', 'ORT-Web ms', 'ours/ORT'];
  if (relaxed) head.push('ours relaxed ms');
  head.push('int8/f32 ours · ORT', 'diff vs ORT', 'cold ms ours · ORT', 'RSS MB ours · ORT');
  out.push(`| ${head.join(' | ')} |`);
  out.push(`|${head.map(() => '---').join('|')}|`);
  const f32Of = {};
  for (const row of wasm.rows) if (row.variant === 'f32' && !row.missing) f32Of[row.id] = row.cells;
  for (const row of wasm.rows) {
    if (row.missing) {
      const rest = head.length - 3;
      out.push(`| ${row.id} | ${row.variant} | missing: \`${row.file}\` |${' – |'.repeat(rest)}`);
      continue;
    }
    const a = row.cells[oursMain];
    const b = row.cells['ort-web'];
    const cells = [row.id, row.variant];
    cells.push(cellOr(a, (c) => `**${ms(c.median)}**`));
    cells.push(b?.error ? `error: ${esc(cut(b.error))}` : ms(b?.median));
    cells.push(a?.error || b?.error ? '–' : `**${ratio(a.median, b.median)}**`);
    const rc = row.cells['ours-relaxed'];
    if (relaxed) cells.push(rc?.error && rc.error === a?.error ? 'unsupported (same)' : cellOr(rc, (c) => ms(c.median)));
    const f = f32Of[row.id];
    cells.push(
      row.variant === 'f32' || !f
        ? '–'
        : `${a?.error || f[oursMain]?.error ? '–' : ratio(a.median, f[oursMain].median)} · ${b?.error || f['ort-web']?.error ? '–' : ratio(b.median, f['ort-web'].median)}`,
    );
    cells.push(a?.error ? '–' : agree(a.agree));
    const coldOf = (c) => (c?.cold ? ms(c.cold.coldMs) : c?.coldError ? 'error' : '–');
    const rssOf = (c) => (c?.cold ? mb(c.cold.peakRss) : '–');
    cells.push(`${coldOf(a)} · ${coldOf(b)}`);
    cells.push(`${rssOf(a)} · ${rssOf(b)}`);
    out.push(`| ${cells.join(' | ')} |`);
  }
  if (wasm.flavourNotes?.length) {
    out.push('');
    out.push(`Builds not run: ${wasm.flavourNotes.join('; ')}.`);
  }
  out.push('');
}

if (native) {
  out.push('## native, one thread');
  out.push('');
  out.push(
    `Our CLI (\`${native.cli} bench\`, ${machine.nativeTarget ?? 'release'}) against onnxruntime from PyPI (\`bench/ort_native.py\`), the same .npy inputs; ` +
      'median ms over two rounds in ABBA order. *diff*: largest |ours − ORT| over all outputs / largest |ORT float output|. *RSS*: peak of each process (Python + numpy + onnxruntime on one side).',
  );
  out.push('');
  out.push('| model | variant | ours ms | ORT ms | ours/ORT | diff vs ORT | load ms ours · ORT | RSS MB ours · ORT |');
  out.push('|---|---|---|---|---|---|---|---|');
  for (const row of native.rows) {
    if (row.missing) {
      out.push(`| ${row.id} | ${row.variant} | missing: \`${row.file}\` | – | – | – | – | – |`);
      continue;
    }
    const a = row.ours;
    const b = row.ort;
    out.push(
      `| ${row.id} | ${row.variant} | ${cellOr(a, (c) => `**${ms(c.median)}**`)} | ${b.error ? `error: ${esc(cut(b.error))}` : ms(b.median)} | ${a.error || b.error ? '–' : `**${ratio(a.median, b.median)}**`} | ${a.error ? '–' : agree(row.agree)} | ${ms(a.loadMs)} · ${ms(b.loadMs)} | ${mb(a.peakRss)} · ${mb(b.peakRss)} |`,
    );
  }
  out.push('');
}

if (sizes) {
  out.push('## wasm size');
  out.push('');
  out.push('| build | file | raw bytes | gzip -9 bytes |');
  out.push('|---|---|---|---|');
  for (const s of sizes) out.push(`| ${s.build} | \`${s.file}\` | ${s.raw.toLocaleString('en-US')} (${(s.raw / 1e6).toFixed(2)} MB) | ${s.gzip.toLocaleString('en-US')} (${(s.gzip / 1e6).toFixed(2)} MB) |`);
  out.push('');
}

const md = out.join('\n');
fs.writeFileSync(path.join(RESULTS, 'latest.md'), md);
console.log(md);
