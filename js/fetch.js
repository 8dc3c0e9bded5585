// Model delivery: fetchModel downloads a model with byte-accurate progress, Cache Storage,
// a SHA-256 check, abort, Range resume and gzip. Only web platform APIs (fetch, streams,
// crypto.subtle, DecompressionStream, Cache Storage), so the same file runs in browsers,
// Web Workers, Deno, Cloudflare Workers and Node ≥ 20.
//
// Choices (documented in docs/js-api.md terms):
// - Partial downloads are kept IN MEMORY (per JS realm: a page, a worker, a Node process),
//   keyed by URL, at most PARTIAL_MAX entries. Cache Storage only ever holds complete,
//   verified models, so a cache hit never needs a second look beyond the optional hash.
//   A partial does not survive a page reload; a failed or aborted call followed by another
//   call for the same URL in the same realm resumes with `Range`.
// - gzip: the compressed bytes are what travel, what progress counts and what a resume
//   asks for (`Range` is over the compressed file). They are decompressed with
//   DecompressionStream once complete, and the SHA-256 is over the DECOMPRESSED model, so
//   the same hash checks `m.onnx` and `m.onnx.gz`. The cache stores the decompressed model.

import { EdgeError, sha256Hex } from "./edgepredict.js";

export { sha256Hex };

export const DEFAULT_CACHE_NAME = "edgepredict-models";
const DEFAULT_RETRIES = 3;
const PARTIAL_MAX = 4;

/// The error every failure here throws: the package's EdgeError.
export function fetchError(code, message, extra) {
  return new EdgeError(code, message, extra);
}

// url → { chunks: Uint8Array[], loaded, validator, total }: bytes of an interrupted
// download, in insertion order so the oldest is dropped first.
const partials = new Map();

function keepPartial(key, state) {
  if (state.loaded === 0) return;
  partials.delete(key);
  partials.set(key, state);
  while (partials.size > PARTIAL_MAX) partials.delete(partials.keys().next().value);
}

/// Forgets the partial download of `url`, or all of them.
export function dropPartial(url) {
  if (url === undefined) partials.clear();
  else partials.delete(absolute(url));
}

function absolute(url) {
  try {
    return new URL(url, globalThis.location?.href).href;
  } catch {
    throw fetchError("Fetch", `not a URL: ${url}`);
  }
}

function isAbort(e, signal) {
  return signal?.aborted || e?.name === "AbortError";
}

function aborted(signal) {
  const reason = signal?.reason;
  const why = reason instanceof Error && reason.name !== "AbortError" ? `: ${reason.message}` : "";
  return fetchError("Aborted", `model download aborted${why}`);
}

function checkSignal(signal) {
  if (signal?.aborted) throw aborted(signal);
}

/// "bytes 100-199/1000" → { start: 100, total: 1000 } (total null for "*").
function parseContentRange(value) {
  const m = /^bytes\s+(\d+)-(\d+)\/(\d+|\*)$/i.exec(value?.trim() ?? "");
  if (!m) return null;
  return { start: Number(m[1]), end: Number(m[2]), total: m[3] === "*" ? null : Number(m[3]) };
}

/// If-Range needs a strong ETag, or else a Last-Modified date.
function validatorOf(res) {
  const etag = res.headers.get("etag");
  if (etag && !etag.startsWith("W/")) return etag;
  return res.headers.get("last-modified");
}

function concat(chunks, length) {
  if (chunks.length === 1 && chunks[0].byteLength === length) return chunks[0];
  const out = new Uint8Array(length);
  let at = 0;
  for (const c of chunks) {
    out.set(c, at);
    at += c.byteLength;
  }
  return out;
}

async function gunzip(bytes) {
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new Uint8Array(await new Response(stream).arrayBuffer());
}

async function openCache(opts) {
  if (opts.cache === false) return null;
  const storage = opts.cacheStorage ?? globalThis.caches;
  if (!storage) return null;
  try {
    const name = typeof opts.cache === "string" ? opts.cache : opts.cacheName ?? DEFAULT_CACHE_NAME;
    return await storage.open(name);
  } catch {
    // Cache Storage can refuse (opaque origins, private modes): the download still works.
    return null;
  }
}

/// Downloads a model and returns its bytes; see the options in docs/js-api.md.
/// `cache`: true (default where Cache Storage exists), false, or a cache name.
/// Extra options: `cacheStorage` (a CacheStorage-like object, for Node), `cacheName`,
/// `retries` (resumes or restarts after a broken body, default 3), `fetch`, `headers`.
export async function fetchModel(url, opts = {}) {
  const { signal, onProgress } = opts;
  checkSignal(signal);
  const key = absolute(url);
  let expected = null;
  if (opts.sha256 != null) {
    expected = String(opts.sha256).trim().toLowerCase();
    if (!/^[0-9a-f]{64}$/.test(expected)) throw fetchError("Integrity", `sha256 must be 64 hex digits, got "${opts.sha256}"`);
  }
  const gzip = opts.gzip ?? new URL(key, "http://x").pathname.endsWith(".gz");

  const cache = await openCache(opts);
  if (cache) {
    let hit = null;
    try {
      hit = await cache.match(key);
    } catch {
      hit = null;
    }
    if (hit) {
      const bytes = new Uint8Array(await hit.arrayBuffer());
      checkSignal(signal);
      if (expected === null || (await sha256Hex(bytes)) === expected) {
        onProgress?.({ loaded: bytes.byteLength, total: bytes.byteLength, fromCache: true, resumed: false });
        return bytes;
      }
      // A stale model under this URL (the caller now expects another hash): download again.
      await cache.delete(key).catch(() => {});
    }
  }

  const { raw, encoded } = await download(key, url, opts);
  let bytes = raw;
  if (gzip) {
    const magic = raw.byteLength >= 2 && raw[0] === 0x1f && raw[1] === 0x8b;
    // A server that sent Content-Encoding: gzip has had fetch decode it already.
    if (magic || !encoded) {
      try {
        bytes = await gunzip(raw);
      } catch (e) {
        throw fetchError("Fetch", `${url}: not valid gzip data (${e?.message ?? e})`);
      }
    }
  }
  checkSignal(signal);
  if (expected !== null) {
    const got = await sha256Hex(bytes);
    if (got !== expected) throw fetchError("Integrity", `${url}: SHA-256 is ${got}, expected ${expected}`);
  }
  if (cache) {
    const response = new Response(bytes, {
      headers: { "content-type": "application/octet-stream", "content-length": String(bytes.byteLength) },
    });
    // A full quota must not fail the load.
    await cache.put(key, response).catch(() => {});
  }
  return bytes;
}

