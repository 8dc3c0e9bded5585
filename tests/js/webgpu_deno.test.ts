// A real model on Deno's WebGPU (wgpu on lavapipe here) through the edgepredict package:
// the same input on backend "cpu" and "webgpu", outputs compared.
// Run: deno test --allow-read --allow-env tests/js/webgpu_deno.test.ts
// (needs tools/build_pkg.sh's dist/; XDG_RUNTIME_DIR set to a 0700 dir for lavapipe)
// "edgepredict" is the repo's own package.json (a self-reference): Deno resolves it through
// the package's `exports` (the `deno` condition, js/entry/web.js; types from js/index.d.ts)
// exactly as `npm:edgepredict` in a project, and without a download.
import { Model, Tensor } from "edgepredict";

const root = new URL("../../", import.meta.url);
// PP-OCR's direction classifier: MobileNetV3 on a 48×192 text line.
const MODEL = Deno.env.get("EDGEPREDICT_GPU_MODEL") ?? ".cache/models/ppocr_cls.onnx";
const SHAPE = (Deno.env.get("EDGEPREDICT_GPU_SHAPE") ?? "1,3,48,192").split(",").map(Number);
const ATOL = 1e-4, RTOL = 1e-3;

/** Deterministic pseudo-random floats in [0, 1). */
function rng(seed: number) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

Deno.test("a real model runs on Deno's WebGPU through the package and matches the CPU", async () => {
  if (!("gpu" in navigator)) throw new Error("no navigator.gpu in this Deno");
  const bytes = await Deno.readFile(new URL(MODEL, root));
  const cpu = await Model.load(bytes, { backend: "cpu" });
  const gpu = await Model.load(bytes, { backend: "webgpu" });
  try {
    if (gpu.backend !== "webgpu") throw new Error(`fell back: ${gpu.fallbackReason}`);
    if (!(gpu.plan.gpuNodes > 0)) throw new Error("no node on the GPU");
    const feeds = () => {
      const next = rng(42);
      return Object.fromEntries(cpu.inputs.map(({ name, dtype }) => {
        if (dtype !== "float32") throw new Error(`test feeds only float32 inputs, ${name} is ${dtype}`);
        const n = SHAPE.reduce((a, b) => a * b, 1);
        return [name, new Tensor("float32", Float32Array.from({ length: n }, next), SHAPE)];
      }));
    };
    const a = await cpu.run(feeds());
    const b = await gpu.run(feeds());
    if (gpu.backend !== "webgpu") throw new Error(`the run fell back: ${gpu.fallbackReason}`);
    // 1.0 = at the tolerance; below 1 passes.
    let worst = 0;
    const outputs = [];
    for (const name of Object.keys(a)) {
      const x = a[name].data as Float32Array, y = b[name]?.data as Float32Array;
      if (!y || x.length !== y.length) throw new Error(`output ${name}: ${x.length} vs ${y?.length} values`);
      if (String(a[name].dims) !== String(b[name].dims)) throw new Error(`output ${name}: dims differ`);
      for (let k = 0; k < x.length; k++) {
        const err = Math.abs(x[k] - y[k]) / (ATOL + RTOL * Math.abs(x[k]));
        worst = Number.isNaN(err) ? Infinity : Math.max(worst, err);
      }
      outputs.push({ name, dims: a[name].dims, first: Array.from(y.slice(0, 4)) });
    }
    if (outputs.length === 0) throw new Error("no outputs");
    console.log(JSON.stringify({ backend: gpu.backend, adapter: gpu.adapter, gpuNodes: gpu.plan.gpuNodes,
      nodes: gpu.plan.nodes, worst, outputs }));
    if (!(worst < 1)) throw new Error(`GPU and CPU outputs differ: ${worst}x the tolerance`);
  } finally {
    cpu.dispose();
    gpu.dispose();
  }
});
