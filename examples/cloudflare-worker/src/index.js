// POST /predict with a file (raw body or multipart "file") → magika's label for it, online.
// POST /batch + a Queue consumer + GET /prediction/:key: the same predictions computed
// ahead in batches and served from KV (examples/shared/magika_batch.js).
// The edgepredict package resolves to its `workerd` entry here: the wasm is a bundled
// WebAssembly.Module, so nothing is compiled at run time (Workers forbid that).
import { Model, KVStore, PredictionCache, init, memoryBytes } from "edgepredict";
// Data module (wrangler.toml rule): the model bytes are part of the deployed bundle.
import modelBytes from "../../../.cache/models/magika.onnx";
import cfg from "../../../.cache/models/magika_config.json";
import { magikaHandler } from "../../shared/magika_service.js";
import { batchRoutes, consume } from "../../shared/magika_batch.js";

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

const predict = magikaHandler({
  getModel,
  cfg,
  // The isolate's share of the 128 MB that wasm holds (linear memory only grows), and
  // which wasm build runs.
  headers: async () => ({ "x-wasm-memory-bytes": String(memoryBytes()), "x-wasm-build": (await init()).build }),
});

const bindings = (env) => ({
  kv: env.PREDICTIONS,
  queue: env.BATCH_QUEUE,
  store: new KVStore(env.PREDICTIONS, { expirationTtl: 30 * 24 * 3600 }),
  getModel,
  PredictionCache,
  cfg,
});

export default {
  async fetch(request, env) {
    return (await batchRoutes(request, bindings(env))) ?? predict(request);
  },
  async queue(batch, env) {
    await consume(batch, bindings(env));
  },
};
