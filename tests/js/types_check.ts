// Type-checks the package's .d.ts files against typical use (deno check, in tools/test_all.sh).
import {
  Model, Tensor, WorkerModel, fetchModel, EdgeError, predictOrLookup, MemoryStore, KVStore, IndexedDBStore, PredictionCache,
  type PredictionStore, type KVNamespaceLike,
} from "../../js/index.d.ts";
const m: Model = await Model.load(new Uint8Array(1), { backend: "cpu", sha256: "ab" });
const n: number = m.inputs.length; m.dispose();
const w = await WorkerModel.load("x", { workerUrl: "y" });
const o = await w.run({ x: new Tensor("float32", new Float32Array(1), [1]) }, { transfer: false });
const b: Uint8Array = await fetchModel("u", { onProgress: (p) => p.loaded });
const e = new EdgeError("Fetch", "x"); const c: string = e.code;
// Batch, stores, streams (issue #7).
const rs = await m.runBatch([{ x: new Tensor("float32", new Float32Array(1), [1]) }], {
  batchSize: 8, signal: new AbortController().signal, onProgress: ({ done, total }) => done / total,
});
const why: string | null = m.stackingBlocked;
const sha: string = await m.sha256();
declare const kv: KVNamespaceLike;
const stores: PredictionStore[] = [new MemoryStore({ limit: 10 }), new KVStore(kv, { expirationTtl: 60 }), new IndexedDBStore()];
const got = await predictOrLookup(m, stores[0], "k", () => ({ x: new Tensor("float32", new Float32Array(1), [1]) }), { maxAgeMs: 1000 });
const src: "store" | "online" = got.source;
const peek = await new PredictionCache(w, stores[0]).lookup("k");
const peekAt: number | undefined = peek?.createdAt;
const s = m.stream({ input: "input", hop: 512, context: 64, fixed: { sr: new Tensor("int64", BigInt64Array.of(16000n), []) } });
const windows: Record<string, Tensor>[] = await s.push(new Float32Array(512));
await s.finish(); await s.reset(); const p: number = s.pending; s.dispose();
export { n, o, b, c, rs, why, sha, src, windows, p, peekAt };
