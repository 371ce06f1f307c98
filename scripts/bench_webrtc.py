#!/usr/bin/env python3
"""What a WebRTC call costs the server next to a WebSocket, measured side by side in one run (docs/webrtc.md).

N duplex conversations of S seconds each over `/v1/realtime` (the WebSocket, pcm16 in appends, the `openai`
wire) and then over WebRTC calls (aiortc: Opus both ways, resampling, SRTP, SCTP), in alternating rounds
against the same `duplex serve` (tiny preset). From the server's /health before and after each round:
process CPU seconds per conversation-second (everything: loop, model thread, aiortc's coder threads) and
the event loop's own CPU seconds per conversation-second. The model's work is the same in both (one frame
in, one out, every 80 ms), so the difference is the transport's.

    OMP_NUM_THREADS=1 python scripts/bench_webrtc.py --sessions 2 --seconds 10 --rounds 2
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
import time
from pathlib import Path

import aiohttp
import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from duplex.audio import FRAME_S, FRAME_SAMPLES, float_to_pcm16  # noqa: E402
from duplex.client.webrtc import RealtimeCallClient  # noqa: E402
from duplex.server.process import ServerProcess  # noqa: E402


def voice(seconds: float) -> np.ndarray:
    """A loud, changing tone: the duplex model hears speech-like energy (its answer does not matter here)."""
    t = np.arange(int(seconds * 24000)) / 24000
    return (0.3 * np.sin(2 * np.pi * (180 + 60 * np.sin(2 * np.pi * 0.5 * t)) * t)).astype(np.float32)


async def over_websocket(url: str, pcm: np.ndarray) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.ws_connect(url.replace("http", "ws") + "/v1/realtime?model=duplex") as ws:
            async def read() -> None:   # a client reads (and decodes) what it is sent, as a player would
                async for msg in ws:
                    event = json.loads(msg.data)
                    if event["type"] == "response.output_audio.delta":
                        base64.b64decode(event["delta"])
            reader = asyncio.ensure_future(read())
            start = time.monotonic()
            for k, at in enumerate(range(0, len(pcm), FRAME_SAMPLES)):
                await asyncio.sleep(max(0.0, start + k * FRAME_S - time.monotonic()))
                audio = base64.b64encode(float_to_pcm16(pcm[at:at + FRAME_SAMPLES])).decode()
                await ws.send_str(json.dumps({"type": "input_audio_buffer.append", "audio": audio}))
            await ws.close()
            reader.cancel()


async def over_webrtc(url: str, pcm: np.ndarray) -> None:
    call = await RealtimeCallClient.connect(url, model="duplex")
    try:
        for at in range(0, len(pcm), FRAME_SAMPLES):
            await call.send_audio(pcm[at:at + FRAME_SAMPLES])   # the track paces it in real time
        await call.hang_up()
    finally:
        await call.close()


async def health(http: aiohttp.ClientSession, url: str) -> dict:
    async with http.get(url + "/health") as response:
        return await response.json()


async def round_of(transport: str, url: str, sessions: int, seconds: float) -> tuple[float, float]:
    """(process CPU s, loop CPU s) per conversation-second over one round of `sessions` conversations."""
    pcm = voice(seconds)
    run = over_webrtc if transport == "webrtc" else over_websocket
    async with aiohttp.ClientSession() as http:
        before = await health(http, url)
        await asyncio.gather(*(run(url, pcm) for _ in range(sessions)))
        while (await health(http, url))["connections"]:   # noqa: ASYNC110 (the last teardown: no event to wait on)
            await asyncio.sleep(0.05)
        after = await health(http, url)
    talk_s = sessions * seconds
    return ((after["process_cpu_s"] - before["process_cpu_s"]) / talk_s,
            (after["loop_cpu_s"] - before["loop_cpu_s"]) / talk_s)


async def bench(url: str, sessions: int, seconds: float, rounds: int) -> None:
    results: dict[str, list[tuple[float, float]]] = {"websocket": [], "webrtc": []}
    for _ in range(rounds):
        for transport in results:
            results[transport].append(await round_of(transport, url, sessions, seconds))
    print(f"{sessions} duplex conversations x {seconds:g} s, {rounds} rounds each, alternating (tiny preset)")
    print("transport   process CPU s per conversation-s   loop CPU s per conversation-s")
    medians = {}
    for transport, figures in results.items():
        process, loop = (float(np.median([f[i] for f in figures])) for i in (0, 1))
        medians[transport] = (process, loop)
        print(f"{transport:10}  {process:32.3f}   {loop:28.3f}")
    ws, rtc = medians["websocket"], medians["webrtc"]
    print(f"webrtc / websocket: process CPU x{rtc[0] / ws[0]:.2f}, loop CPU x{rtc[1] / max(ws[1], 1e-9):.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    with ServerProcess("--slots", str(max(2, args.sessions)), "--no-cascade") as server:
        asyncio.run(bench(server.http_url, args.sessions, args.seconds, args.rounds))


if __name__ == "__main__":
    main()
