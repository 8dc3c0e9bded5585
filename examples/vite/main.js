// The package as any bundled app uses it: a bare import, no Vite plugin. Vite emits the
// package's .wasm files as assets because the entry names them with
// `new URL("…", import.meta.url)`.
import { init, Model, Tensor } from "edgepredict";

const base = import.meta.env.BASE_URL;
const $ = (id) => document.getElementById(id);

/// A float32 .npy (C order) as { shape, data }.
function parseNpy(buf) {
  const view = new DataView(buf);
  const hlen = view.getUint16(8, true);
  const header = new TextDecoder().decode(new Uint8Array(buf, 10, hlen));
  if (!header.includes("'<f4'")) throw new Error(`expected float32, got ${header}`);
  const shape = /'shape': \(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  return { shape, data: new Float32Array(buf.slice(10 + hlen)) };
}

async function bytes(name) {
  const res = await fetch(base + name);
  if (!res.ok) throw new Error(`${name}: HTTP ${res.status}`);
  return res.arrayBuffer();
}

async function main() {
  const row = Number(new URLSearchParams(location.search).get("row") ?? 0);
  $("row").textContent = row;
  // init() picks relaxed SIMD where the engine validates it, plain SIMD elsewhere.
  const { build } = await init();
  const [model, x] = await Promise.all([
    bytes("digits_mlp.onnx").then((b) => Model.load(b, { backend: "cpu" })),
    bytes("digits_test.npy").then(parseNpy),
  ]);
  const width = x.shape[1];
  const t0 = performance.now();
  const out = await model.run({ X: new Tensor("float32", x.data.slice(row * width, (row + 1) * width), [1, width]) });
  const ms = performance.now() - t0;
  const label = Number(out.label.data[0]);
  const p = out.probabilities.data;
  Object.assign($("label").dataset, { state: "done", build, ms: ms.toFixed(2) });
  $("label").textContent = label;
  $("info").textContent = `p = ${p[label].toFixed(3)}; wasm build ${build}; run ${ms.toFixed(2)} ms`;
}

main().catch((e) => {
  $("label").dataset.state = "error";
  $("label").textContent = `${e.code ?? "Error"}: ${e.message}`;
  console.error(e);
});
