"""The browser client in headless Chromium against the real tiny server.

Chromium's fake microphone plays espeak-ng speech; tests/browser/drive_page.mjs opens
`/?autostart=1&mode=duplex`, waits until audio flows both ways, presses Interrupt and Stop, and
prints what the page saw (window.duplexStats and the DOM) as JSON. Needs the system Chromium at
/usr/bin/chromium and `npm ci --prefix tests/browser` (playwright-core only, no browser download);
skipped without them, except that DUPLEX_REQUIRE_BROWSER=1 (set by .ci/run) turns the skip into a
failure.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

BROWSER_DIR = Path(__file__).resolve().parent / "browser"
CHROMIUM = Path("/usr/bin/chromium")
DRIVER = BROWSER_DIR / "drive_page.mjs"


def _missing() -> str | None:
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install chromium)"
    if not (BROWSER_DIR / "node_modules" / "playwright-core").is_dir():
        return "tests/browser/node_modules is missing (npm ci --prefix tests/browser)"
    if shutil.which("node") is None:
        return "node is missing"
    return None


_MISSING = _missing()
_REQUIRED = os.environ.get("DUPLEX_REQUIRE_BROWSER") == "1"  # set by .ci/run: never skip there
needs_browser = pytest.mark.skipif(_MISSING is not None and not _REQUIRED, reason=_MISSING or "")


@pytest.fixture
def browser_required():
    if _MISSING is not None:
        pytest.fail(f"DUPLEX_REQUIRE_BROWSER=1 but {_MISSING}")


def _health(http_url: str) -> dict:
    with urllib.request.urlopen(f"{http_url}/health", timeout=10) as response:
        return json.load(response)


def _idle_health(http_url: str, timeout: float = 10.0) -> dict:
    """/health once no duplex slot is active (earlier tests' conversations gone): the frame counters
    then move for this test's conversation only. Fails past `timeout` (a release takes one loop turn)."""
    deadline = time.monotonic() + timeout
    while (state := _health(http_url))["engines"]["duplex"]["active"] != 0:
        assert time.monotonic() < deadline, f"duplex slots still active after {timeout} s: {state}"
        time.sleep(0.05)
    return state


@pytest.fixture(scope="module")
def speech_wav(tmp_path_factory) -> Path:
    """Speech as Chromium's fake capture device wants it: a 24 kHz mono 16-bit WAV."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required for the browser test (apt-get install {tool})")
    folder = tmp_path_factory.mktemp("browser")
    raw, wav = folder / "speech-raw.wav", folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(raw),
                    "Hello there. Can you hear me? Tell me something about the weather today."],
                   check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "24000", "-c", "1", "-b", "16", str(wav)],
                   check=True, capture_output=True)
    return wav


def drive_page(http_url: str, wav: Path, screenshot: Path, *args: str) -> tuple[dict, str]:
    """Runs drive_page.mjs; returns its JSON summary and a shortened dump for assertion messages."""
    run = subprocess.run(
        ["node", str(DRIVER), "--url", http_url, "--wav", str(wav), "--screenshot", str(screenshot),
         "--timeout-ms", "90000", *args],
        capture_output=True, text=True, timeout=240, cwd=BROWSER_DIR,
    )
    try:
        summary = json.loads(run.stdout)
    except json.JSONDecodeError:
        pytest.fail(f"drive_page.mjs printed no JSON (rc {run.returncode}):\n{run.stdout}\n{run.stderr}")
    return summary, json.dumps(summary, indent=1)[:6000]


@needs_browser
def test_browser_client_talks_to_the_server(browser_required, tiny_server, speech_wav, tmp_path):
    before = _idle_health(tiny_server.http_url)
    screenshot = tmp_path / "browser-client.png"
    summary, context = drive_page(tiny_server.http_url, speech_wav, screenshot, "--mode", "duplex")
    assert summary["ok"], f"the page failed at step {summary['step']!r}: {summary.get('error')}\n{context}"
    assert not summary["pageErrors"], context

    # The page side: audio went out, came back, was decoded and played.
    flowing = summary["flowing"]
    assert flowing["connected"] and flowing["started"], context
    assert flowing["mode"] == "duplex", context
    assert flowing["framesSent"] > 0 and flowing["pagesReceived"] > 0, context
    assert flowing["framesDecoded"] > 0 and flowing["samplesPlayed"] > 0, context
    assert flowing["lastStatus"] in ("listening", "speaking"), context
    assert flowing["errors"] == [], context

    # Transcript and assistant-text panes exist, and the model's text the page received is shown (a
    # tiny model's babble may or may not produce text; when it does, the pane must not stay empty).
    assert summary["dom"]["transcriptPresent"] and summary["dom"]["assistantTextPresent"], context
    assert flowing["llmChars"] == 0 or summary["dom"]["assistantTextChars"] > 0, context
    assert summary["dom"]["banner"] is None, context

    # Interrupt: acknowledged by the server, and the playback buffer emptied at once.
    interrupt = summary["interrupt"]
    assert interrupt["flushed"], context
    assert interrupt["flushesAfter"] > interrupt["flushesBefore"], context
    assert interrupt["ackFlush"]["bufferedAfter"] == 0, context
    # The acknowledgement's round trip, measured by the page: a real, positive time. On loopback it
    # takes milliseconds; 5 s is far above that (room for a loaded machine) and below the page's own
    # 8 s acknowledgement timeout, so a stale or bogus timer value fails.
    for rtt in (interrupt["rttMs"], summary["stopped"]["rttMs"]):
        assert isinstance(rtt, (int, float)) and math.isfinite(rtt) and 0 < rtt < 5000, context

    # Stop: acknowledged, the page knows the conversation ended.
    stopped = summary["stopped"]
    assert stopped["lastStatus"] == "stopped" and not stopped["started"], context
    assert stopped["framesSent"] >= flowing["framesSent"], context
    stop_metrics = stopped["metrics"]                     # the server's `metrics` on stop, as the page got it
    assert stop_metrics is not None and stop_metrics["type"] == "metrics", context

    assert screenshot.exists() and screenshot.stat().st_size > 0

    # The server side: it received the browser's audio and answered it, and the counts agree. The
    # page sends one Ogg page per 80 ms frame after the two header pages (OpusHead, OpusTags); the
    # decoder may keep back one partial frame. The server sends one page per frame; the last few
    # frames queued when `stop` came are dropped, not sent (3: a tick delivers one frame at a time).
    after = _health(tiny_server.http_url)
    frames_in, frames_out = after["frames_in"] - before["frames_in"], after["frames_out"] - before["frames_out"]
    assert stop_metrics["frames_in"] == frames_in and stop_metrics["frames_out"] == frames_out, (context, after)
    assert frames_in > 0 and 0 <= (stopped["framesSent"] - 2) - frames_in <= 1, (context, frames_in)
    assert 0 <= frames_out - stopped["pagesReceived"] <= 3, (context, frames_out)


@needs_browser
def test_browser_client_explains_a_wrong_token(browser_required, small_server, speech_wav, tmp_path):
    summary, context = drive_page(small_server.http_url, speech_wav, tmp_path / "token.png",
                                  "--scenario", "refused", "--token", "not-the-token")
    assert summary["ok"], context
    codes = [e["code"] for e in summary["refused"]["errors"]]
    assert "unauthorized" in codes, context
    assert "token" in summary["dom"]["banner"], context
    assert not summary["refused"]["connected"] and summary["refused"]["framesSent"] == 0, context
    assert summary["dom"]["startEnabled"], context


@needs_browser
def test_browser_client_explains_a_denied_microphone(browser_required, tiny_server, speech_wav, tmp_path):
    summary, context = drive_page(tiny_server.http_url, speech_wav, tmp_path / "mic.png",
                                  "--scenario", "refused", "--deny-mic")
    assert summary["ok"], context
    assert [e["code"] for e in summary["refused"]["errors"]] == ["mic_denied"], context
    assert "Microphone access was denied" in summary["dom"]["banner"], context
    assert not summary["refused"]["started"] and summary["refused"]["framesSent"] == 0, context


@pytest.mark.skipif(shutil.which("node") is None, reason="node is missing")
def test_playback_jitter_buffer():
    """client/playback-worklet.js under node:test (no browser): start threshold, underrun growth,
    overflow drops, flush, target shrink."""
    run = subprocess.run(["node", "--test", str(BROWSER_DIR / "playback_worklet.test.mjs")],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-2000:]
