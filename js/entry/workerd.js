// Cloudflare Workers (workerd): code may not be compiled at run time, so the wasm is
// imported as a WebAssembly.Module (wrangler's CompiledWasm rule for *.wasm) and only
// instantiated. No import.meta.url. workerd's V8 always has relaxed SIMD, so only that
// build is imported: the plain one would add 1.5 MB (gzipped) to every Worker bundle.
import relaxed from "../../dist/edgepredict_relaxed.wasm";
import { setWasmSource, EdgeError } from "../edgepredict.js";

setWasmSource((build) => {
  if (build !== "relaxed-simd") {
    throw new EdgeError("Init", "this workerd lacks relaxed SIMD, which the Workers build of edgepredict needs");
  }
  return relaxed;
});

export * from "../edgepredict.js";
export { MemoryStore, IndexedDBStore, KVStore, predictOrLookup, PredictionCache, encodeRecord, decodeRecord } from "../store.js";
export { fetchModel, dropPartial, DEFAULT_CACHE_NAME } from "../fetch.js";
