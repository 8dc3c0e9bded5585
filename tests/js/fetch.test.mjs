// fetchModel in Node against a local server that can honour or ignore Range, cut the
// connection after K bytes, serve gzip, answer 404 and slow down, and that logs every
// request. Run: node --test tests/js/fetch.test.mjs
import { test, before, after, beforeEach } from "node:test";
import assert from "node:assert/strict";
import http from "node:http";
import zlib from "node:zlib";
import crypto from "node:crypto";
import { fetchModel, fetchError, sha256Hex, dropPartial, DEFAULT_CACHE_NAME } from "../../js/fetch.js";
import { EdgeError } from "../../js/entry/node.js";

// Deterministic, incompressible-ish payload, big enough to arrive in many chunks.
const SIZE = 1_000_003;
const DATA = crypto.createHash("sha256").update("seed").digest(); // 32 bytes
const BODY = Buffer.alloc(SIZE);
for (let i = 0, h = DATA; i < SIZE; i += 32) {
  h = crypto.createHash("sha256").update(h).digest();
  h.copy(BODY, i, 0, Math.min(32, SIZE - i));
}
const BODY_SHA = crypto.createHash("sha256").update(BODY).digest("hex");
const GZ = zlib.gzipSync(BODY);
const ETAG = '"body-v1"';

// Per-test server behaviour; reset before each test.
let cfg;
let log;
function reset() {
  cfg = { cutAfter: [], ignoreRange: false, wrongRangeStart: false, slow: false, etag: ETAG };
  log = [];
}

