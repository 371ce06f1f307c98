// Drives the browser client in headless Chromium against a running server and prints a JSON
// summary on stdout. Used by tests/test_browser_client.py; runnable by hand too:
//
//   node tests/browser/drive_page.mjs --url http://127.0.0.1:8000 --wav speech.wav \
//        --screenshot /tmp/client.png [--mode duplex] [--token T] [--chromium /usr/bin/chromium]
//
// The microphone is Chromium's fake capture device playing --wav in a loop. It never downloads a
// browser: playwright-core only drives the system Chromium.

import { parseArgs } from 'node:util';
import { launch, runDriver, watch } from './chromium.mjs';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    wav: { type: 'string' },
    screenshot: { type: 'string' },
    mode: { type: 'string', default: 'duplex' },
    transport: { type: 'string', default: 'websocket' },   // or webrtc (the page's own WebRTC path)
    query: { type: 'string', default: '' },                // more page parameters, e.g. transcribe_user=1
    token: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'timeout-ms': { type: 'string', default: '60000' },
    'listen-ms': { type: 'string', default: '4000' },
    // conversation: talk, interrupt, stop. refused: expect the page to show an error (wrong
    // token, full server, denied microphone) and report it.
    scenario: { type: 'string', default: 'conversation' },
    'deny-mic': { type: 'boolean', default: false },
    'no-vanish': { type: 'boolean', default: false },   // WebRTC: skip the second call that just goes away
  },
});
if (!opt.url || !opt.wav || !opt.screenshot) {
  console.error('usage: drive_page.mjs --url URL --wav FILE.wav --screenshot FILE.png [--mode M] [--token T]');
  process.exit(2);
}
const timeout = Number(opt['timeout-ms']);
const stats = (page) => page.evaluate(() => window.duplexStats);

