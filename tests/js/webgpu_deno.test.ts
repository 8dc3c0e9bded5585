// A real model on Deno's WebGPU (wgpu on lavapipe here): the wasm package from
// tools/build_web.sh, CPU vs WebGPU outputs compared.
// Run: deno test --allow-read --allow-env tests/js/webgpu_deno.test.ts
import init, * as mod from "../../target/web-pkg/edgepredict.js";
import { checkModel } from "./gpu_check.mjs";

const root = new URL("../../", import.meta.url);
// PP-OCR's direction classifier: MobileNetV3 on a 48×192 text line.
const MODEL = Deno.env.get("EDGEPREDICT_GPU_MODEL") ?? ".cache/models/ppocr_cls.onnx";
const SHAPE = (Deno.env.get("EDGEPREDICT_GPU_SHAPE") ?? "1,3,48,192").split(",").map(Number);

Deno.test("a real model runs on Deno's WebGPU and matches the CPU", async () => {
  if (!("gpu" in navigator)) throw new Error("no navigator.gpu in this Deno");
  await init({ module_or_path: await Deno.readFile(new URL("target/web-pkg/edgepredict_bg.wasm", root)) });
  const bytes = await Deno.readFile(new URL(MODEL, root));
  const r = await checkModel(mod, bytes, { shape: SHAPE });
  console.log(JSON.stringify(r));
  if (r.backend !== "webgpu") throw new Error(`fell back: ${r.fallbackReason}`);
  if (!(r.gpuNodes > 0)) throw new Error("no node on the GPU");
  if (!(r.worst < 1)) throw new Error(`GPU and CPU outputs differ: ${r.worst}x the tolerance`);
});
