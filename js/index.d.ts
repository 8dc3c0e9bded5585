// Types of the npm package `edgepredict` (docs/js-api.md).

export type Backend = "auto" | "webgpu" | "cpu";
export type DType =
  | "float32" | "float64" | "float16" | "bfloat16"
  | "int64" | "uint64" | "int32" | "uint32" | "int16" | "uint16" | "int8" | "uint8"
  | "bool" | "string"
  | "float8e4m3fn" | "float8e4m3fnuz" | "float8e5m2" | "float8e5m2fnuz" | "float8e8m0" | "float4e2m1"
  | "int4" | "int2" | "uint4" | "uint2";
export type TensorData =
  | Float32Array | Float64Array | BigInt64Array | BigUint64Array | Int32Array | Uint32Array
  | Int16Array | Uint16Array | Int8Array | Uint8Array | string[];

/** A dim: its size, a symbol's name, or null when unknown. */
export type Dim = number | string | null;

export interface IoInfo {
  name: string;
  kind: "tensor" | "sequence" | "optional";
  dtype: DType | null;
  /** null when even the rank is unknown. */
  dims: Dim[] | null;
  /** An input with an initializer default, which may be left out. */
  optional: boolean;
}

export interface ModelMetadata {
  producer: string;
  irVersion: number;
  /** Domain ("" is ai.onnx) → opset version. */
  opsets: Record<string, number>;
  /** The model's metadata_props. */
  props: Record<string, string>;
}

export interface NodePlacement {
  name: string;
  op: string;
  device: "gpu" | "cpu";
  reason: string;
}

export interface Plan {
  gpuNodes: number;
  nodes: number;
  placement: NodePlacement[];
  /** The schedule as text: node order, placement, value lifetimes, buffer slots. */
  text: string;
}

export type ErrorCode =
  | "Decode" | "InvalidModel" | "UnsupportedOp" | "UnsupportedDType" | "ExternalData"
  | "InvalidAttribute" | "Shape" | "DType" | "InvalidInput" | "MemoryLimit" | "Runtime" | "Device"
  | "Fetch" | "Integrity" | "Aborted" | "Disposed" | "Init";

export class EdgeError extends Error {
  constructor(code: ErrorCode, message: string, extra?: { node?: string | null; op?: string | null; cause?: unknown });
  readonly name: "EdgeError";
  readonly code: ErrorCode;
  /** The node that failed, when one did. */
  readonly node: string | null;
  readonly op: string | null;
  /** runBatch: the input that failed. */
  readonly index?: number;
}

export class Tensor {
  /** `dtype` null: taken from the typed array (Uint8Array is uint8; say "bool" for bool). */
  constructor(dtype: DType | null, data: TensorData, dims?: ArrayLike<number>);
  readonly dtype: DType;
  readonly data: TensorData;
  readonly dims: number[];
  readonly size: number;
}

export type Feed = Tensor | { data: TensorData; dims: ArrayLike<number>; dtype?: DType };

import type { FetchModelOptions } from "./fetch.d.ts";
export type { FetchProgress, FetchModelOptions, CacheStorageLike } from "./fetch.d.ts";
export { fetchModel, sha256Hex, dropPartial, DEFAULT_CACHE_NAME } from "./fetch.d.ts";
export {
  MemoryStore, IndexedDBStore, KVStore, predictOrLookup, PredictionCache, encodeRecord, decodeRecord,
  PredictionRecord, PredictionStore, KVNamespaceLike, PredictOrLookupOptions, StoredPrediction,
} from "./store.d.ts";
// WorkerModel: browsers and Deno (not in the workerd build; in Node, load rejects).
export { WorkerModel, WorkerLoadOptions } from "./worker-client.d.ts";

/** Model.load: the model options, plus fetchModel's when the source is a URL. */
export interface LoadOptions extends FetchModelOptions {
  /** Default "auto": WebGPU only where it should win, the reason in fallbackReason. */
  backend?: Backend;
  /** Graph optimisations (default true). */
  optimize?: boolean;
  /** Largest tensor (bytes) a model may declare or produce. */
  memoryLimit?: number;
}

export interface InitInfo {
  build: "relaxed-simd" | "simd";
  /** navigator.gpu exists. */
  webgpu: boolean;
}

export function init(options?: { build?: "relaxed-simd" | "simd"; module?: WebAssembly.Module | BufferSource | Response }): Promise<InitInfo>;
export function relaxedSimdSupported(): boolean;
/** Bytes of wasm linear memory now. */
export function memoryBytes(): number;

/** What a loaded model tells about itself: the same on `Model` and `WorkerModel`. */
export interface ModelInfo {
  readonly inputs: IoInfo[];
  readonly outputs: IoInfo[];
  readonly metadata: ModelMetadata;
  readonly backend: "webgpu" | "cpu";
  readonly fallbackReason: string | null;
  readonly adapter: string | null;
  readonly plan: Plan;
  /** Frees the model (wasm and GPU memory, or the worker); later calls throw "Disposed". */
  dispose(): void;
}

export interface RunBatchOptions {
  /** Most inputs stacked into one run (default 16; 1: never stack). */
  batchSize?: number;
  /** Aborts between runs: the call rejects with EdgeError "Aborted". */
  signal?: AbortSignal;
  /** After each run; a throw ends the call with that error. */
  onProgress?: (p: { done: number; total: number }) => void;
}

export interface Model extends ModelInfo {}
export class Model {
  static load(source: Uint8Array | ArrayBuffer | string | URL | Response, options?: LoadOptions): Promise<Model>;
  run(feeds: Record<string, Feed>): Promise<Record<string, Tensor>>;
  /**
   * Many inputs, outputs in order: stacked along the batch dim where the model has one (an
   * input may leave that dim out), one by one otherwise. A failing input rejects the call;
   * the error's `index` names it.
   */
  runBatch(inputs: Iterable<Record<string, Feed>>, options?: RunBatchOptions): Promise<Record<string, Tensor>[]>;
  /** Hex SHA-256 of the model's bytes (what stored predictions are checked against). */
  sha256(): Promise<string>;
  /** Why runBatch cannot stack this model's inputs, or null when it can. */
  readonly stackingBlocked: string | null;
  /** A stream over this model: samples in, a prediction per completed window, state fed back. */
  stream(options: StreamOptions): Stream;
}

export interface StreamOptions {
  /** The input each window goes to ([1, context + hop] or rank 1). */
  input: string;
  /** New samples per window. */
  hop: number;
  /** Samples of the window before put in front (zeros at the start); default 0. */
  context?: number;
  /** [input, output] pairs fed back; found by name when left out (x → xN, x_out, next_x, new_x, x_new). */
  state?: [string, string][];
  /** Inputs every window gets unchanged (silero: sr). */
  fixed?: Record<string, Feed>;
}

/** A live stream (Model.stream). Calls run one at a time, in the order made. */
export class Stream {
  /** Resolves to the outputs (state left out) of each window the samples completed. */
  push(samples: Float32Array | ArrayLike<number>): Promise<Record<string, Tensor>[]>;
  /** The zero-padded partial window left, if any. */
  finish(): Promise<Record<string, Tensor>[]>;
  reset(): Promise<void>;
  /** Samples buffered toward the next window. */
  readonly pending: number;
  dispose(): void;
}
