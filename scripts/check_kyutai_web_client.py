#!/usr/bin/env python3
"""Kyutai's own web client, unchanged, against a server's /api/chat: the manual check of docs/moshi-compat.md.

    python scripts/check_kyutai_web_client.py DIST [--server URL] [--listen-s 6] [--json OUT.json]
                                                    [--screenshot OUT.png]

DIST is the `dist/` folder of Kyutai's web client (the `client/` folder of github.com/kyutai-labs/moshi,
built with `npm ci && npm run build`; docs/moshi-compat.md has the commands). CI cannot build it (no
GitHub there), hence a script. Without --server it starts `duplex serve --preset tiny --static DIST`, so
duplex serves the page and the page talks to its /api/chat, as behind `moshi.server --static DIST`. With
--server URL (a running duplex, or Kyutai's moshi.server for comparison: scripts/moshi_server_cpu.py) it
serves DIST itself on a free loopback port and opens it with `?worker_addr=` pointing at URL.

tests/browser/drive_kyutai_client.mjs plays espeak-ng speech into headless Chromium's fake microphone,
presses Connect, listens, presses Disconnect, and reports what crossed the socket (counted by kind, first
byte) and what the page showed. The checks below are printed one per line; exit status 0 when all hold.
Needs /usr/bin/chromium, node, `npm ci --prefix tests/browser`, espeak-ng and sox.
"""

from __future__ import annotations

import argparse
import functools
import http.server
import json
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from duplex.server.process import ServerProcess  # noqa: E402  (after the path is set, for a plain checkout)

DRIVER = REPO / "tests" / "browser" / "drive_kyutai_client.mjs"
SPEECH = "Hello there. Can you hear me? Tell me something about the weather today."


def speech_wav(folder: Path) -> Path:
    """espeak-ng speech as Chromium's fake capture device wants it: 24 kHz mono 16-bit WAV."""
    raw, wav = folder / "speech-raw.wav", folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), SPEECH], check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "24000", "-c", "1", "-b", "16", str(wav)], check=True, capture_output=True)
    return wav


def get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as response:
        return response.read().decode()


def server_counters(http_url: str) -> dict:
    """duplex's /health frame counters and bad_audio errors; {} for a server without them (moshi.server)."""
    try:
        health = json.loads(get(http_url + "/health"))
        metrics = get(http_url + "/metrics")
    except (OSError, ValueError):
        return {}
    bad_audio = re.search(r'^duplex_errors_total\{code="bad_audio"\} (\S+)$', metrics, re.MULTILINE)
    return {"frames_in": health["frames_in"], "frames_out": health["frames_out"],
            "active": health["engines"]["duplex"]["active"], "bad_audio": float(bad_audio.group(1)) if bad_audio else 0.0}


def wait_idle(http_url: str, timeout_s: float = 10.0) -> dict:
    """duplex's counters once its last /api/chat slot is released (a teardown takes one loop turn)."""
    deadline = time.monotonic() + timeout_s
    while (counters := server_counters(http_url)) and counters["active"] and time.monotonic() < deadline:
        time.sleep(0.05)
    return counters


class StaticServer:
    """DIST on a free loopback port, in a thread (the page only: the socket goes to --server)."""

    def __init__(self, folder: Path):
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.thread.join()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args) -> None:   # noqa: A002 (the stdlib's name)
        pass


