// The page's controller: buttons -> protocol messages, server messages -> view and audio.
//
// URL parameters: ?mode=duplex|cascade|auto, ?token=..., ?autostart=1 (connect and start on load,
// for kiosks and tests), ?server=ws://host:port (talk to another server than the page's host), and the
// conversation settings by config key (settings.js: ?system_prompt=...&voice=...&temperature=...).
// `window.duplexStats` is a read-only snapshot of counters for tests and debugging.

import { AudioEngine, AudioError } from './audio.js';
import { Connection, conversationUrl, diagnoseRefusal } from './connection.js';
import { CallController } from './call-controller.js';
import { Settings, httpBase, keyOfError } from './settings.js';
import {
  AssistantTextView, TranscriptView, el, hideBanner, log, setFigure, setMeter, setPill, showBanner,
} from './view.js';

const ERROR_TEXT = {
  capacity: 'The server is full: every conversation slot for this mode is taken. Try mode "auto", or again later.',
  unauthorized: 'The server refused the access token: enter the right token and connect again.',
  not_started: 'Audio was sent before the conversation started (it was discarded).',
  unsupported: 'Not available on this server.',
  bad_message: 'The server could not understand a message from this page.',
  bad_audio: 'The server could not decode the microphone audio.',
  too_large: 'A message was too large for the server.',
  internal: 'The server hit an internal error.',
  timeout: 'A tool call got no result in time; the assistant\'s turn ended.',
};

const params = new URLSearchParams(location.search);

const stats = {
  transport: 'websocket',
  connected: false,
  started: false,
  sessionId: null,
  mode: null,
  modes: [],
  lastStatus: null,
  framesSent: 0,
  bytesSent: 0,
  pagesReceived: 0,
  framesDecoded: 0,
  samplesDecoded: 0,
  samplesPlayed: 0,
  sampleRate: 0,
  bufferedMs: 0,
  targetMs: 0,
  underruns: 0,
  overflowDroppedSamples: 0,
  flushes: 0,
  flushLog: [],       // { reason, droppedSamples, bufferedAfter } per completed flush
  transcripts: 0,     // transcript messages (partial and final)
  finalTranscripts: 0,
  llmChars: 0,
  metrics: null,      // the last `metrics` message
  rttMs: null,
  inputLevel: 0,
  outputLevel: 0,
  errors: [],         // { code, message, key? } from the server and from the page (key: shown beside that field)
  config: null,       // the `config` of the last `start`
  configures: [],     // the `config` of each `configure` sent (WebRTC: each `session.update`)
  rtc: null,          // WebRTC: the call's getStats() figures (rttMs, packets, jitter buffer, concealment)
  rtcEvents: {},      // WebRTC: Realtime server events received, counted by type
  rtcSession: null,   // WebRTC: the session as the server last described it (session.created / .updated)
  interruptAcks: 0,   // interrupt acknowledgements (WebSocket: interrupt_acknowledged; WebRTC: see realtime-events.js)
};

Object.defineProperty(window, 'duplexStats', {
  get: () => Object.freeze(structuredClone(stats)),
  enumerable: true,
});

let conn = null;
let pending = null;      // the control message waiting for its acknowledgement, e.g. 'stop'
let pendingSince = 0;
const ACK_TIMEOUT_MS = 8000;
let readyWaiters = [];   // resolvers waiting for the `ready` message

// Microphone pages go out only between `start` and `stop` (the server discards audio outside a
// conversation). A page the encoder finishes after `stop` waits here and goes out after the next
// `start`, so the server still reads one unbroken Ogg stream (no page sequence gap).
let sending = false;
let outbox = [];
const OUTBOX_MAX_PAGES = 25;  // 2 s; more only if the encoder runs while not sending

function flushOutbox() {
  while (outbox.length > 0 && conn?.sendAudio(outbox[0])) {
    stats.framesSent += 1;
    stats.bytesSent += outbox[0].length;
    outbox.shift();
  }
}

