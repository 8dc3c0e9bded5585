// The page shell: the backend switch, then each panel from ./panels/<name>.js, mounted on
// its own so that one that fails to load shows its error and leaves the others working.
import { createContext, h, errorText, showError } from "./ui.js";

const PANELS = ["filetype", "ocr", "sentences", "voice"];
const BACKENDS = ["auto", "webgpu", "cpu"];

const form = document.getElementById("backend");
const note = document.getElementById("gpu-note");
const fatal = document.getElementById("fatal");

// ?backend=cpu (links, tests), else the last choice, else Auto.
const asked = new URLSearchParams(location.search).get("backend") ?? localStorage.getItem("edgepredict-backend");
const initial = BACKENDS.includes(asked) ? asked : "auto";
form.elements.backend.value = initial;

const hasGpu = "gpu" in navigator;
if (!hasGpu) {
  const radio = form.querySelector('input[value="webgpu"]');
  radio.disabled = true;
  radio.parentElement.title = "This browser has no navigator.gpu";
  if (initial === "webgpu") form.elements.backend.value = "auto";
}

async function describeGpu(build) {
  const parts = [];
  if (!hasGpu) parts.push("No WebGPU in this browser (navigator.gpu is missing): models run on the CPU.");
  else {
    parts.push("WebGPU is available (navigator.gpu).");
    try {
      const adapter = await navigator.gpu.requestAdapter();
      if (!adapter) parts.push("No GPU adapter came up, so Auto uses the CPU.");
      else {
        const info = adapter.info ?? {};
        const name = [info.vendor, info.architecture, info.description].filter(Boolean).join(" ");
        const soft = adapter.isFallbackAdapter || info.isFallbackAdapter;
        parts.push(`Adapter: ${name || "unnamed"}${soft ? " (software)" : ""}.`);
      }
    } catch (e) {
      parts.push(`The adapter request failed: ${errorText(e)}.`);
    }
  }
  if (build) parts.push(`CPU build: ${build}.`);
  note.textContent = parts.join(" ");
}

let pkg = null;
try {
  pkg = await import("edgepredict");
} catch (e) {
  fatal.hidden = false;
  fatal.textContent = `The edgepredict package did not load (${errorText(e)}). Build it with tools/build_pkg.sh and serve the repo root with npm start.`;
}
let build = null;
try {
  build = pkg ? (await pkg.init()).build : null;
} catch (e) {
  fatal.hidden = false;
  fatal.textContent = `The wasm module did not start: ${errorText(e)}`;
}
describeGpu(build);

const ctx = createContext({
  Model: pkg?.Model ?? { load: () => Promise.reject(new Error("the edgepredict package did not load")) },
  initialBackend: form.elements.backend.value,
});
form.addEventListener("change", () => {
  const b = form.elements.backend.value;
  localStorage.setItem("edgepredict-backend", b);
  document.body.dataset.backend = b;
  ctx._setBackend(b);
});
document.body.dataset.backend = ctx.backend();

for (const name of PANELS) {
  const section = document.getElementById(`panel-${name}`);
  import(`./panels/${name}.js`).then(
    async (mod) => {
      section.replaceChildren();
      try {
        await mod.mount(section, ctx);
      } catch (e) {
        // Keep what the panel drew; say what went wrong under it.
        showError(section, "This panel failed", e);
      }
    },
    (e) => {
      section.replaceChildren(h("h2", {}, name));
      showError(section, "This panel did not load", e);
    },
  );
}