/// The body bytes as they travel (compressed for gzip), resuming or restarting a broken
/// body up to `retries` times. `encoded`: the HTTP layer decoded a Content-Encoding.
async function download(key, url, opts) {
  const { signal, onProgress } = opts;
  const doFetch = opts.fetch ?? globalThis.fetch;
  const retries = opts.retries ?? DEFAULT_RETRIES;
  let state = partials.get(key) ?? { chunks: [], loaded: 0, validator: null, total: null };
  partials.delete(key);
  let resumed = false;
  let encoded = false;
  let lastError = null;

  for (let attempt = 0; attempt <= retries; attempt++) {
    const headers = new Headers(opts.headers);
    if (state.loaded > 0) {
      headers.set("range", `bytes=${state.loaded}-`);
      if (state.validator) headers.set("if-range", state.validator);
    }
    let res;
    try {
      res = await doFetch(key, { signal, headers });
    } catch (e) {
      if (isAbort(e, signal)) {
        keepPartial(key, state);
        throw aborted(signal);
      }
      // A network failure before any header: try again within the same bound.
      lastError = e;
      continue;
    }

    if (state.loaded > 0) {
      const range = res.status === 206 ? parseContentRange(res.headers.get("content-range")) : null;
      const validator = validatorOf(res);
      const same = !state.validator || !validator || validator === state.validator;
      if (range && range.start === state.loaded && same) {
        resumed = true;
        if (range.total !== null) state.total = range.total;
      } else {
        // The server ignored Range, answered another range, or the file changed: from 0.
        state = { chunks: [], loaded: 0, validator: null, total: null };
        resumed = false;
        if (res.status === 206 || res.status === 416) {
          await res.body?.cancel().catch(() => {});
          attempt--; // not a failure of the transfer: ask again, without Range
          continue;
        }
      }
    }
    if (!res.ok) {
      await res.body?.cancel().catch(() => {});
      throw fetchError("Fetch", `HTTP ${res.status}${res.statusText ? " " + res.statusText : ""} for ${url}`);
    }
    if (state.loaded === 0) {
      if (res.status === 206) throw fetchError("Fetch", `HTTP 206 for ${url} without a Range request`);
      // With a Content-Encoding the stream yields decoded bytes: Content-Length counts
      // something else and a Range would address the encoded file.
      encoded = !!res.headers.get("content-encoding") && res.headers.get("content-encoding") !== "identity";
      const length = res.headers.get("content-length");
      state.total = !encoded && length !== null && /^\d+$/.test(length) ? Number(length) : null;
      state.validator = encoded ? null : validatorOf(res);
    }
    const report = () => onProgress?.({ loaded: state.loaded, total: state.total, fromCache: false, resumed });
    report();
    if (!res.body) {
      const buf = new Uint8Array(await res.arrayBuffer());
      state.chunks.push(buf);
      state.loaded += buf.byteLength;
      report();
      return { raw: concat(state.chunks, state.loaded), encoded };
    }

    const reader = res.body.getReader();
    let broken = null;
    try {
      for (;;) {
        let chunk;
        try {
          chunk = await reader.read();
        } catch (e) {
          broken = e;
          break;
        }
        if (chunk.done) break;
        state.chunks.push(chunk.value);
        state.loaded += chunk.value.byteLength;
        // An onProgress that throws ends the call with its error (not a retry).
        report();
      }
    } catch (e) {
      await reader.cancel().catch(() => {});
      if (!encoded) keepPartial(key, state);
      throw e;
    }
    if (broken) {
      if (isAbort(broken, signal)) {
        if (!encoded) keepPartial(key, state);
        throw aborted(signal);
      }
      lastError = broken;
      if (encoded) state = { chunks: [], loaded: 0, validator: null, total: null };
      continue;
    }
    if (state.total !== null && state.loaded !== state.total) {
      // A body that ended early without an error is a broken body too.
      lastError = new Error(`body ended at ${state.loaded} of ${state.total} bytes`);
      if (state.loaded > state.total || encoded) state = { chunks: [], loaded: 0, validator: null, total: null };
      continue;
    }
    return { raw: concat(state.chunks, state.loaded), encoded };
  }
  if (!encoded) keepPartial(key, state);
  const why = lastError?.cause?.message ?? lastError?.message ?? String(lastError);
  throw fetchError("Fetch", `${url}: download failed after ${retries + 1} attempts at ${state.loaded} bytes (${why})`);
}
