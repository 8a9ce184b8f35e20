// Audio-thread half of the Moshi page (AudioWorkletGlobalScope: `sampleRate` is the context's rate).
//   'moshi-capture':  microphone → mono → 24 kHz → 20 ms chunks posted to the page, plus an RMS level
//                     of the microphone (taken before muting: the page shows what is sent itself).
//   'moshi-playback': decoded PCM from the page (24 or 48 kHz) → context rate → jitter buffer →
//                     speakers; optionally what was played, back at 24 kHz, for the recording.
// Both stamp their audio with the context frame (`currentFrame`) of its first sample, so the page
// can lay the user's and Moshi's audio side by side on one timeline.
'use strict';

const MODEL_RATE = 24000;

// Streaming band-limited resampler: windowed-sinc interpolation at fractional input positions.
// The kernel is cut off just below the lower of the two Nyquist frequencies (so 48 → 24 kHz does
// not alias), Blackman-windowed over ±`width` input samples, and tabulated (TABLE_RES entries per
// input sample, linearly interpolated) so the audio thread never calls Math.sin.
const TABLE_RES = 128;
class Resampler {
  constructor(inRate, outRate, zeroCrossings = 16) {
    this.step = inRate / outRate; // input samples advanced per output sample
    this.passthrough = inRate === outRate;
    const cutoff = Math.min(1, outRate / inRate) * 0.95; // fraction of the input Nyquist kept
    this.width = Math.ceil(zeroCrossings / cutoff);
    const n = this.width * TABLE_RES + 2;
    this.table = new Float32Array(n);
    for (let j = 0; j < n; j++) {
      const t = j / TABLE_RES; // distance in input samples
      const x = cutoff * t;
      const sinc = x === 0 ? 1 : Math.sin(Math.PI * x) / (Math.PI * x);
      const w = t >= this.width ? 0 : 0.42 + 0.5 * Math.cos(Math.PI * t / this.width)
        + 0.08 * Math.cos(2 * Math.PI * t / this.width);
      this.table[j] = cutoff * sinc * w;
    }
    // Input history. It starts with `width` zeros so the first output has (silent) left context.
    this.buf = new Float32Array(4096);
    this.len = this.width;
    this.pos = this.width; // fractional input index of the next output sample
  }

  kernel(t) {
    const a = Math.abs(t) * TABLE_RES;
    const i = a | 0;
    const f = a - i;
    return this.table[i] * (1 - f) + this.table[i + 1] * f;
  }

  // Returns the output samples that the input so far fully determines (the rest wait for more input).
  process(input) {
    if (this.passthrough) return Float32Array.from(input);
    if (this.len + input.length > this.buf.length) {
      const bigger = new Float32Array(2 * (this.len + input.length));
      bigger.set(this.buf.subarray(0, this.len));
      this.buf = bigger;
    }
    this.buf.set(input, this.len);
    this.len += input.length;
    const W = this.width;
    const out = new Float32Array(Math.max(0, Math.ceil((this.len - W - this.pos) / this.step) + 1));
    let n = 0;
    while (this.pos + W < this.len) {
      const c = Math.floor(this.pos);
      let acc = 0;
      for (let i = c - W + 1; i <= c + W; i++) acc += this.buf[i] * this.kernel(i - this.pos);
      out[n++] = acc;
      this.pos += this.step;
    }
    // Forget input that no future output can reach (keep W samples of left context).
    const drop = Math.floor(this.pos) - W;
    if (drop > 0) {
      this.buf.copyWithin(0, drop, this.len);
      this.len -= drop;
      this.pos -= drop;
    }
    return out.subarray(0, n);
  }
}

function rms(sumSq, count) {
  return count > 0 ? Math.sqrt(sumSq / count) : 0;
}

class CaptureProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.resampler = new Resampler(sampleRate, MODEL_RATE);
    this.chunk = new Float32Array(MODEL_RATE / 50); // 20 ms: one Opus frame
    this.filled = 0;
    this.produced = 0; // 24 kHz samples posted so far
    this.startFrame = -1; // context frame of the first input sample
    this.muted = false; // muted: the chunks carry silence (the stream keeps its pace)
    this.sumSq = 0;
    this.count = 0;
    this.port.onmessage = (e) => { if (e.data.type === 'mute') this.muted = !!e.data.muted; };
  }

  process(inputs) {
    const channels = inputs[0];
    if (!channels || channels.length === 0) return true; // not connected (yet)
    if (this.startFrame < 0) this.startFrame = currentFrame;
    const frames = channels[0].length;
    const mono = new Float32Array(frames);
    for (const ch of channels) for (let i = 0; i < frames; i++) mono[i] += ch[i] / channels.length;
    for (let i = 0; i < frames; i++) this.sumSq += mono[i] * mono[i];
    this.count += frames;
    if (this.count >= sampleRate / 20) { // a level reading every 50 ms
      this.port.postMessage({ type: 'level', rms: rms(this.sumSq, this.count) });
      this.sumSq = 0;
      this.count = 0;
    }
    if (this.muted) mono.fill(0);
    const out = this.resampler.process(mono);
    for (let i = 0; i < out.length; i++) {
      this.chunk[this.filled++] = out[i];
      if (this.filled === this.chunk.length) {
        // Output sample k sits at input sample k·(inRate/24000) (the filter's delay, under a
        // millisecond, is left out).
        const at = this.startFrame + (this.produced * sampleRate) / MODEL_RATE;
        this.produced += this.chunk.length;
        this.port.postMessage({ type: 'pcm', samples: this.chunk, at }, [this.chunk.buffer]); // detaches it
        this.chunk = new Float32Array(MODEL_RATE / 50);
        this.filled = 0;
      }
    }
    return true;
  }
}

