// Moshi web client: Kyutai's WebSocket protocol on /api/chat (see docs/protocol.md).
// Microphone → AudioWorklet (24 kHz) → WebCodecs Opus encoder → our Ogg muxer → type-1 messages;
// type-1 messages → our Ogg demuxer → WebCodecs Opus decoder → playback AudioWorklet (jitter buffer).
'use strict';

const MSG = { HANDSHAKE: 0, AUDIO: 1, TEXT: 2, CONTROL: 3, METADATA: 4, ERROR: 5, PING: 6 };
const RATE = 24000; // the model's sample rate
const SETTINGS = { // query parameters of /api/chat and their defaults ('' = omitted: server picks)
  text_temperature: '0.7', text_topk: '25', audio_temperature: '0.8', audio_topk: '250',
  text_seed: '', audio_seed: '', pad_mult: '0', repetition_penalty: '1.0', repetition_penalty_context: '64',
};

// Machine-readable status (the browser test polls it); mirrored as data- attributes on #status.
const status = window.moshiStatus = {
  state: 'idle', handshake: false, sentAudioMessages: 0, receivedAudioMessages: 0, decodedFrames: 0,
  playedSamples: 0, transcript: '', errors: [], messagesSent: 0, messagesReceived: 0, bytesSent: 0,
  bytesReceived: 0, encodedPackets: 0, textMessages: 0, underruns: 0, droppedSamples: 0, bufferedMs: 0,
  micRms: 0, outRms: 0, contextRate: 0, closeCode: null, metadata: null,
};
let conn = null; // everything that belongs to one connection

const $ = (id) => document.getElementById(id);
function setState(s) { status.state = s; render(); }
function fail(text) {
  status.errors.push(String(text));
  setState('error');
}

// ---------------------------------------------------------------- Ogg (RFC 3533) ------------------
// Page CRC: CRC-32 with polynomial 0x04c11db7, initial value 0, no bit reflection, no final xor,
// computed over the whole page with its CRC field set to zero. (Not zlib's reflected CRC-32.)
const CRC_TABLE = new Uint32Array(256);
for (let i = 0; i < 256; i++) {
  let r = i << 24;
  for (let k = 0; k < 8; k++) r = (r & 0x80000000) ? (r << 1) ^ 0x04c11db7 : r << 1;
  CRC_TABLE[i] = r >>> 0;
}
function oggCrc(bytes) {
  let crc = 0;
  for (let i = 0; i < bytes.length; i++) crc = ((crc << 8) ^ CRC_TABLE[((crc >>> 24) ^ bytes[i]) & 0xff]) >>> 0;
  return crc;
}

// Page layout: "OggS", version 0, header type (1 continued, 2 BOS, 4 EOS), granule position i64 LE,
// stream serial u32, page sequence u32, CRC u32, segment count, segment table, then the packets.
// Each packet is laced as floor(len/255) segments of 255 plus one segment of len % 255 (0 when the
// packet is a multiple of 255 long), which is what marks where it ends.
function oggPage(flags, granule, serial, seq, packets) {
  const lacing = [];
  for (const p of packets) {
    for (let n = p.length; ; n -= 255) {
      lacing.push(Math.min(n, 255));
      if (n < 255) break;
    }
  }
  if (lacing.length > 255) throw new Error('Ogg page too large');
  const bodyLen = packets.reduce((s, p) => s + p.length, 0);
  const page = new Uint8Array(27 + lacing.length + bodyLen);
  const v = new DataView(page.buffer);
  page.set([0x4f, 0x67, 0x67, 0x53, 0, flags]);
  v.setUint32(6, granule % 0x100000000, true);
  v.setUint32(10, Math.floor(granule / 0x100000000), true);
  v.setUint32(14, serial, true);
  v.setUint32(18, seq, true);
  page[26] = lacing.length;
  page.set(lacing, 27);
  let off = 27 + lacing.length;
  for (const p of packets) { page.set(p, off); off += p.length; }
  v.setUint32(22, oggCrc(page), true);
  return page;
}

