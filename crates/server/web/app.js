// Moshi web client: Kyutai's WebSocket protocol on /api/chat (see docs/protocol.md).
// Microphone → AudioWorklet (24 kHz) → WebCodecs Opus encoder → our Ogg muxer → type-1 messages;
// type-1 messages → our Ogg demuxer → WebCodecs Opus decoder → playback AudioWorklet (jitter buffer).
// The sampling form starts from the server's defaults (GET /api/info); only what differs is sent.
import { OggOpusWriter, OggReader, startsWith } from './ogg.js';
import { Recorder } from './recorder.js';

const MSG = { HANDSHAKE: 0, AUDIO: 1, TEXT: 2, CONTROL: 3, METADATA: 4, ERROR: 5, PING: 6 };
const RATE = 24000; // the model's sample rate
const ENCODER_CONFIG = {
  codec: 'opus', sampleRate: RATE, numberOfChannels: 1, bitrate: 32000,
  opus: { frameDuration: 20000, format: 'opus' },
};
const DECODER_CONFIG = { codec: 'opus', sampleRate: RATE, numberOfChannels: 1 };
// Query parameters of /api/chat. Sampling defaults come from the server; these stand in only when
// /api/info cannot be read (Kyutai's web client's values). The rest are neutral values the server
// accepts (and reports as ignored when changed); '' = omitted.
const FALLBACK = { text_temperature: '0.7', text_topk: '25', audio_temperature: '0.8', audio_topk: '250' };
const NEUTRAL = { text_seed: '', audio_seed: '', pad_mult: '0', repetition_penalty: '1.0', repetition_penalty_context: '64' };
const SETTINGS = [...Object.keys(FALLBACK), ...Object.keys(NEUTRAL)];
const STREAMS = { text: ['text_temperature', 'text_topk'], audio: ['audio_temperature', 'audio_topk'] };
const SPEAKING_RMS = 0.01; // −40 dBFS of Moshi's output: speaking
const SPEAKING_HOLD_MS = 400;

// Machine-readable status (the browser tests poll it); scalars mirrored as data- attributes on #status.
const status = window.moshiStatus = {
  state: 'idle', handshake: false, sentAudioMessages: 0, receivedAudioMessages: 0, decodedFrames: 0,
  playedSamples: 0, transcript: '', errors: [], messagesSent: 0, messagesReceived: 0, bytesSent: 0,
  bytesReceived: 0, encodedPackets: 0, textMessages: 0, underruns: 0, droppedSamples: 0, bufferedMs: 0,
  micRms: 0, sentRms: 0, outRms: 0, contextRate: 0, closeCode: null, metadata: null,
  info: null, defaults: null, chatQuery: null, model: '', tinyModel: false, session: null, voices: null,
  muted: false, speaking: false, speakingEpisodes: 0, recordedSeconds: 0, downloads: 0, lastDownload: null,
  message: '', messageKind: '', secure: window.isSecureContext, webcodecs: 'checking',
};
let conn = null; // everything that belongs to one connection
let lastRecording = null; // the Recorder of the latest conversation (kept after it ends)
let defaults = { ...FALLBACK, ...NEUTRAL }; // what the server does when a parameter is omitted
let ready = null; // resolves once the server's defaults are in the form

const $ = (id) => document.getElementById(id);
// The server's API key, when it has keys: given to the page as /?auth_id=KEY.
const AUTH_ID = new URLSearchParams(location.search).get('auth_id') || '';
function setState(s) { status.state = s; render(); }
function say(kind, text) { status.messageKind = kind; status.message = text; render(); }
function fail(text) {
  status.errors.push(String(text));
  say('bad', String(text));
  setState('error');
}

