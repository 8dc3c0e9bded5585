// Types of js/worker-client.js (Web Worker mode).
import type { Feed, LoadOptions, ModelInfo, RunBatchOptions, Tensor } from "./index.d.ts";

export interface WorkerLoadOptions extends LoadOptions {
  /** The worker script, instead of the bundled `new URL("./worker.js", import.meta.url)`. */
  workerUrl?: string | URL;
}

/** The Model API with the model in a module Web Worker: load and runs off the main thread. */
export interface WorkerModel extends ModelInfo {}
export class WorkerModel {
  /**
   * Starts a worker and loads the model there. Bytes are copied to the worker; a URL is
   * resolved against the page and fetched inside the worker (onProgress is forwarded;
   * aborting `signal` rejects with "Aborted" and terminates the worker). `cacheStorage`
   * and `fetch` cannot cross threads and are ignored; the worker uses its own `caches`.
   */
  static load(source: Uint8Array | ArrayBuffer | string | URL, options?: WorkerLoadOptions): Promise<WorkerModel>;
  /**
   * Runs in the worker. The feeds' buffers are transferred (the caller's typed arrays are
   * detached afterwards) unless `transfer: false`; the outputs' buffers are transferred back.
   */
  run(feeds: Record<string, Feed>, options?: { transfer?: boolean }): Promise<Record<string, Tensor>>;
  /**
   * Model.runBatch in the worker, the inputs sent over in slices of `batchSize` (copied,
   * not transferred); `signal` and `onProgress` act between slices.
   */
  runBatch(inputs: Iterable<Record<string, Feed>>, options?: RunBatchOptions): Promise<Record<string, Tensor>[]>;
  /** Why runBatch cannot stack this model's inputs, or null when it can. */
  readonly stackingBlocked: string | null;
  /** Hex SHA-256 of the model's bytes (predictOrLookup takes a WorkerModel too). */
  sha256(): Promise<string>;
}
