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

export interface Model extends ModelInfo {}
export class Model {
  static load(source: Uint8Array | ArrayBuffer | string | URL | Response, options?: LoadOptions): Promise<Model>;
  run(feeds: Record<string, Feed>): Promise<Record<string, Tensor>>;
}