// ---------------------------------------------------------------- server defaults ----------------
async function loadInfo() {
  try {
    const r = await fetch('api/info', { cache: 'no-store', headers: AUTH_ID ? { 'kyutai-api-key': AUTH_ID } : {} });
    if (r.status === 401) throw new Error('HTTP 401: this server needs an API key; open the page as /?auth_id=YOUR_KEY');
    if (!r.ok) throw new Error(`HTTP ${r.status}`);
    const info = status.info = await r.json();
    for (const [stream, [t, k]] of Object.entries(STREAMS)) {
      defaults[t] = String(info[stream].greedy ? 0 : info[stream].temperature);
      defaults[k] = String(info[stream].top_k);
    }
    status.model = String(info.model || '');
    if (info.prompts) await loadVoices();
  } catch (e) {
    $('defaults-note').textContent = `The server's defaults could not be read (/api/info: ${e.message}); the form shows ` +
      "Kyutai's. Only values that differ from them are sent.";
  }
  status.defaults = { ...defaults };
  const query = new URLSearchParams(location.search);
  for (const name of SETTINGS) {
    const input = $(name);
    input.value = query.get(name) ?? defaults[name];
    if (defaults[name] !== '') input.placeholder = defaults[name];
    input.title = defaults[name] === '' ? 'omitted unless set' : `server default: ${defaults[name]}`;
  }
  showModel(status.model);
}

// PersonaPlex: the persona box and the voice picker, filled from GET /api/voices (the server's
// --voice-prompt-dir presets). Shown only for a model that takes prompts; a role or voice given in
// the page's URL (?text_prompt=…&voice_prompt=…) starts the form.
async function loadVoices() {
  const query = new URLSearchParams(location.search);
  const pick = $('voice_prompt');
  $('persona').hidden = false;
  $('text_prompt').value = query.get('text_prompt') ?? '';
  try {
    const r = await fetch('api/voices', { cache: 'no-store', headers: AUTH_ID ? { 'kyutai-api-key': AUTH_ID } : {} });
    if (!r.ok) throw new Error(`HTTP ${r.status}: ${await r.text()}`);
    const { voices } = await r.json();
    status.voices = voices;
    for (const name of voices) pick.add(new Option(name.replace(/\.pt$/i, ''), name));
    $('voices-note').textContent = voices.length ? '' : 'This server has no preset voices (serve --voice-prompt-dir).';
  } catch (e) {
    $('voices-note').textContent = `The server's voices could not be read (/api/voices: ${e.message}).`;
  }
  const wanted = query.get('voice_prompt');
  if (wanted) {
    const match = [...pick.options].find((o) => o.value === wanted || o.value.replace(/\.pt$/i, '') === wanted);
    if (!match) pick.add(new Option(wanted, wanted));
    pick.value = match ? match.value : wanted;
  }
}

function sameValue(a, b) {
  a = a.trim(); b = b.trim();
  return a === b || (a !== '' && b !== '' && Number(a) === Number(b));
}

// The query string: the parameters whose value differs from the server's default. A stream's
// temperature and top-k travel together (the server fills an omitted one from its defaults, which
// for a greedy default would be top-k 1).
function chatQuery() {
  const params = new URLSearchParams();
  const changed = (name) => !sameValue($(name).value, defaults[name]);
  for (const [t, k] of Object.values(STREAMS)) {
    if (changed(t) || changed(k)) for (const name of [t, k]) params.set(name, $(name).value.trim());
  }
  for (const name of Object.keys(NEUTRAL)) if (changed(name) && $(name).value.trim() !== '') params.set(name, $(name).value.trim());
  if (!$('persona').hidden) {
    // PersonaPlex's names; an empty role with no voice sends nothing (the model's own behaviour).
    const role = $('text_prompt').value.trim();
    const voice = $('voice_prompt').value;
    if (role !== '') params.set('text_prompt', role);
    if (voice !== '') params.set('voice_prompt', voice);
  }
  return params.toString();
}

function describeStream(t, k) {
  const temp = Number(t);
  if (!(temp > 0) || Number(k) === 1) return 'greedy';
  return `temperature ${t}, top-k ${k}`;
}