// Ogg Opus writer as Kyutai's web client lays it out: OpusHead alone on the BOS page, OpusTags on
// page 1, then two 20 ms packets per page. Granules count 48 kHz samples of all packets so far.
class OggOpusWriter {
  constructor(emit) {
    this.emit = emit; // called with each finished page
    this.serial = (Math.random() * 0xffffffff) >>> 0;
    this.seq = 0;
    this.granule = 0;
    this.pending = [];
    const head = new Uint8Array(19);
    const hv = new DataView(head.buffer);
    head.set(new TextEncoder().encode('OpusHead'));
    head[8] = 1; // version
    head[9] = 1; // channels
    hv.setUint16(10, 3840, true); // pre-skip (48 kHz samples), as Kyutai's client writes
    hv.setUint32(12, RATE, true); // input sample rate (informational)
    hv.setInt16(16, 0, true); // output gain
    head[18] = 0; // channel mapping family
    const vendor = new TextEncoder().encode('moshi-rs web');
    const tags = new Uint8Array(8 + 4 + vendor.length + 4);
    tags.set(new TextEncoder().encode('OpusTags'));
    new DataView(tags.buffer).setUint32(8, vendor.length, true);
    tags.set(vendor, 12); // then a zero user-comment count
    this.emit(oggPage(2, 0, this.serial, this.seq++, [head]));
    this.emit(oggPage(0, 0, this.serial, this.seq++, [tags]));
  }

  packet(data, samples48k) {
    this.pending.push(data);
    this.granule += samples48k;
    if (this.pending.length === 2) this.flush();
  }

  flush() {
    if (this.pending.length === 0) return;
    this.emit(oggPage(0, this.granule, this.serial, this.seq++, this.pending));
    this.pending = [];
  }
}

// Incremental Ogg reader over the concatenation of all received audio payloads (message boundaries
// need not match page boundaries). Resynchronises on "OggS" after garbage or a CRC mismatch; packets
// spanning pages are reassembled. Calls onPacket(bytes, bos) for each complete packet.
class OggReader {
  constructor(onPacket) {
    this.onPacket = onPacket;
    this.buf = new Uint8Array(0);
    this.partial = null; // bytes of a packet continued on the next page
    this.crcErrors = 0;
  }

  push(bytes) {
    const joined = new Uint8Array(this.buf.length + bytes.length);
    joined.set(this.buf);
    joined.set(bytes, this.buf.length);
    let off = 0;
    for (;;) {
      while (off + 4 <= joined.length && !(joined[off] === 0x4f && joined[off + 1] === 0x67 &&
        joined[off + 2] === 0x67 && joined[off + 3] === 0x53)) off++;
      if (off + 27 > joined.length) break;
      const nseg = joined[off + 26];
      if (off + 27 + nseg > joined.length) break;
      const lacing = joined.subarray(off + 27, off + 27 + nseg);
      const bodyLen = lacing.reduce((s, x) => s + x, 0);
      const end = off + 27 + nseg + bodyLen;
      if (end > joined.length) break;
      const page = joined.slice(off, end);
      const v = new DataView(page.buffer);
      const crc = v.getUint32(22, true);
      v.setUint32(22, 0, true);
      if (oggCrc(page) !== crc) { this.crcErrors++; off++; continue; }
      this.readPage(page, lacing);
      off = end;
    }
    this.buf = joined.slice(Math.min(off, joined.length));
  }

  readPage(page, lacing) {
    const flags = page[5];
    const bos = (flags & 2) !== 0;
    if (bos || !(flags & 1)) this.partial = null; // a new stream, or a page that continues nothing
    let pos = 27 + lacing.length;
    let start = pos;
    for (const seg of lacing) {
      pos += seg;
      if (seg < 255) {
        let p = page.subarray(start, pos);
        if (this.partial) { p = concat(this.partial, p); this.partial = null; }
        this.onPacket(p, bos);
        start = pos;
      }
    }
    if (start < pos) this.partial = concat(this.partial || new Uint8Array(0), page.subarray(start, pos));
  }
}