const settings = new Settings(el.settings, { onChange: onSettingChanged });
const transcript = new TranscriptView(el.transcript);
const assistantText = new AssistantTextView(el.assistantText);
const audio = new AudioEngine({
  onPage: (page) => {
    outbox.push(page);
    if (outbox.length > OUTBOX_MAX_PAGES) outbox.shift();
    if (sending) flushOutbox();
  },
  onDecoded: (samples) => {
    stats.framesDecoded += 1;
    stats.samplesDecoded += samples.length;
  },
  onPlaybackStats: (s) => {
    if (stats.transport === 'webrtc') return;   // WebRTC plays through its own element; figures from getStats()
    stats.samplesPlayed = s.samplesPlayed;
    stats.bufferedMs = s.bufferedMs;
    stats.targetMs = s.targetMs;
    stats.underruns = s.underruns;
    stats.overflowDroppedSamples = s.droppedSamples;
    stats.outputLevel = s.rms;
    setMeter('out', s.rms);
    setFigure('buffer', `${s.bufferedMs.toFixed(0)} ms, target ${s.targetMs} ms`);
    setFigure('underruns', `${s.underruns} / ${stats.flushes}`);
  },
  onFlushed: (info) => {
    stats.flushes = info.flushes;
    stats.flushLog.push({ reason: info.reason, droppedSamples: info.droppedSamples, bufferedAfter: info.bufferedAfter });
    if (stats.flushLog.length > 50) stats.flushLog.shift();
  },
});

function setPending(name) {
  pending = name;
  pendingSince = performance.now();
}

/** A control message never acknowledged must not leave the buttons disabled for good. */
function checkPending() {
  if (pending && performance.now() - pendingSince > ACK_TIMEOUT_MS) {
    reportError('no_ack', `The server did not acknowledge "${pending}" within ${ACK_TIMEOUT_MS / 1000} s.`);
    pending = null;
  }
}

// --- errors ---------------------------------------------------------------------------------

let lastError = null;  // the last error shown on this connection, kept when the socket then closes

function reportError(code, message) {
  lastError = message;
  stats.errors.push({ code, message });
  log(`${code}: ${message}`, { error: true });
  showBanner(message);
  setPill(el.connectionPill, stats.connected ? 'connected' : 'error', stats.connected ? 'connected' : 'error');
}

// --- buttons --------------------------------------------------------------------------------

function render() {
  const open = stats.connected;
  const rtc = el.transport.value === 'webrtc';
  el.connect.textContent = open || conn ? 'Disconnect' : 'Connect';
  el.connect.disabled = rtc;    // a call is made by Start and ended by Stop
  el.transport.disabled = Boolean(conn || calls.active || pending);
  el.mode.disabled = stats.started || Boolean(pending);  // `start` carries the mode
  settings.lock(stats.started ? stats.mode : null);     // what `configure` cannot change waits for the next start
  el.token.disabled = Boolean(conn);
  el.start.disabled = Boolean(pending) || stats.started;
  el.stop.disabled = !open || !stats.started || Boolean(pending);
  el.reset.disabled = !open || !stats.started || Boolean(pending) || rtc;   // the Realtime API has no reset
  el.interrupt.disabled = !open || !stats.started || Boolean(pending);
  for (const b of [el.start, el.stop, el.reset, el.interrupt]) {
    if (pending === b.id) {
      b.dataset.pending = '';
      b.textContent = `${b.id[0].toUpperCase()}${b.id.slice(1)}…`;
    } else {
      delete b.dataset.pending;
      b.textContent = `${b.id[0].toUpperCase()}${b.id.slice(1)}`;
    }
  }
  setFigure('frames', `${stats.framesSent} / ${stats.pagesReceived}`);
  setFigure('mode', stats.mode ?? '–');
  setFigure('transport', rtc ? 'WebRTC (Opus over RTP/UDP)' : 'WebSocket (Ogg Opus over TCP)');
}