async function main(summary) {
  const { context, close } = await launch({ executable: opt.chromium, wav: opt.wav, denyMic: opt['deny-mic'] });
  const rtc = opt.transport === 'webrtc';
  try {
    const page = context.pages()[0] ?? await context.newPage();
    watch(page, summary);
    // The page's requests to the Realtime endpoints, with the kind of key each carried (never the key itself).
    summary.realtimeRequests = [];
    page.on('request', (r) => {
      if (!r.url().includes('/v1/realtime/')) return;
      const auth = r.headers().authorization ?? '';
      const key = auth.replace(/^Bearer /, '');
      summary.realtimeRequests.push({ method: r.method(), path: new URL(r.url()).pathname,
        auth: !auth ? 'none' : key.startsWith('ek_') ? 'client secret' : key === opt.token ? 'token' : 'other' });
    });

    const query = new URLSearchParams({ autostart: '1', mode: opt.mode, transport: opt.transport, ...Object.fromEntries(new URLSearchParams(opt.query)) });
    if (opt.token) query.set('token', opt.token);
    const url = `${opt.url.replace(/\/$/, '')}/?${query}`;
    summary.page = url;
    await page.goto(url, { waitUntil: 'load', timeout });
    if (opt.scenario === 'refused') {
      await refused(page, summary);
      return;
    }

    // 1. Audio flows both ways: pages sent, pages received, decoded and played.
    summary.step = 'waiting for audio to flow';
    // WebRTC: RTP packets (20 ms) both ways and samples played out of Chromium's jitter buffer.
    await page.waitForFunction((webrtc) => {
      const s = window.duplexStats;
      return s.connected && s.framesSent >= 10 && s.pagesReceived >= 5 && s.samplesPlayed > 0
        && (webrtc || s.framesDecoded > 0);
    }, rtc, { timeout, polling: 100 });
    await page.waitForTimeout(Number(opt['listen-ms']));
    summary.flowing = await stats(page);

    // 2. Interrupt: the server acknowledges and the playback buffer is emptied.
    summary.step = 'interrupt';
    if (rtc) await interruptCall(page, summary);
    else {
      const flushesBefore = summary.flowing.flushes;
      await page.click('#interrupt');
      await page.waitForFunction(
        (n) => window.duplexStats.flushes > n
          && window.duplexStats.flushLog.some((f) => f.reason === 'interrupt_acknowledged'),
        flushesBefore, { timeout: 10000, polling: 50 },
      );
      const afterInterrupt = await stats(page);
      const ackFlush = afterInterrupt.flushLog.filter((f) => f.reason === 'interrupt_acknowledged').at(-1);
      summary.interrupt = {
        flushesBefore,
        flushesAfter: afterInterrupt.flushes,
        reasons: afterInterrupt.flushLog.map((f) => f.reason),
        ackFlush,
        flushed: Boolean(ackFlush) && ackFlush.bufferedAfter === 0,
        rttMs: afterInterrupt.rttMs,
      };
    }

    // 3. What the page shows.
    summary.step = 'reading the page';
    summary.dom = await page.evaluate(() => ({
      transcriptPresent: Boolean(document.getElementById('transcript')),
      assistantTextPresent: Boolean(document.getElementById('assistant-text')),
      transcriptItems: document.querySelectorAll('#transcript li:not(.divider)').length,
      assistantTextChars: document.getElementById('assistant-text').textContent.length,
      status: document.getElementById('status-pill').textContent,
      transport: document.getElementById('fig-transport').textContent,
      rtt: document.getElementById('fig-rtt').textContent,
      connection: document.getElementById('connection-pill').textContent,
      banner: document.getElementById('banner').hidden ? null : document.getElementById('banner').textContent,
      buttons: Object.fromEntries(['start', 'stop', 'reset', 'interrupt']
        .map((id) => [id, !document.getElementById(id).disabled])),
    }));
    await page.screenshot({ path: opt.screenshot, fullPage: true });
    summary.screenshot = opt.screenshot;

    // 4. Stop: acknowledged, the page shows the conversation stopped.
    summary.step = 'stop';
    await page.click('#stop');
    await page.waitForFunction(() => window.duplexStats.lastStatus === 'stopped', null, { timeout: 10000 });
    summary.stopped = await stats(page);
    // The server's /health right after Stop: a WebRTC hang-up is answered once the slot is free.
    summary.healthAfterStop = await page.evaluate(() => fetch('/health').then((r) => r.json()));

    // 5. WebRTC: a second call whose page simply goes away (no hang-up): the server must notice.
    if (rtc && !opt['no-vanish']) {
      summary.step = 'vanish';
      await page.click('#start');
      await page.waitForFunction(() => window.duplexStats.started && window.duplexStats.pagesReceived >= 5, null,
        { timeout, polling: 100 });
      summary.vanished = await stats(page);
      await page.close();
    }
    summary.step = 'done';
    summary.ok = true;
  } catch (err) {
    // Leave a picture of the failure, and what the page knew at that point.
    const page = context.pages()[0];
    if (page) {
      summary.statsAtFailure = await stats(page).catch(() => null);
      await page.screenshot({ path: opt.screenshot, fullPage: true }).catch(() => {});
      summary.screenshot = opt.screenshot;
    }
    throw err;
  } finally {
    await close();
  }
}

/** WebRTC: once the assistant speaks (output_audio_buffer.started), Interrupt sends response.cancel and
 * output_audio_buffer.clear; the server's answer (output_audio_buffer.cleared, response.done cancelled)
 * is the acknowledgement. */
async function interruptCall(page, summary) {
  await page.waitForFunction(() => window.duplexStats.lastStatus === 'speaking', null, { timeout, polling: 50 });
  const before = await stats(page);
  await page.click('#interrupt');
  await page.waitForFunction((n) => window.duplexStats.interruptAcks > n, before.interruptAcks,
    { timeout: 10000, polling: 50 });
  const after = await stats(page);
  summary.interrupt = {
    acksBefore: before.interruptAcks, acksAfter: after.interruptAcks,
    eventsBefore: before.rtcEvents, eventsAfter: after.rtcEvents, statusAfter: after.lastStatus,
    rttMs: after.rttMs, rtc: after.rtc,
  };
}

/** The page must show an error and say why; reports the errors, the banner and the pills. */
async function refused(page, summary) {
  summary.step = 'waiting for an error';
  await page.waitForFunction(
    () => window.duplexStats.errors.some((e) => e.code !== 'not_started'), null, { timeout },
  );
  await page.waitForTimeout(1000);  // let the socket close and the page settle
  summary.refused = await stats(page);
  summary.dom = await page.evaluate(() => ({
    banner: document.getElementById('banner').hidden ? null : document.getElementById('banner').textContent,
    connection: document.getElementById('connection-pill').textContent,
    startEnabled: !document.getElementById('start').disabled,
  }));
  await page.screenshot({ path: opt.screenshot, fullPage: true });
  summary.screenshot = opt.screenshot;
  summary.step = 'done';
  summary.ok = true;
}

await runDriver(main);
