#!/usr/bin/env python3
"""Duplex serving benchmark: server overhead and real-time capacity, measured side by side in one run.

(a) overhead: per-frame turnaround through the real server (client send -> client receive, pcm16
    on loopback) minus the bare batched model step on the same weights and batch size.
(b) capacity: the most concurrent conversations served in real time (p99 turnaround < 80 ms) by
    - the server (`duplex serve --slots N`, N real clients at real-time pace),
    - a bare batched loop (MoshiBatch with N slots, every slot active, no sockets),
    - a one-conversation-at-a-time loop (batch 1, N steps per 80 ms: moshi.server's design,
      which in fact serves a single conversation behind a global lock).
Figures are ratios of numbers taken in the same run: this machine is shared and noisy.

    python scripts/bench_duplex.py --preset tiny            # CPU, ~5 minutes
    python scripts/bench_duplex.py --moshi-spec DIR --device cuda --sweep 1,8,16,32,64
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import aiohttp  # noqa: E402

from duplex import stats  # noqa: E402
from duplex.audio import FRAME_MS, FRAME_SAMPLES, float_to_pcm16  # noqa: E402
from duplex.client import FramePacer  # noqa: E402
from duplex.server.process import ServerProcess  # noqa: E402

REALTIME_MS = float(FRAME_MS)


def percentiles(values: list[float]) -> dict:
    return {**(stats.percentiles(values, digits=3) or {}), "n": len(values)}


# --- bare loops (in this process) ---------------------------------------------------------------
def load_model(args, slots: int):
    from duplex.models.moshi_batch import MoshiBatch
    from duplex.models.spec import PRESETS, resolve_checkpoint
    from duplex.server.loading import pick_device, pick_dtype, set_cpu_threads

    device = pick_device(args.device)
    set_cpu_threads(args.threads, device)  # the same threads as the server it is compared with
    spec = args.moshi_spec or PRESETS[args.preset].duplex_spec
    model = MoshiBatch(resolve_checkpoint(spec), slots, device, pick_dtype(args.dtype, device))
    model.warmup()
    return model


def step_times(model, active: int, steps: int, repeat_per_tick: int = 1) -> list[float]:
    """Wall time per tick (ms) with `active` slots executing; `repeat_per_tick` steps make one tick."""
    from duplex.models.moshi_batch import StepInput

    slots = model.slots
    rng = np.random.default_rng(0)
    execute = np.zeros(slots, dtype=bool)
    execute[:active] = True
    none = np.zeros(slots, dtype=bool)
    times = []
    for _ in range(steps):
        pcm = (rng.standard_normal((slots, FRAME_SAMPLES)) * 0.05).astype(np.float32)
        started = time.perf_counter()
        for _ in range(repeat_per_tick):
            model.step(StepInput(pcm, execute, none, none, none))
        _sync(model)
        times.append((time.perf_counter() - started) * 1000.0)
    return times


def _sync(model) -> None:
    if model.device.type == "cuda":
        import torch
        torch.cuda.synchronize()


# --- the real server (subprocess) ---------------------------------------------------------------
def start_server(args, slots: int) -> ServerProcess:
    model = ["--moshi-spec", args.moshi_spec] if args.moshi_spec else ["--preset", args.preset]
    return ServerProcess("--slots", str(slots), "--device", args.device, "--dtype", args.dtype,
                         "--threads", str(args.threads), *model)


class StartSignal:
    """Lets every client finish connecting, then starts them all on one shared clock."""

    def __init__(self, clients: int) -> None:
        self.event = asyncio.Event()
        self.all_ready = asyncio.Event()
        self.clients = clients
        self.ready = 0
        self.at = 0.0

    def client_ready(self) -> None:
        self.ready += 1
        if self.ready >= self.clients:
            self.all_ready.set()

    def fire(self) -> None:
        self.at = time.monotonic() + 0.05
        self.event.set()


async def client_turnarounds(url: str, frames: int, phase: float, go: StartSignal) -> list[float]:
    """One conversation at real-time pace; turnaround of frame k = its answer's arrival - its send.

    A lean load generator (raw WebSocket, pcm16 bytes prepared up front, JSON events not parsed):
    on a 2-core machine the clients share the CPU with the server, and a heavy client would make
    the server look slower than it is. Every client starts on the same `go` signal plus its `phase`.
    """
    rng = np.random.default_rng(int(phase * 1000) + 1)
    payloads = [b"\x01" + float_to_pcm16((rng.standard_normal(FRAME_SAMPLES) * 0.05).astype(np.float32))
                for _ in range(frames)]
    received: list[float] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url.replace("http", "ws", 1) + "/ws?codec=pcm16") as ws:
            await ws.receive_str()  # ready
            await ws.send_str(json.dumps({"type": "start", "mode": "duplex",
                                          "config": {"temperature": 0, "text_temperature": 0}}))
            answer = await ws.receive_str()
            if '"status"' not in answer:
                raise RuntimeError(f"start refused: {answer}")

            async def receive() -> None:
                async for message in ws:
                    if message.type == aiohttp.WSMsgType.BINARY:
                        received.append(time.monotonic())
                        if len(received) == frames:
                            return

            receiver = asyncio.create_task(receive())
            go.client_ready()
            await go.event.wait()
            pacer = FramePacer(start=go.at + phase)
            sent_at = []
            for k, payload in enumerate(payloads):
                await pacer.wait(k)
                sent_at.append(time.monotonic())
                await ws.send_bytes(payload)
            await asyncio.wait_for(receiver, timeout=60)
    return [(got - sent) * 1000.0 for got, sent in zip(received, sent_at)]


def server_turnarounds(url: str, conversations: int, frames: int, skip: int = 5, spread: bool = False) -> list[float]:
    """All clients' turnarounds. Aligned (default): every client sends its frame k at the same instant,
    as a bare batched loop assumes. Spread: phases evenly spread over a frame, like unrelated users."""
    async def run() -> list[list[float]]:
        go = StartSignal(conversations)
        phases = [i * (FRAME_MS / 1000.0) / conversations if spread else 0.0 for i in range(conversations)]
        tasks = [asyncio.create_task(client_turnarounds(url, frames, p, go)) for p in phases]
        await go.all_ready.wait()
        go.fire()
        return await asyncio.gather(*tasks)
    per_client = asyncio.run(run())
    return [t for times in per_client for t in times[skip:]]  # skip the start-up frames


# --- the benchmark ------------------------------------------------------------------------------
def overhead(args) -> dict:
    slots = args.overhead_slots
    model = load_model(args, slots)
    bare_before = step_times(model, 1, args.frames)
    server = start_server(args, slots)
    try:
        served = server_turnarounds(server.http_url, 1, args.frames)
    finally:
        server.stop()
    bare_after = step_times(model, 1, args.frames)
    del model
    bare = percentiles(bare_before + bare_after)
    turn = percentiles(served)
    return {"slots": slots, "bare_step_ms": bare, "server_turnaround_ms": turn,
            "overhead_ms": {"p50": turn["p50"] - bare["p50"], "p99": turn["p99"] - bare["p99"]}}


def capacity(args) -> dict:
    candidates = [int(n) for n in args.sweep.split(",")]
    bare_capacity, one_at_a_time, bare_rows = 0, 0, []
    single = load_model(args, 1)
    bare_candidates = list(candidates)
    for n in bare_candidates:
        model = load_model(args, n)
        batched = percentiles(step_times(model, n, args.frames))
        del model
        bare_rows.append({"conversations": n, "batched_step_ms": batched})
        print(f"  bare batched       N={n:3d}: step p99 {batched['p99']:6.1f} ms", flush=True)
        if batched["p99"] < REALTIME_MS:
            bare_capacity = n
            if n == bare_candidates[-1] and n < args.max_conversations:
                bare_candidates.append(n + 4)  # not saturated yet: keep looking
    serial_rows = []
    for n in range(1, args.max_conversations + 1):  # one by one: this limit is small
        serial = percentiles(step_times(single, 1, max(10, args.frames // 4), repeat_per_tick=n))
        serial_rows.append({"conversations": n, "tick_ms": serial})
        print(f"  bare one-at-a-time N={n:3d}: tick p99 {serial['p99']:6.1f} ms", flush=True)
        if serial["p99"] >= REALTIME_MS:
            break
        one_at_a_time = n
    server_capacity, server_rows = 0, []
    for n in sorted(set(c for c in bare_candidates if c <= bare_capacity + 4)):
        server = start_server(args, n)
        try:
            turn = percentiles(server_turnarounds(server.http_url, n, args.frames))
        finally:
            server.stop()
        server_rows.append({"conversations": n, "turnaround_ms": turn})
        print(f"  server N={n:3d}: turnaround p50 {turn['p50']:6.1f}  p99 {turn['p99']:6.1f} ms", flush=True)
        if turn["p99"] < REALTIME_MS:
            server_capacity = n
        elif n > bare_capacity:
            break
    spread = None
    if server_capacity:
        turn = None
        server = start_server(args, server_capacity)
        try:
            turn = percentiles(server_turnarounds(server.http_url, server_capacity, args.frames, spread=True))
        finally:
            server.stop()
        spread = {"conversations": server_capacity, "turnaround_ms": turn}
        print(f"  server N={server_capacity:3d}, phases spread: turnaround p50 {turn['p50']:6.1f}  "
              f"p99 {turn['p99']:6.1f} ms", flush=True)
    return {"bare": bare_rows, "one_at_a_time": serial_rows, "server": server_rows, "server_spread_phases": spread, "capacity": {
        "server": server_capacity, "bare_batched": bare_capacity, "one_at_a_time": one_at_a_time,
        "moshi_server": 1}}


def add_model_arguments(parser: argparse.ArgumentParser) -> None:
    """The model and device flags every benchmark of the duplex model takes (also bench_capacity.py)."""
    parser.add_argument("--preset", default="tiny", help="model preset (see duplex serve --help)")
    parser.add_argument("--moshi-spec", help="HF repo id or local directory instead of the preset")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    parser.add_argument("--dtype", default="auto", help="auto, bfloat16, float16 or float32")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0 = the server's auto choice)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_arguments(parser)
    parser.add_argument("--frames", type=int, default=60, help="frames per measurement (80 ms each)")
    parser.add_argument("--overhead-slots", type=int, default=8, help="batch size for the overhead figure")
    parser.add_argument("--sweep", default="1,8,16,24,32,40,44,48",
                        help="conversation counts tried for capacity")
    parser.add_argument("--max-conversations", type=int, default=128, help="upper bound of the capacity search")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()

    print(f"duplex benchmark on {platform.node()} ({os.cpu_count()} CPUs), preset/spec "
          f"{args.moshi_spec or args.preset}, device {args.device}", flush=True)
    print("(a) overhead: server turnaround vs bare step, 1 conversation", flush=True)
    over = overhead(args)
    print("(b) capacity: conversations served in real time (p99 < 80 ms)", flush=True)
    cap = capacity(args)
    c = cap["capacity"]
    results = {"overhead": over, **cap}
    print()
    print("| figure | value |")
    print("|---|---|")
    print(f"| bare batched step, {over['slots']} slots (p50 / p99) | {over['bare_step_ms']['p50']:.1f} / "
          f"{over['bare_step_ms']['p99']:.1f} ms |")
    print(f"| server turnaround, same weights (p50 / p99) | {over['server_turnaround_ms']['p50']:.1f} / "
          f"{over['server_turnaround_ms']['p99']:.1f} ms |")
    print(f"| server overhead (p50 / p99) | {over['overhead_ms']['p50']:.2f} / {over['overhead_ms']['p99']:.2f} ms |")
    print(f"| real-time capacity: server / bare batched / one-at-a-time / moshi.server | "
          f"{c['server']} / {c['bare_batched']} / {c['one_at_a_time']} / {c['moshi_server']} |")
    if c["bare_batched"]:
        print(f"| server / bare batched | {c['server'] / c['bare_batched']:.2f} |")
    if c["one_at_a_time"]:
        print(f"| server / one-at-a-time | {c['server'] / c['one_at_a_time']:.1f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
