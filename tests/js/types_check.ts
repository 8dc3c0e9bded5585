// Type-checks the package's .d.ts files against typical use (deno check, in tools/test_all.sh).
import { Model, Tensor, WorkerModel, fetchModel, EdgeError } from "../../js/index.d.ts";
const m: Model = await Model.load(new Uint8Array(1), { backend: "cpu", sha256: "ab" });
const n: number = m.inputs.length; m.dispose();
const w = await WorkerModel.load("x", { workerUrl: "y" });
const o = await w.run({ x: new Tensor("float32", new Float32Array(1), [1]) }, { transfer: false });
const b: Uint8Array = await fetchModel("u", { onProgress: (p) => p.loaded });
const e = new EdgeError("Fetch", "x"); const c: string = e.code;
export { n, o, b, c };
