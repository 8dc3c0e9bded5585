// Types of the prediction stores (js/store.js; docs/js-api.md).
import type { Model, Tensor, Feed } from "./index.d.ts";
import type { WorkerModel } from "./worker-client.d.ts";

/** What a store keeps per key: the outputs and the SHA-256 of the model that made them. */
export interface PredictionRecord {
  model: string;
  /** Milliseconds since the epoch. */
  createdAt: number;
  outputs: Record<string, Tensor>;
}

export interface PredictionStore {
  get(key: string): Promise<PredictionRecord | undefined>;
  put(key: string, record: PredictionRecord): Promise<void>;
  delete(key: string): Promise<void>;
}

/** In memory; `limit` keeps the newest N records. */
export class MemoryStore implements PredictionStore {
  constructor(options?: { limit?: number });
  get(key: string): Promise<PredictionRecord | undefined>;
  put(key: string, record: PredictionRecord): Promise<void>;
  delete(key: string): Promise<void>;
}

/** The browser's IndexedDB (database `name`, object store "predictions"). */
export class IndexedDBStore implements PredictionStore {
  /** `indexedDB`: an IDBFactory (default globalThis.indexedDB). */
  constructor(name?: string, options?: { indexedDB?: { open(name: string, version?: number): unknown } });
  get(key: string): Promise<PredictionRecord | undefined>;
  put(key: string, record: PredictionRecord): Promise<void>;
  delete(key: string): Promise<void>;
  close(): Promise<void>;
}

/** The subset of a Workers KV namespace binding that KVStore uses. */
export interface KVNamespaceLike {
  get(key: string, type: "arrayBuffer"): Promise<ArrayBuffer | null>;
  put(key: string, value: ArrayBuffer | ArrayBufferView, options?: { expirationTtl?: number; metadata?: unknown }): Promise<void>;
  delete(key: string): Promise<void>;
}

/** Cloudflare Workers KV: one binary value per key (encodeRecord). */
export class KVStore implements PredictionStore {
  constructor(namespace: KVNamespaceLike, options?: { expirationTtl?: number });
  get(key: string): Promise<PredictionRecord | undefined>;
  put(key: string, record: PredictionRecord): Promise<void>;
  delete(key: string): Promise<void>;
}

export function encodeRecord(record: PredictionRecord): Uint8Array;
export function decodeRecord(bytes: Uint8Array): PredictionRecord;

export interface PredictOrLookupOptions {
  /** Older records are predicted again (default: no limit). */
  maxAgeMs?: number;
  now?: () => number;
  /** A store that fails does not fail the prediction; this hears of it. */
  onStoreError?: (error: unknown) => void;
}

export function predictOrLookup(
  model: Model | WorkerModel,
  store: PredictionStore,
  key: string,
  input: Record<string, Feed> | (() => Record<string, Feed> | Promise<Record<string, Feed>>),
  options?: PredictOrLookupOptions,
): Promise<StoredPrediction>;

export interface StoredPrediction {
  outputs: Record<string, Tensor>;
  source: "store" | "online";
  createdAt: number;
}

/** A model and a store bound together. */
export class PredictionCache {
  constructor(model: Model | WorkerModel, store: PredictionStore, options?: PredictOrLookupOptions);
  predictOrLookup(key: string, input: Record<string, Feed> | (() => Record<string, Feed> | Promise<Record<string, Feed>>)): Promise<StoredPrediction>;
  /** The stored prediction only: undefined when none is fresh for this model. */
  lookup(key: string): Promise<StoredPrediction | undefined>;
}