async function connect() {
  if (conn) return;
  hideBanner();
  lastError = null;
  try {
    await audio.init();
  } catch (err) {
    reportError('audio', err.message);
    return;
  }
  stats.sampleRate = audio.context.sampleRate;
  if (audio.suspended) {
    showBanner('Click anywhere on the page to enable audio.', { info: true });
    document.addEventListener('pointerdown', () => audio.resume().then(hideBanner), { once: true });
  }
  const url = conversationUrl({ server: params.get('server'), mode: el.mode.value, token: el.token.value.trim() });
  setPill(el.connectionPill, 'connecting', 'connecting');
  log(`connecting to ${url.origin}${url.pathname} (mode ${el.mode.value})`);
  conn = new Connection(url);
  conn.addEventListener('open', () => {
    stats.connected = true;
    setPill(el.connectionPill, 'connected', 'connected');
    render();
  });
  conn.addEventListener('message', (e) => onMessage(e.detail));
  conn.addEventListener('audio', (e) => {
    stats.pagesReceived += 1;
    audio.playPage(e.detail);
  });
  conn.addEventListener('rtt', (e) => {
    stats.rttMs = e.detail.ms;
    setFigure('rtt', `${e.detail.ms.toFixed(0)} ms (${e.detail.type})`);
  });
  conn.addEventListener('close', (e) => onClose(e.detail));
  render();
}

function waitForReady() {
  if (stats.sessionId) return Promise.resolve();
  return new Promise((resolve, reject) => readyWaiters.push({ resolve, reject }));
}

async function start() {
  if (stats.started || pending) return;
  if (el.transport.value === 'webrtc') return calls.start();
  setPending('start');
  render();
  try {
    if (!conn) await connect();
    if (!conn) throw new Error('not connected');
    await waitForReady();
    await audio.openMicrophone();
  } catch (err) {
    pending = null;
    if (err instanceof AudioError) reportError(`mic_${err.kind}`, err.message);
    render();
    return;
  }
  setPending('start');  // the acknowledgement clock starts now, not during the permission prompt
  settings.clearErrors();
  stats.config = settings.config(el.mode.value);
  conn.send('start', { mode: el.mode.value, config: stats.config });
  sending = true;
  flushOutbox();
  audio.startCapture();  // after `start`, so the Ogg headers are not discarded
  log('start');
}

function stop() {
  if (calls.active) return calls.stop();
  if (!conn?.isOpen) return;
  sending = false;
  audio.stopCapture();
  conn.send('stop');
  setPending('stop');
  audio.flushPlayback('stop');
  log('stop');
  render();
}

function reset() {
  if (!conn?.send('reset')) return;
  setPending('reset');
  log('reset');
  render();
}

function interrupt() {
  if (calls.active) return calls.interrupt();
  if (!conn?.send('interrupt')) return;
  setPending('interrupt');
  audio.flushPlayback('interrupt');  // silence now; flushed again when the server confirms
  log('interrupt');
  render();
}

async function disconnect() {
  conn?.close();
}

// --- server messages ------------------------------------------------------------------------

