"""Recordings end to end: a real `duplex serve --record` (tiny Moshi), real speech, `duplex replay`, signals.

- a greedy conversation replays bit for bit through the server (the `duplex replay` command), and a
  recording altered in one sample is reported as diverging at that frame;
- SIGTERM in the middle of a conversation leaves complete files; SIGKILL leaves a WAV that `wave` and
  `sox` read (up to its last write) and an events.jsonl whose whole lines all parse.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np

from duplex.audio import FRAME_SAMPLES
from duplex.client import DuplexClient
from duplex.client.replay import Recording
from duplex.client.replay import replay as replay_through
from duplex.server.process import REPO

from .conftest import start_server
from .helpers import GREEDY, frames_of, send_frames


def only_folder(directory: Path) -> Path:
    [folder] = [p for p in directory.iterdir() if p.is_dir()]
    return folder


def wav_frames(path: Path) -> int:
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate()) == (2, 24000)
        return w.getnframes()


def sox_samples(path: Path) -> int:
    out = subprocess.run(["soxi", "-s", str(path)], check=True, capture_output=True, text=True).stdout
    return int(out.strip())


async def talk(url: str, speech: np.ndarray, n: int, stop: bool = True) -> DuplexClient:
    client = await DuplexClient.connect(url, mode="duplex", codec="pcm16")
    await client.start(mode="duplex", config=GREEDY)
    await client.wait_for("status")
    await send_frames(client, frames_of(speech, n))
    await client.wait_audio_frames(n, timeout=30)
    if stop:
        await client.stop()
        await client.wait_for("stop_acknowledged")
        await client.close()
    return client


def replay(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "duplex", "replay", *args], capture_output=True, text=True,
                          cwd=REPO, timeout=120)


def test_a_greedy_recording_replays_bit_for_bit_and_a_changed_one_does_not_and_sigterm_completes(tmp_path, speech):
    record = tmp_path / "rec"
    with start_server(tmp_path, "--slots", "2", "--no-cascade", "--record", str(record)) as server:
        asyncio.run(talk(server.ws_url, speech, 20))
        folder = only_folder(record)
        done = replay(folder.name, "--url", server.http_url, "--fast")   # read back through GET /recordings
        assert done.returncode == 0, done.stdout + done.stderr
        assert "reproduces bit for bit: 20 frames of assistant audio" in done.stdout
        assert "greedy" in done.stdout
        # the same recording with one assistant sample changed in frame 12: found, and named
        wav = bytearray((folder / "audio.wav").read_bytes())
        wav[44 + (12 * FRAME_SAMPLES + 100) * 4 + 2] ^= 0x01      # frame 12, sample 100, right channel
        altered = Recording.parse((folder / "meta.json").read_bytes(), (folder / "events.jsonl").read_bytes(),
                                  bytes(wav))
        outcome = asyncio.run(replay_through(altered, server.http_url, fast=True))
        assert not outcome.exact
        assert "audio diverges at frame 12 (t = 960 ms): largest sample difference 1" in outcome.lines
        shutil.rmtree(record)

        # SIGTERM in the middle of a conversation: the files are completed
        async def midway() -> None:
            client = await talk(server.ws_url, speech, 20, stop=False)   # still talking when the server goes
            await asyncio.get_running_loop().run_in_executor(None, server.stop)
            await client.close()
        asyncio.run(midway())
    folder = only_folder(record)
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["complete"] and meta["summary"]["reason"] in ("disconnect", "shutdown")
    assert meta["summary"]["samples"] == 20 * FRAME_SAMPLES == wav_frames(folder / "audio.wav")
    assert sox_samples(folder / "audio.wav") == 20 * FRAME_SAMPLES
    assert json.loads((folder / "events.jsonl").read_text().splitlines()[-1])["kind"] == "summary"


def test_sigkill_leaves_a_readable_truncated_recording(tmp_path, speech):
    record = tmp_path / "rec"
    server = start_server(tmp_path, "--slots", "2", "--no-cascade", "--record", str(record))

    async def killed_midway() -> None:
        client = await talk(server.ws_url, speech, 20, stop=False)
        server.process.kill()
        server.process.wait()
        await client.close()
    try:
        asyncio.run(killed_midway())
    finally:
        server.process.kill()
        server.process.wait()
    folder = only_folder(record)
    assert json.loads((folder / "meta.json").read_text())["complete"] is False
    frames = wav_frames(folder / "audio.wav")
    assert 0 < frames <= 20 * FRAME_SAMPLES and sox_samples(folder / "audio.wav") == frames
    lines = (folder / "events.jsonl").read_text().splitlines()
    whole = lines if not lines or lines[-1].endswith("}") else lines[:-1]
    assert [json.loads(line)["dir"] for line in whole[:2]] == ["in", "out"]   # start, then its answer
