// The conversation over WebRTC: OpenAI's Realtime call flow, as its browser guide has it, against this
// server's `/v1/realtime/client_secrets` and `/v1/realtime/calls` (docs/webrtc.md).
//
//   1. POST /v1/realtime/client_secrets (the server's token, if it has one, as `Authorization: Bearer`;
//      the settings as `session`) -> a one-call secret `ek_…`: the call itself never carries the token;
//   2. RTCPeerConnection: the microphone's track (sendrecv: the assistant's voice comes back on it) and
//      the `oai-events` data channel; the offer is sent once ICE gathering is done (the server's aiortc
//      takes no trickled candidates);
//   3. POST /v1/realtime/calls?model=<mode> with the offer (application/sdp) -> 201, the answer, and
//      `Location` naming the call (its hang-up is `POST <Location>/hangup`).
//
// Realtime server events arrive on the channel (event `event`); audio plays from the remote track;
// `stats()` reads `getStats()`: the ICE candidate pair's round trip, RTP packets, jitter buffer,
// concealment (the WebRTC side of the page's figures).

const EVENTS_LABEL = 'oai-events';
const ICE_GATHERING_MAX_MS = 5000;   // host candidates on loopback take milliseconds; a STUN server may take longer

/** A refusal the page can show: OpenAI's error shape `{error: {code, message, param}}` (or a network error). */
export class RtcError extends Error {
  constructor(code, message, param = null, status = 0) {
    super(message);
    this.code = code;
    this.param = param;
    this.status = status;
  }
}

/** The server's Realtime `session` for the page's settings (only the keys the Realtime API has). */
export function realtimeSession(config) {
  const session = {};
  if (config.system_prompt !== undefined) session.instructions = config.system_prompt;
  const audio = {};
  if (config.voice !== undefined) audio.output = { voice: config.voice };
  if (config.transcribe_user !== undefined) {
    audio.input = { transcription: config.transcribe_user ? { model: 'duplex-stt' } : null };
  }
  if (Object.keys(audio).length > 0) session.audio = audio;
  return session;
}

async function refusal(response, what) {
  let error = {};
  try {
    error = (await response.json()).error ?? {};
  } catch { /* not JSON: a proxy's page */ }
  return new RtcError(error.code ?? (response.status === 401 ? 'unauthorized' : 'connect'),
    error.message ?? `${what}: HTTP ${response.status}`, error.param ?? null, response.status);
}

function iceGathered(pc) {
  if (pc.iceGatheringState === 'complete') return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState !== 'complete') return;
      pc.removeEventListener('icegatheringstatechange', done);
      resolve();
    };
    pc.addEventListener('icegatheringstatechange', done);
    setTimeout(resolve, ICE_GATHERING_MAX_MS);   // send what was gathered so far
  });
}

/**
 * One call. Events (CustomEvent, payload in `detail`): open (the data channel opened), event (a Realtime
 * server event), track (the remote MediaStream), close ({ reason }).
 */
export class RtcCall extends EventTarget {
  constructor({ base, token, mode, secret = null, iceServers = [] }) {
    super();
    this.base = base;      // the server's http(s) origin (a URL)
    this.token = token;
    this.secret = secret;  // a client secret minted elsewhere (?client_secret=ek_…): no token needed here
    this.iceServers = iceServers;   // e.g. ['stun:stun.example.org:3478'] (?ice_servers=, as the server's --webrtc-ice-servers)
    this.mode = mode;
    this.pc = null;
    this.channel = null;
    this.callUrl = null;
    this.closed = false;
    this.hangingUp = false;
  }

  emit(name, detail) {
    this.dispatchEvent(new CustomEvent(name, { detail }));
  }

  get isOpen() {
    return this.channel?.readyState === 'open';
  }

