"""Soak test: N conversations with churn against a real `duplex serve` process, for a given time.

    python scripts/soak.py --duration-s 1800 --slots 8 --conversations 6 --out soak.json

Some conversations are *healthy*: they stream one pcm16 frame per 80 ms for the whole run and are
never disturbed; every frame they send must come back (frames lost = sent - received). The others
*churn*: connect, start, stream for a while, then one of reset, interrupt, configure, stop and start
again, an abrupt disconnect (TCP abort, no close frame), a slow reader (stops reading for seconds), an
oversized message (past the server's message limit: closed 1009) or a bad message; then again.
Sampled every few seconds: the server's RSS and open file descriptors, its /health (active slots,
open connections). At the end: frames lost by healthy conversations, slots leaked (active slots and
connections once every client is gone), RSS and fds in the first vs the last quarter, errors by code,
close codes. Exit status 1 when a healthy frame was lost or a slot leaked. docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import aiohttp
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from duplex.audio import FRAME_S, FRAME_SAMPLES, float_to_pcm16  # noqa: E402
from duplex.server.process import ServerProcess  # noqa: E402

ACTIONS = ("reset", "interrupt", "configure", "restart", "abrupt", "slow_reader", "oversized", "bad_message")


class Soak:
    def __init__(self, url: str, pid: int | None, args: argparse.Namespace):
        self.url, self.pid, self.args = url, pid, args
        self.ws_url = url.replace("http", "ws", 1) + "/ws?codec=pcm16"
        self.deadline = time.monotonic() + args.duration_s
        rng = np.random.default_rng(0)
        self.frames = [b"\x01" + float_to_pcm16(rng.uniform(-0.3, 0.3, FRAME_SAMPLES).astype(np.float32))
                       for _ in range(16)]
        self.errors: collections.Counter[str] = collections.Counter()
        self.closes: collections.Counter[str] = collections.Counter()
        self.actions: collections.Counter[str] = collections.Counter()
        self.samples: list[dict] = []
        self.healthy: list[dict] = []
        self.failures: list[str] = []

    # --- clients -----------------------------------------------------------------------------------
    def _count(self, msg: aiohttp.WSMessage) -> bool:
        """Counts an error event; True for an audio frame."""
        if msg.type == aiohttp.WSMsgType.BINARY:
            return True
        if msg.type == aiohttp.WSMsgType.TEXT and '"error"' in msg.data:
            event = json.loads(msg.data)
            if event.get("type") == "error":
                self.errors[str(event.get("code"))] += 1
        return False

    async def healthy_conversation(self, session: aiohttp.ClientSession, k: int) -> None:
        record = {"sent": 0, "received": 0, "server_dropped": None}
        self.healthy.append(record)
        ws = await session.ws_connect(self.ws_url, max_msg_size=0)
        await ws.send_json({"type": "start", "mode": "duplex"})

        caught_up = asyncio.Event()   # set once sending is over and every frame came back
        done_sending = False

        async def read() -> None:
            async for msg in ws:
                if self._count(msg):
                    record["received"] += 1
                    if done_sending and record["received"] >= record["sent"]:
                        caught_up.set()
                elif msg.type == aiohttp.WSMsgType.TEXT and '"metrics"' in msg.data:
                    event = json.loads(msg.data)
                    if event.get("type") == "metrics" and "frames_dropped" in event:
                        record["server_dropped"] = event["frames_dropped"]
        reader = asyncio.create_task(read())
        start = time.monotonic() + k * FRAME_S / max(1, self.args.healthy)   # phases spread over a frame
        n = 0
        while time.monotonic() < self.deadline and not ws.closed:
            await asyncio.sleep(max(0.0, start + n * FRAME_S - time.monotonic()))   # drift-free pacing
            await ws.send_bytes(self.frames[n % len(self.frames)])
            record["sent"] += 1
            n += 1
        done_sending = True
        if record["received"] >= record["sent"]:
            caught_up.set()
        # every answer in flight comes back before we stop (a `stop` clears what is still queued): wait until
        # all are back, or until none has come for 3 s (an overloaded server may be seconds behind)
        last = -1
        while not caught_up.is_set() and record["received"] != last:
            last = record["received"]
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(caught_up.wait(), 3.0)
        if not ws.closed:
            await ws.send_json({"type": "stop"})
            await asyncio.sleep(0.5)
            await ws.close()
        self.closes[f"healthy:{ws.close_code}"] += 1
        reader.cancel()

    async def churn_conversation(self, session: aiohttp.ClientSession, k: int) -> None:
        rng = random.Random(k)
        while time.monotonic() < self.deadline - 1.0:
            try:
                await self._one_churn(session, rng)
            except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError) as exc:
                self.closes[f"churn-client-error:{type(exc).__name__}"] += 1
                await asyncio.sleep(0.2)

    async def _one_churn(self, session: aiohttp.ClientSession, rng: random.Random) -> None:
        ws = await session.ws_connect(self.ws_url, max_msg_size=0)
        paused = asyncio.Event()
        paused.set()

        async def read() -> None:
            while True:
                await paused.wait()
                msg = await ws.receive()
                if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    return
                self._count(msg)
        reader = asyncio.create_task(read())
        await ws.send_json({"type": "start", "mode": "duplex"})
        action = rng.choice(ACTIONS)
        self.actions[action] += 1
        abrupt = False
        t0 = time.monotonic()
        for n in range(rng.randint(6, 50)):     # 0.5 to 4 s of audio, the action somewhere in it
            if ws.closed or time.monotonic() > self.deadline:
                break
            await asyncio.sleep(max(0.0, t0 + n * FRAME_S - time.monotonic()))
            await ws.send_bytes(self.frames[n % len(self.frames)])
            if n == 5:
                if action == "reset":
                    await ws.send_json({"type": "reset"})
                elif action == "interrupt":
                    await ws.send_json({"type": "interrupt"})
                elif action == "configure":
                    await ws.send_json({"type": "configure", "config": {"temperature": rng.uniform(0, 1.2)}})
                elif action == "restart":
                    await ws.send_json({"type": "stop"})
                    await ws.send_json({"type": "start", "mode": "duplex"})
                elif action == "slow_reader":
                    paused.clear()
                    asyncio.get_running_loop().call_later(rng.uniform(1, 4), paused.set)
                elif action == "oversized":
                    await ws.send_bytes(b"\x01" + bytes(self.args.max_message_bytes + 2))
                elif action == "bad_message":
                    await ws.send_str(rng.choice(["{", '{"type": "dance"}', '{"type": "configure", "config": 5}']))
                elif action == "abrupt":
                    ws._response.connection.transport.abort()   # no close frame: the server must notice
                    abrupt = True
                    break
        if not abrupt and not ws.closed:
            if rng.random() < 0.5:
                await ws.send_json({"type": "stop"})
            await ws.close()
        paused.set()
        reader.cancel()
        self.closes[f"churn:{'abrupt' if abrupt else ws.close_code or 'closed-by-client'}"] += 1

    # --- the server -------------------------------------------------------------------------------
    async def health(self, session: aiohttp.ClientSession) -> dict:
        async with session.get(self.url + "/health") as response:
            return await response.json()

    def process_figures(self) -> dict:
        if self.pid is None:
            return {}
        rss_kb = next(int(line.split()[1]) for line in Path(f"/proc/{self.pid}/status").read_text().splitlines()
                      if line.startswith("VmRSS:"))
        return {"rss_mb": rss_kb / 1024, "fds": len(os.listdir(f"/proc/{self.pid}/fd"))}

    async def sample(self, session: aiohttp.ClientSession) -> None:
        t0 = time.monotonic()
        while time.monotonic() < self.deadline:
            state = await self.health(session)
            duplex = state["engines"]["duplex"]
            self.samples.append({"t": round(time.monotonic() - t0, 1), "active": duplex["active"],
                                 "connections": state["connections"], "step_ms": duplex["last_step_ms"],
                                 "ticks": duplex["ticks"], **self.process_figures()})
            await asyncio.sleep(self.args.sample_s)

    async def run(self) -> dict:
        async with aiohttp.ClientSession() as session:
            before = await self.health(session)
            tasks = [asyncio.create_task(self.healthy_conversation(session, k)) for k in range(self.args.healthy)]
            tasks += [asyncio.create_task(self.churn_conversation(session, k))
                      for k in range(self.args.conversations - self.args.healthy)]
            tasks.append(asyncio.create_task(self.sample(session)))
            await asyncio.gather(*tasks)
            for _ in range(100):     # every client is gone: the slots and connections come back
                after = await self.health(session)
                if after["engines"]["duplex"]["active"] == 0 and after["connections"] == 0:
                    break
                await asyncio.sleep(0.1)
        return self.report(before, after)

    def report(self, before: dict, after: dict) -> dict:
        quarter = max(1, len(self.samples) // 4)
        first, last = self.samples[:quarter], self.samples[-quarter:]

        def trend(key: str) -> dict:
            if not self.samples or key not in self.samples[0]:
                return {}
            a, b = statistics.mean(s[key] for s in first), statistics.mean(s[key] for s in last)
            return {"first_quarter": round(a, 1), "last_quarter": round(b, 1), "change_pct": round(100 * (b - a) / a, 2)}

        lost = sum(h["sent"] - h["received"] for h in self.healthy)
        return {
            "duration_s": self.args.duration_s, "slots": before["engines"]["duplex"]["slots"],
            "conversations": self.args.conversations, "healthy": self.args.healthy,
            "healthy_frames_sent": sum(h["sent"] for h in self.healthy),
            "healthy_frames_lost": lost, "healthy_server_dropped": [h["server_dropped"] for h in self.healthy],
            # lost and not counted by the server as dropped (its input queue drops the oldest under overload,
            # counted and reported): a silent loss, whatever the load
            "healthy_frames_unaccounted": sum(h["sent"] - h["received"] - (h["server_dropped"] or 0) for h in self.healthy),
            "slots_leaked": after["engines"]["duplex"]["active"], "connections_left": after["connections"],
            "rss_mb": trend("rss_mb"), "fds": trend("fds"), "step_ms": trend("step_ms"),
            "ticks_per_s": round((self.samples[-1]["ticks"] - self.samples[0]["ticks"])
                                 / max(1e-9, self.samples[-1]["t"] - self.samples[0]["t"]), 2) if self.samples else None,
            "peak_active": max((s["active"] for s in self.samples), default=0),
            "churn_actions": dict(self.actions), "errors_by_code": dict(self.errors), "closes": dict(self.closes),
            "samples": len(self.samples),
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=300.0)
    parser.add_argument("--slots", type=int, default=8, help="the server's duplex slots (when this script starts it)")
    parser.add_argument("--conversations", type=int, default=6, help="concurrent conversations (default: 75%% of 8)")
    parser.add_argument("--healthy", type=int, default=3, help="of which streamed undisturbed, their frames counted")
    parser.add_argument("--url", default=None, help="a running server instead (RSS and fds then not sampled)")
    parser.add_argument("--max-message-bytes", type=int, default=1024 * 1024, help="the server's message limit")
    parser.add_argument("--sample-s", type=float, default=5.0)
    parser.add_argument("--out", type=Path, default=None, help="write the report (JSON) here too")
    parser.add_argument("--log", type=Path, default=Path(tempfile.gettempdir()) / "duplex-soak-server.log",
                        help="the server's log (outside the checkout: it grows to megabytes)")
    args = parser.parse_args()
    server = None
    if args.url is None:
        server = ServerProcess("--slots", str(args.slots), "--no-cascade", log_path=args.log, log_level="info")
        url, pid = server.http_url, server.process.pid
    else:
        url, pid = args.url, None
    try:
        report = asyncio.run(Soak(url, pid, args).run())
    finally:
        if server is not None:
            server.stop()
    text = json.dumps(report, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")
    return 1 if report["healthy_frames_lost"] or report["slots_leaked"] or report["connections_left"] else 0
    # (a loss under overload shows as healthy_server_dropped; healthy_frames_unaccounted must be 0 at any load)


if __name__ == "__main__":
    sys.exit(main())
