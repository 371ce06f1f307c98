// Drives the browser client in headless Chromium against a running server and prints a JSON
// summary on stdout. Used by tests/test_browser_client.py; runnable by hand too:
//
//   node tests/browser/drive_page.mjs --url http://127.0.0.1:8000 --wav speech.wav \
//        --screenshot /tmp/client.png [--mode duplex] [--token T] [--chromium /usr/bin/chromium]
//
// The microphone is Chromium's fake capture device playing --wav in a loop. It never downloads a
// browser: playwright-core only drives the system Chromium.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { chromium } from 'playwright-core';

const { values: opt } = parseArgs({
  options: {
    url: { type: 'string' },
    wav: { type: 'string' },
    screenshot: { type: 'string' },
    mode: { type: 'string', default: 'duplex' },
    token: { type: 'string' },
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'timeout-ms': { type: 'string', default: '60000' },
    'listen-ms': { type: 'string', default: '4000' },
    // conversation: talk, interrupt, stop. refused: expect the page to show an error (wrong
    // token, full server, denied microphone) and report it.
    scenario: { type: 'string', default: 'conversation' },
    'deny-mic': { type: 'boolean', default: false },
  },
});
if (!opt.url || !opt.wav || !opt.screenshot) {
  console.error('usage: drive_page.mjs --url URL --wav FILE.wav --screenshot FILE.png [--mode M] [--token T]');
  process.exit(2);
}
const timeout = Number(opt['timeout-ms']);
const stats = (page) => page.evaluate(() => window.duplexStats);

async function main(summary) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'duplex-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: opt.chromium,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(opt['deny-mic'] ? [] : ['--use-fake-ui-for-media-stream']),
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${opt.wav}`,
      // A kiosk has no user gesture before audio starts.
      '--autoplay-policy=no-user-gesture-required',
    ],
  });
  try {
    const page = context.pages()[0] ?? await context.newPage();
    page.on('console', (m) => {
      if (m.type() === 'error' || m.type() === 'warning') summary.console.push(`${m.type()}: ${m.text()}`);
    });
    page.on('pageerror', (err) => summary.pageErrors.push(String(err)));
    page.on('response', (r) => {
      if (r.status() >= 400) summary.httpErrors.push(`${r.status()} ${r.url()}`);
    });

    const query = new URLSearchParams({ autostart: '1', mode: opt.mode });
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
    await page.waitForFunction(() => {
      const s = window.duplexStats;
      return s.connected && s.framesSent >= 10 && s.pagesReceived >= 5 && s.framesDecoded > 0 && s.samplesPlayed > 0;
    }, null, { timeout, polling: 100 });
    await page.waitForTimeout(Number(opt['listen-ms']));
    summary.flowing = await stats(page);

    // 2. Interrupt: the server acknowledges and the playback buffer is emptied.
    summary.step = 'interrupt';
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

    // 3. What the page shows.
    summary.step = 'reading the page';
    summary.dom = await page.evaluate(() => ({
      transcriptPresent: Boolean(document.getElementById('transcript')),
      assistantTextPresent: Boolean(document.getElementById('assistant-text')),
      transcriptItems: document.querySelectorAll('#transcript li:not(.divider)').length,
      assistantTextChars: document.getElementById('assistant-text').textContent.length,
      status: document.getElementById('status-pill').textContent,
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
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
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

const summary = { ok: false, step: 'launch', console: [], pageErrors: [], httpErrors: [] };
try {
  await main(summary);
} catch (err) {
  summary.error = String(err?.message ?? err).split('\n')[0];
}
process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
process.exit(summary.ok ? 0 : 1);