function onMessage(msg) {
  switch (msg.type) {
    case 'ready':
      stats.sessionId = msg.session_id;
      stats.modes = msg.modes ?? [];
      el.sessionId.textContent = `session ${msg.session_id}`;
      for (const option of el.mode.options) {
        const loaded = option.value === 'auto' || stats.modes.includes(option.value);
        option.textContent = loaded ? option.value : `${option.value} (not loaded)`;
      }
      log(`ready: protocol ${msg.protocol}, modes ${stats.modes.join(', ')}, `
        + `${msg.audio?.codec} ${msg.audio?.sample_rate} Hz / ${msg.audio?.frame_ms} ms`);
      readyWaiters.forEach((w) => w.resolve());
      readyWaiters = [];
      break;
    case 'status':
      stats.lastStatus = msg.status;
      stats.mode = msg.mode ?? stats.mode;
      setPill(el.statusPill, msg.status);
      if (msg.status === 'stopped') {
        stats.started = false;
        if (pending === 'stop') pending = null;
      } else {
        stats.started = true;
        if (pending === 'start') pending = null;
      }
      log(`status ${msg.status}${msg.mode ? ` (${msg.mode})` : ''}`);
      break;
    case 'partial_transcript':
      stats.transcripts += 1;
      transcript.partial(msg.role, msg.content, msg.start_ms);
      break;
    case 'final_transcript':
      stats.transcripts += 1;
      stats.finalTranscripts += 1;
      transcript.final(msg.role, msg.content, msg.start_ms, msg.end_ms);
      break;
    case 'llm_status':
      el.llmStatus.textContent = msg.status === 'processing' ? '· thinking…' : '';
      break;
    case 'llm_response':
      el.llmStatus.textContent = '';
      stats.llmChars += (msg.content ?? '').length;
      assistantText.append(msg.content ?? '', msg.is_complete);
      break;
    case 'tts_start':
      log(`assistant speaks (${msg.format ?? '?'} ${msg.sample_rate ?? ''})`);
      break;
    case 'tts_end':
      assistantText.end();
      break;
    case 'tts_stop':
      audio.flushPlayback('tts_stop');
      assistantText.end();
      log('assistant cut off (tts_stop)');
      break;
    case 'interrupt_acknowledged':
      stats.interruptAcks += 1;
      audio.flushPlayback('interrupt_acknowledged');
      if (pending === 'interrupt') pending = null;
      log('interrupt acknowledged');
      break;
    case 'stop_acknowledged':
      stats.started = false;
      if (pending === 'stop') pending = null;
      transcript.divider('conversation stopped');
      log('stop acknowledged');
      break;
    case 'reset_acknowledged':
      if (pending === 'reset') pending = null;
      audio.flushPlayback('reset');
      assistantText.end();
      transcript.divider('conversation reset');
      log('reset acknowledged');
      break;
    case 'metrics':
      onMetrics(msg);
      break;
    case 'error':
      onServerError(msg);
      break;
    default:
      log(`(unknown message ${msg.type})`);
  }
  render();
}

function onMetrics(msg) {
  stats.metrics = msg;
  const latency = msg.response_latency_ms;
  if (typeof latency === 'number') setFigure('latency', `${latency.toFixed(0)} ms`);
  const parts = Object.entries(msg)
    .filter(([k]) => k !== 'type' && k !== 'session_id')
    .map(([k, v]) => `${k}=${typeof v === 'number' ? Math.round(v * 10) / 10 : v}`);
  log(`metrics ${parts.join(' ')}`);
}

function onServerError(msg) {
  const key = ['unsupported', 'bad_message'].includes(msg.code) ? keyOfError(msg) : null;
  if (key && settings.showError(key, msg.message)) {
    // A refused setting: shown beside its field, not in the banner. A refused `start` is over.
    stats.errors.push({ code: msg.code, message: msg.message, key, param: msg.param ?? null });
    log(`${msg.code} (${key}): ${msg.message}`, { error: true });
    if (pending === 'start' || !stats.started) refusedStart();
    return;
  }
  const text = ERROR_TEXT[msg.code] ? `${ERROR_TEXT[msg.code]} — ${msg.message}` : `${msg.code}: ${msg.message}`;
  if (msg.code === 'not_started') {
    // Harmless race (audio in flight around stop): note it, do not alarm the user.
    stats.errors.push({ code: msg.code, message: msg.message });
    log(text, { error: true });
    return;
  }
  if (pending === 'start' || !stats.started) refusedStart();
  reportError(msg.code, text);
}

/** The conversation was refused (capacity, unauthorized, a setting...). The server discarded what was
 * sent, Ogg headers included: stop sending, and begin a fresh Ogg stream on the next Start. */
function refusedStart() {
  pending = null;
  sending = false;
  outbox = [];
  audio.restartStream();
}

// --- settings -------------------------------------------------------------------------------

