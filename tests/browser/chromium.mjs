// Headless Debian Chromium for the page's drivers: a fake microphone playing a WAV, autoplay allowed,
// host ICE candidates as plain IPs (no mDNS names, which aiortc on loopback cannot resolve). Nothing
// downloads a browser: playwright-core drives the system one.

import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

/** A persistent context (its localStorage survives reloads) and a cleanup function. */
export async function launch({ executable = '/usr/bin/chromium', wav, denyMic = false }) {
  const userDataDir = mkdtempSync(join(tmpdir(), 'duplex-chromium-'));
  const context = await chromium.launchPersistentContext(userDataDir, {
    executablePath: executable,
    headless: true,
    args: [
      '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync',
      ...(denyMic ? [] : ['--use-fake-ui-for-media-stream']),
      '--use-fake-device-for-media-stream',
      `--use-file-for-fake-audio-capture=${wav}`,
      '--autoplay-policy=no-user-gesture-required',
      '--disable-features=WebRtcHideLocalIpsWithMdns',
    ],
  });
  const close = async () => {
    await context.close();
    rmSync(userDataDir, { recursive: true, force: true });
  };
  return { context, close };
}

/** Collects the page's console errors, uncaught errors and failed requests into `summary`. */
export function watch(page, summary) {
  page.on('console', (m) => {
    if (m.type() === 'error' || m.type() === 'warning') summary.console.push(`${m.type()}: ${m.text()}`);
  });
  page.on('pageerror', (err) => summary.pageErrors.push(String(err)));
  page.on('response', (r) => {
    if (r.status() >= 400) summary.httpErrors.push(`${r.status()} ${r.url()}`);
  });
}

/** Runs a driver's `main(summary)`, prints the summary as JSON (what the pytest side reads) and exits
 * 0 only when `main` set `summary.ok`. */
export async function runDriver(main) {
  const summary = { ok: false, step: 'launch', console: [], pageErrors: [], httpErrors: [] };
  try {
    await main(summary);
  } catch (err) {
    summary.error = String(err?.message ?? err).split('\n')[0];
  }
  process.stdout.write(`${JSON.stringify(summary, null, 2)}\n`);
  process.exit(summary.ok ? 0 : 1);
}