function concat(a, b) {
  const r = new Uint8Array(a.length + b.length);
  r.set(a);
  r.set(b, a.length);
  return r;
}
function startsWith(bytes, ascii) {
  if (bytes.length < ascii.length) return false;
  for (let i = 0; i < ascii.length; i++) if (bytes[i] !== ascii.charCodeAt(i)) return false;
  return true;
}

// ---------------------------------------------------------------- connection ---------------------
function chatUrl() {
  const params = new URLSearchParams();
  for (const name of Object.keys(SETTINGS)) {
    const value = $(name).value.trim();
    if (value !== '') params.set(name, value);
  }
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
  return `${proto}//${location.host}/api/chat?${params}`;
}

function send(type, payload) {
  if (!conn || !conn.ws || conn.ws.readyState !== WebSocket.OPEN) return;
  const msg = new Uint8Array(1 + payload.length);
  msg[0] = type;
  msg.set(payload, 1);
  conn.ws.send(msg);
  status.messagesSent++;
  status.bytesSent += msg.length;
  if (type === MSG.AUDIO) status.sentAudioMessages++;
}

async function connect() {
  if (conn) return;
  Object.assign(status, {
    handshake: false, sentAudioMessages: 0, receivedAudioMessages: 0, decodedFrames: 0, playedSamples: 0,
    transcript: '', errors: [], messagesSent: 0, messagesReceived: 0, bytesSent: 0, bytesReceived: 0,
    encodedPackets: 0, textMessages: 0, underruns: 0, droppedSamples: 0, closeCode: null, metadata: null,
  });
  $('transcript').textContent = '';
  $('metadata').textContent = '';
  const c = conn = { pendingPages: [] };
  setState('connecting');
  try {
    if (!window.AudioEncoder || !window.AudioDecoder) throw new Error('this browser lacks WebCodecs (AudioEncoder/AudioDecoder)');
    if (!navigator.mediaDevices) throw new Error('no microphone access here: open the page on localhost or over HTTPS');
    await setupAudio(c);
    if (conn !== c) return; // disconnected meanwhile
    c.ws = new WebSocket(chatUrl());
  } catch (e) {
    if (conn === c) { teardown(); fail(e.message || e); }
    return;
  }
  c.ws.binaryType = 'arraybuffer';
  c.ws.onopen = () => { if (conn === c) setState('waiting for handshake'); };
  c.ws.onmessage = (e) => { if (conn === c) onMessage(new Uint8Array(e.data)); };
  c.ws.onerror = () => { if (conn === c) status.errors.push('WebSocket error'); };
  c.ws.onclose = (e) => {
    if (conn !== c) return;
    status.closeCode = e.code;
    if (e.code !== 1000 && e.reason) status.errors.push(`closed by the server: ${e.reason}`);
    const hadError = status.state === 'error' || status.errors.length > 0;
    teardown();
    setState(hadError ? 'error' : 'closed');
  };
}

function disconnect() {
  if (!conn) return;
  teardown();
  setState('closed');
}

function teardown() {
  const c = conn;
  conn = null;
  if (!c) return;
  if (c.ws && c.ws.readyState <= WebSocket.OPEN) c.ws.close(1000);
  if (c.stream) for (const t of c.stream.getTracks()) t.stop();
  for (const codec of [c.encoder, c.decoder]) if (codec && codec.state !== 'closed') codec.close();
  if (c.ctx) c.ctx.close();
}

