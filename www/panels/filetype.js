// File type: magika (standard_v3_3) names a file's content type from its first and last
// bytes. The file is read in the page only; nothing is uploaded.
import { magikaFeatures, magikaLabel, magikaSmallFile } from "../lib/magika.js";
import { h, fmtBytes, setResult, showError, clearError, errorText } from "../ui.js";

const MODEL = "/models/magika.onnx";
const MODEL_SHA256 = "fe2d2eb49c5f88a9e0a6c048e15d6ffdf86235519c2afc535044de433169ec8c";
const CONFIG = "/models/magika_config.json";
// Files of this page, to try the panel without a file at hand.
const EXAMPLES = [["app.js", "app.js"], ["style.css", "style.css"], ["index.html", "index.html"]];

/// The bytes the features need: the whole file when small, else its first and last
/// block (magikaFeatures only looks at the outer `block_size` bytes of each end, so the
/// features of head+tail equal those of the whole file; a 2 GB file is not read).
async function outerBytes(file, block) {
  if (file.size <= 2 * block) return new Uint8Array(await file.arrayBuffer());
  const head = new Uint8Array(await file.slice(0, block).arrayBuffer());
  const tail = new Uint8Array(await file.slice(file.size - block).arrayBuffer());
  const out = new Uint8Array(2 * block);
  out.set(head);
  out.set(tail, block);
  return out;
}

function top(scores, labels, k) {
  return Array.from(scores, (score, i) => ({ label: labels[i], score }))
    .sort((a, b) => b.score - a.score)
    .slice(0, k);
}

const pct = (x) => `${(100 * x).toFixed(1)}%`;

export async function mount(section, ctx) {
  const status = h("div", { class: "status" });
  const input = h("input", { type: "file", "aria-label": "Choose a file" });
  const drop = h("label", { class: "drop" }, h("span", {}, "Drop any file here, or choose one"), input);
  const examples = h("div", { class: "row hint" }, "Or try one of this page's files:",
    EXAMPLES.map(([name, url]) => h("button", { type: "button", onclick: () => tryExample(name, url) }, name)));
  const out = h("div", { class: "result", "aria-live": "polite" });
  section.append(
    h("h2", {}, "File type"),
    h("p", {}, "Names the content type of any file from its first and last kilobytes, with Google's magika model (214 types)."),
    status, drop, examples, out,
  );

  let model = null;
  let cfg = null;
  let lastFile = null;
  let seq = 0; // the latest request wins when files come in quick succession

  async function classify(file) {
    lastFile = file;
    const mine = ++seq;
    clearError(section);
    if (!cfg || !model) return; // classified once the model is there
    const bytes = await outerBytes(file, cfg.block_size);
    let answer = magikaSmallFile(bytes, cfg);
    let ranked;
    if (answer) {
      // Too small (or empty) for the model: magika's rule, no inference.
      ranked = [{ label: answer.label, score: answer.score }];
    } else {
      const features = magikaFeatures(bytes, cfg);
      const outputs = await ctx.timed(status, "classify", () =>
        model.run({ bytes: { dtype: "int32", data: features, dims: [1, features.length] } }));
      const scores = outputs.target_label.data;
      answer = magikaLabel(scores, cfg);
      ranked = top(scores, cfg.target_labels_space, 3);
    }
    if (mine !== seq) return;
    out.replaceChildren(
      h("div", { class: "answer" },
        h("span", { class: "big" }, answer.label),
        h("span", { class: "score" }, answer.dlLabel ? `${pct(answer.score)} sure` : "by magika's small-file rule")),
      ...(answer.dlLabel && answer.label !== answer.dlLabel
        ? [h("p", { class: "hint" }, answer.confident
          ? `magika reports the model's ${answer.dlLabel} as ${answer.label}.`
          : `The model's best guess, ${answer.dlLabel}, is below its confidence threshold.`)]
        : []),
      h("p", { class: "hint" }, `${file.name} · ${fmtBytes(file.size)}`),
      h("ol", { class: "bars" }, ranked.map((r, i) =>
        h("li", { class: i === 0 ? "best" : "" },
          h("span", { class: "bar", style: `--w: ${(100 * r.score).toFixed(1)}%` }, h("span", {}, r.label)),
          h("span", { class: "num" }, pct(r.score))))),
    );
    setResult(section, {
      file: file.name, size: file.size, label: answer.label, dlLabel: answer.dlLabel, score: answer.score,
      confident: answer.confident, top3: ranked, requested: ctx.backend(), backend: model.backend,
    });
  }

  const run = (file) => classify(file).catch((e) => showError(section, `Could not classify ${file.name}`, e));

  async function tryExample(name, url) {
    try {
      const r = await fetch(new URL(`../${url}`, import.meta.url));
      if (!r.ok) throw new Error(`HTTP ${r.status}`);
      run(new File([await r.blob()], name));
    } catch (e) {
      showError(section, `Could not fetch ${name}`, e);
    }
  }

  input.addEventListener("change", () => input.files[0] && run(input.files[0]));
  drop.addEventListener("dragover", (e) => {
    e.preventDefault();
    drop.classList.add("over");
  });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => {
    e.preventDefault();
    drop.classList.remove("over");
    const file = e.dataTransfer.files[0];
    if (file) run(file);
  });

  async function load() {
    section.dataset.state = "loading";
    clearError(section);
    try {
      model = await ctx.loadModel(status, MODEL, { sha256: MODEL_SHA256, label: "magika" });
    } catch (e) {
      model = null;
      showError(section, "The model did not load", e);
      return;
    }
    section.dataset.state = "ready";
    if (lastFile) run(lastFile); // again on the new backend
  }

  ctx.onBackendChange(load);
  try {
    const r = await fetch(CONFIG);
    if (!r.ok) throw new Error(`${CONFIG}: HTTP ${r.status} (run tools/fetch_models.sh)`);
    cfg = await r.json();
  } catch (e) {
    showError(section, "The model's configuration did not load", new Error(errorText(e)));
    return;
  }
  await load();
}
