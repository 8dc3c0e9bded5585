// POST /predict with a file (raw body or multipart "file") → magika's label for it.
// The edgepredict package resolves to its `workerd` entry here: the wasm is a bundled
// WebAssembly.Module, so nothing is compiled at run time (Workers forbid that).
import { Model, init, memoryBytes } from "edgepredict";
// Data module (wrangler.toml rule): the model bytes are part of the deployed bundle.
import modelBytes from "../../../.cache/models/magika.onnx";
import cfg from "../../../.cache/models/magika_config.json";
import { magikaHandler } from "../../shared/magika_service.js";

// One model per isolate, loaded on the first request and reused: the load (decode,
// plan, weight packing) costs more than a run.
let loading = null;
function getModel() {
  loading ??= Model.load(new Uint8Array(modelBytes), { backend: "cpu" }).catch((e) => {
    loading = null; // a failed load is retried by the next request
    throw e;
  });
  return loading;
}

export default {
  fetch: magikaHandler({
    getModel,
    cfg,
    // The isolate's share of the 128 MB that wasm holds (linear memory only grows), and
    // which wasm build runs.
    headers: async () => ({ "x-wasm-memory-bytes": String(memoryBytes()), "x-wasm-build": (await init()).build }),
  }),
};
