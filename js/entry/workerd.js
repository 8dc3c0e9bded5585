// Cloudflare Workers (workerd): code may not be compiled at run time, so the wasm is
// imported as a WebAssembly.Module (wrangler's CompiledWasm rule for *.wasm) and only
// instantiated. No import.meta.url.
import simd from "../../dist/edgepredict_simd.wasm";
import relaxed from "../../dist/edgepredict_relaxed.wasm";
import { setWasmSource } from "../edgepredict.js";

setWasmSource((build) => (build === "relaxed-simd" ? relaxed : simd));

export * from "../edgepredict.js";
