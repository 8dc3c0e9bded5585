// Node: the wasm is read from the package directory.
import { readFile } from "node:fs/promises";
import { setWasmSource } from "../edgepredict.js";

setWasmSource((build) =>
  readFile(new URL(`../../dist/edgepredict_${build === "relaxed-simd" ? "relaxed" : "simd"}.wasm`, import.meta.url)));

export * from "../edgepredict.js";
export { MemoryStore, IndexedDBStore, KVStore, predictOrLookup, PredictionCache, encodeRecord, decodeRecord } from "../store.js";
export { fetchModel, dropPartial, DEFAULT_CACHE_NAME } from "../fetch.js";
// Node has no Web Workers: WorkerModel.load rejects with a Runtime EdgeError there.
export { WorkerModel } from "../worker-client.js";