function showModel(name) {
  $('model').textContent = name ? `model: ${name}` : 'model: unknown';
  const tiny = status.tinyModel = /^tiny/i.test(name);
  const random = /^random/i.test(name);
  const note = $('model-note');
  note.hidden = !(tiny || random);
  if (tiny) {
    note.textContent = 'This server runs the embedded tiny model: random weights, kept as a correctness ' +
      'anchor for tests. It does not speak: expect noise and random text. For a conversation, start ' +
      'the server with a real checkpoint, e.g. moshi-rs serve --model kyutai/moshiko-pytorch-bf16.';
  } else if (random) {
    note.textContent = 'This server runs a full-size model with random weights (for benchmarks). It does not ' +
      'speak: expect noise and random text.';
  }
}

// ---------------------------------------------------------------- browser support ----------------
async function checkSupport() {
  if (!window.isSecureContext) {
    const port = location.port || (location.protocol === 'https:' ? '443' : '80');
    showSupport(`This page was opened over plain HTTP from ${location.hostname}, and browsers allow the ` +
      'microphone (and WebCodecs) only on HTTPS pages or on localhost. Open it as ' +
      `http://localhost:${port}/ on the server's machine (from another machine: ssh -L ${port}:localhost:${port} ` +
      `<server>, then http://localhost:${port}/), or start moshi-rs serve with --cert and --key to serve HTTPS.`);
    status.webcodecs = 'insecure';
    return;
  }
  if (!window.AudioEncoder || !window.AudioDecoder || !window.AudioData || !window.EncodedAudioChunk) {
    status.webcodecs = 'missing';
    showSupport('This browser lacks WebCodecs audio (AudioEncoder/AudioDecoder), which this page needs to ' +
      'encode your microphone and decode Moshi as Opus. Use a current Chrome, Edge or Firefox (130 or later).');
    return;
  }
  try {
    const [enc, dec] = await Promise.all([
      AudioEncoder.isConfigSupported(ENCODER_CONFIG), AudioDecoder.isConfigSupported(DECODER_CONFIG),
    ]);
    const missing = [enc.supported ? null : 'AudioEncoder', dec.supported ? null : 'AudioDecoder'].filter(Boolean);
    if (missing.length === 0) { status.webcodecs = 'ok'; return; }
    status.webcodecs = 'no-opus';
    showSupport(`This browser has WebCodecs but its ${missing.join(' and ')} cannot handle Opus (codec "opus"), ` +
      'which this page needs. Use a current Chrome, Edge or Firefox (130 or later).');
  } catch (e) {
    status.webcodecs = 'no-opus';
    showSupport(`This browser could not say whether WebCodecs supports Opus (${e.message}).`);
  }
}

function showSupport(text) {
  $('support-note').textContent = text;
  $('support-note').hidden = false;
}

function micError(e) {
  switch (e && e.name) {
    case 'NotAllowedError':
    case 'SecurityError':
      return 'Microphone permission was denied, so Moshi cannot hear you. Allow the microphone for this ' +
        'page (the icon at the left of the address bar, or the site settings: Microphone → Allow), ' +
        'then press Connect again.';
    case 'NotFoundError':
    case 'OverconstrainedError':
      return 'No microphone was found. Connect one (or enable it in the system settings), then press Connect again.';
    case 'NotReadableError':
    case 'AbortError':
      return 'The microphone could not be opened: another application may hold it, or the system blocks ' +
        'the browser from it. Free it, then press Connect again.';
    default:
      return `The microphone could not be opened (${e && e.name}: ${e && e.message}).`;
  }
}

