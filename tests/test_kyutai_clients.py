"""Kyutai's own clients, unchanged, against /api/chat on the real tiny server.

- `python -m moshi.client` (the moshi package this project runs on): it needs a sound card, so a private
  PulseAudio (tests/pulse.py) gives it one: espeak-ng speech is played into a null-sink microphone, and
  what the client plays is recorded from the null-sink speaker. Needs Debian's pulseaudio and
  libportaudio2; skipped without them, except that DUPLEX_REQUIRE_PULSEAUDIO=1 (set by .ci/run) turns
  the skip into a failure.
- Kyutai's web client: its source is on GitHub, which CI cannot reach, so it is built by hand
  (docs/moshi-compat.md); when KYUTAI_WEB_CLIENT_DIST names the built dist/ folder,
  scripts/check_kyutai_web_client.py drives it in headless Chromium against the tiny server.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

import numpy as np
import pytest

from . import pulse
from .helpers import health, wait_until_health, wait_until_idle
from .test_browser_client import _missing as browser_missing

REPO = Path(__file__).resolve().parent.parent
PULSE_MISSING = pulse.missing()
PULSE_REQUIRED = os.environ.get("DUPLEX_REQUIRE_PULSEAUDIO") == "1"   # set by .ci/run: never skip there
WEB_DIST = os.environ.get("KYUTAI_WEB_CLIENT_DIST")
FRAMES = 25   # 2 s of conversation: enough to see audio both ways and the model's text


@pytest.fixture(scope="module")
def private_pulse(tmp_path_factory):
    if PULSE_MISSING is not None:
        if PULSE_REQUIRED:
            pytest.fail(f"DUPLEX_REQUIRE_PULSEAUDIO=1 but {PULSE_MISSING}")
        pytest.skip(PULSE_MISSING)
    server = pulse.PrivatePulse(tmp_path_factory.mktemp("pulse"))
    yield server
    server.stop()


@pytest.fixture(scope="module")
def speech_for_mic(tmp_path_factory) -> Path:
    """About 15 s of espeak-ng speech (the sentence three times): it outlasts the conversation."""
    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} is required (apt-get install {tool})")
    folder = tmp_path_factory.mktemp("mic")
    raw, wav = folder / "raw.wav", folder / "speech.wav"
    subprocess.run(["espeak-ng", "-w", str(raw), "Hello there. Can you hear me? Tell me about the weather today."],
                   check=True, capture_output=True)
    subprocess.run(["sox", str(raw), "-r", "24000", "-c", "1", "-b", "16", str(wav), "repeat", "2"],
                   check=True, capture_output=True)
    return wav


MIN_SOUNDING = 24000 // 2   # non-zero samples the speaker must have played: 0.5 s


def _sounding(speaker: Path) -> int:
    return int(np.count_nonzero(np.fromfile(speaker, dtype=np.int16))) if speaker.exists() else 0


def test_moshi_python_client_talks_to_api_chat(tiny_server, private_pulse, speech_for_mic, tmp_path):
    """A plain (blocking) test: the client and the server are child processes; asyncio only for /health."""
    url = tiny_server.http_url
    before = asyncio.run(wait_until_idle(url))
    speaker = tmp_path / "speaker.raw"
    recorder = private_pulse.record_speaker(speaker)
    player = private_pulse.play_into_mic(speech_for_mic)
    stdout, stderr = tmp_path / "client.out", tmp_path / "client.err"   # Python flushes stderr by line
    with open(stdout, "w") as out_file, open(stderr, "w") as err_file:
        client = subprocess.Popen(
            [sys.executable, "-m", "moshi.client", "--host", "127.0.0.1", "--port", str(urlparse(url).port)],
            env={**os.environ, "PULSE_SERVER": private_pulse.env["PULSE_SERVER"]},
            stdout=out_file, stderr=err_file, cwd=tmp_path)
    try:
        def talked(state: dict) -> bool:   # or the client died: the assertions below say how
            return client.poll() is not None or (state["frames_in"] - before["frames_in"] >= FRAMES
                                                 and state["frames_out"] - before["frames_out"] >= FRAMES)
        during = asyncio.run(wait_until_health(url, talked, f"{FRAMES} frames each way from moshi.client", timeout=90))
        # The speaker is captured by another process (parec) through PulseAudio's buffers: on a loaded
        # machine its file lags the server's counters, so Ctrl-C waits until it holds what is asserted
        # below (a file written by a child process gives no event to wait on: polled, bounded).
        deadline = time.monotonic() + 30
        while client.poll() is None and time.monotonic() < deadline and _sounding(speaker) < MIN_SOUNDING:
            time.sleep(0.2)
        alive = client.poll() is None
        out_before_ctrl_c, err_before_ctrl_c = stdout.read_text(), stderr.read_text()
        client.send_signal(signal.SIGINT)   # what a user does: Ctrl-C
        client.wait(timeout=30)
    finally:
        for process in (client, player, recorder):
            if process.poll() is None:
                process.terminate()
                process.wait(timeout=10)
    out, err = stdout.read_text(), stderr.read_text()
    context = f"stdout: {out[-2000:]!r}\nstderr: {err[-3000:]!r}"
    assert alive, "moshi.client exited before the conversation was under way: " + context
    assert client.returncode == 0, context
    # Until Ctrl-C, no trouble. (On Ctrl-C moshi.client's microphone callback may still send into the
    # closing socket, print "Cannot write to closing transport" on stdout and log "Lost connection": its
    # own shutdown, whatever the server.)
    assert "connected!" in err_before_ctrl_c and "Lost connection" not in err_before_ctrl_c, context
    assert "Traceback" not in err, context
    assert out_before_ctrl_c.strip(), "moshi.client prints the model's text (our 0x02 messages): " + context
    asyncio.run(wait_until_idle(url))   # Ctrl-C closed the socket: the slot is free again
    after = asyncio.run(health(url))
    assert during["frames_in"] - before["frames_in"] >= FRAMES, context   # its Opus pages decoded into frames
    assert after["frames_out"] - before["frames_out"] >= FRAMES, context

    # What the client played, recorded from the speaker: our Ogg pages, decoded by its sphn reader. The
    # tiny model babbles, so loud enough and long enough is all that can be said; silence (the client's
    # "[LAG]" fill) records as digital zeros.
    played = np.fromfile(speaker, dtype=np.int16).astype(np.float32) / 32768
    sounding = played[played != 0]
    assert sounding.size >= MIN_SOUNDING, f"{sounding.size} non-zero samples recorded from the speaker; {context}"
    assert 20 * np.log10(np.sqrt(np.mean(sounding ** 2))) > -60, context


@pytest.mark.skipif(not WEB_DIST, reason="KYUTAI_WEB_CLIENT_DIST is not set (build Kyutai's web client by hand: "
                                         "docs/moshi-compat.md)")
def test_kyutai_web_client_talks_to_api_chat(tiny_server, tmp_path):
    if (reason := browser_missing()) is not None:
        pytest.fail(f"KYUTAI_WEB_CLIENT_DIST is set but {reason}")
    run = subprocess.run([sys.executable, str(REPO / "scripts" / "check_kyutai_web_client.py"), str(WEB_DIST),
                          "--server", tiny_server.http_url, "--json", str(tmp_path / "summary.json")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stdout + run.stderr