function onMessage(msg) {
  status.messagesReceived++;
  status.bytesReceived += msg.length;
  if (msg.length === 0) return;
  const payload = msg.subarray(1);
  switch (msg[0]) {
    case MSG.HANDSHAKE: // payload (protocol and model versions, or nothing) is not needed
      status.handshake = true;
      setState('live');
      for (const page of conn.pendingPages) send(MSG.AUDIO, page);
      conn.pendingPages = [];
      break;
    case MSG.AUDIO:
      status.receivedAudioMessages++;
      conn.reader.push(payload);
      break;
    case MSG.TEXT: {
      const piece = new TextDecoder().decode(payload); // pieces carry their own leading spaces
      status.textMessages++;
      status.transcript += piece;
      $('transcript').append(piece);
      break;
    }
    case MSG.METADATA:
      try {
        status.metadata = JSON.parse(new TextDecoder().decode(payload));
        $('metadata').textContent = JSON.stringify(status.metadata, null, 2);
      } catch (e) {
        console.warn('unparsable metadata', e);
      }
      break;
    case MSG.ERROR:
      fail(new TextDecoder().decode(payload));
      break;
    default: // ping and types this page does not know: ignored
      break;
  }
}

// ---------------------------------------------------------------- audio --------------------------
async function setupAudio(c) {
  c.ctx = new AudioContext({ latencyHint: 'interactive' });
  status.contextRate = c.ctx.sampleRate;
  await c.ctx.audioWorklet.addModule('worklet.js');
  c.stream = await navigator.mediaDevices.getUserMedia({
    audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
  });
  if (c.ctx.state === 'suspended') await c.ctx.resume();

  // Encoder: 24 kHz mono f32 chunks → 20 ms Opus packets → Ogg pages, sent once the handshake is in.
  c.samplesIn = 0;
  c.writer = new OggOpusWriter((page) => {
    if (status.handshake) send(MSG.AUDIO, page); else c.pendingPages.push(page);
  });
  c.encoder = new AudioEncoder({
    output: (chunk) => {
      const data = new Uint8Array(chunk.byteLength);
      chunk.copyTo(data);
      status.encodedPackets++;
      c.writer.packet(data, Math.round(chunk.duration * 48000 / 1e6) || 960);
    },
    error: (e) => fail(`Opus encoder: ${e.message}`),
  });
  c.encoder.configure({
    codec: 'opus', sampleRate: RATE, numberOfChannels: 1, bitrate: 32000,
    opus: { frameDuration: 20000, format: 'opus' },
  });

  const capture = new AudioWorkletNode(c.ctx, 'moshi-capture', { numberOfInputs: 1, numberOfOutputs: 0 });
  capture.port.onmessage = (e) => {
    const m = e.data;
    if (m.type === 'level') status.micRms = m.rms;
    // Before the handshake the microphone only drives the level meter: the model should hear
    // what is said once it is listening, not a backlog.
    if (m.type !== 'pcm' || !status.handshake || c.encoder.state !== 'configured') return;
    c.encoder.encode(new AudioData({
      format: 'f32', sampleRate: RATE, numberOfChannels: 1, numberOfFrames: m.samples.length,
      timestamp: Math.round(c.samplesIn * 1e6 / RATE), data: m.samples,
    }));
    c.samplesIn += m.samples.length;
  };
  c.ctx.createMediaStreamSource(c.stream).connect(capture);

  c.playback = new AudioWorkletNode(c.ctx, 'moshi-playback', { numberOfInputs: 0, outputChannelCount: [1] });
  c.playback.port.onmessage = (e) => {
    const m = e.data;
    Object.assign(status, {
      playedSamples: m.playedSamples, underruns: m.underruns, droppedSamples: m.droppedSamples,
      bufferedMs: m.bufferedMs, outRms: m.rms,
    });
  };
  c.playback.connect(c.ctx.destination);

  // Decoder: configured when the stream's OpusHead arrives (each BOS page starts a new stream).
  c.decodedAt = 0;
  c.reader = new OggReader((packet, bos) => {
    if (startsWith(packet, 'OpusHead')) { makeDecoder(c); return; }
    if (startsWith(packet, 'OpusTags') || !c.decoder || c.decoder.state !== 'configured') return;
    c.decoder.decode(new EncodedAudioChunk({ type: 'key', timestamp: c.decodedAt, data: packet }));
    c.decodedAt += 40000; // nominal; the decoder reports real durations
  });
}

