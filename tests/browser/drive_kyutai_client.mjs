// Drives Kyutai's own web client (the Vite app in the `client/` folder of github.com/kyutai-labs/moshi,
// built with `npm run build`, unchanged) in headless Chromium against a duplex server's /api/chat, and
// prints a JSON summary on stdout. Used by scripts/check_kyutai_web_client.py and
// tests/test_kyutai_clients.py (when KYUTAI_WEB_CLIENT_DIST is set); runnable by hand:
//
//   node tests/browser/drive_kyutai_client.mjs --url http://127.0.0.1:8998/ --wav speech.wav \
//        --screenshot /tmp/kyutai.png [--listen-ms 6000] [--chromium /usr/bin/chromium]
//
// --url is the page: a duplex server started with `--static <Kyutai's dist>` (the app then connects to
// /api/chat on the same host, as it does behind moshi.server), or any server of the dist with
// `?worker_addr=HOST:PORT` pointing at duplex. The microphone is Chromium's fake capture device playing
// --wav in a loop. Kyutai's code is not touched: an init script only wraps window.WebSocket to count
// what crosses the socket (first byte = message kind), and the page's own DOM gives what it played.

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
    chromium: { type: 'string', default: '/usr/bin/chromium' },
    'timeout-ms': { type: 'string', default: '60000' },
    'listen-ms': { type: 'string', default: '6000' },
  },
});
if (!opt.url || !opt.wav || !opt.screenshot) {
  console.error('usage: drive_kyutai_client.mjs --url PAGE_URL --wav FILE.wav --screenshot FILE.png');
  process.exit(2);
}
const timeout = Number(opt['timeout-ms']);

// Runs in the page before Kyutai's bundle: counts every message of every socket by its first byte.
function watchSockets() {
  const Native = window.WebSocket;
  const tap = { sockets: [] };
  window.__kyutaiTap = tap;
  const kindOf = (data) => {
    if (typeof data === 'string') return 'text-frame';
    const bytes = data instanceof ArrayBuffer ? new Uint8Array(data) : new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
    return bytes.length === 0 ? 'empty' : bytes[0];
  };
  const count = (table, kind, size) => {
    const row = table[kind] ?? (table[kind] = { n: 0, bytes: 0 });
    row.n += 1;
    row.bytes += size;
  };
  class TappedWebSocket extends Native {
    constructor(url, protocols) {
      super(url, protocols);
      const rec = { url: String(url), opened: false, sent: {}, received: {}, firstReceived: null, close: null, text: '',
        createdAt: performance.now(), handshakeAfterMs: null };
      tap.sockets.push(rec);
      this.addEventListener('open', () => { rec.opened = true; });
      this.addEventListener('message', (event) => {
        const kind = kindOf(event.data);
        const size = typeof event.data === 'string' ? event.data.length : event.data.byteLength;
        if (rec.firstReceived === null) {
          rec.firstReceived = typeof event.data === 'string' ? event.data : Array.from(new Uint8Array(event.data).slice(0, 16));
        }
        count(rec.received, kind, size);
        if (kind === 0 && rec.handshakeAfterMs === null) rec.handshakeAfterMs = Math.round(performance.now() - rec.createdAt);
        if (kind === 2) rec.text += new TextDecoder().decode(new Uint8Array(event.data).slice(1));
      });
      this.addEventListener('close', (event) => { rec.close = { code: event.code, reason: event.reason }; });
    }
    send(data) {
      const size = typeof data === 'string' ? data.length : data.byteLength;
      count(tap.sockets[tap.sockets.length - 1].sent, kindOf(data), size);
      return super.send(data);
    }
  }
  window.WebSocket = TappedWebSocket;
}

// "Audio played: 0:03.12" in the page's Server Audio Stats -> seconds.
function parseClock(text) {
  const m = /(\d+):(\d+)\.(\d+)/.exec(text ?? '');
  return m ? Number(m[1]) * 60 + Number(m[2]) + Number(m[3]) / 100 : null;
}

async function pageState(page) {
  const state = await page.evaluate(() => {
    const cell = (label) => {
      for (const td of document.querySelectorAll('td')) {
        if (td.textContent.trim().startsWith(label)) return td.nextElementSibling?.textContent ?? null;
      }
      return null;
    };
    return {
      sockets: window.__kyutaiTap.sockets,
      audioPlayed: cell('Audio played'),
      missedAudio: cell('Missed audio'),
      shownText: document.querySelector('.player-text')?.textContent ?? null,
      buttons: Array.from(document.querySelectorAll('button')).map((b) => b.textContent.trim()),
      waitingForSlot: document.body.textContent.includes('Waiting for a slot'),
    };
  });
  state.audioPlayedS = parseClock(state.audioPlayed);
  state.missedAudioS = parseClock(state.missedAudio);
  return state;
}

async function main(summary) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'kyutai-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: opt.chromium,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      '--use-fake-ui-for-media-stream', '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${opt.wav}`,
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
    await page.addInitScript(watchSockets);

    summary.step = 'loading the page';
    await page.goto(opt.url, { waitUntil: 'load', timeout });
    summary.step = 'pressing Connect';
    await page.getByRole('button', { name: 'Connect', exact: true }).click({ timeout });

    // 1. The socket opens, the handshake comes, the microphone streams, the answer is decoded and played.
    summary.step = 'waiting for the handshake and audio both ways';
    await page.waitForFunction(() => {
      const s = window.__kyutaiTap.sockets.at(-1);
      return s && s.opened && s.received[0] && (s.sent[1]?.n ?? 0) >= 10 && (s.received[1]?.n ?? 0) >= 10;
    }, null, { timeout, polling: 100 });
    summary.flowing = await pageState(page);

    // 2. Listen a while: audio keeps coming, the page keeps playing it and shows the model's text.
    summary.step = 'listening';
    await page.waitForTimeout(Number(opt['listen-ms']));
    summary.listened = await pageState(page);
    await page.screenshot({ path: opt.screenshot, fullPage: true });

    // 3. Disconnect, as a user would: the page closes the socket.
    summary.step = 'pressing Disconnect';
    await page.getByRole('button', { name: 'Disconnect', exact: true }).click({ timeout });
    await page.waitForFunction(() => window.__kyutaiTap.sockets.at(-1).close !== null, null, { timeout, polling: 100 });
    summary.closed = await pageState(page);
    summary.ok = true;
  } finally {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  }
}

const summary = { ok: false, step: 'starting', console: [], pageErrors: [], httpErrors: [] };
try {
  await main(summary);
} catch (err) {
  summary.error = String(err && err.stack || err);
}
console.log(JSON.stringify(summary));
process.exit(summary.ok ? 0 : 1);
