// The playback jitter buffer (client/playback-worklet.js) in plain Node, no browser:
//   node --test tests/browser/playback_worklet.test.mjs
// The AudioWorklet globals are stood in for; the processor's own code runs unchanged.

import assert from 'node:assert/strict';
import { test } from 'node:test';

const RATE = 48000;
const QUANTUM = 128;
const MS = RATE / 1000;

let Processor = null;
globalThis.sampleRate = RATE;
globalThis.AudioWorkletProcessor = class {
  constructor() {
    this.port = { posted: [], postMessage(m) { this.posted.push(m); }, onmessage: null };
  }
};
globalThis.registerProcessor = (name, cls) => { Processor = cls; };
await import('../../client/playback-worklet.js');

function make() {
  const p = new Processor();
  const send = (msg) => p.port.onmessage({ data: msg });
  const pushMs = (ms, value = 0.5) => send({ type: 'pcm', samples: new Float32Array(ms * MS).fill(value) });
  // Runs `n` render quanta; returns the samples written.
  const render = (n) => {
    const out = [];
    for (let i = 0; i < n; i++) {
      const channel = new Float32Array(QUANTUM);
      p.process([], [[channel]]);
      out.push(...channel);
    }
    return Float32Array.from(out);
  };
  return { p, send, pushMs, render };
}

test('waits for 80 ms before playing, then plays in order', () => {
  const { p, send, render } = make();
  send({ type: 'pcm', samples: new Float32Array(40 * MS).fill(0.25) });
  assert.equal(render(4).some((s) => s !== 0), false, 'silent while less than 80 ms is buffered');
  send({ type: 'pcm', samples: new Float32Array(40 * MS).fill(0.75) });
  const out = render(1);
  assert.equal(out[0], 0.25);
  assert.equal(p.samplesPlayed, QUANTUM);
});

test('an underrun plays silence and grows the target', () => {
  const { p, pushMs, render } = make();
  pushMs(80);
  render(Math.ceil((80 * MS) / QUANTUM) + 1);  // drain it, then one quantum more
  assert.equal(p.underruns, 1);
  assert.equal(p.targetMs, 120);
  assert.equal(p.playing, false);
  pushMs(100);
  assert.equal(render(1).some((s) => s !== 0), false, 'rebuffers up to the new target');
  pushMs(40);
  assert.equal(render(1)[0], 0.5);
});

test('overflow drops the oldest audio', () => {
  const { p, send } = make();
  send({ type: 'pcm', samples: new Float32Array(200 * MS).fill(0.1) });  // oldest
  send({ type: 'pcm', samples: new Float32Array(200 * MS).fill(0.9) });  // newest
  assert.ok(p.buffered <= p.targetMs * MS, `kept ${p.buffered / MS} ms`);
  assert.ok(p.droppedSamples > 0);
  assert.equal(p.chunks[0][p.offset], Math.fround(0.9), 'what is left is the newest audio');
});

test('flush empties the buffer at once and reports it', () => {
  const { p, pushMs, send, render } = make();
  pushMs(200);
  render(2);
  send({ type: 'flush', reason: 'tts_stop' });
  const flushed = p.port.posted.find((m) => m.type === 'flushed');
  assert.equal(flushed.reason, 'tts_stop');
  assert.equal(flushed.bufferedAfter, 0);
  assert.ok(flushed.droppedSamples > 150 * MS);
  assert.equal(p.buffered, 0);
  assert.equal(render(2).some((s) => s !== 0), false, 'nothing left to play');
});

test('the target shrinks back after a long stretch without underruns', () => {
  const { p, pushMs, render } = make();
  p.targetMs = 200;
  for (let i = 0; i < 130; i++) {  // ~10.4 s of steady audio, always ahead of playback
    pushMs(80);
    render(Math.round((80 * MS) / QUANTUM));
  }
  assert.equal(p.underruns, 0);
  assert.ok(p.targetMs < 200, `target ${p.targetMs} ms`);
});
