#!/usr/bin/env python3
"""Cascade latency benchmark: per-stage times and voice-to-voice latency, p50/p90, in one run.

Each conversation speaks espeak-ng utterances through a live, real-time "microphone" (silence between
turns), waits for the answer, and measures on the client's clock:
  voice_to_voice_ms   end of the user's speech (last voiced sample sent) -> first assistant audio frame
                      received that is not silence;
and from the server's `metrics`: stt_final_ms (end of turn -> final transcript), llm_first_token_ms,
tts_first_audio_ms, all from the detected end of the user's turn. The end-of-turn detector waits
--end-of-turn-silence-ms (640 ms) of silence before it decides: that wait is part of voice-to-voice.

    python scripts/bench_cascade.py --sessions 1,4 --turns 4          # tiny presets, CPU
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from duplex import stats  # noqa: E402
from duplex.audio import FRAME_S, FRAME_SAMPLES, SAMPLE_RATE, read_wav_mono24k, rms_dbfs  # noqa: E402
from duplex.client import DuplexClient  # noqa: E402
from duplex.server.process import ServerProcess  # noqa: E402

UTTERANCES = ["Hello, how are you today?", "What is the weather like?", "Tell me about music.",
              "Can you recommend a good book?", "Thank you, that is all."]


def speech(text: str, tmp: Path) -> np.ndarray:
    path = tmp / f"{abs(hash(text))}.wav"
    subprocess.run(["espeak-ng", "-w", str(path), text], check=True, capture_output=True)
    return read_wav_mono24k(str(path))


async def conversation(url: str, utterances: list[np.ndarray]) -> list[dict]:
    rows = []
    async with await DuplexClient.connect(url, codec="pcm16") as client:
        await client.start(mode="cascade", config={"seed": 1})
        await client.wait_for("status")
        start, k = time.monotonic(), 0

        async def send(frame: np.ndarray) -> float:
            nonlocal k
            await client.send_audio(frame)
            k += 1
            sent = time.monotonic()
            await asyncio.sleep(max(0.0, start + k * FRAME_S - time.monotonic()))
            return sent

        silence = np.zeros(FRAME_SAMPLES, dtype=np.float32)
        for pcm in utterances:
            frames = np.zeros(-(-len(pcm) // FRAME_SAMPLES) * FRAME_SAMPLES, dtype=np.float32)
            frames[: len(pcm)] = pcm
            last_voiced = int(np.flatnonzero(np.abs(pcm) > 0.01)[-1])
            speech_end = 0.0
            for i, frame in enumerate(frames.reshape(-1, FRAME_SAMPLES)):
                sent = await send(frame)
                if i == last_voiced // FRAME_SAMPLES:
                    speech_end = sent + (last_voiced % FRAME_SAMPLES) / SAMPLE_RATE
            heard_before = len(client.audio)
            done = len(client.events_of("tts_end"))
            deadline = time.monotonic() + 60
            while len(client.events_of("tts_end")) == done and time.monotonic() < deadline:
                await send(silence)
            loud = [c for c in client.audio[heard_before:] if c.pcm.size and rms_dbfs(c.pcm) > -60]
            metrics = [e for e in client.events_of("metrics") if e.received_at > speech_end]
            if not loud or not metrics:
                continue
            row = {"voice_to_voice_ms": (loud[0].received_at - speech_end) * 1000.0}
            row.update({k: v for k, v in metrics[0].data.items() if k.endswith("_ms") and k != "response_latency_ms"})
            rows.append(row)
            for _ in range(12):  # a pause between turns
                await send(silence)
        await client.stop()
    return rows


def summarise(rows: list[dict]) -> dict:
    keys = sorted({k for row in rows for k in row})
    out = {}
    for key in keys:
        values = [row[key] for row in rows if row.get(key) is not None]
        if values:
            out[key] = {**(stats.percentiles(values, (50, 90), digits=3) or {}), "n": len(values)}
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny")
    parser.add_argument("--sessions", default="1,4", help="conversations at once, one run per value")
    parser.add_argument("--turns", type=int, default=4, help="user turns per conversation")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    counts = [int(n) for n in args.sessions.split(",")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        clips = [speech(text, Path(tmp)) for text in UTTERANCES]
        server = ServerProcess("--preset", args.preset, "--cascade-slots", str(max(counts)), "--no-duplex")
        url = server.http_url
        try:
            for n in counts:
                async def run(n: int = n) -> list[list[dict]]:
                    return await asyncio.gather(*(conversation(url, [clips[(i + t) % len(clips)]
                                                                     for t in range(args.turns)])
                                                  for i in range(n)))
                rows = [row for rows in asyncio.run(run()) for row in rows]
                results[str(n)] = summarise(rows)
        finally:
            server.stop()
    print("| sessions | figure | p50 ms | p90 ms | n |\n|---|---|---|---|---|")
    for n, figures in results.items():
        for key, value in figures.items():
            print(f"| {n} | {key.removesuffix('_ms')} | {value['p50']:.0f} | {value['p90']:.0f} | {value['n']} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
