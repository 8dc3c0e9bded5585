// Sentence similarity: paraphrase-MiniLM-L3-v2 embeds a query and a list of sentences
// (mean-pooled, output "461"), and the sentences are ranked by cosine similarity.
import { WordPiece } from "../lib/wordpiece.js";
import { h, fmtBytes, setResult, showError, clearError } from "../ui.js";

const TOKENIZER = "/models/minilm_tokenizer.json";
// float32 from tools/fetch_models.sh; int8 (dynamic quantization) from tools/make_int8.py,
// offered when present. The int8 bytes depend on the onnxruntime build: no pinned hash.
const VARIANTS = {
  float: {
    url: "/models/minilm_l3.onnx",
    sha256: "b388816f4fe4beccf2106589a786544596eb1385cac0c57c6a4e2a6758215b16",
    name: "float32",
    label: "MiniLM-L3 float32",
  },
  int8: { url: "/models/int8/minilm_l3_dyn.onnx", name: "int8, compressed", label: "MiniLM-L3 int8" },
};
const MAX_SENTENCES = 64;

const EXAMPLE_QUERY = "Is it going to rain this weekend?";
const EXAMPLE_SENTENCES = [
  "The forecast says Saturday and Sunday will be wet.",
  "I left my umbrella on the train.",
  "Our quarterly revenue grew by twelve percent.",
  "Weekend plans: hiking if the weather holds.",
  "Rust compiles to WebAssembly.",
].join("\n");

function cosine(a, b) {
  let dot = 0, na = 0, nb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    na += a[i] * a[i];
    nb += b[i] * b[i];
  }
  return dot / (Math.sqrt(na * nb) || 1);
}

async function sizeOf(url) {
  try {
    const r = await fetch(url, { method: "HEAD" });
    return r.ok ? Number(r.headers.get("content-length")) || null : undefined;
  } catch {
    return undefined;
  }
}

export async function mount(section, ctx) {
  const status = h("div", { class: "status" });
  const choice = h("div", { class: "row choice", role: "radiogroup", "aria-label": "Model" });
  const query = h("input", { type: "text", id: "sent-query", value: EXAMPLE_QUERY });
  const list = h("textarea", { id: "sent-list", rows: 6, spellcheck: "false" }, EXAMPLE_SENTENCES);
  const button = h("button", { type: "button", class: "primary", disabled: true }, "Rank");
  const out = h("div", { class: "result", "aria-live": "polite" });
  section.append(
    h("h2", {}, "Sentence similarity"),
    h("p", {}, "Ranks sentences by meaning, not by shared words: each is embedded with MiniLM and compared to the query by cosine similarity."),
    choice, status,
    h("label", { class: "field", for: "sent-query" }, "Query"), query,
    h("label", { class: "field", for: "sent-list" }, "Sentences, one per line"), list,
    h("div", { class: "row" }, button, h("span", { class: "hint" }, "Ctrl+Enter in the list ranks too")),
    out,
  );

  // Which variants exist here, and how big they are (shown on the switch).
  const sizes = {};
  await Promise.all(Object.entries(VARIANTS).map(async ([k, v]) => (sizes[k] = await sizeOf(v.url))));
  const present = Object.keys(VARIANTS).filter((k) => sizes[k] !== undefined);
  if (!present.includes("float")) {
    showError(section, "The model is missing", new Error(`${VARIANTS.float.url} not found (run tools/fetch_models.sh)`));
    return;
  }
  // The int8 model ranks like the float one (tests/js/demo.test.mjs checks it) for a
  // quarter of the download, so it is the default where it exists.
  let variant = new URLSearchParams(location.search).get("minilm");
  if (!present.includes(variant)) variant = present.includes("int8") ? "int8" : "float";
  for (const k of present) {
    const v = VARIANTS[k];
    choice.append(h("label", {},
      h("input", { type: "radio", name: "minilm", value: k, checked: k === variant, onchange: () => { variant = k; load(); } }),
      ` ${v.name} (${fmtBytes(sizes[k])})`));
  }
  if (present.length > 1) {
    const ratio = sizes.float / sizes.int8;
    choice.append(h("span", { class: "hint" }, `int8 is ${ratio.toFixed(1)}× smaller`));
  }

  let tokenizer = null;
  let model = null;
  let loading = null;

  async function load() {
    const want = variant;
    section.dataset.state = "loading";
    button.disabled = true;
    clearError(section);
    try {
      tokenizer ??= await fetch(TOKENIZER).then((r) => {
        if (!r.ok) throw new Error(`${TOKENIZER}: HTTP ${r.status} (run tools/fetch_models.sh)`);
        return r.json().then((j) => new WordPiece(j));
      });
      const v = VARIANTS[want];
      const p = ctx.loadModel(status, v.url, { sha256: v.sha256, label: v.label });
      loading = p;
      const m = await p;
      if (loading !== p) return; // another variant or backend was chosen meanwhile
      model = m;
    } catch (e) {
      showError(section, "The model did not load", e);
      return;
    }
    // Only the chosen variant's row stays in the status.
    for (const row of status.querySelectorAll(":scope > .model")) {
      if (row.dataset.model !== VARIANTS[want].url) row.remove();
    }
    section.dataset.model = want;
    section.dataset.state = "ready";
    button.disabled = false;
  }

  async function rank() {
    const q = query.value.trim();
    const sentences = list.value.split("\n").map((s) => s.trim()).filter(Boolean).slice(0, MAX_SENTENCES);
    if (!q || sentences.length === 0) {
      out.replaceChildren(h("p", { class: "hint" }, "Type a query and at least one sentence."));
      return;
    }
    clearError(section);
    button.disabled = true;
    try {
      const m = model;
      // One batch: the query and every sentence, padded to the longest.
      const batch = tokenizer.encodeBatch([q, ...sentences]);
      const outputs = await ctx.timed(status, `embed ${sentences.length + 1} texts`, () =>
        m.run({
          input_ids: { dtype: "int64", data: batch.ids, dims: batch.dims },
          attention_mask: { dtype: "int64", data: batch.mask, dims: batch.dims },
        }));
      const emb = outputs["461"];
      if (!emb) throw new Error(`no output "461" (outputs: ${Object.keys(outputs).join(", ")})`);
      const dim = emb.dims[1];
      const row = (i) => emb.data.subarray(i * dim, (i + 1) * dim);
      const ranking = sentences
        .map((sentence, i) => ({ sentence, index: i, score: cosine(row(0), row(i + 1)) }))
        .sort((a, b) => b.score - a.score);
      out.replaceChildren(
        h("ol", { class: "bars" }, ranking.map((r, i) =>
          h("li", { class: i === 0 ? "best" : "" },
            h("span", { class: "bar", style: `--w: ${Math.max(0, 100 * r.score).toFixed(1)}%` }, h("span", {}, r.sentence)),
            h("span", { class: "num", title: "cosine similarity" }, r.score.toFixed(3))))),
      );
      setResult(section, {
        query: q, best: ranking[0].sentence, ranking, model: section.dataset.model, requested: ctx.backend(), backend: m.backend,
        tokens: batch.dims[1],
      });
    } catch (e) {
      showError(section, "Ranking failed", e);
    } finally {
      button.disabled = !model;
    }
  }

  button.addEventListener("click", rank);
  list.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey) && !button.disabled) rank();
  });
  query.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && !button.disabled) rank();
  });
  ctx.onBackendChange(load);
  await load();
}
