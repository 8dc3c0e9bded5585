// The Vite example (examples/vite): an unpatched `vite build` of an app that imports the
// packed edgepredict tarball, served from dist/ and run in Chromium.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { root, serve, launchChromium, installExample, readNpy } from "./support.mjs";

const dir = path.join(root, "examples/vite");
const dist = path.join(dir, "dist");

const sizes = (d) => fs.readdirSync(d, { recursive: true })
  .filter((f) => fs.statSync(path.join(d, f)).isFile())
  .map((f) => ({ f, size: fs.statSync(path.join(d, f)).size }));

let server, browser, base;

before(async () => {
  installExample(dir);
  fs.rmSync(dist, { recursive: true, force: true });
  // `npm run build`: the prebuild script copies the model into public/, then plain `vite build`.
  execFileSync("npm", ["run", "build"], { cwd: dir, stdio: "inherit" });
  server = await serve({ base: dist });
  base = `http://127.0.0.1:${server.address().port}/`;
  browser = await launchChromium();
});

after(async () => {
  await browser?.close();
  server?.close();
});

test("vite build emits both wasm builds as assets", () => {
  const files = sizes(dist);
  for (const { f, size } of files) console.log(`dist/${f}: ${(size / 1024).toFixed(1)} KiB`);
  const wasm = files.filter(({ f }) => f.endsWith(".wasm"));
  assert.equal(wasm.length, 2, `wasm assets: ${wasm.map(({ f }) => f)}`);
  const js = files.filter(({ f }) => f.endsWith(".js"));
  assert.ok(js.length >= 1);
  const total = (list) => list.reduce((a, { size }) => a + size, 0);
  console.log(`bundle: js ${(total(js) / 1024).toFixed(1)} KiB, wasm ${wasm.map(({ size }) => (size / 2 ** 20).toFixed(2) + " MiB").join(" + ")}`);
});

test("the built app labels digits in Chromium with the relaxed or plain SIMD build", async () => {
  const expected = Array.from(readNpy(path.join(root, ".cache/reference/digits_mlp/output_0.npy")).data, Number);
  // Rows with different labels: a page that ignored its input could not pass.
  const rows = [0, 1, 5];
  assert.equal(new Set(rows.map((r) => expected[r])).size, rows.length);
  const page = await browser.newPage();
  const errors = [];
  page.on("pageerror", (e) => errors.push(String(e)));
  page.on("console", (m) => m.type() === "error" && errors.push(m.text()));
  const wasmFetched = [];
  page.on("request", (r) => r.url().endsWith(".wasm") && wasmFetched.push(path.basename(new URL(r.url()).pathname)));
  try {
    for (const row of rows) {
      wasmFetched.length = 0;
      await page.goto(`${base}?row=${row}`);
      const el = page.locator('#label:not([data-state="loading"])');
      await el.waitFor({ timeout: 60_000 });
      const { state, build, ms } = await el.evaluate((e) => ({ ...e.dataset }));
      const text = await el.textContent();
      assert.equal(state, "done", `${text}\n${errors.join("\n")}`);
      assert.equal(Number(text), expected[row], `row ${row}`);
      assert.ok(build === "relaxed-simd" || build === "simd", `init() build: ${build}`);
      // Only the build init() picked is downloaded.
      assert.equal(wasmFetched.length, 1, `wasm fetched: ${wasmFetched}`);
      assert.ok(wasmFetched[0].startsWith(build === "simd" ? "edgepredict_simd" : "edgepredict_relaxed"), wasmFetched[0]);
      console.log(`row ${row}: label ${text} (onnxruntime ${expected[row]}), build ${build}, run ${ms} ms`);
    }
  } finally {
    await page.close();
  }
});
