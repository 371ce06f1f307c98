// The page's WebRTC transport: Start makes a call (webrtc.js), its Realtime events drive the page's
// own message handler (realtime-events.js), Stop hangs up, Interrupt cancels, setting changes become
// `session.update`, and the figures come from getStats(). app.js keeps the WebSocket path and the page.

import { AudioError } from './audio.js';
import { RealtimeTranslator } from './realtime-events.js';
import { keyOfError } from './settings.js';
import { el, hideBanner, log, setFigure, setMeter, setPill, showBanner } from './view.js';
import { RtcCall, RtcError, realtimeSession } from './webrtc.js';

export class CallController {
  /**
   * @param {object} page  what the page lends: stats, audio, settings, transcript, base() (the server's
   *   http origin), secret() (a client secret from the URL), iceServers() (STUN/TURN URLs from the URL),
   *   onMessage(msg), reportError(code, text),
   *   setPending(name | null), render()
   */
  constructor(page) {
    this.page = page;
    this.call = null;
    this.translator = null;
    this.statsBusy = false;
  }

  get active() {
    return this.call !== null;
  }

  /** The microphone, a client secret carrying the settings, the call; the conversation begins with
   * `session.created` (as `ready` + `status listening`). */
  async start() {
    const page = this.page;
    const { stats, audio, settings } = page;
    page.setPending('start');
    page.render();
    try {
      await audio.init();
      await audio.openMicrophone();
    } catch (err) {
      page.setPending(null);
      page.reportError(err instanceof AudioError ? `mic_${err.kind}` : 'audio', err.message);
      page.render();
      return;
    }
    hideBanner();
    settings.clearErrors();
    stats.config = settings.config(el.mode.value);
    stats.rtcEvents = {};
    stats.rtc = null;   // the figures below are the call's own (getStats), from 0 for each call
    stats.framesSent = stats.bytesSent = stats.pagesReceived = stats.samplesPlayed = stats.underruns = 0;
    this.translator = new RealtimeTranslator(Object.keys(settings.schema?.engines ?? {}));
    const call = new RtcCall({ base: page.base(), token: el.token.value.trim(), mode: el.mode.value,
      secret: page.secret(), iceServers: page.iceServers() });
    this.call = call;
    call.addEventListener('open', () => {
      stats.connected = true;
      setPill(el.connectionPill, 'connected', 'connected (WebRTC)');
      page.render();
    });
    call.addEventListener('event', (e) => {
      stats.rtcEvents[e.detail.type] = (stats.rtcEvents[e.detail.type] ?? 0) + 1;
      if (e.detail.session) stats.rtcSession = e.detail.session;   // session.created / .updated: as the server has it
      for (const msg of this.translator.translate(e.detail)) page.onMessage(msg);
    });
    call.addEventListener('track', (e) => {
      el.remoteAudio.srcObject = e.detail;
      el.remoteAudio.play().catch(() => showBanner('Click anywhere on the page to enable audio.', { info: true }));
    });
    call.addEventListener('close', (e) => this.closed(e.detail));
    setPill(el.connectionPill, 'connecting', 'connecting (WebRTC)');
    log(`calling ${call.base.host} over WebRTC (mode ${el.mode.value})`);
    try {
      await call.open(audio.stream, realtimeSession(stats.config));
      page.setPending('start');   // now the wait for session.created
    } catch (err) {
      const refused = err instanceof RtcError ? err : new RtcError('connect', String(err?.message ?? err));
      call.end('refused');
      const key = keyOfError(refused);
      if (key && settings.showError(key, refused.message)) {
        stats.errors.push({ code: refused.code, message: refused.message, key });
      } else {
        page.reportError(refused.code, refused.message);
      }
    }
    page.render();
  }

  /** Stop: hang up; the server frees the slot before it answers, and `close` ends the conversation here. */
  stop() {
    this.page.setPending('stop');
    this.call.hangUp();
    log('stop (hang up)');
    this.page.render();
  }

  /** OpenAI's WebRTC interrupt: cut the response, and drop the audio the server still holds for the track. */
  interrupt() {
    if (!this.call.send({ type: 'response.cancel' })) return;
    this.call.send({ type: 'output_audio_buffer.clear' });
    this.page.setPending('interrupt');
    log('interrupt (response.cancel + output_audio_buffer.clear)');
    this.page.render();
  }

  /** A setting changed during the call: one `session.update` (a cleared field: the server's default). */
  settingChanged(key) {
    const { stats, settings } = this.page;
    if (!stats.started) return;
    const session = realtimeSession({ [key]: settings.typed(key) ?? (key === 'transcribe_user' ? false : '') });
    stats.configures.push(session);
    this.call.send({ type: 'session.update', session });
    log(`session.update ${JSON.stringify(session)}`);
  }

  closed({ reason }) {
    const page = this.page;
    const { stats } = page;
    const wasStarted = stats.started;
    this.call = null;
    el.remoteAudio.srcObject = null;
    stats.connected = false;
    stats.started = false;
    stats.sessionId = null;
    page.setPending(null);
    stats.lastStatus = 'stopped';
    setPill(el.statusPill, 'stopped');
    el.sessionId.textContent = '';
    if (reason === 'client closed' || reason === 'refused') {
      setPill(el.connectionPill, 'disconnected', 'disconnected');
      if (wasStarted) page.transcript.divider('call ended');
      log(`call ended (${reason})`);
    } else {
      page.reportError('closed', `The call ended: ${reason}.`);
    }
    page.render();
  }

  /** The call's figures (every 100 ms with the meters): round trip, packets, jitter buffer, level. */
  async pollStats() {
    if (this.statsBusy || !this.call) return;
    this.statsBusy = true;
    const { stats } = this.page;
    try {
      const s = await this.call.stats();
      stats.rtc = s;
      stats.framesSent = s.packetsSent ?? 0;
      stats.bytesSent = s.bytesSent ?? 0;
      stats.pagesReceived = s.packetsReceived ?? 0;
      stats.samplesPlayed = s.samplesPlayed ?? s.samplesReceived ?? 0;
      stats.underruns = s.concealmentEvents ?? 0;
      stats.bufferedMs = s.jitterBufferMs ?? 0;
      stats.outputLevel = s.audioLevel ?? 0;
      setMeter('out', stats.outputLevel);
      if (typeof s.rttMs === 'number') {
        stats.rttMs = s.rttMs;
        setFigure('rtt', `${s.rttMs.toFixed(1)} ms (WebRTC ICE)`);
      }
      setFigure('buffer', `${stats.bufferedMs.toFixed(0)} ms (WebRTC jitter buffer)`);
      setFigure('underruns', `${stats.underruns} concealed / ${s.packetsLost ?? 0} lost`);
    } finally {
      this.statsBusy = false;
    }
  }
}