function persistChoices() {
  settings.persist({ mode: el.mode.value, transport: el.transport.value });
}

/** A field changed: kept, and sent with `configure` when the running conversation's engine takes it. */
function onSettingChanged(key) {
  persistChoices();
  if (calls.active) return calls.settingChanged(key);
  if (!stats.started || !conn?.isOpen || !settings.takesMidConversation(stats.mode, key)) return;
  let value = settings.typed(key);
  if (value === undefined) value = key === 'transcribe_user' ? false : settings.schema.keys[key].default;
  if (value === null || value === undefined) return;   // no plain default (seed): nothing to undo
  const config = { [key]: value };
  stats.configures.push(config);
  conn.send('configure', { config });
  log(`configure ${JSON.stringify(config)}`);
}

async function onClose({ code, reason, wasOpen }) {
  const closedConn = conn;
  conn = null;
  stats.connected = false;
  stats.started = false;
  stats.sessionId = null;
  pending = null;
  sending = false;
  outbox = [];
  readyWaiters.forEach((w) => w.reject(new Error('closed')));
  readyWaiters = [];
  await audio.close();
  setPill(el.statusPill, 'idle');
  el.sessionId.textContent = '';
  if (!wasOpen) {
    const why = (await diagnoseRefusal(closedConn.url)) ?? `Could not connect to ${closedConn.url.host} (code ${code}).`;
    reportError(/401/.test(why) ? 'unauthorized' : 'connect', why);
  } else if (code === 1000 && reason === 'client closed') {
    setPill(el.connectionPill, 'disconnected', 'disconnected');
    log('disconnected');
  } else {
    const closed = `The connection was closed (code ${code}${reason ? `: ${reason}` : ''}).`;
    reportError('closed', lastError ? `${lastError} ${closed}` : closed);
  }
  lastError = null;
  render();
}

// The WebRTC transport (call-controller.js) drives the same page through these.
const calls = new CallController({
  stats, audio, settings, transcript,
  base: () => httpBase(params.get('server')),
  secret: () => params.get('client_secret'),
  iceServers: () => (params.get('ice_servers') ?? '').split(',').map((u) => u.trim()).filter(Boolean),
  onMessage,
  reportError: (code, message) => reportError(code, ERROR_TEXT[code] ? `${ERROR_TEXT[code]} — ${message}` : message),
  setPending: (name) => (name ? setPending(name) : (pending = null)),
  render: () => render(),
});

// --- wiring ---------------------------------------------------------------------------------

el.connect.addEventListener('click', () => (conn ? disconnect() : connect()));
el.start.addEventListener('click', start);
el.stop.addEventListener('click', stop);
el.reset.addEventListener('click', reset);
el.interrupt.addEventListener('click', interrupt);

setInterval(() => {
  if (calls.active) calls.pollStats();
  const { rms } = audio.inputLevel();
  stats.inputLevel = rms;
  setMeter('in', audio.capturing || calls.active ? rms : 0);
  checkPending();
  render();
}, 100);

el.mode.addEventListener('change', () => {
  settings.render(el.mode.value);
  persistChoices();
});
el.transport.addEventListener('change', () => {
  stats.transport = el.transport.value;
  settings.transport = el.transport.value;
  settings.render(el.mode.value);
  persistChoices();
  render();
});

async function init() {
  const loaded = await settings.load(httpBase(params.get('server')));
  el.settingsNone.hidden = loaded;
  settings.restore(params);
  const choices = settings.restoreChoices(params, ['mode', 'transport']);
  if (['duplex', 'cascade', 'auto'].includes(choices.mode)) el.mode.value = choices.mode;
  if (['websocket', 'webrtc'].includes(choices.transport)) el.transport.value = choices.transport;
  stats.transport = el.transport.value;
  settings.transport = el.transport.value;
  if (params.get('token')) el.token.value = params.get('token');
  settings.render(el.mode.value);
  persistChoices();
  render();
  if (params.get('autostart') === '1') start();
}
init();
