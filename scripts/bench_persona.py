#!/usr/bin/env python3
"""Persona start-up benchmark: time to ready for a newcomer with a persona, and what it costs its neighbours.

Three ways of putting a persona (a 10 s voice prompt + a ~50-token role prompt: ~190 prompt frames) into a
new conversation's slot, side by side in one run, each on its own `duplex serve` (same model, same slots):

- stepped:  one model step per prompt frame, all at once (PersonaPlex's way: `--prefill stepped`);
- parallel: chunks of prompt positions through the main transformer between ticks (`--prefill nocache`);
- cached:   the same persona seen before: its prefilled state copied in (`--prefill parallel`, 2nd+ newcomer).

Each newcomer is PersonaPlex's web client as far as the wire goes: `/api/chat?text_prompt=..&voice_prompt=NATF2.pt`;
"ready" is connect -> the handshake byte. Meanwhile 8 neighbours already talk over /ws (pcm16, real-time
pace, phases spread over the 80 ms frame); their frame turnaround (send -> answer) p99 while a newcomer
gets ready is set against their p99 in a quiet window just before.

    python scripts/bench_persona.py                                   # tiny-personaplex on CPU, ~2 minutes
    python scripts/bench_persona.py --preset personaplex --device cuda
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
import urllib.parse
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from duplex import stats  # noqa: E402
from duplex.audio import FRAME_S, FRAME_SAMPLES, float_to_pcm16  # noqa: E402
from duplex.client import FramePacer  # noqa: E402
from duplex.server.process import ServerProcess  # noqa: E402

WAYS = {"stepped": "stepped", "parallel": "nocache", "cached": "parallel"}   # way -> --prefill
ROLE = ("You enjoy having a good conversation. Have a deep conversation about music books science travel "
        "food and friends. Your name is Jane and you like coffee tea water bread in the morning evening and night.")


class Neighbour:
    """A conversation at real-time pace; keeps (send time, turnaround ms) for every answered frame."""

    def __init__(self, url: str, phase_s: float):
        self.url = url
        self.phase_s = phase_s
        self.records: list[tuple[float, float]] = []
        self.stop = asyncio.Event()
        self.started = asyncio.Event()

    async def run(self) -> None:
        rng = np.random.default_rng(int(self.phase_s * 1e4) + 1)
        payload = b"\x01" + float_to_pcm16((rng.standard_normal(FRAME_SAMPLES) * 0.05).astype(np.float32))
        sent: list[float] = []
        async with aiohttp.ClientSession() as session:
            async with session.ws_connect(self.url.replace("http", "ws", 1) + "/ws?codec=pcm16") as ws:
                await ws.receive_str()
                await ws.send_str(json.dumps({"type": "start", "mode": "duplex",
                                              "config": {"temperature": 0, "text_temperature": 0}}))
                await ws.receive_str()
                self.started.set()

                all_answered = asyncio.Event()

                async def receive() -> None:
                    async for message in ws:
                        answered = len(self.records)
                        if message.type == aiohttp.WSMsgType.BINARY and answered < len(sent):
                            self.records.append((sent[answered], (time.monotonic() - sent[answered]) * 1000.0))
                            if self.stop.is_set() and len(self.records) == len(sent):
                                all_answered.set()

                receiver = asyncio.create_task(receive())
                await asyncio.sleep(self.phase_s)
                pacer = FramePacer(start=time.monotonic())
                k = 0
                while not self.stop.is_set():
                    await pacer.wait(k)
                    sent.append(time.monotonic())
                    await ws.send_bytes(payload)
                    k += 1
                if len(self.records) < len(sent):          # a late server: wait for every answer (bounded)
                    try:
                        await asyncio.wait_for(all_answered.wait(), timeout=60)
                    except asyncio.TimeoutError:
                        now = time.monotonic()         # never answered: counted at least this late
                        self.records += [(at, (now - at) * 1000.0) for at in sent[len(self.records):]]
                await ws.close()
                await receiver

    def p99_between(self, start: float, end: float) -> list[float]:
        return [ms for at, ms in self.records if start <= at < end]


async def newcomer(url: str, role: str, voice: str) -> float:
    """PersonaPlex's client: connect with its query; ms until the handshake byte."""
    query = urllib.parse.urlencode({"text_temperature": 0, "audio_temperature": 0, "text_topk": 25,
                                    "audio_topk": 250, "text_prompt": role, "voice_prompt": voice, "seed": -1})
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url.replace("http", "ws", 1) + "/api/chat?" + query) as ws:
            first = await ws.receive(timeout=120)
            ready_ms = (time.monotonic() - started) * 1000.0
            if first.type != aiohttp.WSMsgType.BINARY or first.data != b"\x00":
                raise RuntimeError(f"no handshake: {first.type} {first.data} {first.extra}")
            await ws.close()
    return ready_ms


