// magika (standard_v3_3) pre- and post-processing, shared by the demo page, the
// Cloudflare Worker and the Deno server. The model sees the first and last `beg_size` /
// `end_size` bytes of the file's outer `block_size` bytes, whitespace-trimmed, padded
// with `padding_token`; config.min.json ships with the model.

// Python's bytes.strip() set: space, \t, \n, \r, \v, \f.
const isSpace = (b) => b === 0x20 || (b >= 0x09 && b <= 0x0d);

/// One file's features: Int32Array of beg_size + end_size tokens.
export function magikaFeatures(bytes, cfg) {
  const { block_size: block, beg_size: begSize, end_size: endSize, padding_token: pad } = cfg;
  const n = bytes.length;
  const out = new Int32Array(begSize + endSize).fill(pad);
  // Beginning: the first block, leading whitespace dropped, then the first beg_size bytes.
  const headEnd = Math.min(block, n);
  let s = 0;
  while (s < headEnd && isSpace(bytes[s])) s++;
  for (let i = 0; i < begSize && s + i < headEnd; i++) out[i] = bytes[s + i];
  // End: the last block, trailing whitespace dropped, then its last end_size bytes,
  // right-aligned so the padding comes first.
  const tailStart = n - Math.min(block, n);
  let e = n;
  while (e > tailStart && isSpace(bytes[e - 1])) e--;
  const take = Math.min(endSize, e - tailStart);
  for (let i = 0; i < take; i++) out[begSize + endSize - take + i] = bytes[e - take + i];
  return out;
}

/// The label for one row of scores, with magika's thresholds: below its label's threshold
/// a prediction is reported as "unknown" (the model's guess stays in `dlLabel`).
export function magikaLabel(scores, cfg) {
  let best = 0;
  for (let i = 1; i < scores.length; i++) if (scores[i] > scores[best]) best = i;
  const dlLabel = cfg.target_labels_space[best];
  const score = scores[best];
  const label = cfg.overwrite_map?.[dlLabel] ?? dlLabel;
  const threshold = cfg.thresholds?.[dlLabel] ?? cfg.medium_confidence_threshold;
  return { label: score >= threshold ? label : "unknown", dlLabel, score, confident: score >= threshold };
}

/// Files too small for the model: magika names them without it.
export function magikaSmallFile(bytes, cfg) {
  if (bytes.length === 0) return { label: "empty", dlLabel: null, score: 1, confident: true };
  if (bytes.length >= cfg.min_file_size_for_dl) return null;
  try {
    new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    return { label: "txt", dlLabel: null, score: 1, confident: true };
  } catch {
    return { label: "unknown", dlLabel: null, score: 1, confident: false };
  }
}
