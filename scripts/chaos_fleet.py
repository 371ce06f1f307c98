"""Fleet chaos: workers behind HAProxy under load, `kill -9` a worker and HAProxy in turn.

    python scripts/chaos_fleet.py --rounds 4 --conversations 6

Starts `duplex serve --workers 2 --slots S --haproxy` (tiny preset, CPU) and keeps `--conversations` pcm16
conversations streaming through HAProxy in real time. Each round kills one victim with SIGKILL, a worker
and HAProxy alternately, then checks: every conversation the kill did not cut lost no frame (sent ==
received after a drain, or the frames missing are the ones the server counted as dropped by its
input queue under overload); a new conversation is served (its first answer back) within `--serve-within-s`
of the kill; the cut ones reconnect. At the end the fleet must exit 0 on SIGTERM within 30 s (nothing
hangs). Prints a JSON report; exit status 1 on any loss, slow recovery or hang. docs/reliability.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import sys
import time

import aiohttp
import numpy as np

from duplex.audio import FRAME_S, FRAME_SAMPLES, float_to_pcm16

FRAME = b"\x01" + float_to_pcm16(np.random.default_rng(0).uniform(-0.3, 0.3, FRAME_SAMPLES).astype(np.float32))


class Talker:
    """One conversation through the front: streams until stopped or cut; counts frames both ways."""

    def __init__(self, session: aiohttp.ClientSession, url: str):
        self.session, self.url = session, url
        self.sent = self.received = 0
        self.dropped = 0                       # the server's count (its input queue under overload), from `metrics`
        self.stopped = asyncio.Event()
        self.cut = False
        self.first_answer = asyncio.Event()
        self.task: asyncio.Task | None = None
        self.stopping = False

    async def run(self) -> None:
        ws = await self.session.ws_connect(self.url.replace("http", "ws", 1) + "/ws?codec=pcm16")
        await ws.send_json({"type": "start", "mode": "duplex"})

        async def read() -> None:
            async for msg in ws:
                if msg.type == aiohttp.WSMsgType.BINARY:
                    self.received += 1
                    self.first_answer.set()
                elif msg.type == aiohttp.WSMsgType.TEXT and '"metrics"' in msg.data:
                    event = json.loads(msg.data)
                    if event.get("type") == "metrics" and "frames_dropped" in event:
                        self.dropped = int(event["frames_dropped"])
                        self.stopped.set()
            if not self.stopping:
                self.cut = True
        reader = asyncio.create_task(read())
        t0 = time.monotonic()
        try:
            while not self.stopping and not ws.closed and not reader.done():
                await asyncio.sleep(max(0.0, t0 + self.sent * FRAME_S - time.monotonic()))
                await ws.send_bytes(FRAME)
                self.sent += 1
        except (ConnectionError, aiohttp.ClientError):
            self.cut = True
        if not self.cut:
            last, quiet_since = -1, time.monotonic()   # drain: until all are back, or none came for 3 s
            while self.received < self.sent and not reader.done() and time.monotonic() - quiet_since < 3.0:
                if self.received != last:
                    last, quiet_since = self.received, time.monotonic()
                await asyncio.sleep(0.05)
            await ws.send_json({"type": "stop"})   # its metrics say how many frames the server dropped
            try:
                await asyncio.wait_for(self.stopped.wait(), 5.0)
            except asyncio.TimeoutError:
                pass
        await ws.close()
        reader.cancel()

    def start(self) -> "Talker":
        self.task = asyncio.create_task(self.run())
        return self


async def main_async(args: argparse.Namespace) -> dict:
    fleet = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "duplex", "serve", "--workers", "2", "--slots", str(args.slots), "--haproxy",
        "--no-cascade", "--port", "0", "--opus-workers", "0", "--quiet-progress", "--static", "none",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    assert fleet.stdout is not None and fleet.stderr is not None
    pids: dict[str, int] = {}

    async def watch_stderr() -> None:
        assert fleet.stderr is not None
        async for raw in fleet.stderr:
            line = raw.decode(errors="replace")
            found = re.search(r"(w\d+|haproxy): started \(pid (\d+)\)", line)
            if found:
                pids[found.group(1)] = int(found.group(2))
    watcher = asyncio.create_task(watch_stderr())
    url = ""
    while not url.startswith("DUPLEX_READY "):
        url = (await asyncio.wait_for(fleet.stdout.readline(), 180)).decode()
    url = url.split()[1]
    report: dict = {"rounds": []}
    async with aiohttp.ClientSession() as session:
        talkers = [Talker(session, url).start() for _ in range(args.conversations)]
        await asyncio.sleep(5)
        for k in range(args.rounds):
            victim = "haproxy" if k % 2 else sorted(n for n in pids if n != "haproxy")[k // 2 % 2]
            pid = pids[victim]
            os.kill(pid, signal.SIGKILL)
            killed_at = time.monotonic()
            newcomer = Talker(session, url)
            served_s = None
            for _ in range(int(args.serve_within_s * 10)):   # a new conversation: served within the restart time
                try:
                    newcomer = Talker(session, url).start()
                    await asyncio.wait_for(newcomer.first_answer.wait(), 2.0)
                    served_s = round(time.monotonic() - killed_at, 2)
                    break
                except (asyncio.TimeoutError, aiohttp.ClientError):
                    newcomer.stopping = True
                    await asyncio.sleep(0.1)
            await asyncio.sleep(args.round_s)
            for t in talkers:
                t.stopping = True
            await asyncio.gather(*(t.task for t in talkers if t.task), return_exceptions=True)
            kept = [t for t in talkers if not t.cut]
            report["rounds"].append({
                "killed": victim, "served_new_after_s": served_s, "cut": sum(t.cut for t in talkers),
                "kept": len(kept), "kept_frames_sent": sum(t.sent for t in kept),
                "kept_frames_lost": sum(t.sent - t.received for t in kept),
                "kept_dropped_by_server": sum(t.dropped for t in kept),   # counted overload drops
                "kept_frames_unaccounted": sum(t.sent - t.received - t.dropped for t in kept)})
            newcomer.stopping = True
            talkers = [Talker(session, url).start() for _ in range(args.conversations)]
            await asyncio.sleep(5)
        for t in talkers:
            t.stopping = True
        await asyncio.gather(*(t.task for t in talkers if t.task), return_exceptions=True)
    fleet.send_signal(signal.SIGTERM)
    try:
        report["exit_code"] = await asyncio.wait_for(fleet.wait(), 30)
    except asyncio.TimeoutError:
        fleet.kill()
        report["exit_code"] = "hung (killed after 30 s)"
    watcher.cancel()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=6)
    parser.add_argument("--slots", type=int, default=4, help="per worker")
    parser.add_argument("--round-s", type=float, default=10.0, help="streaming after each kill")
    parser.add_argument("--serve-within-s", type=float, default=20.0)
    args = parser.parse_args()
    report = asyncio.run(main_async(args))
    print(json.dumps(report, indent=2))
    bad = any(r["kept_frames_unaccounted"] or r["served_new_after_s"] is None for r in report["rounds"])
    return 1 if bad or report["exit_code"] != 0 else 0


if __name__ == "__main__":
    sys.exit(main())
