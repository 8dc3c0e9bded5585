// Shared by the JS tests: a static server on 127.0.0.1 (repo root; /models/ also finds
// fetched models in .cache/models) and headless Debian Chromium through playwright-core.
// The server lives in tools/serve.mjs (also `npm start`, the demo page).
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { execFileSync } from "node:child_process";
import { root } from "../../tools/serve.mjs";
export { root, serve, resolveStatic } from "../../tools/serve.mjs";

export const chromiumArgs = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-quic",
  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--enable-unsafe-webgpu"];

/// Debian's Chromium (never a downloaded browser); `extraArgs` e.g. fake media devices.
export async function launchChromium(extraArgs = []) {
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: "/usr/bin/chromium", args: [...chromiumArgs, ...extraArgs] });
}

const NPY_ARRAYS = { "<f4": Float32Array, "<f8": Float64Array, "<i8": BigInt64Array, "<i4": Int32Array, "|u1": Uint8Array };

/// A little-endian, C-order .npy (absolute or repo-relative path) as { shape, data }.
export function readNpy(file) {
  const buf = fs.readFileSync(path.isAbsolute(file) ? file : path.join(root, file));
  const hlen = buf.readUInt16LE(8);
  const header = buf.toString("latin1", 10, 10 + hlen);
  const descr = /'descr': '([^']+)'/.exec(header)[1];
  const A = NPY_ARRAYS[descr];
  if (!A) throw new Error(`unsupported .npy dtype ${descr} in ${file}`);
  const shape = /'shape': \(([^)]*)\)/.exec(header)[1].split(",").filter((s) => s.trim()).map(Number);
  const body = buf.subarray(10 + hlen);
  return { shape, data: new A(body.buffer.slice(body.byteOffset, body.byteOffset + body.byteLength)) };
}

/// The package as a user gets it: EDGEPREDICT_TGZ (e.g. tools/build_pkg.sh's tarball), or
/// `npm pack` of the repo root now.
export function packageTarball() {
  if (process.env.EDGEPREDICT_TGZ) return path.resolve(process.env.EDGEPREDICT_TGZ);
  const out = fs.mkdtempSync(path.join(os.tmpdir(), "edgepredict-pack-"));
  process.on("exit", () => fs.rmSync(out, { recursive: true, force: true }));
  const [info] = JSON.parse(execFileSync("npm", ["pack", "--json", "--ignore-scripts", "--pack-destination", out],
    { cwd: root, encoding: "utf8" }));
  // npm pack skips a symlinked dist/ (worktrees): say so rather than test a wasm-less package.
  if (!info.files.some((f) => f.path.endsWith(".wasm"))) throw new Error("the packed package has no wasm: build dist/ first");
  return path.join(out, info.filename);
}

/// An example's pinned tools (its lockfile, when it has one), then the package tarball
/// without touching the lock.
export function installExample(exampleDir) {
  const lockPath = path.join(exampleDir, "package-lock.json");
  const hasLock = fs.existsSync(lockPath);
  if (hasLock && !fs.existsSync(path.join(exampleDir, "node_modules/.package-lock.json"))) {
    execFileSync("npm", ["ci", "--no-audit", "--no-fund"], { cwd: exampleDir, stdio: "inherit" });
  }
  const lock = hasLock ? fs.readFileSync(lockPath, "utf8") : null;
  execFileSync("npm", ["install", "--no-save", "--no-audit", "--no-fund", packageTarball()],
    { cwd: exampleDir, stdio: "inherit" });
  if (hasLock && fs.readFileSync(lockPath, "utf8") !== lock) throw new Error(`${exampleDir}: the lockfile changed`);
}

/// Waits until the demo panel `id` on `page` is in `state` (its data-state) and the JS
/// expression `extra` (over the section `s`) holds, or fails with the panel's error.
/// Returns the section's dataset.
export async function waitPanel(page, id, state, timeout = 120_000, extra = "true") {
  const handle = await page.waitForFunction(
    ([id, state, extra]) => {
      const s = document.getElementById(id);
      if (!s) return null;
      if (s.dataset.state === "error") return { error: s.dataset.error ?? s.textContent };
      return s.dataset.state === state && new Function("s", `return ${extra}`)(s) ? { ...s.dataset } : null;
    },
    [id, state, extra],
    { timeout, polling: 100 },
  );
  const v = await handle.jsonValue();
  if (v.error !== undefined) throw new Error(`${id} failed: ${v.error}`);
  return v;
}
