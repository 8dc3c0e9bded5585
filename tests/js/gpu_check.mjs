// Runs one model on the CPU and on WebGPU through the wasm package and compares the
// outputs. Shared by the Chromium page and the Deno test: plain ES module, no Node APIs.
// Throws EdgeError (code, message) on failure.

/** Deterministic pseudo-random floats in [0, 1). */
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

/** A concrete shape from declared dims (symbolic or unknown dims → 1). */
export function shapeOf(dims) {
  return (dims ?? []).map((d) => (typeof d === "number" ? d : 1));
}

/** Runs one model on the CPU and on WebGPU with the package's `Model` and compares. */
export async function checkModel(Model, bytes, { atol = 1e-4, rtol = 1e-3, shape: given } = {}) {
  const cpu = await Model.load(bytes, { backend: "cpu" });
  const gpu = await Model.load(bytes, { backend: "webgpu" });
  try {
    const feeds = () => {
      const next = rng(42);
      const f = {};
      for (const { name, dtype, dims } of cpu.inputs) {
        if (dtype !== "float32") throw new Error(`test feeds only float32 inputs, ${name} is ${dtype}`);
        const shape = given ?? shapeOf(dims);
        const n = shape.reduce((a, b) => a * b, 1);
        f[name] = { data: Float32Array.from({ length: n }, next), dims: shape };
      }
      return f;
    };
    const a = await cpu.run(feeds());
    const b = await gpu.run(feeds());
    let worst = 0;
    const outputs = [];
    for (const [name, x] of Object.entries(a)) {
      const y = b[name];
      if (x.data.length !== y.data.length) throw new Error(`${name}: ${x.data.length} vs ${y.data.length} values`);
      for (let k = 0; k < x.data.length; k++) {
        const err = Math.abs(x.data[k] - y.data[k]) / (atol + rtol * Math.abs(x.data[k]));
        if (!(err <= worst)) worst = Number.isNaN(err) ? Infinity : Math.max(worst, err);
      }
      outputs.push({ name, shape: x.dims, first: Array.from(y.data.slice(0, 4)) });
    }
    return {
      backend: gpu.backend,
      adapter: gpu.adapter,
      fallbackReason: gpu.fallbackReason,
      gpuNodes: gpu.plan.gpuNodes,
      // 1.0 = at the tolerance; below 1 passes.
      worst,
      outputs,
    };
  } finally {
    cpu.dispose();
    gpu.dispose();
  }
}
