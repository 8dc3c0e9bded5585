// The runtime-independent core of the npm package: wraps the wasm-bindgen classes of
// src/api/wasm.rs in a small JS API (docs/js-api.md). Each entry in ./entry/ tells the
// core how to get the wasm in its runtime (fetch, node:fs, an imported Module).
import initBindings, * as raw from "../dist/bindings.js";

/** Every failure of the package: a real Error with the Rust error kind as `code`. */
export class EdgeError extends Error {
  constructor(code, message, { node = null, op = null, cause } = {}) {
    super(message, cause === undefined ? undefined : { cause });
    this.name = "EdgeError";
    this.code = code;
    this.node = node;
    this.op = op;
  }
}

/** Turns whatever a wasm call threw into an EdgeError. */
function toEdgeError(e) {
  if (e instanceof EdgeError) return e;
  if (e instanceof raw.EdgeError) {
    const err = new EdgeError(e.kind, e.message, { node: e.node ?? null, op: e.op ?? null });
    e.free();
    return err;
  }
  if (typeof WebAssembly !== "undefined" && e instanceof WebAssembly.RuntimeError) {
    return new EdgeError("Runtime", `the wasm engine stopped: ${e.message}`, { cause: e });
  }
  return new EdgeError("Runtime", e?.message ?? String(e), { cause: e });
}

// A module whose one function uses f32x4.relaxed_madd: it validates only where relaxed
// SIMD exists. This is the package's one feature-detect.
function relaxedProbe() {
  const v128Zero = [0xfd, 0x0c, ...new Array(16).fill(0)]; // v128.const 0
  // No locals; three zero vectors; f32x4.relaxed_madd (0xfd 0x85 0x02); end.
  const body = [0x00, ...v128Zero, ...v128Zero, ...v128Zero, 0xfd, 0x85, 0x02, 0x0b];
  return new Uint8Array([
    0x00, 0x61, 0x73, 0x6d, 0x01, 0x00, 0x00, 0x00, // magic, version 1
    0x01, 0x05, 0x01, 0x60, 0x00, 0x01, 0x7b, // one type: () -> v128
    0x03, 0x02, 0x01, 0x00, // one function of that type
    0x0a, body.length + 2, 0x01, body.length, ...body, // its code
  ]);
}

/** True where the engine validates relaxed SIMD. */
export function relaxedSimdSupported() {
  try {
    return WebAssembly.validate(relaxedProbe());
  } catch {
    return false;
  }
}

let loadWasm = null;
let ready = null;
let info = null;

/** Set by each entry: (build: "relaxed-simd" | "simd") => Module | bytes | Response (or a Promise). */
export function setWasmSource(fn) {
  loadWasm = fn;
}

/**
 * Loads the wasm once (Model.load calls it). `options.build` forces "simd" or
 * "relaxed-simd"; `options.module` passes the wasm yourself (Module, bytes or Response).
 */
export function init(options = {}) {
  ready ??= (async () => {
    const build = options.build ?? (relaxedSimdSupported() ? "relaxed-simd" : "simd");
    const source = options.module ?? (await loadWasm(build));
    const exports = await initBindings({ module_or_path: await source });
    info = {
      build,
      webgpu: typeof navigator !== "undefined" && !!navigator.gpu,
      memory: exports.memory,
    };
    return { build: info.build, webgpu: info.webgpu };
  })().catch((e) => {
    ready = null; // a failed init (network, validation) may be retried
    throw e instanceof EdgeError ? e : new EdgeError("Init", `cannot load the wasm: ${e?.message ?? e}`, { cause: e });
  });
  return ready;
}

/** Bytes of wasm linear memory now (the runtime's heap; 0 before init). */
export function memoryBytes() {
  return info?.memory.buffer.byteLength ?? 0;
}

const ARRAY_OF = {
  float32: Float32Array, float64: Float64Array, int64: BigInt64Array, uint64: BigUint64Array,
  int32: Int32Array, uint32: Uint32Array, int16: Int16Array, uint16: Uint16Array, int8: Int8Array,
  uint8: Uint8Array, bool: Uint8Array, float16: Uint16Array, bfloat16: Uint16Array,
  // Outputs only, widened by the runtime: float8/float4 as f32, 4/2-bit integers as bytes.
  float8e4m3fn: Float32Array, float8e4m3fnuz: Float32Array, float8e5m2: Float32Array,
  float8e5m2fnuz: Float32Array, float8e8m0: Float32Array, float4e2m1: Float32Array,
  int4: Int8Array, int2: Int8Array, uint4: Uint8Array, uint2: Uint8Array,
};

