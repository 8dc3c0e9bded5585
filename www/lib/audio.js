// Audio for the voice panel: a file decoded and resampled to 16 kHz mono, and the
// microphone as a stream of 16 kHz 512-sample frames.
//
// The same file is the AudioWorklet module: in the worklet's global scope (where
// registerProcessor exists) it registers "edgepredict-frames", which resamples and frames
// in the audio thread with the classes below. The pure parts (Resampler, Framer, downmix)
// run in Node for the tests.

/// Mean of the channels.
export function downmix(channels) {
  if (channels.length === 1) return channels[0];
  const out = new Float32Array(channels[0].length);
  for (const ch of channels) for (let i = 0; i < out.length; i++) out[i] += ch[i];
  for (let i = 0; i < out.length; i++) out[i] /= channels.length;
  return out;
}

/// Streaming resampler: linear interpolation, after a windowed-sinc low-pass when
/// downsampling (without it, 48 kHz speech folds 8–24 kHz noise into the band the VAD
/// hears). push() takes any block length and returns the output samples it completes;
/// state carries across blocks, so the result does not depend on how the input is cut.
export class Resampler {
  constructor(fromRate, toRate, taps = 31) {
    this.step = fromRate / toRate;
    this.pos = 0; // next output's position, in input samples since the stream began
    this.seen = 0; // input samples pushed so far
    this.last = 0; // the filtered input sample before the current block
    this.haveLast = false;
    if (fromRate > toRate) {
      // Low-pass at 0.9 × the output's Nyquist, Hann window; odd length, so a whole-sample delay.
      const fc = (0.45 * toRate) / fromRate;
      const h = new Float32Array(taps);
      const mid = (taps - 1) / 2;
      let sum = 0;
      for (let i = 0; i < taps; i++) {
        const t = i - mid;
        const sinc = t === 0 ? 2 * fc : Math.sin(2 * Math.PI * fc * t) / (Math.PI * t);
        h[i] = sinc * (0.5 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)));
        sum += h[i];
      }
      for (let i = 0; i < taps; i++) h[i] /= sum;
      this.fir = h;
      this.delay = mid;
      this.hist = new Float32Array(taps - 1); // the previous inputs the filter still needs
    }
  }

  #filter(x) {
    if (!this.fir) return x;
    const h = this.fir, k = h.length, hist = this.hist;
    const buf = new Float32Array(hist.length + x.length);
    buf.set(hist, 0);
    buf.set(x, hist.length);
    const y = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) {
      let acc = 0;
      for (let j = 0; j < k; j++) acc += h[j] * buf[i + k - 1 - j];
      y[i] = acc;
    }
    this.hist = buf.slice(buf.length - hist.length);
    return y;
  }

  push(x) {
    const y = this.#filter(x);
    // Output at input position pos (plus the filter's delay) interpolates y around it.
    const base = this.seen; // index of y[0] in the stream
    const shift = this.fir ? this.delay : 0;
    const out = [];
    for (;;) {
      const p = this.pos + shift - base; // position within y (−1 ≤ p: uses `last`)
      const i = Math.floor(p);
      if (i + 1 >= y.length) break;
      const f = p - i;
      const a = i < 0 ? this.last : y[i];
      out.push(a + (y[i + 1] - a) * f);
      this.pos += this.step;
    }
    if (y.length) this.last = y[y.length - 1];
    this.seen += y.length;
    return Float32Array.from(out);
  }
}

/// Cuts a stream into fixed-size frames (copies), keeping the remainder for the next push.
export class Framer {
  constructor(size = 512) {
    this.size = size;
    this.buf = new Float32Array(size);
    this.fill = 0;
  }

  push(x) {
    const frames = [];
    let i = 0;
    while (i < x.length) {
      const n = Math.min(this.size - this.fill, x.length - i);
      this.buf.set(x.subarray(i, i + n), this.fill);
      this.fill += n;
      i += n;
      if (this.fill === this.size) {
        frames.push(this.buf.slice());
        this.fill = 0;
      }
    }
    return frames;
  }
}

// ---- browser ----------------------------------------------------------------------------

/// An audio file's bytes → 16 kHz mono Float32Array. The AudioContext decodes (at its own
/// rate); an OfflineAudioContext with one channel at 16 kHz renders the buffer, which
/// downmixes and resamples it with the browser's resampler.
export async function decodeTo16k(bytes, rate = 16000) {
  const ac = new AudioContext();
  let decoded;
  try {
    decoded = await ac.decodeAudioData(bytes instanceof ArrayBuffer ? bytes : bytes.buffer.slice(0));
  } finally {
    ac.close();
  }
  const length = Math.ceil(decoded.duration * rate);
  const off = new OfflineAudioContext(1, length, rate);
  const src = off.createBufferSource();
  src.buffer = decoded;
  src.connect(off.destination);
  src.start();
  const rendered = await off.startRendering();
  return { samples: rendered.getChannelData(0), sourceRate: decoded.sampleRate, channels: decoded.numberOfChannels };
}

/// Starts the microphone. `onFrame(Float32Array of `frame` samples at `rate`)` is called per
/// frame, in order. Uses an AudioWorklet; where there is none (or it fails to load), a
/// ScriptProcessorNode does the same on the main thread. Returns { stop(), mode,
/// inputRate }.
export async function startMic(onFrame, { rate = 16000, frame = 512 } = {}) {
  const stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
  });
  const ac = new AudioContext();
  await ac.resume();
  const src = ac.createMediaStreamSource(stream);
  // Nodes only run when something pulls them: a muted gain to the destination does.
  const sink = ac.createGain();
  sink.gain.value = 0;
  sink.connect(ac.destination);
  let node, mode;
  try {
    if (!ac.audioWorklet) throw new Error("no AudioWorklet");
    await ac.audioWorklet.addModule(import.meta.url);
    node = new AudioWorkletNode(ac, "edgepredict-frames", {
      numberOfInputs: 1,
      numberOfOutputs: 1,
      outputChannelCount: [1],
      processorOptions: { rate, frame },
    });
    node.port.onmessage = (e) => onFrame(e.data);
    mode = "worklet";
  } catch {
    node = ac.createScriptProcessor(4096, 1, 1);
    const rs = new Resampler(ac.sampleRate, rate);
    const fr = new Framer(frame);
    node.onaudioprocess = (e) => {
      const chans = [];
      for (let c = 0; c < e.inputBuffer.numberOfChannels; c++) chans.push(e.inputBuffer.getChannelData(c));
      for (const f of fr.push(rs.push(downmix(chans)))) onFrame(f);
    };
    mode = "script-processor";
  }
  src.connect(node);
  node.connect(sink);
  return {
    mode,
    inputRate: ac.sampleRate,
    async stop() {
      for (const t of stream.getTracks()) t.stop();
      src.disconnect();
      node.disconnect();
      if (node.port) node.port.onmessage = null;
      await ac.close();
    },
  };
}

// ---- AudioWorklet scope -----------------------------------------------------------------

if (typeof registerProcessor === "function" && typeof AudioWorkletProcessor === "function") {
  registerProcessor(
    "edgepredict-frames",
    class extends AudioWorkletProcessor {
      constructor(options) {
        super();
        const { rate, frame } = options.processorOptions;
        // `sampleRate` is the worklet scope's global: the context's rate.
        this.rs = new Resampler(sampleRate, rate);
        this.fr = new Framer(frame);
      }

      process(inputs) {
        const input = inputs[0];
        if (input && input.length) {
          for (const f of this.fr.push(this.rs.push(downmix(input)))) this.port.postMessage(f, [f.buffer]);
        }
        return true;
      }
    },
  );
}
