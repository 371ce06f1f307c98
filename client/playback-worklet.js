// Playback of the assistant's voice: an AudioWorklet with a small adaptive jitter buffer.
//
// The main thread posts decoded PCM chunks (Float32Array at the context's sample rate). The
// network delivers one 80 ms page at a time, with jitter, so playback:
//   - waits until `targetMs` of audio is buffered before it starts (or restarts after a gap),
//   - on an underrun plays silence, grows the target a step and buffers again,
//   - on overflow (far more buffered than the target) drops the oldest audio to stay live,
//   - shrinks the target again slowly after a long stretch without underruns,
//   - on `flush` (interrupt / tts_stop) drops everything at once.
// Every ~100 ms it posts its counters and the output level back to the main thread.

const MIN_TARGET_MS = 80;
const MAX_TARGET_MS = 400;
const GROW_MS = 40;            // target step on each underrun
const SHRINK_MS = 20;          // target step after SHRINK_AFTER_S without underruns
const SHRINK_AFTER_S = 10;
const OVERFLOW_FACTOR = 2;     // drop oldest when buffered > target * factor + 100 ms
const REPORT_EVERY_S = 0.1;

class PlaybackProcessor extends AudioWorkletProcessor {
  constructor() {
    super();
    this.ms = sampleRate / 1000;
    this.chunks = [];          // queued Float32Arrays
    this.offset = 0;           // read position inside chunks[0]
    this.buffered = 0;         // samples queued
    this.targetMs = MIN_TARGET_MS;
    this.playing = false;      // false while (re)buffering
    this.samplesPlayed = 0;
    this.underruns = 0;
    this.droppedSamples = 0;   // overflow drops
    this.flushes = 0;
    this.sinceUnderrun = 0;    // samples played since the last underrun
    this.sinceReport = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.levelSamples = 0;
    this.port.onmessage = (event) => this.onMessage(event.data);
  }

  onMessage(msg) {
    if (msg.type === 'pcm') {
      this.chunks.push(msg.samples);
      this.buffered += msg.samples.length;
      this.dropOnOverflow();
    } else if (msg.type === 'flush') {
      const dropped = this.buffered;
      this.chunks = [];
      this.offset = 0;
      this.buffered = 0;
      this.playing = false;
      this.flushes += 1;
      this.port.postMessage({ type: 'flushed', reason: msg.reason, droppedSamples: dropped,
        bufferedAfter: this.buffered, flushes: this.flushes });
      this.report();
    }
  }

  dropOnOverflow() {
    const limit = (this.targetMs * OVERFLOW_FACTOR + 100) * this.ms;
    if (this.buffered <= limit) return;
    let excess = this.buffered - this.targetMs * this.ms;
    while (excess > 0 && this.chunks.length > 0) {
      const left = this.chunks[0].length - this.offset;
      const n = Math.min(left, excess);
      this.offset += n;
      this.buffered -= n;
      this.droppedSamples += n;
      excess -= n;
      if (this.offset >= this.chunks[0].length) {
        this.chunks.shift();
        this.offset = 0;
      }
    }
  }

  process(inputs, outputs) {
    const out = outputs[0][0];
    let written = 0;
    if (!this.playing && this.buffered >= this.targetMs * this.ms) this.playing = true;
    if (this.playing) {
      while (written < out.length && this.chunks.length > 0) {
        const chunk = this.chunks[0];
        const n = Math.min(out.length - written, chunk.length - this.offset);
        out.set(chunk.subarray(this.offset, this.offset + n), written);
        written += n;
        this.offset += n;
        this.buffered -= n;
        if (this.offset >= chunk.length) {
          this.chunks.shift();
          this.offset = 0;
        }
      }
      if (written < out.length) {
        // Ran dry mid-stream: play silence, and ask for a little more cushion next time.
        this.underruns += 1;
        this.playing = false;
        this.sinceUnderrun = 0;
        this.targetMs = Math.min(MAX_TARGET_MS, this.targetMs + GROW_MS);
      }
    }
    out.fill(0, written);
    for (let ch = 1; ch < outputs[0].length; ch++) outputs[0][ch].set(out);

    this.samplesPlayed += written;
    this.sinceUnderrun += written;
    if (this.sinceUnderrun > SHRINK_AFTER_S * sampleRate && this.targetMs > MIN_TARGET_MS) {
      this.targetMs = Math.max(MIN_TARGET_MS, this.targetMs - SHRINK_MS);
      this.sinceUnderrun = 0;
    }
    for (let i = 0; i < written; i++) {
      const s = out[i];
      this.sumSquares += s * s;
      if (Math.abs(s) > this.peak) this.peak = Math.abs(s);
    }
    this.levelSamples += out.length;
    this.sinceReport += out.length;
    if (this.sinceReport >= REPORT_EVERY_S * sampleRate) this.report();
    return true;
  }

  report() {
    const rms = this.levelSamples ? Math.sqrt(this.sumSquares / this.levelSamples) : 0;
    this.port.postMessage({
      type: 'stats',
      samplesPlayed: this.samplesPlayed,
      bufferedMs: this.buffered / this.ms,
      targetMs: this.targetMs,
      playing: this.playing,
      underruns: this.underruns,
      droppedSamples: this.droppedSamples,
      flushes: this.flushes,
      rms,
      peak: this.peak,
    });
    this.sinceReport = 0;
    this.sumSquares = 0;
    this.peak = 0;
    this.levelSamples = 0;
  }
}

registerProcessor('duplex-playback', PlaybackProcessor);
