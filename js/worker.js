// The module worker behind WorkerModel (js/worker-client.js): one Model per worker, off the
// main thread. Messages in: {id, type: "load", src, options, progress}, {id, type: "run",
// feeds}, {id, type: "runBatch", inputs, batchSize}, {id, type: "dispose"} (an abort
// terminates the worker). Replies: {id, ok: true, ...} or
// {id, ok: false, error: {name, code, message, node, op}}; {id, type: "progress", progress}
// while a URL downloads. Typed-array buffers travel as transfers both ways.
import { Model } from "./entry/web.js";

// What a reply copies from the Model so that WorkerModel answers like one.
const META = ["inputs", "outputs", "metadata", "backend", "fallbackReason", "adapter", "plan", "stackingBlocked"];

let model = null;
// Requests run one at a time, in order: a Model's run is not re-entrant.
let queue = Promise.resolve();

self.onmessage = (event) => {
  const msg = event.data;
  queue = queue.then(() => handle(msg));
};

async function handle(msg) {
  const { id, type } = msg;
  try {
    if (type === "load") await load(msg);
    else if (type === "run") await run(msg);
    else if (type === "runBatch") await runBatch(msg);
    else if (type === "dispose") {
      model?.dispose();
      model = null;
      self.postMessage({ id, ok: true });
    } else throw Object.assign(new Error(`unknown message "${type}"`), { code: "Runtime" });
  } catch (e) {
    self.postMessage({ id, ok: false, error: plainError(e) });
  }
}

function plainError(e) {
  const out = { name: e?.name ?? "Error", code: e?.code ?? "Runtime", message: e?.message ?? String(e) };
  if (e?.node != null) out.node = e.node;
  if (e?.op != null) out.op = e.op;
  if (e?.index != null) out.index = e.index;
  return out;
}

function meta(m) {
  const out = {};
  for (const k of META) out[k] = m[k];
  return out;
}

async function load({ id, src, options = {}, progress }) {
  model?.dispose();
  model = null;
  // A URL (made absolute by the client) goes through fetchModel inside Model.load.
  model = await Model.load(src, {
    ...options,
    onProgress: progress ? (p) => self.postMessage({ id, type: "progress", progress: p }) : undefined,
  });
  postMeta({ id, ok: true, meta: meta(model), sha256: await model.sha256() });
}

const plainOutputs = (out) => {
  const outputs = {};
  for (const [name, t] of Object.entries(out)) outputs[name] = { dtype: t.dtype, dims: [...t.dims], data: t.data };
  return outputs;
};

async function run({ id, feeds }) {
  if (!model) throw Object.assign(new Error("no model loaded"), { code: "Disposed" });
  const outputs = plainOutputs(await model.run(feeds));
  // The backend can change after a run (a lost device falls back to the CPU).
  reply({ id, ok: true, outputs, meta: meta(model) }, [outputs]);
}

/** A slice of WorkerModel.runBatch's inputs (the client slices, checks abort, reports). */
async function runBatch({ id, inputs, batchSize }) {
  if (!model) throw Object.assign(new Error("no model loaded"), { code: "Disposed" });
  const results = (await model.runBatch(inputs, { batchSize })).map(plainOutputs);
  reply({ id, ok: true, results, meta: meta(model) }, results);
}

/** Posts with the outputs' buffers transferred. */
function reply(msg, outputsList) {
  try {
    self.postMessage(msg, outputsList.flatMap((o) => buffersOf(o, false)));
  } catch {
    // A view on memory that cannot be detached (wasm memory): send compact copies instead.
    self.postMessage(msg, outputsList.flatMap((o) => buffersOf(o, true)));
  }
}

function postMeta(reply) {
  try {
    self.postMessage(reply);
  } catch {
    // Metadata that structured clone refuses: JSON keeps what a caller can read.
    self.postMessage(JSON.parse(JSON.stringify(reply)));
  }
}

/// Makes each tensor's data transferable (a whole, unshared buffer, copied if it is a
/// view on a larger or shared one, or always when `copy`) and lists the buffers.
function buffersOf(tensors, copy) {
  const list = [];
  const seen = new Set();
  for (const t of Object.values(tensors)) {
    const d = t.data;
    if (!ArrayBuffer.isView(d)) continue;
    const whole = d.byteOffset === 0 && d.byteLength === d.buffer.byteLength && !seen.has(d.buffer);
    if (copy || !whole || typeof SharedArrayBuffer !== "undefined" && d.buffer instanceof SharedArrayBuffer) {
      t.data = d.slice();
    }
    seen.add(t.data.buffer);
    list.push(t.data.buffer);
  }
  return list;
}
