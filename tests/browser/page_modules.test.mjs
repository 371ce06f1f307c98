// The page's pure modules in plain Node, no browser:
//   node --test tests/browser/page_modules.test.mjs
// realtime-events.js (Realtime server events -> the page's messages), settings.js's keyOfError and
// webrtc.js's realtimeSession (the page's settings as a Realtime `session`).

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { RealtimeTranslator } from '../../client/realtime-events.js';
import { keyOfError } from '../../client/settings.js';
import { realtimeSession } from '../../client/webrtc.js';

test('session.created is ready and listening, with the engine as mode', () => {
  const t = new RealtimeTranslator(['duplex', 'cascade']);
  const [ready, status] = t.translate({ type: 'session.created', session: { id: 'sess_1', model: 'duplex' } });
  assert.equal(ready.type, 'ready');
  assert.equal(ready.session_id, 'sess_1');
  assert.deepEqual(ready.modes, ['duplex', 'cascade']);
  assert.deepEqual(status, { type: 'status', status: 'listening', mode: 'duplex' });
  assert.deepEqual(t.translate({ type: 'session.updated', session: { model: 'duplex' } }), []);
  assert.equal(t.translate({ type: 'session.updated', session: { model: 'cascade' } })[0].mode, 'cascade');
});

test('transcript deltas accumulate per item, and the final replaces them', () => {
  const t = new RealtimeTranslator([]);
  const a = t.translate({ type: 'response.output_audio_transcript.delta', item_id: 'item_a', delta: 'Hel' });
  const b = t.translate({ type: 'response.output_audio_transcript.delta', item_id: 'item_a', delta: 'lo' });
  const u = t.translate({ type: 'conversation.item.input_audio_transcription.delta', item_id: 'item_u', delta: 'hi' });
  assert.deepEqual(a[0], { type: 'partial_transcript', role: 'assistant', content: 'Hel', start_ms: 'item_a' });
  assert.equal(b[0].content, 'Hello');
  assert.deepEqual(b[1], { type: 'llm_response', content: 'lo', is_complete: false });
  assert.equal(u[0].role, 'user');
  const done = t.translate({ type: 'response.output_audio_transcript.done', item_id: 'item_a', transcript: 'Hello.' });
  assert.deepEqual(done[0], { type: 'final_transcript', role: 'assistant', content: 'Hello.', start_ms: 'item_a' });
  assert.equal(done[1].is_complete, true);
  const user = t.translate({ type: 'conversation.item.input_audio_transcription.completed', item_id: 'item_u' });
  assert.equal(user[0].content, 'hi');   // no transcript field: what the deltas said
});

test('speaking, interrupt acknowledgements and errors', () => {
  const t = new RealtimeTranslator([]);
  assert.equal(t.translate({ type: 'output_audio_buffer.started' })[0].status, 'speaking');
  assert.equal(t.translate({ type: 'output_audio_buffer.stopped' })[1].status, 'listening');
  assert.equal(t.translate({ type: 'output_audio_buffer.cleared' })[0].type, 'interrupt_acknowledged');
  assert.equal(t.translate({ type: 'response.done', response: { status: 'cancelled' } })[0].type,
    'interrupt_acknowledged');
  assert.deepEqual(t.translate({ type: 'response.done', response: { status: 'completed' } }), []);
  assert.equal(t.translate({ type: 'error', error: { code: 'response_cancel_not_active' } })[0].type,
    'interrupt_acknowledged');
  assert.deepEqual(t.translate({ type: 'error', error: { code: 'unsupported', message: 'm', param: 'p' } })[0],
    { type: 'error', code: 'unsupported', message: 'm', param: 'p' });
  assert.deepEqual(t.translate({ type: 'rate_limits.updated' }), []);
});

test('keyOfError: the param first, else the first key the message names, whole words only', () => {
  assert.equal(keyOfError({ param: 'session.audio.output.voice', message: 'instructions...' }), 'voice');
  assert.equal(keyOfError({ param: 'session.instructions' }), 'system_prompt');
  assert.equal(keyOfError({ param: 'session.audio.input.transcription' }), 'transcribe_user');
  assert.equal(keyOfError({ param: 'session.tools' }), null);
  // /ws errors name the bare key: it wins over whatever key the text mentions
  assert.equal(keyOfError({ param: 'text_top_k', message: 'config.temperature and top_k' }), 'text_top_k');
  assert.equal(keyOfError({ param: 'seed', message: 'config.seed must be int, got bool' }), 'seed');
  assert.equal(keyOfError({ message: 'config.text_temperature must be in [0, 5]' }), 'text_temperature');
  assert.equal(keyOfError({ message: 'config.temperature must be in [0, 5]' }), 'temperature');
  assert.equal(keyOfError({ message: "voice: unknown voice 'x'" }), 'voice');
  assert.equal(keyOfError({ message: 'the cascade does not take top_k' }), 'top_k');
  assert.equal(keyOfError({ message: 'every slot of every engine is busy' }), null);
});

test('realtimeSession: the settings a Realtime session has, and only those given', () => {
  assert.deepEqual(realtimeSession({}), {});
  assert.deepEqual(realtimeSession({ system_prompt: 'Be brief.', voice: 'NATM1.wav', transcribe_user: true, seed: 3 }), {
    instructions: 'Be brief.',
    audio: { output: { voice: 'NATM1.wav' }, input: { transcription: { model: 'duplex-stt' } } },
  });
  assert.deepEqual(realtimeSession({ transcribe_user: false }), { audio: { input: { transcription: null } } });
});