  /** Runs the call flow with the microphone's stream; throws RtcError when the server refuses. */
  async open(micStream, session) {
    const secret = this.secret ?? await this.mintSecret(session);
    if (this.secret && Object.keys(session).length > 0) {   // the settings were not in that secret: send them
      this.addEventListener('open', () => this.send({ type: 'session.update', session }), { once: true });
    }

    const pc = new RTCPeerConnection(this.iceServers.length ? { iceServers: [{ urls: this.iceServers }] } : undefined);
    this.pc = pc;
    for (const track of micStream.getAudioTracks()) pc.addTrack(track, micStream);
    pc.ontrack = (e) => this.emit('track', e.streams[0] ?? new MediaStream([e.track]));
    pc.onconnectionstatechange = () => {
      if (['failed', 'closed'].includes(pc.connectionState)) this.end(`peer connection ${pc.connectionState}`);
    };
    const channel = pc.createDataChannel(EVENTS_LABEL);
    this.channel = channel;
    channel.onopen = () => this.emit('open');
    channel.onclose = () => this.end('the data channel closed');
    channel.onmessage = ({ data }) => {
      try {
        this.emit('event', JSON.parse(data));
      } catch { /* the server sends JSON only */ }
    };
    await pc.setLocalDescription(await pc.createOffer());
    await iceGathered(pc);

    const query = this.mode && this.mode !== 'auto' ? `?model=${encodeURIComponent(this.mode)}` : '';
    const answer = await fetch(new URL(`v1/realtime/calls${query}`, this.base), {
      method: 'POST', headers: { 'Content-Type': 'application/sdp', Authorization: `Bearer ${secret}` },
      body: pc.localDescription.sdp,
    }).catch(() => null);
    if (!answer) throw new RtcError('connect', `The server at ${this.base.host} cannot be reached.`);
    if (answer.status !== 201) throw await refusal(answer, 'call');
    this.callUrl = new URL(answer.headers.get('Location'), this.base);
    await pc.setRemoteDescription({ type: 'answer', sdp: await answer.text() });
  }

  /** A one-call secret for `session`, with the server's token if the page was given one. */
  async mintSecret(session) {
    const auth = this.token ? { Authorization: `Bearer ${this.token}` } : {};
    const response = await fetch(new URL('v1/realtime/client_secrets', this.base), {
      method: 'POST', headers: { 'Content-Type': 'application/json', ...auth }, body: JSON.stringify({ session }),
    }).catch(() => null);
    if (!response) throw new RtcError('connect', `The server at ${this.base.host} cannot be reached.`);
    if (!response.ok) throw await refusal(response, 'client secret');
    return (await response.json()).value;
  }

  /** Sends a Realtime client event on the data channel. */
  send(event) {
    if (!this.isOpen) return false;
    this.channel.send(JSON.stringify(event));
    return true;
  }

  /** The call's figures from getStats(): round trip (ICE, s -> ms), RTP both ways, the jitter buffer. */
  async stats() {
    const out = {};
    if (!this.pc) return out;
    const report = await this.pc.getStats();
    report.forEach((s) => {
      if (s.type === 'candidate-pair' && s.nominated && s.state === 'succeeded'
          && typeof s.currentRoundTripTime === 'number') {
        out.rttMs = s.currentRoundTripTime * 1000;
      } else if (s.type === 'media-playout') {   // what the speakers were given (Chromium: RTCAudioPlayoutStats)
        out.samplesPlayed = s.totalSamplesCount;
      } else if (s.type === 'outbound-rtp' && s.kind === 'audio') {
        out.packetsSent = s.packetsSent;
        out.bytesSent = s.bytesSent;
      } else if (s.type === 'inbound-rtp' && s.kind === 'audio') {
        out.packetsReceived = s.packetsReceived;
        out.packetsLost = s.packetsLost;
        out.samplesReceived = s.totalSamplesReceived;
        out.concealmentEvents = s.concealmentEvents;
        out.concealedSamples = s.concealedSamples;
        out.audioLevel = s.audioLevel;
        out.jitterBufferMs = s.jitterBufferEmittedCount
          ? (1000 * s.jitterBufferDelay) / s.jitterBufferEmittedCount : 0;
        out.jitterBufferTargetMs = s.jitterBufferEmittedCount && s.jitterBufferTargetDelay !== undefined
          ? (1000 * s.jitterBufferTargetDelay) / s.jitterBufferEmittedCount : null;
      }
    });
    return out;
  }

  /** Hangs up: the server frees the slot at once (POST …/hangup), then the peer connection closes. */
  async hangUp() {
    this.hangingUp = true;   // the channel's close that follows is this hang-up, not a failure
    if (this.callUrl && !this.closed) {
      await fetch(new URL(`${this.callUrl.pathname}/hangup`, this.base), { method: 'POST' }).catch(() => {});
    }
    this.end('client closed');
  }

  end(reason) {
    if (this.closed) return;
    this.closed = true;
    if (this.hangingUp) reason = 'client closed';
    this.channel?.close();
    this.pc?.close();
    this.emit('close', { reason });
  }
}