def checks(summary: dict, before: dict, after: dict) -> list[tuple[bool, str]]:
    """(holds, what) for each claim: handshake, audio both ways, decodable, played, text shown, clean close."""
    if not summary.get("ok"):
        return [(False, f"the page got through: failed at {summary.get('step')!r}: {summary.get('error')}")]
    sock = summary["closed"]["sockets"][-1]
    sent, received = sock["sent"], sock["received"]
    pages_sent, pages_received = sent.get("1", {}).get("n", 0), received.get("1", {}).get("n", 0)
    played_before, played = summary["flowing"]["audioPlayedS"] or 0.0, summary["closed"]["audioPlayedS"] or 0.0
    shown = " ".join((summary["closed"]["shownText"] or "").split())
    text = " ".join(sock["text"].split())
    result = [
        (urlparse(sock["url"]).path == "/api/chat" and "text_temperature=" in sock["url"],
         f"the page opened {sock['url']}"),
        (sock["firstReceived"] == [0], f"the first message it got is the handshake [0x00]: {sock['firstReceived']}, "
                                       f"{sock['handshakeAfterMs']} ms after the socket was created"),
        (set(sent) == {"1"}, f"it sent audio (0x01) only: kinds {sorted(sent)}"),
        (set(received) <= {"0", "1", "2"} and received.get("0", {}).get("n") == 1,
         f"it got one handshake, then audio and text (0x00-0x02) only: kinds {sorted(received)}"),
        (pages_sent >= 10 and pages_received >= 10,
         f"audio both ways: {pages_sent} Ogg pages sent (40 ms each), {pages_received} received (80 ms each)"),
        (played > played_before and played >= 1.0,
         f"the page decoded and played the server's audio: {played:.2f} s played "
         f"({summary['closed']['missedAudioS']} s missed), growing while listening"),
        (bool(shown) and shown in text, f"it shows the model's text as it came in 0x02 messages: {shown[:60]!r}..."),
        (sock["close"] is not None and sock["close"]["code"] == 1000, f"Disconnect closed the socket: {sock['close']}"),
        (not summary["pageErrors"], f"no uncaught page errors: {summary['pageErrors']}"),
    ]
    if before and after:   # duplex's own counters (absent on moshi.server)
        frames_in = after["frames_in"] - before["frames_in"]
        frames_out = after["frames_out"] - before["frames_out"]
        result += [
            (frames_in > 0 and after["bad_audio"] == before["bad_audio"],
             f"the server decoded the browser's Opus: {frames_in} frames of 80 ms in, no bad_audio error"),
            # Frames still in the model's queue or the outbox when the page closes are not answered: how many
            # depends on the machine's load (a loaded CPU falls behind real time), so no bound on them here.
            (0 < frames_out <= frames_in and pages_received <= frames_out,
             f"the server answered what it consumed: {frames_in} in, {frames_out} out, {pages_received} reached the "
             "page before it closed"),
            (after["active"] == 0, "the slot was freed when the page disconnected"),
        ]
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dist", type=Path, help="the built dist/ folder of Kyutai's web client")
    parser.add_argument("--server", help="a running server's http URL (else: duplex serve --preset tiny --static DIST)")
    parser.add_argument("--listen-s", type=float, default=6.0, help="how long to listen once audio flows")
    parser.add_argument("--json", type=Path, help="write the driver's full summary here")
    parser.add_argument("--screenshot", type=Path, help="where the page's screenshot goes (default: a temp file)")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    args = parser.parse_args()
    if not (args.dist / "index.html").exists():
        parser.error(f"{args.dist} has no index.html: build Kyutai's client first (docs/moshi-compat.md)")
    if not (DRIVER.parent / "node_modules" / "playwright-core").is_dir():
        parser.error("tests/browser/node_modules is missing: npm ci --prefix tests/browser")

    with tempfile.TemporaryDirectory(prefix="kyutai-web-") as tmp:
        folder = Path(tmp)
        wav = speech_wav(folder)
        screenshot = args.screenshot or folder / "kyutai-client.png"
        server = static = None
        try:
            if args.server is None:
                print("starting duplex serve --preset tiny --static DIST ...", file=sys.stderr)
                server = ServerProcess("--static", str(args.dist.resolve()), "--no-cascade", "--slots", "2",
                                       log_path=folder / "server.log", log_level="info")
                http_url, page = server.http_url, server.http_url + "/"
            else:
                http_url = args.server.rstrip("/")
                static = StaticServer(args.dist)
                page = f"{static.url}/?worker_addr={urlparse(http_url).netloc}"
            before = wait_idle(http_url)
            run = subprocess.run(["node", str(DRIVER), "--url", page, "--wav", str(wav), "--screenshot", str(screenshot),
                                  "--listen-ms", str(int(args.listen_s * 1000)), "--chromium", args.chromium],
                                 capture_output=True, text=True, timeout=300, cwd=DRIVER.parent)
            try:
                summary = json.loads(run.stdout)
            except json.JSONDecodeError:
                print(f"the driver printed no JSON (rc {run.returncode}):\n{run.stdout}\n{run.stderr}", file=sys.stderr)
                return 1
            after = wait_idle(http_url)
        finally:
            if static is not None:
                static.close()
            if server is not None:
                server.stop()
        if args.json is not None:
            args.json.write_text(json.dumps(summary, indent=1))
        results = checks(summary, before, after)
        print(f"Kyutai's web client ({args.dist}) against {http_url}/api/chat, page {page}")
        for holds, what in results:
            print(f"  [{'ok' if holds else 'FAIL'}] {what}")
        for line in summary.get("console", []):
            print(f"  (page console) {line}")
        for line in summary.get("httpErrors", []):
            print(f"  (page http) {line}")
        print(f"  screenshot: {screenshot if args.screenshot else '(pass --screenshot to keep it)'}")
        return 0 if all(holds for holds, _ in results) else 1


if __name__ == "__main__":
    sys.exit(main())
