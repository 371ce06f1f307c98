// Audio in and out of the browser, in Ogg Opus at 24 kHz (PROTOCOL.md, "Audio").
//
// Capture: getUserMedia -> MediaStreamSource -> opus-recorder's `encoder-worklet` (an AudioWorklet
//   that resamples to 24 kHz with the speex resampler and encodes with libopus, in the audio
//   thread). It is created once per connection, so the connection carries ONE continuous Ogg
//   stream: the two header pages first, then one page per 80 ms (4 Opus frames of 20 ms).
// Playback: Ogg pages -> opus-recorder's decoder Worker (libopus, resampled to the context rate)
//   -> our `duplex-playback` AudioWorklet (playback-worklet.js, adaptive jitter buffer).

const VENDOR = new URL('./vendor/opus-recorder/', import.meta.url);
const ENCODER_URL = new URL('encoderWorker.min.js', VENDOR);
const DECODER_URL = new URL('decoderWorker.min.js', VENDOR);
const PLAYBACK_URL = new URL('./playback-worklet.js', import.meta.url);

export const WIRE_SAMPLE_RATE = 24000;

const MIC_CONSTRAINTS = {
  channelCount: 1,
  echoCancellation: true,
  noiseSuppression: true,
  autoGainControl: true,
};

const ENCODER_CONFIG = {
  encoderSampleRate: WIRE_SAMPLE_RATE,
  encoderFrameSize: 20,        // ms per Opus packet
  maxFramesPerPage: 4,         // 4 x 20 ms = one Ogg page per 80 ms model frame
  numberOfChannels: 1,
  encoderApplication: 2049,    // OPUS_APPLICATION_AUDIO, as moshi's web client
  encoderComplexity: 5,
  resampleQuality: 3,
  streamPages: true,
};

/** An error the UI can show as is; `kind` lets the caller pick the wording. */
export class AudioError extends Error {
  constructor(kind, message) {
    super(message);
    this.kind = kind;
  }
}

export class AudioEngine {
  /**
   * @param {object} hooks
   *   onPage(Uint8Array)        an encoded Ogg page of the microphone stream
   *   onDecoded(Float32Array)   a decoded chunk of assistant audio (before the jitter buffer)
   *   onPlaybackStats(stats)    counters from the playback worklet, every ~100 ms
   *   onFlushed(info)           the playback worklet emptied its buffer
   */
  constructor(hooks) {
    this.hooks = hooks;
    this.context = null;
    this.playbackNode = null;
    this.decoder = null;
    this.stream = null;
    this.source = null;
    this.analyser = null;
    this.encoderNode = null;
    this.capturing = false;
    this.headersSent = false;
    this.levelBuffer = null;
  }

  /** Creates the AudioContext, the playback worklet and the decoder. Call from a user gesture. */
  async init() {
    if (this.context) return;
    const Ctx = window.AudioContext || window.webkitAudioContext;
    if (!Ctx || !('audioWorklet' in Ctx.prototype)) {
      throw new AudioError('unsupported', 'This browser has no AudioWorklet support.');
    }
    this.context = new Ctx({ latencyHint: 'interactive' });
    await this.context.audioWorklet.addModule(PLAYBACK_URL);
    await this.context.audioWorklet.addModule(ENCODER_URL);
    this.playbackNode = new AudioWorkletNode(this.context, 'duplex-playback', {
      numberOfInputs: 0, numberOfOutputs: 1, outputChannelCount: [1],
    });
    this.playbackNode.port.onmessage = ({ data }) => {
      if (data.type === 'stats') this.hooks.onPlaybackStats?.(data);
      else if (data.type === 'flushed') this.hooks.onFlushed?.(data);
    };
    this.playbackNode.connect(this.context.destination);
    this.initDecoder();
  }

  initDecoder() {
    this.decoder = new Worker(DECODER_URL);
    this.decoder.onmessage = ({ data }) => {
      // The worker posts an array with one Float32Array per channel, or null when done.
      if (!data || !data[0]) return;
      const samples = data[0];
      this.hooks.onDecoded?.(samples);
      this.playbackNode.port.postMessage({ type: 'pcm', samples }, [samples.buffer]);
    };
    this.decoder.postMessage({
      command: 'init',
      decoderSampleRate: WIRE_SAMPLE_RATE,
      outputBufferSampleRate: this.context.sampleRate,
      bufferLength: Math.round(this.context.sampleRate * 0.02),  // post every 20 ms
      resampleQuality: 0,
    });
  }

