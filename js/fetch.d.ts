// Types of js/fetch.js (model delivery).
import type { EdgeError, ErrorCode } from "./index.d.ts";

export interface FetchProgress {
  /** Bytes received so far (compressed bytes for gzip); includes resumed bytes. */
  loaded: number;
  /** Content-Length, or the total of Content-Range on a 206; null if unknown. */
  total: number | null;
  /** True for a Cache Storage hit (one event, loaded == total). */
  fromCache: boolean;
  /** True once the transfer continued a partial download with Range. */
  resumed: boolean;
}

/** The subset of CacheStorage that fetchModel uses (inject one where `caches` is absent, e.g. Node). */
export interface CacheStorageLike {
  open(name: string): Promise<{
    match(request: string): Promise<Response | undefined>;
    put(request: string, response: Response): Promise<void>;
    delete(request: string): Promise<boolean>;
  }>;
}

export interface FetchModelOptions {
  /** Hex SHA-256 of the model (of the decompressed bytes for gzip); checked before returning (code "Integrity"). */
  sha256?: string;
  onProgress?: (p: FetchProgress) => void;
  /** Aborting rejects with code "Aborted"; the bytes received are kept for a later call. */
  signal?: AbortSignal;
  /** Use Cache Storage: true (default where it exists), false, or a cache name. */
  cache?: boolean | string;
  /** Default "edgepredict-models". */
  cacheName?: string;
  /** Default globalThis.caches. */
  cacheStorage?: CacheStorageLike;
  /** The body is gzip (DecompressionStream). Default: the URL path ends in ".gz". */
  gzip?: boolean;
  /** Resumes or restarts after a broken body (default 3). */
  retries?: number;
  /** Default globalThis.fetch. */
  fetch?: typeof fetch;
  /** Extra request headers. */
  headers?: HeadersInit;
}

export const DEFAULT_CACHE_NAME: "edgepredict-models";

/** Downloads a model: progress, Cache Storage, SHA-256, abort, Range resume, gzip. */
export function fetchModel(url: string | URL, options?: FetchModelOptions): Promise<Uint8Array>;

/** Hex SHA-256 (crypto.subtle). */
export function sha256Hex(bytes: ArrayBuffer | ArrayBufferView): Promise<string>;

/** Forgets the in-memory partial download of `url`, or all of them. */
export function dropPartial(url?: string | URL): void;

/** Makes the error fetchModel throws: the package's EdgeError. */
export function fetchError(code: ErrorCode, message: string, extra?: { node?: string | null; op?: string | null; cause?: unknown }): EdgeError;