// Jitter buffer. Decoded audio arrives in bursts (one 80 ms message per model step, at the network's
// whim); the audio thread drains it 128 samples at a time. Policy:
//   - buffering: output silence until START_S of audio is queued, then play;
//   - playing: if the queue runs dry mid-quantum that is an underrun: count it, pad with silence and go
//     back to buffering (so one late message costs one gap, not a stutter per quantum);
//   - more than MAX_S queued (the network delivered a burst, or playback fell behind): drop the oldest
//     audio down to START_S, so latency stays bounded instead of growing for the rest of the call.
const START_S = 0.1;
const MAX_S = 0.4;
class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.queue = []; // Float32Arrays at the context rate
    this.head = 0; // read offset into queue[0]
    this.queued = 0; // samples queued in total
    this.playing = false;
    this.resamplers = new Map(); // input rate → Resampler
    this.played = 0;
    this.underruns = 0;
    this.dropped = 0;
    this.sumSq = 0;
    this.count = 0;
    // Recording what was played (off until the page asks): the output, back at 24 kHz.
    this.record = null; // { resampler, startFrame, produced, pending: [Float32Array] }
    this.port.onmessage = (e) => this.onMessage(e.data);
  }

  onMessage(msg) {
    if (msg.type === 'record') {
      this.record = msg.on ? { resampler: new Resampler(sampleRate, MODEL_RATE), startFrame: -1, produced: 0, pending: [] } : null;
      return;
    }
    if (msg.type === 'reset') {
      this.queue = [];
      this.head = 0;
      this.queued = 0;
      this.playing = false;
      this.resamplers.clear();
      return;
    }
    if (msg.type !== 'pcm') return;
    let rs = this.resamplers.get(msg.sampleRate);
    if (!rs) this.resamplers.set(msg.sampleRate, rs = new Resampler(msg.sampleRate, sampleRate));
    const samples = rs.process(msg.samples);
    if (samples.length === 0) return;
    this.queue.push(samples);
    this.queued += samples.length;
    if (this.queued > MAX_S * sampleRate) {
      let excess = this.queued - Math.round(START_S * sampleRate);
      while (excess > 0 && this.queue.length > 0) {
        const take = Math.min(excess, this.queue[0].length - this.head);
        this.head += take;
        this.queued -= take;
        this.dropped += take;
        excess -= take;
        if (this.head === this.queue[0].length) {
          this.queue.shift();
          this.head = 0;
        }
      }
    }
  }

  process(_inputs, outputs) {
    const out = outputs[0];
    const frames = out[0].length;
    const dst = out[0];
    dst.fill(0);
    if (!this.playing && this.queued >= START_S * sampleRate) this.playing = true;
    if (this.playing) {
      let n = 0;
      while (n < frames && this.queue.length > 0) {
        const src = this.queue[0];
        const take = Math.min(frames - n, src.length - this.head);
        dst.set(src.subarray(this.head, this.head + take), n);
        n += take;
        this.head += take;
        if (this.head === src.length) {
          this.queue.shift();
          this.head = 0;
        }
      }
      this.queued -= n;
      this.played += n;
      if (n < frames) {
        this.underruns++;
        this.playing = false;
      }
    }
    for (let c = 1; c < out.length; c++) out[c].set(dst);
    for (let i = 0; i < frames; i++) this.sumSq += dst[i] * dst[i];
    this.count += frames;
    const rec = this.record;
    if (rec) {
      if (rec.startFrame < 0) rec.startFrame = currentFrame;
      const r = rec.resampler.process(dst);
      if (r.length > 0) rec.pending.push(Float32Array.from(r));
    }
    if (this.count >= sampleRate / 10) { // stats every 100 ms
      const msg = {
        type: 'stats', playedSamples: this.played, underruns: this.underruns, droppedSamples: this.dropped,
        bufferedMs: 1000 * this.queued / sampleRate, rms: rms(this.sumSq, this.count),
      };
      const transfer = [];
      if (rec && rec.pending.length > 0) {
        const n = rec.pending.reduce((s, p) => s + p.length, 0);
        const played = new Float32Array(n);
        let off = 0;
        for (const p of rec.pending) { played.set(p, off); off += p.length; }
        msg.played = played;
        msg.playedAt = rec.startFrame + (rec.produced * sampleRate) / MODEL_RATE;
        rec.produced += n;
        rec.pending = [];
        transfer.push(played.buffer);
      }
      this.port.postMessage(msg, transfer);
      this.sumSq = 0;
      this.count = 0;
    }
    return true;
  }
}

registerProcessor('moshi-capture', CaptureProcessor);
registerProcessor('moshi-playback', PlaybackProcessor);
