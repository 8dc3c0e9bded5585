// Browsers (with or without a bundler) and Deno: the wasm is fetched next to this module.
// Both URLs are literal `new URL(…, import.meta.url)` so bundlers (Vite) emit both files.
import { setWasmSource, EdgeError } from "../edgepredict.js";

const urls = {
  simd: () => new URL("../../dist/edgepredict_simd.wasm", import.meta.url),
  "relaxed-simd": () => new URL("../../dist/edgepredict_relaxed.wasm", import.meta.url),
};

setWasmSource(async (build) => {
  const url = urls[build]();
  const res = await fetch(url);
  if (!res.ok) throw new EdgeError("Init", `fetching ${url} failed: HTTP ${res.status}`);
  // Streaming compilation needs the wasm MIME type; anything else (file: URLs in Deno,
  // misconfigured servers) goes through bytes.
  return (res.headers.get("content-type") ?? "").startsWith("application/wasm")
    ? res
    : new Uint8Array(await res.arrayBuffer());
});

export * from "../edgepredict.js";
export { MemoryStore, IndexedDBStore, KVStore, predictOrLookup, PredictionCache, encodeRecord, decodeRecord } from "../store.js";
export { fetchModel, dropPartial, DEFAULT_CACHE_NAME } from "../fetch.js";
export { WorkerModel } from "../worker-client.js";
