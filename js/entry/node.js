// Node: the wasm is read from the package directory.
import { readFile } from "node:fs/promises";
import { setWasmSource } from "../edgepredict.js";

setWasmSource((build) =>
  readFile(new URL(`../../dist/edgepredict_${build === "relaxed-simd" ? "relaxed" : "simd"}.wasm`, import.meta.url)));

export * from "../edgepredict.js";
