// WorkerModel: the Model API with the model in a module Web Worker (js/worker.js), so that
// loading and inference never block the main thread. Feeds and outputs travel as
// transferred buffers; errors come back as EdgeError with the worker's code.
import { Tensor, EdgeError } from "./edgepredict.js";

// Options that cannot cross to a worker: functions and objects bound to this realm.
const LOCAL_ONLY = ["onProgress", "signal", "cacheStorage", "fetch", "workerUrl", "transfer"];

function edgeError(code, message, extra) {
  return new EdgeError(code, message, extra);
}

function fromPlain(err) {
  const e = edgeError(err.code ?? "Runtime", err.message, { node: err.node ?? null, op: err.op ?? null });
  if (err.index != null) e.index = err.index;
  return e;
}

/// Outputs as the worker sends them ({dtype, data, dims} per name) → Tensors.
function tensorsOf(outputs) {
  const out = {};
  for (const [name, t] of Object.entries(outputs)) out[name] = new Tensor(t.dtype, t.data, t.dims);
  return out;
}

function aborted() {
  return edgeError("Aborted", "model load aborted");
}

/// Feeds as {dtype, data, dims} with transferable data: a view on part of a buffer, on a
/// shared buffer, or on a buffer already listed is copied; with `copy`, every one is.
function pack(feeds, copy) {
  const out = {};
  const list = [];
  const seen = new Set();
  for (const [name, f] of Object.entries(feeds)) {
    if (f == null || typeof f !== "object") {
      out[name] = f; // the worker's Model reports the bad feed
      continue;
    }
    let data = f.data;
    if (ArrayBuffer.isView(data)) {
      const shared = typeof SharedArrayBuffer !== "undefined" && data.buffer instanceof SharedArrayBuffer;
      const whole = data.byteOffset === 0 && data.byteLength === data.buffer.byteLength;
      if (copy || shared || !whole || seen.has(data.buffer)) data = data.slice();
      seen.add(data.buffer);
      list.push(data.buffer);
    }
    const packed = { data, dims: f.dims == null ? f.dims : [...f.dims] };
    if (f.dtype !== undefined) packed.dtype = f.dtype;
    out[name] = packed;
  }
  return { out, list };
}

export class WorkerModel {
  #worker;
  #pending = new Map(); // id → { resolve, reject, onProgress }
  #next = 1;
  #meta = {};
  #sha256 = null;
  #disposed = false;
  #broken = null;

  /// Use WorkerModel.load.
  constructor(worker) {
    this.#worker = worker;
    worker.onmessage = (e) => this.#receive(e.data);
    // A worker that fails to start (or throws outside a request) fails every pending call.
    worker.onerror = (e) => {
      e.preventDefault?.();
      this.#fail(edgeError("Runtime", `model worker failed: ${e.message || "could not start the worker script"}`));
    };
    worker.onmessageerror = () => this.#fail(edgeError("Runtime", "model worker sent a message that could not be read"));
  }

  /// Loads `src` (bytes, or a URL fetched with fetchModel inside the worker) in a new worker.
  /// Options: those of Model.load and fetchModel; `workerUrl` replaces the bundled worker
  /// script; `onProgress` and `signal` work across the thread boundary.
  static async load(src, options = {}) {
    if (options.signal?.aborted) throw aborted();
    if (typeof Worker === "undefined") throw edgeError("Runtime", "WorkerModel needs Web Workers (a browser or Deno)");
    // The literal `new URL("./worker.js", import.meta.url)` is what bundlers (Vite) look for.
    const worker = options.workerUrl
      ? new Worker(options.workerUrl, { type: "module" })
      : new Worker(new URL("./worker.js", import.meta.url), { type: "module" });
    const model = new WorkerModel(worker);
    try {
      await model.#load(src, options);
    } catch (e) {
      model.dispose();
      throw e;
    }
    return model;
  }

