// Prediction stores (issue #7): predictions computed ahead (batch) or earlier (online),
// kept to be read back. A store maps a key to a record { model, createdAt, outputs }, where
// `model` is the SHA-256 of the model that made it; `predictOrLookup` serves a record only
// when that model is the one asking (and, with maxAgeMs, when it is recent enough), else
// it predicts online and stores the result, replacing the stale record.
import { Tensor, EdgeError } from "./edgepredict.js";

/** A store in memory (tests, one process's cache); `limit` keeps the newest N. */
export class MemoryStore {
  #map = new Map();
  #limit;
  constructor({ limit = Infinity } = {}) {
    this.#limit = limit;
  }
  async get(key) {
    return this.#map.get(key);
  }
  async put(key, record) {
    this.#map.delete(key);
    this.#map.set(key, record);
    while (this.#map.size > this.#limit) this.#map.delete(this.#map.keys().next().value);
  }
  async delete(key) {
    this.#map.delete(key);
  }
}

const idbRequest = (r) => new Promise((ok, fail) => {
  r.onsuccess = () => ok(r.result);
  r.onerror = () => fail(r.error);
});

/**
 * The browser's IndexedDB: records are kept as they are (typed arrays clone natively), one
 * object store "predictions" in the database `name`.
 */
export class IndexedDBStore {
  #db = null;
  #name;
  #idb;
  constructor(name = "edgepredict-predictions", { indexedDB = globalThis.indexedDB } = {}) {
    if (!indexedDB) throw new EdgeError("InvalidInput", "IndexedDB is not available here");
    this.#name = name;
    this.#idb = indexedDB;
  }
  #open() {
    this.#db ??= (() => {
      const r = this.#idb.open(this.#name, 1);
      r.onupgradeneeded = () => r.result.createObjectStore("predictions");
      return idbRequest(r);
    })();
    return this.#db;
  }
  async #tx(mode, fn) {
    const db = await this.#open();
    const tx = db.transaction("predictions", mode);
    // Listened to before anything is awaited: a write counts once it is committed.
    const done = new Promise((ok, fail) => {
      tx.oncomplete = ok;
      tx.onerror = tx.onabort = () => fail(tx.error);
    });
    const result = await idbRequest(fn(tx.objectStore("predictions")));
    if (mode === "readwrite") await done;
    else done.catch(() => {});
    return result;
  }
  async get(key) {
    const r = await this.#tx("readonly", (s) => s.get(key));
    if (!r) return undefined;
    // Structured clone keeps the typed arrays but not the Tensor class.
    const outputs = {};
    for (const [k, t] of Object.entries(r.outputs)) outputs[k] = new Tensor(t.dtype, t.data, t.dims);
    return { ...r, outputs };
  }
  put(key, { model, createdAt, outputs }) {
    const plain = {};
    for (const [k, t] of Object.entries(outputs)) plain[k] = { dtype: t.dtype, data: t.data, dims: t.dims };
    return this.#tx("readwrite", (s) => s.put({ model, createdAt, outputs: plain }, key));
  }
  delete(key) {
    return this.#tx("readwrite", (s) => s.delete(key));
  }
  /** Closes the database (tests; a page may reopen it later). */
  async close() {
    (await this.#db)?.close();
    this.#db = null;
  }
}

/**
 * Cloudflare Workers KV (a namespace binding): records are stored as one binary value
 * (encodeRecord), with { model, createdAt } as the key's metadata. `expirationTtl` (s)
 * lets KV drop old predictions by itself.
 */