function dtypeOf(data) {
  if (Array.isArray(data)) return "string";
  for (const [dt, A] of Object.entries(ARRAY_OF)) if (data instanceof A) return dt;
  return null;
}

/** A tensor: dtype name, typed array (or string[]) in row-major order, dims. */
export class Tensor {
  constructor(dtype, data, dims) {
    if (dtype === undefined || dtype === null) dtype = dtypeOf(data);
    const A = ARRAY_OF[dtype];
    if (dtype === "string" ? !Array.isArray(data) : !(A && data instanceof A)) {
      throw new EdgeError("DType", `a ${dtype ?? "tensor"} needs a ${A?.name ?? "typed array"}, got ${data?.constructor?.name ?? typeof data}`);
    }
    dims = Array.from(dims ?? [data.length], Number);
    if (!dims.every((d) => Number.isInteger(d) && d >= 0 && d < 2 ** 32)) {
      throw new EdgeError("Shape", `dims must be non-negative integers, got [${dims}]`);
    }
    const n = dims.reduce((a, b) => a * b, 1);
    if (n !== data.length) {
      throw new EdgeError("Shape", `dims [${dims}] hold ${n} values but the data has ${data.length}`);
    }
    this.dtype = dtype;
    this.data = data;
    this.dims = dims;
  }
  get size() {
    return this.data.length;
  }
}

function asTensor(name, v) {
  if (v instanceof Tensor) return v;
  if (v && typeof v === "object" && "data" in v) return new Tensor(v.dtype ?? null, v.data, v.dims ?? v.shape);
  throw new EdgeError("InvalidInput", `input '${name}' must be a Tensor or {data, dims}`);
}

/** Typed arrays (or string arrays) of one dtype, end to end. */
function concatData(parts) {
  if (Array.isArray(parts[0])) return parts.flat();
  const out = new parts[0].constructor(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** Hex SHA-256 of bytes (crypto.subtle). */
export async function sha256Hex(bytes) {
  const digest = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
  let hex = "";
  for (const b of digest) hex += b.toString(16).padStart(2, "0");
  return hex;
}

function bytesOf(source) {
  if (source instanceof Uint8Array) return source;
  if (source instanceof ArrayBuffer) return new Uint8Array(source);
  if (ArrayBuffer.isView(source)) return new Uint8Array(source.buffer, source.byteOffset, source.byteLength);
  return null;
}

/** A run's outputs (a wasm Outputs, freed here) as { name: Tensor }. */
function outputsOf(out) {
  try {
    const result = {};
    for (let i = 0; i < out.len(); i++) {
      result[out.name(i)] = new Tensor(out.dtype(i), out.data(i), Array.from(out.shape(i)));
    }
    return result;
  } catch (e) {
    throw toEdgeError(e);
  } finally {
    out.free();
  }
}

/**
 * A live stream (Model.stream): the windowing and state of src/api/stream.rs, so a
 * recording pushed in pieces and pushed whole give the same predictions. Calls run in the
 * order made, one at a time.
 */
export class Stream {
  #raw;
  #queue = Promise.resolve();
  constructor(rawStream) {
    this.#raw = rawStream;
  }
  #call(fn) {
    const run = this.#queue.then(() => {
      if (!this.#raw) throw new EdgeError("Disposed", "this stream was disposed");
      return fn(this.#raw);
    });
    this.#queue = run.catch(() => {});
    return run;
  }
  static async #windows(promise) {
    let arr;
    try {
      arr = await promise;
    } catch (e) {
      throw toEdgeError(e);
    }
    return Array.from(arr, outputsOf);
  }
  /** samples: Float32Array or numbers → Promise of the completed windows' outputs. */
  push(samples) {
    const data = samples instanceof Float32Array ? samples : Float32Array.from(samples ?? []);
    return this.#call((r) => Stream.#windows(r.push(data)));
  }
  /** The partial window left, zero-padded (none when nothing is pending). */
  finish() {
    return this.#call((r) => Stream.#windows(r.finish()));
  }
  /** Back to the start: zero state and context, nothing pending. */
  reset() {
    return this.#call((r) => {
      try {
        r.reset();
      } catch (e) {
        throw toEdgeError(e);
      }
    });
  }
  /** Samples buffered toward the next window. */
  get pending() {
    return this.#raw?.pending() ?? 0;
  }
  dispose() {
    const r = this.#raw;
    this.#raw = null;
    // After any call in flight.
    this.#queue.then(() => r?.free());
  }
}