async def measure(url: str, way: str, role: str, args) -> dict:
    neighbours = [Neighbour(url, i * FRAME_S / args.neighbours) for i in range(args.neighbours)]
    tasks = [asyncio.create_task(n.run()) for n in neighbours]
    await asyncio.gather(*(n.started.wait() for n in neighbours))
    await asyncio.sleep(2.0)                                   # settle
    quiet_start = time.monotonic()
    await asyncio.sleep(args.quiet_s)
    quiet = (quiet_start, time.monotonic())
    await asyncio.sleep(1.0)                                   # the quiet window's frames are all answered
    if way == "cached":
        await newcomer(url, role, args.voice)                  # first sight of the persona fills the cache
        await asyncio.sleep(1.0)
    ready, windows = [], []
    for _ in range(args.newcomers):
        began = time.monotonic()
        ready.append(await newcomer(url, role, args.voice))
        windows.append((began, time.monotonic() + 0.5))        # answers due during the start-up and just after
        await asyncio.sleep(1.5)
    for n in neighbours:
        n.stop.set()
    await asyncio.gather(*tasks)
    quiet_ms = [ms for n in neighbours for ms in n.p99_between(*quiet)]
    during_ms = [ms for n in neighbours for w in windows for ms in n.p99_between(*w)]
    return {"way": way, "ready_ms": stats.percentiles(ready, (50, 100)), "ready_all_ms": [round(r, 1) for r in ready],
            "quiet_p99_ms": stats.percentiles(quiet_ms, (99,))["p99"], "during_p99_ms":
            stats.percentiles(during_ms, (99,))["p99"], "quiet_frames": len(quiet_ms), "during_frames": len(during_ms)}


def role_prompt(args) -> tuple[str, int, int]:
    """(the role: the first words of ROLE that make about `--role-tokens` tokens with its tags for the model's
    tokenizer, that count, the prompt's frames with the voice)."""
    from duplex.models.persona import SILENCE_FRAMES, wrap_system_tags
    from duplex.models.spec import PRESETS, resolve_checkpoint

    spec = args.moshi_spec or PRESETS[args.preset].duplex_spec
    tokenizer = resolve_checkpoint(spec).get_text_tokenizer()
    words = ROLE.split()
    role, tokens = "", 0
    for n in range(1, len(words) + 1):
        role = " ".join(words[:n])
        tokens = len(tokenizer.encode(wrap_system_tags(role)))
        if tokens >= args.role_tokens:
            break
    return role, tokens, round(args.voice_s / FRAME_S) + 2 * SILENCE_FRAMES + tokens


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-personaplex", help="a persona model preset")
    parser.add_argument("--moshi-spec", help="instead of the preset: personaplex:<dir or repo>")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--slots", type=int, default=16)
    parser.add_argument("--neighbours", type=int, default=8)
    parser.add_argument("--newcomers", type=int, default=4, help="newcomers measured per way")
    parser.add_argument("--quiet-s", type=float, default=4.0, help="the neighbours' quiet window")
    parser.add_argument("--role-tokens", type=int, default=50, help="role prompt length, in the model's tokens")
    parser.add_argument("--voice", default="NATF2.pt", help="voice_prompt (PersonaPlex's client asks for NAME.pt)")
    parser.add_argument("--voice-s", type=float, default=10.0, help="that voice's length, for the frame count")
    parser.add_argument("--ways", default="stepped,parallel,cached")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    role, tokens, frames = role_prompt(args)
    with open("/proc/loadavg") as f:
        load = f.read().split()[:3]
    print(f"persona start-up on {platform.node()} ({os.cpu_count()} CPUs, load {' '.join(load)}), "
          f"{args.moshi_spec or args.preset}, {args.slots} slots, {args.neighbours} neighbours; "
          f"prompt: {args.voice_s:g} s voice + {tokens} role tokens = {frames} frames")
    results = []
    for way in args.ways.split(","):
        model = ["--moshi-spec", args.moshi_spec] if args.moshi_spec else ["--preset", args.preset]
        server = ServerProcess("--slots", str(args.slots), "--device", args.device, "--dtype", args.dtype,
                               "--threads", str(args.threads), "--no-cascade", "--prefill", WAYS[way], *model)
        try:
            results.append(asyncio.run(measure(server.http_url, way, role, args)))
        finally:
            server.stop()
        r = results[-1]
        print(f"  {way:9s} ready p50 {r['ready_ms']['p50']:8.1f} ms  max {r['ready_ms']['p100']:8.1f} ms   "
              f"neighbours p99: quiet {r['quiet_p99_ms']:7.1f} ms, during {r['during_p99_ms']:7.1f} ms "
              f"({r['during_p99_ms'] - r['quiet_p99_ms']:+.1f})", flush=True)
    by_way = {r["way"]: r for r in results}
    if "stepped" in by_way:
        for way in ("parallel", "cached"):
            if way in by_way:
                print(f"  {way} is {by_way['stepped']['ready_ms']['p50'] / by_way[way]['ready_ms']['p50']:.1f}x "
                      "faster to ready than stepped (p50)")
    with open("/proc/loadavg") as f:
        print(f"load after: {' '.join(f.read().split()[:3])}")
    if args.json:
        args.json.write_text(json.dumps({"prompt_frames": frames, "role_tokens": tokens, "results": results}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
