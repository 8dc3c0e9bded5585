// Command-line options and small helpers shared by the bench scripts.

import path from 'node:path';
import { ROOT } from './runtimes.mjs';

const argv = process.argv.slice(2);

/** The value after `name` on the command line, or `dflt`. */
export const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
export const QUICK = argv.includes('--quick');
/** Model ids given with --models, or undefined for all. */
export const only = opt('--models', null)?.split(',');
export const RESULTS = path.join(ROOT, 'bench/results');

export const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