/** A loaded model: load once, run many times. */
export class Model {
  #raw;
  #desc;
  #plan = null;
  #stackBlocked = null;

  #sha;
  constructor(rawModel, sha) {
    this.#raw = rawModel;
    this.#desc = rawModel.describe();
    this.#sha = sha;
  }

  /**
   * source: bytes (Uint8Array, ArrayBuffer) or a URL (string, URL) fetched by fetchModel
   * with the same options; options: { backend: "auto" | "webgpu" | "cpu", optimize, memoryLimit, ... }.
   */
  static async load(source, options = {}) {
    await init();
    let bytes = bytesOf(source);
    if (!bytes && (typeof source === "string" || source instanceof URL)) {
      const { fetchModel } = await import("./fetch.js");
      bytes = await fetchModel(source, options);
    } else if (!bytes && typeof Response !== "undefined" && source instanceof Response) {
      bytes = new Uint8Array(await source.arrayBuffer());
    }
    if (!bytes) throw new EdgeError("InvalidInput", "a model is bytes (Uint8Array, ArrayBuffer) or a URL");
    const { backend = "auto", optimize, memoryLimit } = options;
    // digest() copies the bytes now; the hash is awaited only when asked for.
    const sha = sha256Hex(bytes);
    sha.catch(() => {});
    try {
      return new Model(await raw.EdgeModel.create(bytes, { backend, optimize, memoryLimit }), sha);
    } catch (e) {
      throw toEdgeError(e);
    }
  }

  #live() {
    if (!this.#raw) throw new EdgeError("Disposed", "this model was disposed");
    return this.#raw;
  }

  /** [{ name, kind, dtype, dims, optional }]: a symbolic dim is its name, an unknown one null. */
  get inputs() {
    return this.#desc.inputs;
  }
  get outputs() {
    return this.#desc.outputs;
  }
  /** { producer, irVersion, opsets, props } (props: the model's metadata_props). */
  get metadata() {
    const { producer, irVersion, opsets, props } = this.#desc;
    return { producer, irVersion, opsets, props };
  }
  /** "webgpu" or "cpu": where runs go now (a GPU failure switches to "cpu"). */
  get backend() {
    return this.#live().backend();
  }
  get fallbackReason() {
    return this.#live().fallbackReason() ?? null;
  }
  get adapter() {
    return this.#live().adapter() ?? null;
  }
  /** { gpuNodes, nodes, placement: [{ name, op, device, reason }], text }. */
  get plan() {
    const m = this.#live();
    this.#plan ??= { ...m.placement(), text: m.planText() };
    return this.#plan;
  }

  /** feeds: { name: Tensor | { data, dims, dtype? } } → Promise<{ name: Tensor }>. */
  async run(feeds) {
    const m = this.#live();
    const f = new raw.Feeds();
    let out;
    try {
      for (const [name, v] of Object.entries(feeds ?? {})) {
        const t = asTensor(name, v);
        f.add(name, t.dtype, t.data, Uint32Array.from(t.dims));
      }
      out = await m.runAsync(f);
    } catch (e) {
      throw toEdgeError(e);
    } finally {
      f.free();
    }
    return outputsOf(out);
  }

  /**
   * A stream: samples in (`push`), one prediction per completed window, with the model's
   * state fed back between windows. options: { input, hop, context = 0, state, fixed }:
   * each window is `context` samples of the one before (zeros at first) then `hop` new
   * ones, given to `input`; `state` pairs [input, output] (found by name when left out:
   * silero's state → stateN); `fixed` feeds that every window gets (silero: sr).
   */
  stream(options = {}) {
    const m = this.#live();
    for (const k of Object.keys(options)) {
      // A misspelt option would otherwise be a silent default.
      if (!["input", "hop", "context", "state", "fixed"].includes(k)) throw new EdgeError("InvalidInput", `unknown stream option '${k}'`);
    }
    const { input, hop, context = 0, state, fixed = {} } = options;
    const f = new raw.Feeds();
    try {
      for (const [name, v] of Object.entries(fixed)) {
        const t = asTensor(name, v);
        f.add(name, t.dtype, t.data, Uint32Array.from(t.dims));
      }
      return new Stream(m.stream({ input, hop, context, ...(state ? { state } : {}) }, f));
    } catch (e) {
      throw toEdgeError(e);
    } finally {
      f.free();
    }
  }