export class KVStore {
  #kv;
  #ttl;
  constructor(namespace, { expirationTtl } = {}) {
    if (!namespace?.get || !namespace?.put) throw new EdgeError("InvalidInput", "KVStore needs a KV namespace binding");
    this.#kv = namespace;
    this.#ttl = expirationTtl;
  }
  async get(key) {
    const bytes = await this.#kv.get(key, "arrayBuffer");
    return bytes ? decodeRecord(new Uint8Array(bytes)) : undefined;
  }
  async put(key, record) {
    const options = { metadata: { model: record.model, createdAt: record.createdAt } };
    if (this.#ttl) options.expirationTtl = this.#ttl;
    await this.#kv.put(key, encodeRecord(record), options);
  }
  async delete(key) {
    await this.#kv.delete(key);
  }
}

const MAGIC = 0x31525045; // "EPR1", little-endian

/**
 * A record as bytes: "EPR1", a u32 header length, a JSON header (model, createdAt, and per
 * output its name, dtype, dims, and where its bytes are; string tensors inline), then each
 * output's raw little-endian data at an 8-byte aligned offset.
 */
export function encodeRecord({ model, createdAt, outputs }) {
  const parts = [];
  let offset = 0;
  const header = { model, createdAt, outputs: [] };
  for (const [name, t] of Object.entries(outputs)) {
    if (t.dtype === "string") {
      header.outputs.push({ name, dtype: t.dtype, dims: t.dims, strings: t.data });
      continue;
    }
    const bytes = new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
    header.outputs.push({ name, dtype: t.dtype, dims: t.dims, offset, length: bytes.length });
    parts.push([offset, bytes]);
    offset += Math.ceil(bytes.length / 8) * 8;
  }
  const head = new TextEncoder().encode(JSON.stringify(header));
  const start = Math.ceil((8 + head.length) / 8) * 8;
  const out = new Uint8Array(start + offset);
  const view = new DataView(out.buffer);
  view.setUint32(0, MAGIC, true);
  view.setUint32(4, head.length, true);
  out.set(head, 8);
  for (const [at, bytes] of parts) out.set(bytes, start + at);
  return out;
}

const ARRAYS = {
  float32: Float32Array, float64: Float64Array, int64: BigInt64Array, uint64: BigUint64Array,
  int32: Int32Array, uint32: Uint32Array, int16: Int16Array, uint16: Uint16Array, int8: Int8Array,
  uint8: Uint8Array, bool: Uint8Array, float16: Uint16Array, bfloat16: Uint16Array,
};

/** The inverse of encodeRecord; a value that is not one is an "InvalidInput" EdgeError. */
export function decodeRecord(bytes) {
  const bad = (why) => new EdgeError("InvalidInput", `not a stored prediction: ${why}`);
  if (bytes.length < 8) throw bad("too short");
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (view.getUint32(0, true) !== MAGIC) throw bad("no EPR1 header");
  const hlen = view.getUint32(4, true);
  if (8 + hlen > bytes.length) throw bad("truncated header");
  let header;
  try {
    header = JSON.parse(new TextDecoder().decode(bytes.subarray(8, 8 + hlen)));
  } catch {
    throw bad("bad header");
  }
  const start = Math.ceil((8 + hlen) / 8) * 8;
  const outputs = {};
  for (const o of header.outputs ?? []) {
    if (o.dtype === "string") {
      outputs[o.name] = new Tensor("string", o.strings, o.dims);
      continue;
    }
    const A = ARRAYS[o.dtype];
    if (!A || start + o.offset + o.length > bytes.length || o.length % A.BYTES_PER_ELEMENT) throw bad(`output ${o.name}`);
    // A copy: the typed array gets its own aligned buffer.
    const data = new A(bytes.slice(start + o.offset, start + o.offset + o.length).buffer);
    outputs[o.name] = new Tensor(o.dtype, data, o.dims);
  }
  return { model: header.model, createdAt: header.createdAt, outputs };
}

/** A record made by the model with this SHA-256, no older than maxAgeMs. */
const isFresh = (record, sha, now, maxAgeMs) => !!record && record.model === sha && now - record.createdAt <= maxAgeMs;

/**
 * A stored prediction for `key` when the store holds one from this very model (and no older
 * than `maxAgeMs`), else `model.run(input)` now, stored under `key` for next time. `input`
 * may be a function returning (a Promise of) the feeds, called only when needed.
 * Resolves to { outputs, source: "store" | "online", createdAt }. A store that fails to
 * read or write does not fail the prediction (`onStoreError` hears of it).
 */
export async function predictOrLookup(model, store, key, input, { maxAgeMs = Infinity, now = Date.now, onStoreError } = {}) {
  const sha = await model.sha256();
  let record;
  try {
    record = await store.get(key);
  } catch (e) {
    onStoreError?.(e);
  }
  if (isFresh(record, sha, now(), maxAgeMs)) {
    return { outputs: record.outputs, source: "store", createdAt: record.createdAt };
  }
  // The input may come lazily (a function): fetched only when it must be predicted.
  const outputs = await model.run(typeof input === "function" ? await input() : input);
  const createdAt = now();
  try {
    await store.put(key, { model: sha, createdAt, outputs });
  } catch (e) {
    onStoreError?.(e);
  }
  return { outputs, source: "online", createdAt };
}

/**
 * A model and a store bound together: `predictOrLookup(key, input)` as above, and
 * `lookup(key)`, the stored prediction only (undefined when there is none fresh for this
 * model), for a caller that must not compute (a "peek").
 */
export class PredictionCache {
  #model;
  #store;
  #options;
  constructor(model, store, options = {}) {
    this.#model = model;
    this.#store = store;
    this.#options = options;
  }
  predictOrLookup(key, input) {
    return predictOrLookup(this.#model, this.#store, key, input, this.#options);
  }
  async lookup(key) {
    const { maxAgeMs = Infinity, now = Date.now } = this.#options;
    const record = await this.#store.get(key);
    return isFresh(record, await this.#model.sha256(), now(), maxAgeMs)
      ? { outputs: record.outputs, source: "store", createdAt: record.createdAt }
      : undefined;
  }
}
