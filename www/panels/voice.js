// Voice panel: speech detection with silero VAD v6, on an audio file or the microphone.
// State on the section: data-state loading | ready | running | listening | done | error;
// data-speaking "true"/"false" live, data-speech-seen "true" once the mic heard speech,
// data-live-segments the count of segments the mic has closed (kept, ≥ 250 ms); on
// done, data-result is JSON { mode: "file" | "mic", segments: [{ start, end }] (seconds),
// duration, frames, ... }.
import { Tensor } from "edgepredict";
import { SileroVad, SpeechTracker, padSegments, detectSpeech, VAD_DEFAULTS, FRAME, SAMPLE_RATE } from "../lib/vad.js";
import { decodeTo16k, startMic } from "../lib/audio.js";
import { h } from "../ui.js";

const MODEL = { url: "/models/silero_vad.onnx", label: "silero VAD v6", sha256: "1a153a22f4509e292a94e67d6f9b85e8deb25b4988682b7e174c65279d8788e3" };
const FRAME_S = FRAME / SAMPLE_RATE;
const LIVE_WINDOW_S = 10;

export function mount(section, ctx) {
  // ctx puts the model's row and the file run's latency in here.
  const status = h("div", { class: "status" });
  const file = h("input", { type: "file", accept: "audio/*", disabled: true });
  const startBtn = h("button", { type: "button", class: "mic-start", disabled: true }, "Start microphone");
  const stopBtn = h("button", { type: "button", class: "mic-stop", disabled: true }, "Stop");
  const speaking = h("span", { class: "speaking" }, "silent");
  const info = h("p", { class: "vad-info" });
  const timeline = h("canvas", { class: "vad-timeline", width: 640, height: 120 });
  // As wide as the panel; the bitmap is sized to it at each draw (sharp on HiDPI).
  Object.assign(timeline.style, { display: "block", width: "100%", height: "120px" });
  const list = h("ol", { class: "vad-segments" });
  const error = h("p", { class: "error", hidden: true });
  section.append(
    h("h2", {}, "Voice activity"),
    h("p", { class: "hint" }, "silero VAD v6 on 32 ms frames at 16 kHz; speech from 0.5, back to silence under 0.35."),
    h("label", {}, "Audio file ", file),
    h("div", { class: "mic" }, startBtn, " ", stopBtn, " ", speaking),
    status,
    info,
    timeline,
    list,
    error,
  );

  let vad = null;
  let mic = null;
  let queue = Promise.resolve();
  const enqueue = (job) => (queue = queue.then(job).catch(fail));

  const setSpeaking = (on) => {
    section.dataset.speaking = String(on);
    speaking.textContent = on ? "speaking" : "silent";
    speaking.classList.toggle("on", on);
    if (on) section.dataset.speechSeen = "true";
  };
  const controls = (idle) => {
    file.disabled = !idle || !vad;
    startBtn.disabled = !idle || !vad;
    stopBtn.disabled = idle;
  };

  function fail(e) {
    section.dataset.state = "error";
    section.dataset.error = String(e?.message ?? e);
    error.hidden = false;
    error.textContent = `${e?.code ? e.code + ": " : ""}${e?.message ?? e}`;
    controls(true);
  }

  async function load() {
    section.dataset.state = "loading";
    controls(false);
    stopBtn.disabled = true;
    vad?.dispose(); // the stream; ctx owns the model and frees the previous backend's
    vad = null;
    const model = await ctx.loadModel(status, MODEL.url, { sha256: MODEL.sha256, label: MODEL.label });
    vad = new SileroVad(model, Tensor);
    controls(true);
    section.dataset.state = "ready";
  }

  function showSegments(segments) {
    list.replaceChildren(
      ...segments.map((s) => h("li", {}, `${s.start.toFixed(2)} – ${s.end.toFixed(2)} s`)),
    );
    if (segments.length === 0) list.append(h("li", {}, "no speech"));
  }

  async function runFile(f) {
    section.dataset.state = "running";
    delete section.dataset.result;
    error.hidden = true;
    controls(false);
    stopBtn.disabled = true;
    const audio = await decodeTo16k(await f.arrayBuffer());
    const { probs, segments } = await ctx.timed(status, "VAD (file)", () => detectSpeech(vad, audio.samples));
    const duration = audio.samples.length / SAMPLE_RATE;
    info.textContent = `${duration.toFixed(2)} s (${audio.sourceRate} Hz, ${audio.channels} ch → 16 kHz mono), ${probs.length} frames`;
    drawTimeline(probs, 0, duration, segments);
    showSegments(segments);
    section.dataset.result = JSON.stringify({
      mode: "file",
      segments,
      duration: +duration.toFixed(3),
      frames: probs.length,
      sourceRate: audio.sourceRate,
    });
    controls(true);
    section.dataset.state = "done";
  }

  // The mic: frames come from the audio thread; each runs after the previous one (the
  // state carries), on a promise chain of its own.
  async function startLive() {
    section.dataset.state = "running";
    delete section.dataset.result;
    delete section.dataset.speechSeen;
    section.dataset.liveSegments = "0";
    error.hidden = true;
    controls(false);
    vad.reset();
    // One recording: frames run in order on a promise chain (the state carries).
    const rec = { tracker: new SpeechTracker(), probs: [], chain: Promise.resolve(), inferMs: 0, drawn: 0 };
    const onFrame = async (frame) => {
      const t = performance.now();
      const p = await vad.step(frame);
      rec.inferMs += performance.now() - t;
      rec.probs.push(p);
      if (rec.tracker.push(p)) section.dataset.liveSegments = String(rec.tracker.segments.length);
      setSpeaking(rec.tracker.speaking);
      const n = rec.probs.length;
      if (n - rec.drawn < 4) return; // redraw every 4 frames (~128 ms)
      rec.drawn = n;
      const open = rec.tracker.speaking ? [{ start: rec.tracker.start, end: n * FRAME }] : [];
      const end = n * FRAME_S;
      drawTimeline(rec.probs, Math.max(0, end - LIVE_WINDOW_S), end, padSegments([...rec.tracker.segments, ...open], n * FRAME));
      info.textContent = `live: ${end.toFixed(1)} s, ${n} frames, ${(rec.inferMs / n).toFixed(2)} ms a frame`;
    };
    rec.mic = await startMic((frame) => {
      rec.chain = rec.chain.then(() => onFrame(frame)).catch(fail);
    });
    mic = rec;
    section.dataset.state = "listening";
    section.dataset.micMode = rec.mic.mode;
  }

  async function stopLive() {
    const rec = mic;
    mic = null;
    if (!rec) return;
    await rec.mic.stop();
    await rec.chain;
    const total = rec.probs.length * FRAME;
    rec.tracker.finish(total);
    setSpeaking(false);
    const segments = padSegments(rec.tracker.segments, total);
    const duration = total / SAMPLE_RATE;
    drawTimeline(rec.probs, Math.max(0, duration - LIVE_WINDOW_S), duration, segments);
    showSegments(segments);
    info.textContent = `${duration.toFixed(1)} s heard (${rec.mic.mode}, ${rec.mic.inputRate} Hz → 16 kHz), ${(rec.inferMs / Math.max(1, rec.probs.length)).toFixed(2)} ms a frame`;
    section.dataset.result = JSON.stringify({
      mode: "mic",
      segments,
      duration: +duration.toFixed(3),
      frames: rec.probs.length,
      capture: rec.mic.mode,
      inputRate: rec.mic.inputRate,
    });
    controls(true);
    section.dataset.state = "done";
  }

  // Probability over [t0, t1] seconds, the two thresholds, and the segments shaded.
  function drawTimeline(probs, t0, t1, segments) {
    const dpr = globalThis.devicePixelRatio || 1;
    const W = timeline.clientWidth || 640, H = timeline.clientHeight || 120;
    if (timeline.width !== Math.round(W * dpr)) timeline.width = Math.round(W * dpr);
    if (timeline.height !== Math.round(H * dpr)) timeline.height = Math.round(H * dpr);
    const g = timeline.getContext("2d");
    g.setTransform(dpr, 0, 0, dpr, 0, 0);
    const span = Math.max(t1 - t0, 1e-3);
    const X = (t) => ((t - t0) / span) * W;
    const Y = (p) => H - 4 - p * (H - 8);
    g.clearRect(0, 0, W, H);
    g.fillStyle = "rgba(26,127,55,0.18)";
    for (const s of segments) if (s.end > t0) g.fillRect(X(s.start), 0, X(s.end) - X(s.start), H);
    g.setLineDash([4, 4]);
    g.strokeStyle = "#999";
    for (const th of [VAD_DEFAULTS.threshold, VAD_DEFAULTS.negThreshold]) {
      g.beginPath();
      g.moveTo(0, Y(th));
      g.lineTo(W, Y(th));
      g.stroke();
    }
    g.setLineDash([]);
    g.strokeStyle = "#0b5cad";
    g.beginPath();
    const first = Math.max(0, Math.floor(t0 / FRAME_S));
    for (let i = first; i < probs.length; i++) {
      const x = X((i + 0.5) * FRAME_S), y = Y(probs[i]);
      i === first ? g.moveTo(x, y) : g.lineTo(x, y);
    }
    g.stroke();
    g.fillStyle = "#555";
    g.font = "11px sans-serif";
    g.fillText(`${t0.toFixed(1)} s`, 2, H - 2);
    const endLabel = `${t1.toFixed(1)} s`;
    g.fillText(endLabel, W - g.measureText(endLabel).width - 2, H - 2);
  }

  file.addEventListener("change", () => {
    const f = file.files?.[0];
    if (f) enqueue(() => runFile(f));
  });
  startBtn.addEventListener("click", () => enqueue(startLive));
  // Stop does not wait in the queue behind anything but the start.
  stopBtn.addEventListener("click", () => enqueue(stopLive));
  ctx.onBackendChange(() => enqueue(async () => {
    if (mic) await stopLive();
    await load();
  }));
  setSpeaking(false);
  enqueue(load);
}
