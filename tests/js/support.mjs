// Shared by the JS tests: a static server on 127.0.0.1 (repo root; /models/ also finds
// fetched models in .cache/models) and headless Debian Chromium through playwright-core.
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "../..");

const types = {
  ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
  ".html": "text/html", ".css": "text/css", ".json": "application/json", ".png": "image/png",
  ".wav": "audio/wav", ".svg": "image/svg+xml",
};

/// Maps a URL path to a file under the repo root, or null.
export function resolveStatic(urlPath, base = root) {
  const rel = decodeURIComponent(urlPath);
  const candidates = [path.join(base, rel)];
  if (rel.startsWith("/models/")) candidates.push(path.join(root, ".cache", rel));
  for (const p of candidates) {
    if (p.startsWith(root) && fs.existsSync(p) && fs.statSync(p).isFile()) return p;
  }
  return null;
}

/// A static file server on 127.0.0.1 (port 0 = any); `base` is the directory served at /.
export function serve({ base = root, port = 0 } = {}) {
  const server = http.createServer((req, res) => {
    let urlPath = new URL(req.url, "http://x").pathname;
    if (urlPath.endsWith("/")) urlPath += "index.html";
    const p = resolveStatic(urlPath, base);
    if (!p) {
      res.writeHead(404).end();
      return;
    }
    res.writeHead(200, {
      "content-type": types[path.extname(p)] ?? "application/octet-stream",
      "content-length": fs.statSync(p).size,
    });
    fs.createReadStream(p).pipe(res);
  });
  return new Promise((ok) => server.listen(port, "127.0.0.1", () => ok(server)));
}

export const chromiumArgs = ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-quic",
  "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
  "--enable-unsafe-webgpu"];

/// Debian's Chromium (never a downloaded browser); `extraArgs` e.g. fake media devices.
export async function launchChromium(extraArgs = []) {
  const { chromium } = await import("playwright-core");
  return chromium.launch({ executablePath: "/usr/bin/chromium", args: [...chromiumArgs, ...extraArgs] });
}
