// POST /predict with a file (raw body or multipart "file") → magika's label for it, on
// Deno.serve. `npm:edgepredict` resolves to the package in ./node_modules (deno.json:
// "nodeModulesDir": "manual"), so nothing is downloaded at run time.
// Run: deno run --allow-net=127.0.0.1 --allow-read --allow-env main.js
import { Model, init, memoryBytes } from "npm:edgepredict";
import { magikaHandler } from "../shared/magika_service.js";

const here = (p) => new URL(p, import.meta.url);
const modelPath = Deno.env.get("MAGIKA_MODEL") ?? here("../../.cache/models/magika.onnx");
const cfgPath = Deno.env.get("MAGIKA_CONFIG") ?? here("../../.cache/models/magika_config.json");
// The CPU by default: a server rarely has a GPU, and the model is small.
const backend = Deno.env.get("EDGEPREDICT_BACKEND") ?? "cpu";

const cfg = JSON.parse(await Deno.readTextFile(cfgPath));
// Loaded once at start: the load (decode, plan, weight packing) costs more than a run.
const model = await Model.load(await Deno.readFile(modelPath), { backend });

// The wasm's memory (linear memory only grows) and which build runs.
const figures = async () => ({ "x-wasm-memory-bytes": String(memoryBytes()), "x-wasm-build": (await init()).build });
const handle = magikaHandler({ getModel: () => model, cfg, headers: figures, timing: true });

Deno.serve({
  hostname: Deno.env.get("HOST") ?? "127.0.0.1",
  port: Number(Deno.env.get("PORT") ?? 8000),
  // The test reads the port from this line (PORT=0 picks a free one).
  onListen: ({ hostname, port }) => console.log(`listening on http://${hostname}:${port}/ (backend ${model.backend})`),
}, handle);
