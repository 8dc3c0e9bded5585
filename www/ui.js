// The context every panel gets (`mount(section, ctx)`) and small DOM helpers.
// Contract (panels are written against it; keep it):
//   ctx.backend()                     "auto" | "webgpu" | "cpu", the header's switch
//   ctx.onBackendChange(fn)           fn(backend) after the switch moves
//   await ctx.loadModel(statusEl, url, {sha256, label})   a Model for the current backend
//   await ctx.timed(statusEl, label, asyncFn)             asyncFn's result; shows its latency
// and each panel sets data-state="ready" on its section once its model is loaded, then
// data-state="done" with data-result (JSON) once it has an answer.

/// Creates an element: h("p", {class: "x", onclick: f}, "text", child…). Strings become
/// text nodes, never HTML, so user data (file names, sentences) cannot inject markup.
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs ?? {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k in el && typeof v !== "string") el[k] = v;
    else el.setAttribute(k, v === true ? "" : v);
  }
  el.append(...children.flat().filter((c) => c !== null && c !== undefined && c !== false));
  return el;
}

export function fmtBytes(n) {
  if (n == null) return "?";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export const fmtMs = (ms) => (ms < 10 ? ms.toFixed(1) : Math.round(ms).toString()) + " ms";

/// The message of any thrown value, with the EdgeError code where there is one.
export function errorText(e) {
  if (e && typeof e === "object") {
    const where = e.node ? ` (node ${e.node}${e.op ? `, ${e.op}` : ""})` : "";
    return `${e.code ? `${e.code}: ` : ""}${e.message ?? String(e)}${where}`;
  }
  return String(e);
}

/// Shows an error in a panel and marks it (tests and people both look for it).
export function showError(section, where, e) {
  section.dataset.state = "error";
  const box = section.querySelector(":scope > .error") ?? section.appendChild(h("p", { class: "error", role: "alert" }));
  box.textContent = `${where}: ${errorText(e)}`;
  console.error(where, e);
}

export function clearError(section) {
  section.querySelector(":scope > .error")?.remove();
}

/// The answer of a panel, for people (rendered by the panel) and for tests (here).
export function setResult(section, result) {
  section.dataset.result = JSON.stringify(result);
  section.dataset.state = "done";
}

// A row per model inside a status element, so one element can show several models.
function modelRow(statusEl, url, label) {
  statusEl.classList.add("status");
  let row = [...statusEl.querySelectorAll(":scope > .model")].find((r) => r.dataset.model === url);
  if (!row) {
    row = h("div", { class: "model", "data-model": url },
      h("span", { class: "model-name" }, label),
      h("progress", { max: 1, value: 0 }),
      h("span", { class: "model-text" }));
    const timings = statusEl.querySelector(":scope > .timings");
    statusEl.insertBefore(row, timings);
  }
  row.classList.remove("error", "loaded");
  return row;
}

function backendText(model) {
  if (model.backend === "webgpu") {
    const plan = model.plan;
    const details = [model.adapter?.trim().replace(/^\((.*)\)$/, "$1"), plan?.nodes ? `${plan.gpuNodes} of ${plan.nodes} nodes on the GPU` : null];
    const d = details.filter(Boolean).join(", ");
    return `runs on WebGPU${d ? ` (${d})` : ""}`;
  }
  return "runs on the CPU (wasm)";
}

/// The panels' context. `Model` is the package's class (injected, so that the page can
/// show a clear error when the package itself does not load).
export function createContext({ Model, initialBackend = "auto" }) {
  let current = initialBackend;
  const listeners = [];
  const cache = new Map(); // `${backend} ${url}` -> Promise<Model>
  const sizes = new Map(); // url -> bytes, from the download's progress
  let generation = 0; // a newer load of the same url owns its status row

  async function load(statusEl, url, { sha256, label } = {}) {
    const backend = current;
    const key = `${backend} ${url}`;
    const name = label ?? url.split("/").pop();
    const row = modelRow(statusEl, url, name);
    const bar = row.querySelector("progress");
    const text = row.querySelector(".model-text");
    const gen = String(++generation);
    row.dataset.gen = gen;
    const mine = () => row.dataset.gen === gen;
    let last = null;
    const t0 = performance.now();
    let promise = cache.get(key);
    const shared = !!promise;
    if (!promise) {
      text.textContent = "starting…";
      promise = Model.load(url, {
        backend,
        sha256,
        onProgress: (p) => {
          last = p;
          if (!mine()) return;
          if (p.fromCache) {
            bar.value = 1;
            text.textContent = `${fmtBytes(p.loaded)} from cache`;
            return;
          }
          if (p.total) {
            bar.value = p.loaded / p.total;
            const pct = Math.floor((100 * p.loaded) / p.total);
            text.textContent = `downloading ${fmtBytes(p.loaded)} of ${fmtBytes(p.total)} (${pct}%)${p.resumed ? ", resumed" : ""}`;
          } else {
            bar.removeAttribute("value"); // indeterminate
            text.textContent = `downloading ${fmtBytes(p.loaded)}`;
          }
          if (p.loaded === p.total) text.textContent += ", compiling…";
        },
      });
      cache.set(key, promise);
    } else {
      text.textContent = "loading…";
    }
    let model;
    try {
      model = await promise;
    } catch (e) {
      if (cache.get(key) === promise) cache.delete(key);
      if (!mine()) throw e;
      row.classList.add("error");
      bar.value = 0;
      text.textContent = `failed: ${errorText(e)}`;
      throw e;
    }
    // The same model on another backend is not needed any more: free its wasm and GPU
    // memory (only now, so that a panel keeps a working model while the new one loads).
    for (const [k, p] of cache) {
      if (k !== key && k.endsWith(` ${url}`)) {
        cache.delete(k);
        p.then((m) => m.dispose(), () => {});
      }
    }
    const ms = performance.now() - t0;
    if (last) sizes.set(url, last.total ?? last.loaded);
    if (!mine()) return model;
    const size = sizes.get(url) ?? null;
    row.classList.add("loaded");
    bar.value = 1;
    row.dataset.size = size ?? "";
    row.dataset.backend = model.backend;
    text.replaceChildren(...[
      h("span", {}, size != null ? fmtBytes(size) : "size unknown"),
      h("span", {}, shared ? "already loaded" : `${last?.fromCache ? "from cache, " : ""}ready in ${fmtMs(ms)}`),
      h("span", { class: `backend-${model.backend}` }, backendText(model)),
      // Asked for the CPU, the CPU is no fallback.
      model.fallbackReason && backend !== "cpu" ? h("span", { class: "fallback" }, `CPU because: ${model.fallbackReason}`) : null,
    ].filter(Boolean));
    return model;
  }

  async function timed(statusEl, label, fn) {
    statusEl.classList.add("status");
    const box = statusEl.querySelector(":scope > .timings") ?? statusEl.appendChild(h("div", { class: "timings" }));
    let item = [...box.children].find((c) => c.dataset.label === label);
    if (!item) item = box.appendChild(h("span", { class: "timing", "data-label": label }));
    item.textContent = `${label}: running…`;
    const t0 = performance.now();
    try {
      const out = await fn();
      const ms = performance.now() - t0;
      item.dataset.ms = ms.toFixed(2);
      item.textContent = `${label}: ${fmtMs(ms)}`;
      return out;
    } catch (e) {
      item.textContent = `${label}: failed`;
      throw e;
    }
  }

  return {
    backend: () => current,
    onBackendChange(fn) {
      listeners.push(fn);
    },
    loadModel: load,
    timed,
    /// Called by app.js when the header's switch moves.
    _setBackend(b) {
      if (b === current) return;
      current = b;
      for (const fn of listeners) {
        try {
          const r = fn(b);
          r?.catch?.((e) => console.error("backend change", e));
        } catch (e) {
          console.error("backend change", e);
        }
      }
    },
  };
}