  async #load(src, options) {
    const opts = { ...options };
    for (const k of LOCAL_ONLY) delete opts[k];
    let payload = src;
    const list = [];
    if (typeof src === "string" || src instanceof URL) {
      // Relative URLs mean the page's URL, not the worker script's.
      payload = new URL(src, globalThis.location?.href).href;
    } else if (src instanceof ArrayBuffer || ArrayBuffer.isView(src)) {
      // Copied, not transferred: callers often keep the bytes to load them again.
      const view = src instanceof ArrayBuffer ? new Uint8Array(src) : new Uint8Array(src.buffer, src.byteOffset, src.byteLength);
      payload = view.slice();
      list.push(payload.buffer);
    }
    const { signal, onProgress } = options;
    const { promise } = this.#request({ type: "load", src: payload, options: opts, progress: !!onProgress }, list, onProgress);
    // An abort rejects at once, whether the worker is downloading or compiling; load()
    // then terminates the worker, which stops whatever it was doing.
    let onAbort;
    const abort = new Promise((_, reject) => {
      onAbort = () => reject(aborted());
      signal?.addEventListener("abort", onAbort, { once: true });
    });
    try {
      const reply = await Promise.race([promise, abort]);
      this.#meta = reply.meta;
      this.#sha256 = reply.sha256;
    } finally {
      signal?.removeEventListener("abort", onAbort);
    }
  }

  #request(msg, transfer, onProgress) {
    if (this.#disposed) throw edgeError("Disposed", "the model was disposed");
    if (this.#broken) throw this.#broken;
    const id = this.#next++;
    // Posted first: a message that cannot be cloned throws here and leaves nothing pending.
    this.#worker.postMessage({ ...msg, id }, transfer);
    let entry;
    const promise = new Promise((resolve, reject) => (entry = { resolve, reject, onProgress }));
    this.#pending.set(id, entry);
    return { id, promise };
  }

  #receive(msg) {
    const p = this.#pending.get(msg?.id);
    if (!p) return;
    if (msg.type === "progress") {
      p.onProgress?.(msg.progress);
      return;
    }
    this.#pending.delete(msg.id);
    if (msg.ok) p.resolve(msg);
    else p.reject(fromPlain(msg.error));
  }

  #fail(err) {
    this.#broken = err;
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }

  get inputs() { return this.#meta.inputs; }
  get outputs() { return this.#meta.outputs; }
  get metadata() { return this.#meta.metadata; }
  get backend() { return this.#meta.backend; }
  get fallbackReason() { return this.#meta.fallbackReason; }
  get adapter() { return this.#meta.adapter; }
  get plan() { return this.#meta.plan; }
  get stackingBlocked() { return this.#meta.stackingBlocked ?? null; }
  /// Hex SHA-256 of the model's bytes (computed in the worker at load).
  async sha256() { return this.#sha256; }

  /// Runs the model in the worker. Feeds as for Model.run; their buffers are transferred
  /// (the caller's typed arrays are detached afterwards) unless `{ transfer: false }`.
  async run(feeds, { transfer = true } = {}) {
    if (this.#disposed) throw edgeError("Disposed", "the model was disposed");
    if (feeds == null || typeof feeds !== "object") throw edgeError("InvalidInput", "feeds must be an object of tensors");
    let request;
    const packed = pack(feeds, !transfer);
    try {
      request = this.#request({ type: "run", feeds: packed.out }, packed.list);
    } catch (e) {
      if (e?.name !== "DataCloneError") throw e;
      // A buffer that cannot be detached (a view on wasm memory): send copies.
      const copies = pack(feeds, true);
      request = this.#request({ type: "run", feeds: copies.out }, copies.list);
    }
    const reply = await request.promise;
    this.#meta = reply.meta;
    return tensorsOf(reply.outputs);
  }

  /// Model.runBatch in the worker: the inputs go over in slices of `batchSize`, so `signal`
  /// is checked and `onProgress` called between slices, as Model.runBatch does between runs.
  /// Buffers are copied, not transferred (a batch is often kept by the caller).
  async runBatch(inputs, { batchSize = 16, signal, onProgress } = {}) {
    const list = Array.from(inputs ?? []);
    const results = [];
    for (let at = 0; at < list.length; at += Math.max(1, batchSize)) {
      if (signal?.aborted) throw edgeError("Aborted", "runBatch was aborted");
      const slice = list.slice(at, at + Math.max(1, batchSize)).map((f) => {
        if (f == null || typeof f !== "object") throw Object.assign(edgeError("InvalidInput", "feeds must be an object of tensors"), { index: at });
        return pack(f, true).out;
      });
      let reply;
      try {
        reply = await this.#request({ type: "runBatch", inputs: slice, batchSize }, []).promise;
      } catch (e) {
        if (e?.index !== undefined) e.index += at;
        throw e;
      }
      this.#meta = reply.meta;
      for (const r of reply.results) results.push(tensorsOf(r));
      onProgress?.({ done: results.length, total: list.length });
    }
    return results;
  }

  /// Terminates the worker (freeing its wasm and GPU memory); later calls throw code "Disposed".
  dispose() {
    if (this.#disposed) return;
    this.#disposed = true;
    this.#worker.terminate();
    const err = edgeError("Disposed", "the model was disposed");
    for (const p of this.#pending.values()) p.reject(err);
    this.#pending.clear();
  }
}
