// OCR panel: upload an image, read its text with PP-OCR (det → cls → rec).
// State on the section: data-state loading | ready | running | done | error; on done,
// data-result is JSON { text, lines: [{ text, score, boxScore, rotated, box }], ms }.
import { Tensor } from "edgepredict";
import { readText, recCharset } from "../lib/ocr.js";
import { h } from "../ui.js";

const MODELS = {
  det: { url: "/models/ppocr_det.onnx", label: "PP-OCRv4 det", sha256: "d2a7720d45a54257208b1e13e36a8479894cb74155a5efe29462512d42f49da9" },
  cls: { url: "/models/ppocr_cls.onnx", label: "PP-OCR angle cls", sha256: "e47acedf663230f8863ff1ab0e64dd2d82b838fceb5957146dab185a89d6215c" },
  rec: { url: "/models/ppocr_rec.onnx", label: "PP-OCRv4 rec", sha256: "48fc40f24f6d2a207a2b1091d3437eb3cc3eb6b676dc3ef9c37384005483683b" },
};

export function mount(section, ctx) {
  // One status element: ctx puts a row per model and a latency per label in it.
  const status = h("div", { class: "status" });
  const input = h("input", { type: "file", accept: "image/*", disabled: true });
  const view = h("canvas", { class: "ocr-view", width: 0, height: 0 });
  // Fits the panel whatever its width (the drawing itself is up to 1280 px wide).
  Object.assign(view.style, { display: "block", maxWidth: "100%", height: "auto" });
  const list = h("ol", { class: "ocr-lines" });
  const error = h("p", { class: "error", hidden: true });
  section.append(
    h("h2", {}, "OCR"),
    h("p", { class: "hint" }, "PP-OCR: det finds the lines, cls turns upside-down ones, rec reads them."),
    h("label", {}, "Image ", input),
    status,
    view,
    list,
    error,
  );

  let models = null;
  let chars = null;
  // One job at a time: a reload (backend change) waits for a run and the reverse.
  let queue = Promise.resolve();
  const enqueue = (job) => (queue = queue.then(job).catch(fail));

  function fail(e) {
    section.dataset.state = "error";
    section.dataset.error = String(e?.message ?? e);
    error.hidden = false;
    error.textContent = `${e?.code ? e.code + ": " : ""}${e?.message ?? e}`;
    input.disabled = !models;
  }

  async function load() {
    section.dataset.state = "loading";
    input.disabled = true;
    error.hidden = true;
    // ctx owns the models (it frees those of the previous backend), so no dispose here.
    models = null;
    const loaded = {};
    for (const [k, m] of Object.entries(MODELS)) {
      loaded[k] = await ctx.loadModel(status, m.url, { sha256: m.sha256, label: m.label });
    }
    const character = loaded.rec.metadata?.props?.character;
    if (!character) throw new Error("ppocr_rec.onnx has no 'character' metadata: no charset to decode with");
    chars = recCharset(character);
    models = loaded;
    input.disabled = false;
    section.dataset.state = "ready";
  }

  async function read(file) {
    section.dataset.state = "running";
    delete section.dataset.result;
    error.hidden = true;
    list.replaceChildren();
    const image = await createImageBitmap(file);
    const t0 = performance.now();
    const result = await ctx.timed(status, "total", () =>
      readText(image, models, Tensor, chars, { time: (label, fn) => ctx.timed(status, label, fn) }),
    );
    const ms = Math.round(performance.now() - t0);
    draw(image, result.lines);
    for (const line of result.lines) {
      const li = h("li", {}, h("span", { class: "ocr-text" }, line.text || "(nothing read)"));
      li.append(h("small", {}, ` ${line.score.toFixed(2)}${line.rotated ? " · turned 180°" : ""}`));
      list.append(li);
    }
    if (result.lines.length === 0) list.append(h("li", {}, "no text found"));
    section.dataset.result = JSON.stringify({ text: result.text, lines: result.lines, ms, size: [image.width, image.height] });
    section.dataset.state = "done";
    image.close();
  }

  function draw(image, lines) {
    const scale = Math.min(1, 1280 / image.width);
    view.width = Math.round(image.width * scale);
    view.height = Math.round(image.height * scale);
    const g = view.getContext("2d");
    g.drawImage(image, 0, 0, view.width, view.height);
    const px = Math.max(1, view.width / Math.max(1, view.clientWidth || view.width)); // canvas px per CSS px
    g.lineWidth = 2 * px;
    g.font = `${Math.round(12 * px)}px sans-serif`;
    lines.forEach((l, i) => {
      g.strokeStyle = l.rotated ? "#d33" : "#1a7f37";
      g.beginPath();
      l.box.forEach(([x, y], k) => (k ? g.lineTo(x * scale, y * scale) : g.moveTo(x * scale, y * scale)));
      g.closePath();
      g.stroke();
      g.fillStyle = g.strokeStyle;
      g.fillText(String(i + 1), l.box[0][0] * scale + 2, l.box[0][1] * scale - 3);
    });
  }

  input.addEventListener("change", () => {
    const file = input.files?.[0];
    if (file) enqueue(() => read(file));
  });
  ctx.onBackendChange(() => enqueue(load));
  enqueue(load);
}
