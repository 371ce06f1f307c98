#!/usr/bin/env python3
"""What recording costs: the same load on `duplex serve` without and with `--record`, side by side in one run.

N conversations (real-time pcm16 clients on loopback, greedy, tiny preset unless --preset) stream speech
for S seconds against each server in turn, the two alternated (--rounds times each; a fresh server each run,
warmed up by one short conversation first). Printed per server: frame turnaround (client send -> the
answering frame received) p50/p99, event-loop CPU per user frame (from /health), and for the recording
one the bytes written per conversation-minute and what the writer dropped (`duplex_recording_dropped_total`,
0 on a healthy disk). Then `duplex replay` runs on one of the recordings (reproduces bit for bit?).

    python scripts/bench_recording.py                  # tiny, 4 conversations x 15 s, each server twice (~2.5 min)
    python scripts/bench_recording.py --sessions 8 --seconds 30 --rounds 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from duplex import stats  # noqa: E402
from duplex.audio import FRAME_SAMPLES, float_to_pcm16, read_wav_mono24k  # noqa: E402
from duplex.client import DuplexClient, FramePacer  # noqa: E402
from duplex.server.process import ServerProcess  # noqa: E402

GREEDY = {"temperature": 0, "text_temperature": 0}


async def conversation(url: str, pcm: np.ndarray, frames: int) -> list[float]:
    """One real-time conversation; the turnaround (ms) of every frame."""
    client = await DuplexClient.connect(url, mode="duplex", codec="pcm16")
    await client.start(mode="duplex", config=GREEDY)
    await client.wait_for("status")
    pacer = FramePacer(start=time.monotonic())
    sent: list[float] = []
    for k in range(frames):
        await pacer.wait(k)
        start = (k * FRAME_SAMPLES) % (len(pcm) - FRAME_SAMPLES)
        sent.append(time.monotonic())
        await client.send_bytes_raw(b"\x01" + float_to_pcm16(pcm[start:start + FRAME_SAMPLES]))
    await client.wait_audio_frames(frames, timeout=60)
    await client.stop()
    await client.wait_for("stop_acknowledged")
    await client.close()
    return [(chunk.received_at - sent[chunk.seq]) * 1000.0 for chunk in client.audio[:frames]]


async def get(url: str, path: str) -> str:
    async with aiohttp.ClientSession() as http:
        async with http.get(url + path) as response:
            return await response.text()


async def load(server: ServerProcess, pcm: np.ndarray, sessions: int, seconds: float) -> dict:
    frames = int(seconds * 1000 / 80)
    await conversation(server.ws_url, pcm, 25)   # warm-up (first steps, thread pools), not measured
    before = json.loads(await get(server.http_url, "/health"))
    results = await asyncio.gather(*(conversation(server.ws_url, pcm, frames) for _ in range(sessions)))
    after = json.loads(await get(server.http_url, "/health"))
    turnaround = [ms for one in results for ms in one]
    consumed = after["frames_in"] - before["frames_in"]
    metrics = await get(server.http_url, "/metrics")
    dropped = sum(float(v) for v in re.findall(r"^duplex_recording_dropped_total\{.*\} (\S+)$", metrics, re.M))
    return {"turnaround": stats.percentiles(turnaround, (50, 99)), "frames": consumed,
            "loop_us_per_frame": (after["loop_cpu_s"] - before["loop_cpu_s"]) / max(consumed, 1) * 1e6,
            "dropped": dropped}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--sessions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--rounds", type=int, default=2, help="times each server is run, alternated")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-w", str(wav), "Hello there. Can you hear me? Tell me about the weather today, "
                        "and then about the trains."], check=True)
        pcm = np.concatenate([read_wav_mono24k(str(wav)), np.zeros(12000, dtype=np.float32)])
        record = Path(tmp) / "recordings"
        rows: dict[str, dict] = {}
        replay_line = ""
        # alternated, each twice (this machine's load moves a lot): A B A B
        runs = [("--record", True), ("no recording", False)] * args.rounds
        for k, (name, recording) in enumerate(runs):
            extra = ["--record", str(record)] if recording else []
            server = ServerProcess("--preset", args.preset, "--no-cascade", "--slots", str(max(args.sessions, 2)), *extra)
            try:
                rows[f"{name} ({k + 1})"] = asyncio.run(load(server, pcm, args.sessions, args.seconds))
                if recording and not replay_line:
                    first = sorted(p for p in record.iterdir() if p.is_dir())[1]   # [0] is the warm-up
                    done = subprocess.run([sys.executable, "-m", "duplex", "replay", first.name, "--url", server.http_url,
                                           "--fast"], capture_output=True, text=True, cwd=REPO)
                    replay_line = done.stdout.strip().splitlines()[-1] if done.stdout else done.stderr
            finally:
                server.stop()
        folders = sorted(p for p in record.iterdir() if p.is_dir())
        measured = [p for p in folders if json.loads((p / "meta.json").read_text())["summary"]["samples"]
                    > 25 * FRAME_SAMPLES]   # less the warm-ups
        disk = sum(f.stat().st_size for p in measured for f in p.iterdir())
        minutes = len(measured) * args.seconds / 60.0
    load_avg = open("/proc/loadavg").read().split()[:3]
    print(f"{args.sessions} real-time conversations x {args.seconds:g} s, preset {args.preset}; load average "
          f"{' '.join(load_avg)}")
    print("| server | turnaround p50 ms | p99 ms | loop CPU us / frame | recording dropped |")
    print("|---|---|---|---|---|")
    for name, row in rows.items():
        t = row["turnaround"] or {}
        print(f"| {name} | {t.get('p50')} | {t.get('p99')} | {row['loop_us_per_frame']:.0f} | {row['dropped']:g} |")
    def mean(prefix: str) -> float:
        values = [row["loop_us_per_frame"] for name, row in rows.items() if name.startswith(prefix)]
        return sum(values) / len(values)
    print(f"\nloop CPU per frame, mean of the runs: {mean('--record'):.0f} us with --record, {mean('no rec'):.0f} us "
          f"without ({mean('--record') / mean('no rec'):.2f}x); disk: {disk / minutes / 1e6:.2f} MB per "
          f"conversation-minute ({len(measured)} recordings, {disk / 1e6:.1f} MB)")
    print(f"replay of {measured[0].name}: {replay_line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