function makeDecoder(c) {
  if (c.decoder && c.decoder.state !== 'closed') c.decoder.close();
  c.decoder = new AudioDecoder({
    output: (audio) => {
      const samples = new Float32Array(audio.numberOfFrames);
      audio.copyTo(samples, { planeIndex: 0, format: 'f32-planar' });
      c.playback.port.postMessage({ type: 'pcm', sampleRate: audio.sampleRate, samples }, [samples.buffer]);
      audio.close();
      status.decodedFrames++;
    },
    error: (e) => { // a decoder that failed is closed: note it and start afresh on the next packet
      status.errors.push(`Opus decoder: ${e.message}`);
      if (conn === c) makeDecoder(c);
    },
  });
  c.decoder.configure({ codec: 'opus', sampleRate: RATE, numberOfChannels: 1 });
  c.playback.port.postMessage({ type: 'reset' });
}

// ---------------------------------------------------------------- page ---------------------------
const COUNTERS = [
  ['messagesSent', 'messages sent'], ['bytesSent', 'bytes sent'], ['sentAudioMessages', 'audio messages sent'],
  ['encodedPackets', 'Opus packets encoded'], ['messagesReceived', 'messages received'],
  ['bytesReceived', 'bytes received'], ['receivedAudioMessages', 'audio messages received'],
  ['decodedFrames', 'audio frames decoded (Opus packets)'], ['playedFrames', 'audio frames played (80 ms)'],
  ['underruns', 'underruns'], ['droppedSamples', 'samples dropped (late)'], ['bufferedMs', 'buffered (ms)'],
  ['textMessages', 'text pieces'],
];

function render() {
  const playedFrames = status.contextRate ? Math.floor(status.playedSamples / (0.08 * status.contextRate)) : 0;
  const el = $('status');
  el.textContent = status.state + (status.errors.length ? `: ${status.errors[status.errors.length - 1]}` : '');
  el.className = `state-${status.state.replace(/ /g, '-')}`;
  for (const [key, value] of Object.entries(status)) {
    if (key === 'metadata') continue;
    el.dataset[key] = typeof value === 'object' ? JSON.stringify(value) : String(value);
  }
  for (const [key] of COUNTERS) {
    const value = key === 'playedFrames' ? playedFrames : status[key];
    $(`c-${key}`).textContent = key === 'bufferedMs' ? value.toFixed(0) : value;
  }
  $('errors').textContent = status.errors.join('\n');
  meter('mic-level', status.micRms);
  meter('out-level', status.outRms);
  const busy = conn !== null;
  $('connect').textContent = busy ? 'Disconnect' : 'Connect';
  for (const name of Object.keys(SETTINGS)) $(name).disabled = busy;
}

// RMS → a 0..1 bar on a dB scale (−60 dBFS empty, 0 dBFS full).
function meter(id, value) {
  const db = 20 * Math.log10(Math.max(value, 1e-6));
  $(id).style.width = `${Math.max(0, Math.min(100, (db + 60) * 100 / 60))}%`;
}

function init() {
  const query = new URLSearchParams(location.search);
  for (const [name, def] of Object.entries(SETTINGS)) $(name).value = query.get(name) ?? def;
  const table = $('counters');
  for (const [key, label] of COUNTERS) {
    const row = table.insertRow();
    row.insertCell().textContent = label;
    row.insertCell().id = `c-${key}`;
  }
  $('connect').onclick = () => (conn ? disconnect() : connect());
  $('settings').onsubmit = (e) => e.preventDefault();
  render();
  setInterval(render, 100);
  if (query.get('autoconnect') === '1') connect();
}

init();
