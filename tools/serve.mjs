#!/usr/bin/env node
// The static server of the demo page (`npm start`) and of the JS tests (tests/js/support.mjs).
// It serves the repo root; /models/X comes from models/X, else from the fetched
// .cache/models/X. ETag and byte ranges (206) are there because the package's model
// delivery resumes an interrupted download with `Range: bytes=N-`.
//
//   node tools/serve.mjs        # http://127.0.0.1:8080/www/  (PORT=… to change the port)
import http from "node:http";
import fs from "node:fs";
import path from "node:path";
import { fileURLToPath, pathToFileURL } from "node:url";

export const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), "..");

const types = {
  ".js": "text/javascript", ".mjs": "text/javascript", ".wasm": "application/wasm",
  ".html": "text/html; charset=utf-8", ".css": "text/css", ".json": "application/json",
  ".png": "image/png", ".jpg": "image/jpeg", ".wav": "audio/wav", ".svg": "image/svg+xml",
  ".txt": "text/plain; charset=utf-8", ".md": "text/plain; charset=utf-8", ".ts": "text/javascript",
  ".onnx": "application/octet-stream", ".npy": "application/octet-stream", ".gz": "application/gzip",
};

const inside = (p, dir) => p === dir || p.startsWith(dir + path.sep);

/// Maps a URL path to a file under `base` (the repo root by default), or null. /models/X
/// falls back to .cache/models/X.
export function resolveStatic(urlPath, base = root) {
  let rel;
  try {
    rel = decodeURIComponent(urlPath);
  } catch {
    return null;
  }
  const candidates = [[path.join(base, rel), base]];
  if (rel.startsWith("/models/")) candidates.push([path.join(root, ".cache", rel), path.join(root, ".cache", "models")]);
  for (const [p, dir] of candidates) {
    if (!inside(p, dir)) continue;
    try {
      if (fs.statSync(p).isFile()) return p;
    } catch {
      // missing (or a dangling link): try the next place
    }
  }
  return null;
}

function isDir(urlPath, base) {
  try {
    const p = path.join(base, decodeURIComponent(urlPath));
    return inside(p, base) && fs.statSync(p).isDirectory();
  } catch {
    return false;
  }
}

/// One `Range` header against a file of `size` bytes: {start, end} (inclusive), "bad"
/// (416), or null (serve the whole file; several ranges are answered whole too).
export function parseRange(header, size) {
  const m = /^bytes=(\d*)-(\d*)$/.exec(header.trim());
  if (!m || (m[1] === "" && m[2] === "")) return null;
  let start, end;
  if (m[1] === "") {
    // The last N bytes.
    const n = Number(m[2]);
    if (n === 0) return "bad";
    start = Math.max(0, size - n);
    end = size - 1;
  } else {
    start = Number(m[1]);
    end = m[2] === "" ? size - 1 : Math.min(Number(m[2]), size - 1);
  }
  if (start >= size || start > end) return "bad";
  return { start, end };
}

function handle(req, res, base) {
  if (req.method !== "GET" && req.method !== "HEAD") {
    res.writeHead(405, { allow: "GET, HEAD" }).end();
    return;
  }
  let urlPath = new URL(req.url, "http://x").pathname;
  // The repo root has no page: the demo is at /www/.
  if (urlPath === "/" && base === root) {
    res.writeHead(302, { location: "/www/" }).end();
    return;
  }
  if (!urlPath.endsWith("/") && isDir(urlPath, base)) {
    res.writeHead(301, { location: urlPath + "/" }).end();
    return;
  }
  if (urlPath.endsWith("/")) urlPath += "index.html";
  const p = resolveStatic(urlPath, base);
  if (!p) {
    res.writeHead(404, { "content-type": "text/plain" }).end(`not found: ${urlPath}\n`);
    return;
  }
  const st = fs.statSync(p);
  const etag = `"${st.size.toString(16)}-${Math.floor(st.mtimeMs).toString(16)}"`;
  const headers = {
    "content-type": types[path.extname(p)] ?? "application/octet-stream",
    "accept-ranges": "bytes",
    etag,
    "last-modified": st.mtime.toUTCString(),
    // Revalidate every time: the page is edited in place, and the ETag makes it cheap.
    "cache-control": "no-cache",
  };
  if (req.headers["if-none-match"]?.split(/\s*,\s*/).includes(etag)) {
    res.writeHead(304, headers).end();
    return;
  }
  let range = null;
  const ifRange = req.headers["if-range"];
  if (req.headers.range && (!ifRange || ifRange === etag)) range = parseRange(req.headers.range, st.size);
  if (range === "bad") {
    res.writeHead(416, { ...headers, "content-range": `bytes */${st.size}` }).end();
    return;
  }
  const { start, end } = range ?? { start: 0, end: st.size - 1 };
  const status = range ? 206 : 200;
  if (range) headers["content-range"] = `bytes ${start}-${end}/${st.size}`;
  headers["content-length"] = st.size === 0 ? 0 : end - start + 1;
  res.writeHead(status, headers);
  if (req.method === "HEAD" || st.size === 0) {
    res.end();
    return;
  }
  const stream = fs.createReadStream(p, { start, end });
  stream.on("error", () => res.destroy());
  stream.pipe(res);
}

/// A static file server on `host` (127.0.0.1), `port` (0: any free one); `base` is the
/// directory served at /. Resolves to the listening http.Server.
export function serve({ base = root, port = 0, host = "127.0.0.1" } = {}) {
  const server = http.createServer((req, res) => {
    try {
      handle(req, res, base);
    } catch (e) {
      if (!res.headersSent) res.writeHead(500, { "content-type": "text/plain" });
      res.end(String(e));
    }
  });
  return new Promise((ok, fail) => {
    server.once("error", fail);
    server.listen(port, host, () => ok(server));
  });
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  const port = Number(process.env.PORT ?? 8080);
  try {
    const server = await serve({ port });
    const { port: p } = server.address();
    console.log(`edgepredict demo: http://127.0.0.1:${p}/www/`);
    if (!fs.existsSync(path.join(root, "dist"))) console.log("note: dist/ is missing; build the package first (tools/build_pkg.sh)");
    if (!resolveStatic("/models/magika.onnx")) console.log("note: no models yet; run tools/fetch_models.sh");
  } catch (e) {
    console.error(e.code === "EADDRINUSE" ? `port ${port} is taken; set PORT=…` : e.message);
    process.exit(1);
  }
}