// ---------------------------------------------------------------- connection ---------------------
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
  const c = conn = { pendingPages: [], opened: false, live: false, serverError: null };
  Object.assign(status, {
    handshake: false, sentAudioMessages: 0, receivedAudioMessages: 0, decodedFrames: 0, playedSamples: 0,
    transcript: '', errors: [], messagesSent: 0, messagesReceived: 0, bytesSent: 0, bytesReceived: 0,
    encodedPackets: 0, textMessages: 0, underruns: 0, droppedSamples: 0, closeCode: null, metadata: null,
    session: null, chatQuery: null, message: '', messageKind: '', recordedSeconds: 0,
  });
  $('transcript').textContent = '';
  $('metadata').textContent = '';
  showSession(null);
  setState('connecting');
  try {
    await ready;
    if (status.webcodecs !== 'ok') throw new Error('This browser cannot hold the conversation here: see the note above.');
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error('This browser gives this page no microphone access (navigator.mediaDevices is missing).');
    }
    await setupAudio(c);
    if (conn !== c) return; // disconnected meanwhile
    status.chatQuery = chatQuery();
    const proto = location.protocol === 'https:' ? 'wss:' : 'ws:';
    // A key in the page's own URL (?auth_id=…) goes on to the WebSocket, in the query parameter
    // Kyutai's servers read (a browser cannot set headers on a WebSocket); not shown in chatQuery.
    const query = [status.chatQuery, AUTH_ID ? `auth_id=${encodeURIComponent(AUTH_ID)}` : ''].filter(Boolean).join('&');
    c.ws = new WebSocket(`${proto}//${location.host}/api/chat${query ? '?' : ''}${query}`);
  } catch (e) {
    if (conn !== c) return;
    teardown();
    if (e.unreachable) { // the server is gone: as a lost connection, with Reconnect
      status.errors.push(e.message);
      say('bad', `${e.message} Press Reconnect to try again.`);
      setState('lost');
    } else {
      fail(e.message || e);
    }
    return;
  }
  c.ws.binaryType = 'arraybuffer';
  c.ws.onopen = () => { if (conn === c) { c.opened = true; setState('waiting for handshake'); } };
  c.ws.onmessage = (e) => { if (conn === c) onMessage(c, new Uint8Array(e.data)); };
  c.ws.onerror = () => {}; // the close event that follows says more
  c.ws.onclose = (e) => { if (conn === c) onClose(c, e); };
}

function unreachable(detail) {
  const e = new Error(`Cannot reach the server at ${location.host} (${detail}): is moshi-rs serve still running?`);
  e.unreachable = true;
  return e;
}

// The socket closed without the user hanging up: say why, once, and offer to reconnect.
function onClose(c, e) {
  status.closeCode = e.code;
  teardown();
  if (c.serverError && !c.live) { // refused: the server's message is already in errors
    const full = e.code === 1013 || /capacity/i.test(c.serverError);
    say('bad', full ? `Server full: ${c.serverError}.` : c.serverError);
    setState('error');
    return;
  }
  let why;
  if (c.serverError) {
    why = `The server ended the conversation: ${c.serverError}.`;
  } else if (!c.opened) {
    why = `The conversation's WebSocket at ${location.host} did not open: the server is gone, or it refused ` +
      'the connection (its log says why, e.g. a page origin it does not allow).';
  } else if (e.code === 1006) {
    why = 'Connection lost: the server went away or the network dropped (no close message).';
  } else {
    why = `Connection lost: the server closed the connection (code ${e.code}${e.reason ? `: ${e.reason}` : ''}).`;
  }
  if (!c.serverError) status.errors.push(why);
  say('bad', `${why} Press Reconnect to ${c.live ? 'start a new conversation' : 'try again'}.`);
  setState('lost');
}

function disconnect() {
  if (!conn) return;
  teardown();
  say('', '');
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
  // The call is over: the meters and the speaking cue drop to zero (late worklet messages are ignored).
  Object.assign(status, { micRms: 0, sentRms: 0, outRms: 0, speaking: false, bufferedMs: 0 });
  if (c.recorder) status.recordedSeconds = c.recorder.seconds;
}

