// The Deno example (examples/deno): Deno.serve with `npm:edgepredict` resolved from the
// example's node_modules, where the packed tarball is installed.
import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import { expectTypedErrors, expectReferenceLabels, post as postTo } from "./predict_endpoint.mjs";
import { root, installExample } from "./support.mjs";

const dir = path.join(root, "examples/deno");
const deno = path.join(root, "node_modules/.bin/deno");
const MAX_BODY = 10 * 1024 * 1024;

function memKB(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(status)[1]);
  return { peakKB: kb("VmHWM"), rssKB: kb("VmRSS") };
}

let proc, base, log = "";

before(async () => {
  // No dependencies of its own: the example's package.json is only where the tarball goes.
  installExample(dir);
  proc = spawn(deno, ["run", "--allow-net=127.0.0.1", "--allow-read", "--allow-env", "main.js"], {
    cwd: dir, detached: true, stdio: ["ignore", "pipe", "pipe"],
    // The registry is pointed at a dead port: the server must start from node_modules alone.
    env: { ...process.env, PORT: "0", DENO_NO_UPDATE_CHECK: "1", DENO_NO_PROMPT: "1",
      NPM_CONFIG_REGISTRY: "http://127.0.0.1:9/" },
  });
  proc.stdout.on("data", (d) => (log += d));
  proc.stderr.on("data", (d) => (log += d));
  const deadline = Date.now() + 60_000;
  let m;
  while (!(m = /listening on (http:\/\/127\.0\.0\.1:\d+)\//.exec(log))) {
    if (proc.exitCode !== null || Date.now() > deadline) throw new Error(`the Deno server did not start:\n${log}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  base = m[1];
});

after(() => {
  if (proc && proc.exitCode === null) process.kill(-proc.pid, "SIGKILL");
});

const post = (body, headers) => postTo(base, body, headers);

test("magika on Deno names a Python file and a PNG, with the reference scores", async () => {
  for (const { file, first, res, json, ms, mem } of await expectReferenceLabels(base)) {
    assert.equal(res.headers.get("x-backend"), "cpu");
    assert.match(res.headers.get("x-wasm-build"), /^(relaxed-simd|simd)$/);
    console.log(`${file}: ${json.label} ${json.score.toFixed(5)}, first request ${first.ms.toFixed(0)} ms, then` +
      ` ${ms.toFixed(0)} ms (${res.headers.get("server-timing")}); wasm memory ${(mem / 2 ** 20).toFixed(1)} MiB, build ${res.headers.get("x-wasm-build")}`);
  }
  const form = new FormData();
  form.append("file", new Blob([fs.readFileSync(path.join(root, "tools/make_reference.py"))]), "x.py");
  const { res, json } = await post(form);
  assert.equal(res.status, 200, JSON.stringify(json));
  assert.equal(json.label, "python");
  const { peakKB } = memKB(proc.pid);
  console.log(`deno process peak RSS ${(peakKB / 1024).toFixed(1)} MiB`);
});

test("bad input gets a typed 4xx", async () => {
  await expectTypedErrors(base, MAX_BODY);
  const { res, json } = await post(fs.readFileSync(path.join(root, "tools/make_reference.py")));
  assert.equal(res.status, 200);
  assert.equal(json.label, "python");
});
