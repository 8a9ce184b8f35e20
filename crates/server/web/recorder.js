// The conversation as a stereo WAV (an ES module): left = what the user sent (silence while
// muted), right = what was played of Moshi (after the jitter buffer: gaps and drops included),
// both at 24 kHz, 16-bit, on one timeline. The worklets stamp each piece of audio with the
// AudioContext frame of its first sample; sample 0 of the file is the frame given to start().

const RATE = 24000;
const CHANNELS = 2;

export class Recorder {
  constructor(contextRate, startFrame, maxSeconds = 30 * 60) {
    this.contextRate = contextRate;
    this.startFrame = startFrame;
    this.maxSamples = Math.round(maxSeconds * RATE);
    this.tracks = [[], []]; // per channel: { start (24 kHz sample index), data: Int16Array }
    this.length = 0; // samples per channel covered so far
    this.truncated = false; // true once maxSeconds was reached (later audio is not kept)
  }

  get seconds() {
    return this.length / RATE;
  }

  /// Add 24 kHz samples of `channel` (0 user, 1 Moshi) whose first sample is context frame `at`.
  add(channel, at, samples) {
    let start = Math.round(((at - this.startFrame) * RATE) / this.contextRate);
    let from = 0;
    if (start < 0) { from = -start; start = 0; } // before the conversation started
    let n = samples.length - from;
    if (start + n > this.maxSamples) { n = this.maxSamples - start; this.truncated = true; }
    if (n <= 0) return;
    const data = new Int16Array(n);
    for (let i = 0; i < n; i++) {
      const x = Math.max(-1, Math.min(1, samples[from + i]));
      data[i] = Math.round(x * 32767);
    }
    this.tracks[channel].push({ start, data });
    this.length = Math.max(this.length, start + n);
  }

  /// The recording so far as a WAV Blob (RIFF, PCM 16-bit, interleaved left/right).
  wav() {
    const frames = this.length;
    const bytes = new ArrayBuffer(44 + frames * CHANNELS * 2);
    const v = new DataView(bytes);
    const ascii = (off, s) => { for (let i = 0; i < s.length; i++) v.setUint8(off + i, s.charCodeAt(i)); };
    ascii(0, 'RIFF');
    v.setUint32(4, 36 + frames * CHANNELS * 2, true);
    ascii(8, 'WAVE');
    ascii(12, 'fmt ');
    v.setUint32(16, 16, true); // fmt chunk size
    v.setUint16(20, 1, true); // PCM
    v.setUint16(22, CHANNELS, true);
    v.setUint32(24, RATE, true);
    v.setUint32(28, RATE * CHANNELS * 2, true); // byte rate
    v.setUint16(32, CHANNELS * 2, true); // block align
    v.setUint16(34, 16, true); // bits per sample
    ascii(36, 'data');
    v.setUint32(40, frames * CHANNELS * 2, true);
    const pcm = new Int16Array(bytes, 44); // little-endian on every platform browsers run on
    for (let ch = 0; ch < CHANNELS; ch++) {
      for (const { start, data } of this.tracks[ch]) {
        for (let i = 0; i < data.length; i++) pcm[(start + i) * CHANNELS + ch] = data[i];
      }
    }
    return new Blob([bytes], { type: 'audio/wav' });
  }
}