function onMessage(c, msg) {
  status.messagesReceived++;
  status.bytesReceived += msg.length;
  if (msg.length === 0) return;
  const payload = msg.subarray(1);
  switch (msg[0]) {
    case MSG.HANDSHAKE: // payload (protocol and model versions, or nothing) is not needed
      status.handshake = true;
      c.live = true;
      c.recorder = lastRecording = new Recorder(c.ctx.sampleRate, Math.round(c.ctx.currentTime * c.ctx.sampleRate));
      c.playback.port.postMessage({ type: 'record', on: true });
      setState('live');
      for (const page of c.pendingPages) send(MSG.AUDIO, page);
      c.pendingPages = [];
      break;
    case MSG.AUDIO:
      status.receivedAudioMessages++;
      c.reader.push(payload);
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
        showSession(status.metadata);
        if (!status.model && status.metadata.lm_model_file) showModel(status.model = String(status.metadata.lm_model_file));
      } catch (e) {
        console.warn('unparsable metadata', e);
      }
      break;
    case MSG.ERROR: { // the server closes right after: onClose says what it means
      const text = new TextDecoder().decode(payload);
      c.serverError = text;
      status.errors.push(text);
      break;
    }
    default: // ping and types this page does not know: ignored
      break;
  }
}

// The conversation's settings as the server's metadata message reports them; where the page asked
// for something else, both are shown.
function showSession(meta) {
  const table = $('session');
  table.textContent = '';
  if (!meta) {
    table.insertRow().insertCell().textContent = 'not connected';
    return;
  }
  const asked = new URLSearchParams(status.chatQuery || '');
  const session = status.session = {};
  const row = (label, text) => {
    const r = table.insertRow();
    r.insertCell().textContent = label;
    r.insertCell().textContent = text;
  };
  row('model', String(meta.lm_model_file ?? status.model));
  for (const [stream, [t, k]] of Object.entries(STREAMS)) {
    const value = { temperature: String(meta[t]), top_k: String(meta[k]) };
    let text = describeStream(value.temperature, value.top_k);
    const mismatch = [t, k].filter((name) => asked.has(name) && !sameValue(asked.get(name), String(meta[name])));
    if (mismatch.length > 0) {
      text += ` (the server reports this; the page asked for ${mismatch.map((n) => `${n}=${asked.get(n)}`).join(', ')})`;
    }
    session[stream] = { ...value, text };
    row(stream, text);
  }
  const seed = asked.get('text_seed') ?? asked.get('audio_seed');
  row('seed', seed ?? 'random');
  if (asked.has('text_prompt') || asked.has('voice_prompt')) {
    const role = asked.get('text_prompt') ?? '';
    session.persona = { role, voice: asked.get('voice_prompt') ?? '' };
    row('persona', `${role ? `“${role.length > 80 ? `${role.slice(0, 80)}…` : role}”` : 'no role'}, voice ${session.persona.voice || 'none'}`);
  }
  const ignored = meta.ignored_parameters || [];
  if (ignored.length > 0) row('ignored by the server', ignored.join(', '));
  session.ignored = ignored;
}

