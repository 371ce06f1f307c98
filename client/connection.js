// The conversation WebSocket (`/ws`, PROTOCOL.md): JSON control messages and 0x01-prefixed audio.

const KIND_AUDIO = 0x01;

// Which acknowledgement answers which control message, for the round-trip time.
const ACK_OF = {
  stop: 'stop_acknowledged',
  reset: 'reset_acknowledged',
  interrupt: 'interrupt_acknowledged',
};

/** The `/ws` URL of the host that served this page (or of `server`, e.g. "ws://host:8000"). */
export function conversationUrl({ server, mode, token }) {
  const base = server
    ? new URL(server, location.href)
    : new URL(`${location.protocol === 'https:' ? 'wss:' : 'ws:'}//${location.host}/ws`);
  if (!base.pathname || base.pathname === '/') base.pathname = '/ws';
  if (mode) base.searchParams.set('mode', mode);
  if (token) base.searchParams.set('token', token);
  return base;
}

/**
 * One connection. Events (all CustomEvent, payload in `detail`):
 *   open, message (a server JSON object), audio (Uint8Array Ogg page),
 *   rtt ({ type, ms }), close ({ code, reason, wasOpen }).
 */
export class Connection extends EventTarget {
  constructor(url) {
    super();
    this.url = url;
    this.pending = new Map();  // ack type -> performance.now() when the request went out
    this.wasOpen = false;
    this.ws = new WebSocket(url);
    this.ws.binaryType = 'arraybuffer';
    this.ws.onopen = () => {
      this.wasOpen = true;
      this.emit('open');
    };
    this.ws.onmessage = (event) => this.onMessage(event.data);
    this.ws.onclose = (event) => this.emit('close', {
      code: event.code, reason: event.reason, wasOpen: this.wasOpen,
    });
  }

  get isOpen() {
    return this.ws.readyState === WebSocket.OPEN;
  }

  emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  onMessage(data) {
    if (data instanceof ArrayBuffer) {
      const bytes = new Uint8Array(data);
      if (bytes.length > 1 && bytes[0] === KIND_AUDIO) this.emit('audio', bytes.slice(1));
      return;
    }
    let msg;
    try {
      msg = JSON.parse(data);
    } catch {
      return;  // not ours to fix; the server never sends this
    }
    const sentAt = this.pending.get(msg.type);
    if (sentAt !== undefined) {
      this.pending.delete(msg.type);
      this.emit('rtt', { type: msg.type.replace('_acknowledged', ''), ms: performance.now() - sentAt });
    }
    this.emit('message', msg);
  }

  /** Sends a control message, e.g. send('start', { mode: 'duplex' }). */
  send(type, fields = {}) {
    if (!this.isOpen) return false;
    if (ACK_OF[type]) this.pending.set(ACK_OF[type], performance.now());
    this.ws.send(JSON.stringify({ type, ...fields }));
    return true;
  }

  /** Sends one Ogg page of microphone audio. */
  sendAudio(page) {
    if (!this.isOpen) return false;
    const message = new Uint8Array(page.length + 1);
    message[0] = KIND_AUDIO;
    message.set(page, 1);
    this.ws.send(message);
    return true;
  }

  close(code = 1000, reason = 'client closed') {
    if (this.ws.readyState <= WebSocket.OPEN) this.ws.close(code, reason);
  }
}

/**
 * Why a socket failed before it opened: browsers hide the HTTP status of a refused upgrade, so
 * ask the same URL over plain HTTP. Returns a sentence, or null when nothing more is known.
 */
export async function diagnoseRefusal(url) {
  const http = new URL(url);
  http.protocol = http.protocol === 'wss:' ? 'https:' : 'http:';
  try {
    const response = await fetch(http, { cache: 'no-store' });
    if (response.status === 401 || response.status === 403) {
      return 'The server refused the access token (HTTP 401): enter the right token and connect again.';
    }
    if (response.status === 503 || response.status === 429) {
      return `The server is full (HTTP ${response.status}): no free conversation slot, try again later.`;
    }
    return null;
  } catch {
    return `The server at ${http.host} cannot be reached.`;
  }
}