let server;
let base;
before(async () => {
  server = http.createServer((req, res) => {
    const path = new URL(req.url, "http://x").pathname;
    log.push({ path, range: req.headers.range ?? null, ifRange: req.headers["if-range"] ?? null });
    if (path === "/missing.onnx") return res.writeHead(404, "Not Found").end("no");
    const body = path.endsWith(".gz") || path === "/gzipped.bin" ? GZ : path === "/model.onnx" ? BODY : null;
    if (!body) return res.writeHead(404).end();
    const headers = { "content-type": "application/octet-stream", etag: cfg.etag, "accept-ranges": "bytes" };
    let start = 0;
    let status = 200;
    const m = /^bytes=(\d+)-$/.exec(req.headers.range ?? "");
    const ifRangeOk = cfg.ignoreIfRange || !req.headers["if-range"] || req.headers["if-range"] === cfg.etag;
    let end = body.length;
    if (m && !cfg.ignoreRange && ifRangeOk) {
      start = Number(m[1]);
      status = 206;
      // wrongRangeStart: as many bytes as asked for, but from 0 (a broken proxy).
      if (cfg.wrongRangeStart) [start, end] = [0, body.length - start];
      headers["content-range"] = `bytes ${start}-${end - 1}/${body.length}`;
    }
    const part = body.subarray(start, end);
    headers["content-length"] = String(part.length);
    res.writeHead(status, headers);
    // cutAfter: one entry per request, consumed in order; K = send K bytes then drop.
    const cut = cfg.cutAfter.length ? cfg.cutAfter.shift() : null;
    if (cut !== null) {
      res.write(part.subarray(0, cut), () => {
        res.socket.destroy();
        cfg.onCut?.();
      });
      return;
    }
    if (cfg.slow) {
      // 16 KiB every 20 ms, so that an abort lands mid-body.
      let at = 0;
      const tick = () => {
        if (res.destroyed) return;
        if (at >= part.length) return res.end();
        res.write(part.subarray(at, at + 16384));
        at += 16384;
        setTimeout(tick, 20);
      };
      res.on("close", () => (at = Infinity));
      return tick();
    }
    res.end(part);
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  base = `http://127.0.0.1:${server.address().port}`;
});
after(() => server.close());
beforeEach(() => {
  reset();
  dropPartial();
});

function recorder() {
  const events = [];
  return { events, onProgress: (e) => events.push({ ...e }) };
}

/// loaded only grows (no restart), every chunk is counted once, and ends at `size`.
function assertProgressSums(events, size) {
  assert.ok(events.length > 2, `only ${events.length} progress events`);
  let sum = 0;
  let prev = 0;
  for (const e of events) {
    assert.ok(e.loaded >= prev, `loaded went back: ${prev} → ${e.loaded}`);
    sum += e.loaded - prev;
    prev = e.loaded;
    assert.equal(e.total, size);
    assert.equal(e.fromCache, false);
  }
  assert.equal(sum, size);
  assert.equal(events.at(-1).loaded, size);
}

/// A CacheStorage-like object in memory (Node has no `caches`): stores Responses' bytes.
class MemoryCacheStorage {
  constructor() {
    this.caches = new Map();
  }
  async open(name) {
    if (!this.caches.has(name)) this.caches.set(name, new MemoryCache());
    return this.caches.get(name);
  }
}
class MemoryCache {
  constructor() {
    this.entries = new Map();
    this.puts = 0;
  }
  static key(req) {
    return typeof req === "string" ? req : req.url;
  }
  async match(req) {
    const e = this.entries.get(MemoryCache.key(req));
    return e ? new Response(e.bytes.slice(), { headers: e.headers }) : undefined;
  }
  async put(req, res) {
    this.puts++;
    this.entries.set(MemoryCache.key(req), { bytes: new Uint8Array(await res.arrayBuffer()), headers: [...res.headers] });
  }
  async delete(req) {
    return this.entries.delete(MemoryCache.key(req));
  }
}

test("progress is byte-accurate and sums exactly to the size", async () => {
  const { events, onProgress } = recorder();
  const bytes = await fetchModel(`${base}/model.onnx`, { onProgress });
  assert.ok(bytes instanceof Uint8Array);
  assert.ok(Buffer.from(bytes).equals(BODY));
  assertProgressSums(events, SIZE);
  assert.ok(events.every((e) => e.resumed === false));
  assert.equal(log.length, 1);
  assert.equal(log[0].range, null);
});

test("a cut connection resumes with Range and If-Range; the bytes are identical", async () => {
  const K = 300_000;
  cfg.cutAfter = [K];
  const { events, onProgress } = recorder();
  const bytes = await fetchModel(`${base}/model.onnx`, { onProgress, sha256: BODY_SHA });
  assert.ok(Buffer.from(bytes).equals(BODY));
  assert.equal(log.length, 2, JSON.stringify(log));
  const start = Number(/^bytes=(\d+)-$/.exec(log[1].range ?? "")?.[1]);
  // All K bytes are flushed before the socket closes, so the resume starts at K exactly.
  assert.equal(start, K, `second request: ${JSON.stringify(log[1])}`);
  assert.equal(log[1].ifRange, ETAG);
  // The resumed transfer continues the count: no byte counted twice.
  assertProgressSums(events, SIZE);
  assert.equal(events.at(-1).resumed, true);
  assert.equal(events.find((e) => e.loaded === K && e.resumed)?.total, SIZE);
});

test("a server that ignores Range: the download restarts from 0 and is still right", async () => {
  cfg.cutAfter = [200_000];
  cfg.ignoreRange = true;
  const { events, onProgress } = recorder();
  const bytes = await fetchModel(`${base}/model.onnx`, { onProgress });
  assert.ok(Buffer.from(bytes).equals(BODY));
  assert.equal(log.length, 2);
  assert.match(log[1].range ?? "", /^bytes=\d+-$/, "the client asked for a range");
  const last = events.at(-1);
  assert.deepEqual(last, { loaded: SIZE, total: SIZE, fromCache: false, resumed: false });
  assert.ok(events.some((e, i) => i > 0 && e.loaded < events[i - 1].loaded), "loaded went back to 0 on the restart");
});

test("a 206 that starts elsewhere is refused: the client asks again without Range", async () => {
  cfg.cutAfter = [150_000];
  cfg.wrongRangeStart = true;
  const bytes = await fetchModel(`${base}/model.onnx`, {});
  assert.ok(Buffer.from(bytes).equals(BODY));
  assert.equal(log.length, 3, JSON.stringify(log));
  assert.match(log[1].range, /^bytes=\d+-$/);
  assert.equal(log[2].range, null);
});

test("a changed file (If-Range fails) restarts from 0", async () => {
  cfg.cutAfter = [100_000];
  // The server's ETag changes between the cut and the resume.
  cfg.onCut = () => (cfg.etag = '"body-v2"');
  const bytes = await fetchModel(`${base}/model.onnx`, { retries: 1 });
  assert.ok(Buffer.from(bytes).equals(BODY));
  assert.equal(log.length, 2);
  assert.equal(log[1].ifRange, ETAG);
  assert.match(log[1].range, /^bytes=\d+-$/);
});

test("a 206 with another ETag (If-Range ignored by the server) restarts from 0", async () => {
  cfg.cutAfter = [100_000];
  cfg.ignoreIfRange = true;
  cfg.onCut = () => (cfg.etag = '"body-v2"');
  const bytes = await fetchModel(`${base}/model.onnx`, {});
  assert.ok(Buffer.from(bytes).equals(BODY));
  assert.equal(log.length, 3, JSON.stringify(log));
  assert.equal(log[2].range, null);
});

test("retries are bounded: a server that always cuts fails with code Fetch", async () => {
  cfg.cutAfter = [1000, 1000, 1000, 1000, 1000];
  await assert.rejects(fetchModel(`${base}/model.onnx`, { retries: 2 }), (e) => {
    assert.ok(e instanceof EdgeError);
    assert.equal(e.name, "EdgeError");
    assert.equal(e.code, "Fetch");
    assert.ok(e instanceof Error);
    return true;
  });
  assert.equal(log.length, 3);
  // The 3000 bytes are kept: the next call resumes from there.
  const bytes = await fetchModel(`${base}/model.onnx`);
  assert.ok(Buffer.from(bytes).equals(BODY));
  assert.equal(log[3].range, "bytes=3000-");
});

test("an integrity mismatch fails with code Integrity; the right hash passes", async () => {
  const wrong = BODY_SHA.replace(/^./, (c) => (c === "0" ? "1" : "0"));
  await assert.rejects(fetchModel(`${base}/model.onnx`, { sha256: wrong }), (e) => {
    assert.equal(e.name, "EdgeError");
    assert.equal(e.code, "Integrity");
    assert.ok(e.message.includes(BODY_SHA), e.message);
    return true;
  });
  const bytes = await fetchModel(`${base}/model.onnx`, { sha256: BODY_SHA.toUpperCase() });
  assert.equal(bytes.byteLength, SIZE);
  assert.equal(await sha256Hex(bytes), BODY_SHA);
});

test("HTTP 404 fails with code Fetch and the status in the message", async () => {
  await assert.rejects(fetchModel(`${base}/missing.onnx`), (e) => {
    assert.equal(e.code, "Fetch");
    assert.match(e.message, /404/);
    return true;
  });
  assert.equal(log.length, 1, "a 404 is not retried");
});

test("abort: code Aborted; a later call resumes from the bytes already received", async () => {
  const pre = new AbortController();
  pre.abort();
  await assert.rejects(fetchModel(`${base}/model.onnx`, { signal: pre.signal }), { code: "Aborted" });
  assert.equal(log.length, 0, "an aborted signal sends no request");

  cfg.slow = true;
  const ac = new AbortController();
  let seen = 0;
  const onProgress = (e) => {
    seen = e.loaded;
    if (e.loaded >= 100_000) ac.abort();
  };
  await assert.rejects(fetchModel(`${base}/model.onnx`, { signal: ac.signal, onProgress }), (e) => {
    assert.equal(e.name, "EdgeError");
    assert.equal(e.code, "Aborted");
    return true;
  });
  assert.ok(seen >= 100_000 && seen < SIZE, `aborted at ${seen}`);

  cfg.slow = false;
  const { events, onProgress: rec } = recorder();
  const bytes = await fetchModel(`${base}/model.onnx`, { onProgress: rec, sha256: BODY_SHA });
  assert.ok(Buffer.from(bytes).equals(BODY));
  assert.equal(log.length, 2);
  assert.equal(log[1].range, `bytes=${seen}-`);
  assert.equal(events[0].loaded, seen);
  assert.equal(events[0].resumed, true);
  assert.equal(events.at(-1).loaded, SIZE);
});

test("gzip: a .gz URL or gzip: true is decompressed; progress counts compressed bytes", async () => {
  const { events, onProgress } = recorder();
  // The hash is over the decompressed model.
  const bytes = await fetchModel(`${base}/model.onnx.gz`, { onProgress, sha256: BODY_SHA });
  assert.ok(Buffer.from(bytes).equals(BODY));
  assertProgressSums(events, GZ.length);

  const plain = await fetchModel(`${base}/gzipped.bin`, { gzip: true });
  assert.ok(Buffer.from(plain).equals(BODY));
  const raw = await fetchModel(`${base}/gzipped.bin`);
  assert.ok(Buffer.from(raw).equals(GZ), "without gzip the bytes are returned as they are");

  // A cut gzip download resumes on the compressed bytes.
  log.length = 0;
  cfg.cutAfter = [Math.floor(GZ.length / 2)];
  const resumed = await fetchModel(`${base}/model.onnx.gz`, { sha256: BODY_SHA });
  assert.ok(Buffer.from(resumed).equals(BODY));
  assert.equal(log[1].range, `bytes=${Math.floor(GZ.length / 2)}-`);
});

test("Cache Storage: a hit reports fromCache and sends no request", async () => {
  const cacheStorage = new MemoryCacheStorage();
  const url = `${base}/model.onnx`;
  const first = await fetchModel(url, { cacheStorage, sha256: BODY_SHA });
  assert.ok(Buffer.from(first).equals(BODY));
  assert.equal(log.length, 1);
  const cache = cacheStorage.caches.get(DEFAULT_CACHE_NAME);
  assert.ok(cache?.entries.has(url), "stored under the URL in edgepredict-models");

  const { events, onProgress } = recorder();
  const second = await fetchModel(url, { cacheStorage, sha256: BODY_SHA, onProgress });
  assert.ok(Buffer.from(second).equals(BODY));
  assert.equal(log.length, 1, "no new request on a hit");
  assert.deepEqual(events, [{ loaded: SIZE, total: SIZE, fromCache: true, resumed: false }]);

  // cache: false bypasses it; a string names another cache.
  await fetchModel(url, { cacheStorage, cache: false });
  assert.equal(log.length, 2);
  await fetchModel(url, { cacheStorage, cache: "mine" });
  assert.equal(log.length, 3);
  assert.ok(cacheStorage.caches.get("mine")?.entries.has(url));
});

test("Cache Storage: a stale entry is replaced; failed downloads are never stored", async () => {
  const cacheStorage = new MemoryCacheStorage();
  const url = `${base}/model.onnx`;
  const cache = await cacheStorage.open(DEFAULT_CACHE_NAME);
  await cache.put(url, new Response(new Uint8Array([1, 2, 3])));
  // No hash: whatever is cached is served.
  assert.deepEqual([...(await fetchModel(url, { cacheStorage }))], [1, 2, 3]);
  assert.equal(log.length, 0);
  // With a hash, the mismatching entry is deleted and downloaded again.
  const fresh = await fetchModel(url, { cacheStorage, sha256: BODY_SHA });
  assert.ok(Buffer.from(fresh).equals(BODY));
  assert.equal(log.length, 1);
  assert.equal(cache.entries.get(url).bytes.byteLength, SIZE);

  const other = `${base}/model.onnx?v=2`;
  const wrong = "0".repeat(64);
  await assert.rejects(fetchModel(other, { cacheStorage, sha256: wrong }), { code: "Integrity" });
  cfg.cutAfter = [10, 10];
  await assert.rejects(fetchModel(other, { cacheStorage, retries: 1 }), { code: "Fetch" });
  assert.ok(!cache.entries.has(other), "nothing stored after a failure");
  assert.equal(cache.puts, 2, "one seeded put, one verified put");
});

test("an onProgress that throws ends the call with its error, without retries", async () => {
  const boom = new Error("callback failed");
  const onProgress = (e) => {
    if (e.loaded > 0) throw boom;
  };
  await assert.rejects(fetchModel(`${base}/model.onnx`, { onProgress }), (e) => e === boom);
  assert.equal(log.length, 1);
  await assert.rejects(fetchModel("relative/model.onnx"), { code: "Fetch" });
});

test("fetchError makes the package's EdgeError", () => {
  const e = fetchError("Fetch", "boom");
  assert.ok(e instanceof Error);
  assert.ok(e instanceof EdgeError);
  assert.equal(e.name, "EdgeError");
  assert.equal(e.code, "Fetch");
  assert.equal(e.message, "boom");
});