  /** Hex SHA-256 of the model's bytes: what stored predictions are checked against. */
  sha256() {
    return this.#sha;
  }

  /** Why inputs cannot be stacked along a batch dim, or null when they can. */
  get stackingBlocked() {
    return this.#stackBlocked ?? this.#desc.noStacking ?? null;
  }

  /**
   * Runs many inputs (an array of feeds) and resolves to their outputs, in order. Where the
   * model has a batch dim, up to `batchSize` consecutive inputs with the same shapes are
   * stacked into one run and split back; otherwise they run one by one. An input may leave
   * the batch dim out. `signal` aborts between runs; `onProgress({ done, total })` follows
   * each run. A failing input rejects the call with its `index` on the error.
   */
  async runBatch(inputs, { batchSize = 16, signal, onProgress } = {}) {
    const list = Array.from(inputs ?? []);
    const total = list.length;
    const results = new Array(total);
    const declared = new Map(this.#desc.inputs.map((i) => [i.name, i.dims?.length ?? null]));
    const withBatchDim = (feeds) => {
      const out = {};
      for (const [name, v] of Object.entries(feeds ?? {})) {
        const t = asTensor(name, v);
        out[name] = declared.get(name) === t.dims.length + 1 ? new Tensor(t.dtype, t.data, [1, ...t.dims]) : t;
      }
      return out;
    };
    const key = (feeds) =>
      JSON.stringify(Object.keys(feeds).sort().map((n) => [n, feeds[n].dtype, feeds[n].dims.slice(1)]));
    const one = async (index) => {
      try {
        results[index] = await this.run(withBatchDim(list[index]));
      } catch (e) {
        const err = toEdgeError(e);
        err.index = index;
        throw err;
      }
    };
    let done = 0;
    for (let i = 0; i < total; ) {
      if (signal?.aborted) throw new EdgeError("Aborted", "runBatch was aborted", { cause: signal.reason });
      let end = i + 1;
      let stacked = null;
      if (!this.stackingBlocked && batchSize > 1) {
        // A malformed input ends the group; run alone, it then reports itself.
        const tryFeeds = (j) => {
          try {
            return withBatchDim(list[j]);
          } catch {
            return null;
          }
        };
        const fed = [tryFeeds(i)];
        const k = fed[0] && key(fed[0]);
        while (k && end < total && end - i < batchSize) {
          const next = tryFeeds(end);
          if (!next || key(next) !== k) break;
          fed.push(next);
          end++;
        }
        if (fed.length > 1) stacked = await this.#runStacked(fed).catch(() => null);
      }
      if (stacked) stacked.forEach((r, j) => (results[i + j] = r));
      else for (let j = i; j < end; j++) await one(j); // a bad input names itself
      done = end;
      i = end;
      onProgress?.({ done, total });
    }
    return results;
  }

  /** One run over inputs concatenated along dim 0, split back per input; null when the
   * outputs do not split (an output that mixes the batch). */
  async #runStacked(fed) {
    const rows = fed.map((f) => Object.values(f)[0]?.dims[0] ?? 0);
    const totalRows = rows.reduce((a, b) => a + b, 0);
    const feeds = {};
    for (const name of Object.keys(fed[0])) {
      const parts = fed.map((f) => f[name]);
      feeds[name] = new Tensor(parts[0].dtype, concatData(parts.map((t) => t.data)), [
        parts.reduce((a, t) => a + t.dims[0], 0),
        ...parts[0].dims.slice(1),
      ]);
      if (feeds[name].dims[0] !== totalRows) return null; // inputs of one item disagree on rows
    }
    const out = await this.run(feeds);
    if (Object.values(out).some((t) => t.dims[0] !== totalRows)) {
      this.#stackBlocked = "a stacked run's outputs did not split back into its inputs";
      return null;
    }
    const per = fed.map(() => ({}));
    for (const [name, t] of Object.entries(out)) {
      const row = totalRows ? t.data.length / totalRows : 0;
      let at = 0;
      rows.forEach((r, j) => {
        per[j][name] = new Tensor(t.dtype, t.data.slice(at * row, (at + r) * row), [r, ...t.dims.slice(1)]);
        at += r;
      });
    }
    return per;
  }

  /** Frees the model's wasm and GPU memory; later calls throw EdgeError "Disposed". */
  dispose() {
    this.#raw?.free();
    this.#raw = null;
  }
}
