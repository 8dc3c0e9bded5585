// silero VAD v6 streaming and speech segments for the demo page.
//
// The model takes 512 new samples at 16 kHz plus the previous chunk's last 64 samples
// ([1,576] "input"), the recurrent "state" [2,1,128] and "sr" (int64 scalar); it returns
// the speech probability "output" [1,1] and the next state "stateN". SileroVad streams
// through Model.stream, which carries both between chunks. The segment logic follows silero's get_speech_timestamps (written
// anew here as a streaming state machine, so the live microphone and a file share it).
// No import of the package: the caller hands in its Tensor class, so Node tests load this.

export const SAMPLE_RATE = 16000;
export const FRAME = 512;
export const CONTEXT = 64;

export const VAD_DEFAULTS = {
  threshold: 0.5, // a frame at or above starts (or continues) speech
  negThreshold: 0.35, // only a frame below this can end it (hysteresis)
  minSpeechMs: 250, // shorter segments are dropped
  minSilenceMs: 100, // silence must last this long to end a segment
  speechPadMs: 30, // silero's default padding on each side
  frame: FRAME,
  sampleRate: SAMPLE_RATE,
};

/// One model, one stream: the package's Model.stream does the windowing (64 samples of
/// context + 512 new) and feeds "stateN" back as "state", the same code that serves a
/// whole recording in the Rust API. `step(frame)` takes exactly FRAME samples.
export class SileroVad {
  constructor(model, Tensor) {
    this.model = model;
    this.Tensor = Tensor;
    this.reset();
  }

  reset() {
    this.stream?.dispose();
    this.stream = this.model.stream({
      input: "input",
      hop: FRAME,
      context: CONTEXT,
      state: [["state", "stateN"]],
      fixed: { sr: new this.Tensor("int64", BigInt64Array.of(BigInt(SAMPLE_RATE)), []) },
    });
  }

  async step(frame) {
    if (frame.length !== FRAME) throw new Error(`silero takes ${FRAME} samples a step, got ${frame.length}`);
    const [window] = await this.stream.push(frame);
    return window.output.data[0];
  }

  dispose() {
    this.stream?.dispose();
    this.stream = null;
  }
}

/// Frame-by-frame segmenter. push(prob) once per frame; it returns a segment
/// { start, end } (in samples, unpadded) when one closes, else null. finish(totalSamples)
/// closes a segment still open at the end of the audio.
export class SpeechTracker {
  constructor(opts = {}) {
    this.o = { ...VAD_DEFAULTS, ...opts };
    const perMs = this.o.sampleRate / 1000;
    this.minSpeech = this.o.minSpeechMs * perMs;
    this.minSilence = this.o.minSilenceMs * perMs;
    this.frames = 0;
    this.speaking = false; // inside a segment (from its first speech frame until it closes)
    this.start = 0;
    this.silentSince = null; // sample where the current run of silence began, within speech
    this.segments = [];
  }

  push(prob) {
    const { threshold, negThreshold, frame } = this.o;
    const at = this.frames * frame;
    this.frames++;
    if (prob >= threshold) {
      this.silentSince = null;
      if (!this.speaking) {
        this.speaking = true;
        this.start = at;
      }
      return null;
    }
    if (!this.speaking || prob >= negThreshold) return null; // between the thresholds: no change
    if (this.silentSince === null) this.silentSince = at;
    if (at - this.silentSince < this.minSilence) return null;
    return this.#close(this.silentSince);
  }

  finish(totalSamples = this.frames * this.o.frame) {
    if (!this.speaking) return null;
    return this.#close(totalSamples);
  }

  #close(end) {
    const seg = { start: this.start, end };
    this.speaking = false;
    this.silentSince = null;
    if (end - seg.start > this.minSpeech) {
      this.segments.push(seg);
      return seg;
    }
    return null;
  }
}

/// Pads segments (samples) by speechPadMs on each side; where two are closer than twice
/// the pad, the gap is split between them. Returns seconds, rounded to the millisecond.
export function padSegments(segments, totalSamples, opts = {}) {
  const o = { ...VAD_DEFAULTS, ...opts };
  const pad = (o.speechPadMs * o.sampleRate) / 1000;
  const s = segments.map((x) => ({ ...x }));
  for (let i = 0; i < s.length; i++) {
    if (i === 0) s[i].start = Math.max(0, s[i].start - pad);
    if (i < s.length - 1) {
      const gap = s[i + 1].start - s[i].end;
      if (gap < 2 * pad) {
        s[i].end += Math.floor(gap / 2);
        s[i + 1].start = Math.max(0, s[i + 1].start - Math.floor(gap / 2));
      } else {
        s[i].end = Math.min(totalSamples, s[i].end + pad);
        s[i + 1].start = Math.max(0, s[i + 1].start - pad);
      }
    } else {
      s[i].end = Math.min(totalSamples, s[i].end + pad);
    }
  }
  const sec = (v) => Math.round((v / o.sampleRate) * 1000) / 1000;
  return s.map((x) => ({ start: sec(x.start), end: sec(x.end) }));
}

/// Speech segments (seconds) of a whole probability sequence, one value per frame.
export function speechSegments(probs, opts = {}) {
  const t = new SpeechTracker(opts);
  for (const p of probs) t.push(p);
  const total = opts.totalSamples ?? probs.length * t.o.frame;
  t.finish(total);
  return padSegments(t.segments, total, opts);
}

/// Runs a whole 16 kHz clip through the model, frame by frame with the state carried.
/// The last partial frame is zero-padded. Returns { probs: Float32Array, segments }.
export async function detectSpeech(vad, samples, { onFrame, ...opts } = {}) {
  vad.reset();
  const n = Math.ceil(samples.length / FRAME);
  const probs = new Float32Array(n);
  const frame = new Float32Array(FRAME);
  for (let i = 0; i < n; i++) {
    frame.fill(0);
    frame.set(samples.subarray(i * FRAME, Math.min(samples.length, (i + 1) * FRAME)));
    probs[i] = await vad.step(frame);
    onFrame?.(i, probs[i]);
  }
  return { probs, segments: speechSegments(probs, { ...opts, totalSamples: samples.length }) };
}
