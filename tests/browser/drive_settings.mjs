// Drives the page's conversation settings in headless Chromium against a running server (a persona
// model: `duplex serve --preset tiny-personaplex`) and prints a JSON summary on stdout for
// tests/test_browser_settings.py, which checks what the server received (its recordings' meta.json).
//
//   node tests/browser/drive_settings.mjs --url http://127.0.0.1:8998 --wav speech.wav \
//        [--transport websocket|webrtc] [--duplex-voice NATM1.wav] [--other-voice VARF0.wav]
//
// One browser profile throughout, so localStorage carries over between the steps:
//   url      a link with settings starts a conversation with them (autostart)
//   form     settings typed into the form start the next one; the address bar then holds them
//   reload   a bare reload shows them again (localStorage)
//   refused  an out-of-range temperature and an unknown voice: each refusal is shown beside its field
//   modes    the fields and voices each mode offers

import { parseArgs } from 'node:util';
import { launch, runDriver, watch } from './chromium.mjs';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    wav: { type: 'string' },
    transport: { type: 'string', default: 'websocket' },
    'duplex-voice': { type: 'string', default: 'NATM1.wav' },
    'other-voice': { type: 'string', default: 'VARF0.wav' },
    refuse: { type: 'string', default: 'temperature,voice' },   // the keys to refuse (WebRTC has no temperature)
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'timeout-ms': { type: 'string', default: '60000' },
  },
});
if (!opt.url || !opt.wav) {
  console.error('usage: drive_settings.mjs --url URL --wav FILE.wav [--transport websocket|webrtc]');
  process.exit(2);
}
const timeout = Number(opt['timeout-ms']);
const base = opt.url.replace(/\/$/, '');
const stats = (page) => page.evaluate(() => window.duplexStats);

function pageUrl(query) {
  return `${base}/?${new URLSearchParams({ transport: opt.transport, ...query })}`;
}

/** The settings form as the page shows it: each field's value, error and whether it is enabled. */
const readForm = (page) => page.evaluate(() => Object.fromEntries(
  [...document.querySelectorAll('#settings .field')].map((f) => {
    const input = f.querySelector('input, select, textarea');
    const error = f.querySelector('.field-error');
    return [f.dataset.key, {
      value: input.type === 'checkbox' ? input.checked : input.value,
      options: input.tagName === 'SELECT' ? [...input.options].map((o) => o.value) : undefined,
      error: error.hidden ? null : error.textContent,
    }];
  }),
));

/** Waits for a conversation to run with audio both ways, runs `during` (if any), then stops it; returns
 * what the page saw. */
async function converse(page, during = null) {
  await page.waitForFunction(() => {
    const s = window.duplexStats;
    return s.started && s.framesSent >= 10 && s.pagesReceived >= 10;
  }, null, { timeout, polling: 100 });
  const changed = during ? await during() : null;
  const running = await stats(page);
  await page.click('#stop');
  await page.waitForFunction(() => window.duplexStats.lastStatus === 'stopped', null, { timeout: 15000 });
  return { sessionId: running.sessionId, config: running.config, mode: running.mode, transport: running.transport,
    errors: running.errors, configures: running.configures, changed };
}

async function main(summary) {
  const { context, close } = await launch({ executable: opt.chromium, wav: opt.wav });
  try {
    const page = context.pages()[0] ?? await context.newPage();
    watch(page, summary);

    summary.step = 'url';
    await page.goto(pageUrl({
      mode: 'duplex', autostart: '1', system_prompt: 'You like trains.', voice: opt['duplex-voice'],
      temperature: '0.5', text_top_k: '5', seed: '7',
    }), { waitUntil: 'load', timeout });
    summary.url = { form: await readForm(page), ...await converse(page) };

    summary.step = 'form';
    await page.goto(pageUrl({ mode: 'duplex' }), { waitUntil: 'load', timeout });
    await page.waitForSelector('#cfg-system_prompt');
    await page.fill('#cfg-system_prompt', 'You are a pirate.');
    await page.dispatchEvent('#cfg-system_prompt', 'change');
    await page.selectOption('#cfg-voice', opt['other-voice']);
    if (opt.transport === 'websocket') {   // sampling keys: not in a Realtime session
      await page.fill('#cfg-seed', '11');
      await page.dispatchEvent('#cfg-seed', 'change');
      await page.fill('#cfg-temperature', '');
      await page.dispatchEvent('#cfg-temperature', 'change');
    }
    await page.click('#start');
    // During the conversation: a key the engine takes mid-conversation is sent at once (WebSocket:
    // `configure` text_temperature; WebRTC: `session.update` transcription); a persona's prompt is locked.
    const during = async () => {
      const locked = await page.isDisabled('#cfg-system_prompt');
      if (opt.transport === 'websocket') {
        await page.fill('#cfg-text_temperature', '0.3');
        await page.dispatchEvent('#cfg-text_temperature', 'change');
      } else {
        await page.check('#cfg-transcribe_user');
      }
      await page.waitForFunction(() => window.duplexStats.configures.length > 0, null, { timeout: 10000 });
      return { systemPromptLocked: locked };
    };
    summary.form = { ...await converse(page, during), address: page.url() };

    summary.step = 'reload';
    await page.goto(`${base}/`, { waitUntil: 'load', timeout });
    await page.waitForSelector('#cfg-system_prompt');
    summary.reload = { form: await readForm(page), address: page.url(),
      mode: await page.inputValue('#mode'), transport: await page.evaluate(() => window.duplexStats.transport) };

    summary.step = 'refused';
    summary.refused = {};
    const refusals = { temperature: { temperature: '9' }, voice: { voice: 'nobody.wav', temperature: '' } };
    for (const key of opt.refuse.split(',')) {
      const query = refusals[key];
      await page.goto(pageUrl({ mode: 'duplex', autostart: '1', ...query }), { waitUntil: 'load', timeout });
      await page.waitForFunction((k) => window.duplexStats.errors.some((e) => e.key === k), key, { timeout });
      const s = await stats(page);
      summary.refused[key] = {
        form: await readForm(page), errors: s.errors, started: s.started, framesSent: s.framesSent,
        banner: await page.evaluate(() => (document.getElementById('banner').hidden
          ? null : document.getElementById('banner').textContent)),
      };
      if (s.started) {   // WebRTC: a refused voice leaves the call running without it; hang up
        await page.click('#stop');
        await page.waitForFunction(() => window.duplexStats.lastStatus === 'stopped', null, { timeout: 15000 });
      }
    }

    summary.step = 'modes';
    summary.modes = {};
    for (const mode of ['duplex', 'cascade', 'auto']) {
      await page.goto(pageUrl({ mode, voice: '' }), { waitUntil: 'load', timeout });
      await page.waitForSelector('#settings .field');
      summary.modes[mode] = await readForm(page);
    }
    summary.step = 'done';
    summary.ok = true;
  } catch (err) {
    const page = context.pages()[0];
    if (page) summary.statsAtFailure = await stats(page).catch(() => null);
    throw err;
  } finally {
    await close();
  }
}

await runDriver(main);
