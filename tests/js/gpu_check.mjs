// Runs one model on the CPU and on WebGPU through the wasm package and compares the
// outputs. Shared by the Chromium page and the Deno test: plain ES module, no Node APIs.

/** Deterministic pseudo-random floats in [0, 1). */
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s * 1664525 + 1013904223) >>> 0;
    return s / 4294967296;
  };
}

/** Shape from an input type such as "float32[?,3,48,192]" (unknown dims → 1). */
export function shapeOf(type) {
  const m = /\[(.*)\]/.exec(type);
  if (!m || m[1] === "") return [];
  return m[1].split(",").map((d) => (/^\d+$/.test(d.trim()) ? Number(d) : 1));
}

/** EdgeError objects carry kind and message; rethrow them as plain Errors. */
async function plain(p) {
  try {
    return await p;
  } catch (e) {
    if (e && typeof e === "object" && "kind" in e) throw new Error(`${e.kind}: ${e.message}`);
    throw e;
  }
}

export async function checkModel(mod, bytes, opts = {}) {
  return plain(check(mod, bytes, opts));
}

async function check(mod, bytes, { atol = 1e-4, rtol = 1e-3, shape: given } = {}) {
  const cpu = await mod.EdgeModel.create(bytes, "cpu");
  const gpu = await mod.EdgeModel.create(bytes, "webgpu");
  const feeds = () => {
    const f = new mod.Feeds();
    const next = rng(42);
    const names = cpu.inputNames();
    names.forEach((name, i) => {
      const type = cpu.inputType(i);
      if (!type.startsWith("float32")) throw new Error(`test feeds only float32 inputs, ${name} is ${type}`);
      const shape = given ?? shapeOf(type);
      const n = shape.reduce((a, b) => a * b, 1);
      f.f32(name, Float32Array.from({ length: n }, next), Uint32Array.from(shape));
    });
    return f;
  };
  const a = await cpu.runAsync(feeds());
  const b = await gpu.runAsync(feeds());
  let worst = 0;
  const outputs = [];
  for (let i = 0; i < a.len(); i++) {
    const x = a.f32(i), y = b.f32(i);
    if (x.length !== y.length) throw new Error(`output ${i}: ${x.length} vs ${y.length} values`);
    for (let k = 0; k < x.length; k++) {
      const err = Math.abs(x[k] - y[k]) / (atol + rtol * Math.abs(x[k]));
      if (!(err <= worst)) worst = Number.isNaN(err) ? Infinity : Math.max(worst, err);
    }
    outputs.push({ name: a.name(i), shape: Array.from(a.shape(i)), first: Array.from(y.slice(0, 4)) });
  }
  return {
    backend: gpu.backend(),
    adapter: gpu.adapter() ?? null,
    fallbackReason: gpu.fallbackReason() ?? null,
    gpuNodes: gpu.gpuNodes(),
    // 1.0 = at the tolerance; below 1 passes.
    worst,
    outputs,
  };
}