// ---------------------------------------------------------------- audio --------------------------
async function setupAudio(c) {
  c.ctx = new AudioContext({ latencyHint: 'interactive' });
  status.contextRate = c.ctx.sampleRate;
  try {
    await c.ctx.audioWorklet.addModule('worklet.js');
  } catch (e) {
    throw unreachable(`loading worklet.js failed: ${e.message}`);
  }
  try {
    c.stream = await navigator.mediaDevices.getUserMedia({
      audio: { echoCancellation: true, noiseSuppression: true, autoGainControl: true, channelCount: 1 },
    });
  } catch (e) {
    throw new Error(micError(e));
  }
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
  c.encoder.configure(ENCODER_CONFIG);

  c.capture = new AudioWorkletNode(c.ctx, 'moshi-capture', { numberOfInputs: 1, numberOfOutputs: 0 });
  c.capture.port.postMessage({ type: 'mute', muted: status.muted });
  let sumSq = 0;
  let count = 0;
  c.capture.port.onmessage = (e) => {
    const m = e.data;
    if (conn !== c) return;
    if (m.type === 'level') status.micRms = m.rms;
    // Before the handshake the microphone only drives the level meter: the model should hear
    // what is said once it is listening, not a backlog. Muted chunks are silence (the worklet
    // zeroes them), so the stream keeps its timing.
    if (m.type !== 'pcm' || !status.handshake || c.encoder.state !== 'configured') return;
    for (const x of m.samples) sumSq += x * x;
    count += m.samples.length;
    if (count >= RATE / 20) { status.sentRms = Math.sqrt(sumSq / count); sumSq = 0; count = 0; }
    c.recorder.add(0, m.at, m.samples);
    c.encoder.encode(new AudioData({
      format: 'f32', sampleRate: RATE, numberOfChannels: 1, numberOfFrames: m.samples.length,
      timestamp: Math.round(c.samplesIn * 1e6 / RATE), data: m.samples,
    }));
    c.samplesIn += m.samples.length;
  };
  c.ctx.createMediaStreamSource(c.stream).connect(c.capture);

  c.playback = new AudioWorkletNode(c.ctx, 'moshi-playback', { numberOfInputs: 0, outputChannelCount: [1] });
  let loudAt = 0;
  c.playback.port.onmessage = (e) => {
    const m = e.data;
    if (conn !== c) return;
    Object.assign(status, {
      playedSamples: m.playedSamples, underruns: m.underruns, droppedSamples: m.droppedSamples,
      bufferedMs: m.bufferedMs, outRms: m.rms,
    });
    if (m.played && c.recorder) {
      c.recorder.add(1, m.playedAt, m.played);
      status.recordedSeconds = c.recorder.seconds;
    }
    const now = performance.now();
    if (m.rms >= SPEAKING_RMS) loudAt = now;
    const speaking = status.handshake && now - loudAt < SPEAKING_HOLD_MS;
    if (speaking && !status.speaking) status.speakingEpisodes++;
    status.speaking = speaking;
  };
  c.playback.connect(c.ctx.destination);

  // Decoder: configured when the stream's OpusHead arrives (each BOS page starts a new stream).
  c.decodedAt = 0;
  c.reader = new OggReader((packet) => {
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
      // Firefox decodes Opus at 48 kHz whatever was asked; the playback worklet resamples any rate.
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
  c.decoder.configure(DECODER_CONFIG);
  c.playback.port.postMessage({ type: 'reset' });
}

// ---------------------------------------------------------------- mute, download -----------------
function toggleMute() {
  status.muted = !status.muted;
  if (conn && conn.capture) conn.capture.port.postMessage({ type: 'mute', muted: status.muted });
  if (status.muted) status.sentRms = 0;
  render();
}

/// The latest conversation as a stereo WAV Blob (left: you, right: Moshi; 24 kHz), or null.
function conversationWav() {
  return lastRecording && lastRecording.length > 0 ? lastRecording.wav() : null;
}
window.moshiWav = conversationWav;

function download() {
  const blob = conversationWav();
  if (!blob) return;
  const stamp = new Date().toISOString().replace(/[-:]/g, '').replace('T', '-').slice(0, 15);
  const name = `moshi-conversation-${stamp}.wav`;
  const url = URL.createObjectURL(blob);
  const a = document.createElement('a');
  a.href = url;
  a.download = name;
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60000);
  status.downloads++;
  status.lastDownload = { name, bytes: blob.size, seconds: lastRecording.seconds };
}

// ---------------------------------------------------------------- page ---------------------------
const COUNTERS = [
  ['messagesSent', 'messages sent'], ['bytesSent', 'bytes sent'], ['sentAudioMessages', 'audio messages sent'],
  ['encodedPackets', 'Opus packets encoded'], ['messagesReceived', 'messages received'],
  ['bytesReceived', 'bytes received'], ['receivedAudioMessages', 'audio messages received'],
  ['decodedFrames', 'audio frames decoded (Opus packets)'], ['playedFrames', 'audio frames played (80 ms)'],
  ['underruns', 'underruns'], ['droppedSamples', 'samples dropped (late)'], ['bufferedMs', 'buffered (ms)'],
  ['textMessages', 'text pieces'], ['recordedSeconds', 'recorded (s)'],
];
const STATE_TEXT = { lost: 'connection lost' };

function render() {
  const playedFrames = status.contextRate ? Math.floor(status.playedSamples / (0.08 * status.contextRate)) : 0;
  const el = $('status');
  el.textContent = STATE_TEXT[status.state] || status.state;
  el.className = `state-${status.state.replace(/ /g, '-')}`;
  for (const [key, value] of Object.entries(status)) {
    if (value === null || typeof value !== 'object') el.dataset[key] = String(value);
  }
  for (const [key] of COUNTERS) {
    const value = key === 'playedFrames' ? playedFrames : status[key];
    $(`c-${key}`).textContent = key === 'bufferedMs' || key === 'recordedSeconds' ? value.toFixed(key === 'bufferedMs' ? 0 : 1) : value;
  }
  $('errors').textContent = status.errors.join('\n');
  const message = $('message');
  message.hidden = status.message === '';
  message.textContent = status.message;
  message.className = `notice ${status.messageKind}`;
  meter('mic-level', status.muted ? 0 : status.micRms);
  meter('out-level', status.outRms);
  $('muted-badge').hidden = !status.muted;
  $('speaking').hidden = !status.speaking;
  const busy = conn !== null;
  const connect = $('connect');
  connect.textContent = busy ? 'Disconnect' : status.state === 'lost' ? 'Reconnect' : 'Connect';
  connect.disabled = !busy && (status.webcodecs === 'missing' || status.webcodecs === 'no-opus' || status.webcodecs === 'insecure');
  const mute = $('mute');
  mute.textContent = status.muted ? 'Unmute' : 'Mute';
  mute.setAttribute('aria-pressed', String(status.muted));
  mute.classList.toggle('active', status.muted);
  $('download').disabled = !(lastRecording && lastRecording.length > 0);
  $('download').textContent = lastRecording && lastRecording.truncated ? 'Download (.wav, first 30 min)' : 'Download (.wav)';
  for (const name of SETTINGS) $(name).disabled = busy;
  $('reset-defaults').disabled = busy;
  for (const [stream, [t, k]] of Object.entries(STREAMS)) {
    $(`${stream}-hint`).textContent = describeStream($(t).value, $(k).value);
  }
}

// RMS → a 0..1 bar on a dB scale (−60 dBFS empty, 0 dBFS full).
function meter(id, value) {
  const db = 20 * Math.log10(Math.max(value, 1e-6));
  $(id).style.width = `${Math.max(0, Math.min(100, (db + 60) * 100 / 60))}%`;
}

function init() {
  const table = $('counters');
  for (const [key, label] of COUNTERS) {
    const row = table.insertRow();
    row.insertCell().textContent = label;
    row.insertCell().id = `c-${key}`;
  }
  $('connect').onclick = () => (conn ? disconnect() : connect());
  $('mute').onclick = toggleMute;
  $('download').onclick = download;
  $('reset-defaults').onclick = () => { for (const name of SETTINGS) $(name).value = defaults[name]; render(); };
  $('settings').onsubmit = (e) => e.preventDefault();
  showSession(null);
  ready = Promise.all([loadInfo(), checkSupport()]).then(render);
  render();
  setInterval(render, 100);
  if (new URLSearchParams(location.search).get('autoconnect') === '1') connect();
}

init();