  get suspended() {
    return this.context?.state === 'suspended';
  }

  resume() {
    return this.context?.resume();
  }

  /** Asks for the microphone and prepares the encoder; does not start sending yet. */
  async openMicrophone() {
    if (this.stream) return;
    if (!window.isSecureContext || !navigator.mediaDevices?.getUserMedia) {
      throw new AudioError('insecure',
        'The microphone needs a secure context: open the page on http://localhost, or over https '
        + '(start the server with --ssl, see docs/browser-client.md).');
    }
    try {
      this.stream = await navigator.mediaDevices.getUserMedia({ audio: MIC_CONSTRAINTS, video: false });
    } catch (err) {
      if (err.name === 'NotAllowedError' || err.name === 'SecurityError') {
        throw new AudioError('denied', 'Microphone access was denied. Allow the microphone for this '
          + 'site (the icon in the address bar) and press Start again.');
      }
      if (err.name === 'NotFoundError' || err.name === 'OverconstrainedError') {
        throw new AudioError('nomic', 'No microphone was found.');
      }
      throw new AudioError('mic', `Could not open the microphone: ${err.name}: ${err.message}`);
    }
    this.source = this.context.createMediaStreamSource(this.stream);
    this.analyser = this.context.createAnalyser();
    this.analyser.fftSize = 1024;
    this.levelBuffer = new Float32Array(this.analyser.fftSize);
    this.source.connect(this.analyser);
    await this.initEncoder();
  }

  initEncoder() {
    this.encoderNode = new AudioWorkletNode(this.context, 'encoder-worklet', { numberOfOutputs: 0 });
    return new Promise((resolve) => {
      this.encoderNode.port.onmessage = ({ data }) => {
        if (data.message === 'ready') resolve();
        else if (data.message === 'page') this.hooks.onPage?.(data.page);
      };
      this.encoderNode.port.postMessage({
        command: 'init', originalSampleRate: this.context.sampleRate, ...ENCODER_CONFIG,
      });
    });
  }

  /**
   * Sends microphone audio from now on. The first call also emits the Ogg header pages, so
   * they go out right after the first `start` (audio before `start` is discarded by the server).
   */
  startCapture() {
    if (!this.encoderNode || this.capturing) return;
    if (!this.headersSent) {
      this.encoderNode.port.postMessage({ command: 'getHeaderPages' });
      this.headersSent = true;
    }
    this.source.connect(this.encoderNode);
    this.capturing = true;
  }

  /** Stops feeding the encoder; the Ogg stream simply resumes on the next startCapture. */
  stopCapture() {
    if (!this.capturing) return;
    this.source.disconnect(this.encoderNode);
    this.capturing = false;
  }

  /**
   * Begins a new Ogg stream (new serial, headers again on the next startCapture). Used when the
   * server refused a `start`: it discarded the pages sent so far, header pages included.
   */
  async restartStream() {
    if (!this.encoderNode) return;
    this.stopCapture();
    this.encoderNode.port.postMessage({ command: 'close' });
    this.encoderNode.port.onmessage = null;
    this.headersSent = false;
    await this.initEncoder();
  }

  /** Queues one Ogg page of assistant audio for decoding and playback. */
  playPage(page) {
    this.decoder?.postMessage({ command: 'decode', pages: page }, [page.buffer]);
  }

  /** Drops every buffered sample of assistant audio now (interrupt, tts_stop). */
  flushPlayback(reason) {
    this.playbackNode?.port.postMessage({ type: 'flush', reason });
  }

  /** Microphone level as { rms, peak } in [0, 1] over the last ~20 ms. */
  inputLevel() {
    if (!this.analyser) return { rms: 0, peak: 0 };
    this.analyser.getFloatTimeDomainData(this.levelBuffer);
    let sum = 0;
    let peak = 0;
    for (const s of this.levelBuffer) {
      sum += s * s;
      peak = Math.max(peak, Math.abs(s));
    }
    return { rms: Math.sqrt(sum / this.levelBuffer.length), peak };
  }

  /** Releases the microphone, the workers and the context (on disconnect). */
  async close() {
    this.stopCapture();
    this.stream?.getTracks().forEach((t) => t.stop());
    this.encoderNode?.port.postMessage({ command: 'close' });
    this.decoder?.terminate();
    const ctx = this.context;
    Object.assign(this, {
      context: null, playbackNode: null, decoder: null, stream: null, source: null,
      analyser: null, encoderNode: null, capturing: false, headersSent: false,
    });
    if (ctx) await ctx.close();
  }
}
