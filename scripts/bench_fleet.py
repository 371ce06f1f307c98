#!/usr/bin/env python3
"""Fleet benchmark: what HAProxy adds, and conversations at real time per worker and in total, in one run.

Starts `duplex serve --workers W --haproxy` (the supervisor, W tiny workers behind HAProxy on loopback),
then with bench_capacity.py's load generator (clients sending espeak-ng speech at real-time pace, phases
spread over the 80 ms frame, Opus over /ws):

0. a control message's round trip (`stop` on an idle socket: no model work), through HAProxy and directly,
   one socket, one message at a time: the hop's own cost;
1. frame turnaround in the same loads: N clients straight to the workers and N through HAProxy at once (so
   both paths share the workers' batches, ticks and the machine's load), `--rounds` loads, p50/p99 of each
   path pooled over the rounds and their difference; HAProxy's own CPU per forwarded message (from /proc);
2. conversations served at real time by one worker (addressed directly, the others idle) and by the whole
   fleet through HAProxy: the largest N whose load is served (no frame missing, p99 <= 80 ms + `--budget-ms`,
   no growing lag), found by stepping N up then bisecting once (bench_capacity.capacity_search).

    python scripts/bench_fleet.py --quick           # a couple of minutes on 2 cores
    python scripts/bench_fleet.py --out /tmp/fleet.json

On a shared 2-core machine the workers share the cores with each other, HAProxy and the load generator:
the totals say what the glue costs, not what a GPU fleet serves (docs/deploy.md does that arithmetic).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import subprocess
import sys
import signal
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_capacity import (FRAME_S, REALTIME_MS, Payloads, capacity_search, percentiles,  # noqa: E402
                            run_load, speech)

import aiohttp  # noqa: E402


class Fleet:
    """`duplex serve --workers W --haproxy --port 0`: its front URL, workers' URLs and HAProxy's pid."""

    def __init__(self, workers: int, slots: int, log_path: Path):
        self.log_path = log_path
        cmd = [sys.executable, "-m", "duplex", "serve", "--workers", str(workers), "--slots", str(slots),
               "--no-cascade", "--haproxy", "--port", "0", "--quiet-progress", "--static", "none"]
        self.process = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=open(log_path, "w"), text=True,
                                        env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.workers: dict[int, str] = {}
        assert self.process.stdout is not None
        for line in self.process.stdout:
            if line.startswith("DUPLEX_WORKER "):
                parts = line.split()
                self.workers[int(parts[1])] = parts[2]
            if line.startswith("DUPLEX_READY "):
                self.front = line.split()[1]
                break
        else:
            raise SystemExit(f"the fleet did not start; log: {log_path}\n{log_path.read_text()[-3000:]}")
        found = re.search(r"haproxy: started \(pid (\d+)\)", log_path.read_text())
        self.haproxy_pid = int(found.group(1)) if found else None

    def haproxy_cpu_s(self) -> float:
        """HAProxy's CPU seconds so far (user + system, from /proc)."""
        if self.haproxy_pid is None:
            return float("nan")
        fields = Path(f"/proc/{self.haproxy_pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


async def control_rtt_ms(url: str, messages: int) -> list[float]:
    """Round trips of a control message (`stop` with no conversation: answered on the worker's event loop, no model
    work), one at a time on one socket: the transport's own cost, apart from any batching."""
    out: list[float] = []
    async with aiohttp.ClientSession() as session:
        async with session.ws_connect(url.replace("http", "ws", 1) + "/ws?codec=pcm16") as ws:
            await ws.receive_str()   # ready
            for _ in range(messages):
                t0 = time.perf_counter()
                await ws.send_str('{"type": "stop"}')
                while '"status"' not in await ws.receive_str():   # stop_acknowledged, then status
                    pass
                out.append((time.perf_counter() - t0) * 1000.0)
    return out


def served(load: dict, budget_ms: float) -> bool:
    p99 = load["turnaround_ms"].get("p99")
    return not load["errors"] and p99 is not None and p99 <= REALTIME_MS + budget_ms and not load["growing_lag"]


def line(name: str, load: dict) -> str:
    t = load["turnaround_ms"]
    err = f"  ({load['errors'][0]})" if load["errors"] else ""
    p50, p99 = t.get("p50", float("nan")), t.get("p99", float("nan"))
    return f"  {name:8s} N={load['clients']:3d}: p50 {p50:6.1f}  p99 {p99:6.1f} ms{err}"


def uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workers", type=int, default=2, help="worker processes behind HAProxy")
    parser.add_argument("--slots", type=int, default=16, help="slots of each worker (HAProxy's maxconn for it)")
    parser.add_argument("--clients", type=int, default=2, help="clients on each path in each load")
    parser.add_argument("--rounds", type=int, default=3, help="loads of the direct-and-HAProxy comparison")
    parser.add_argument("--seconds", type=float, help="seconds of audio per load (default 10, quick 5)")
    parser.add_argument("--step", type=int, default=2, help="capacity search step")
    parser.add_argument("--budget-ms", type=float, default=80.0,
                        help="a load is served while p99 turnaround <= 80 ms + this (and nothing is missing)")
    parser.add_argument("--quick", action="store_true", help="short loads, one round")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args()
    args.seconds = args.seconds or (5.0 if args.quick else 10.0)
    if args.quick:
        args.rounds = 1
    workdir = Path(tempfile.mkdtemp(prefix="bench-fleet-"))
    frames = int(args.seconds / FRAME_S)
    payloads = Payloads(speech(workdir, args.seconds * 2 + 60), frames)
    print(f"fleet benchmark: {args.workers} tiny workers x {args.slots} slots behind HAProxy, {os.cpu_count()} CPUs, "
          f"{args.seconds:g} s per load\n  load before: {uptime()}", flush=True)
    fleet = Fleet(args.workers, args.slots, workdir / "fleet.log")
    results: dict = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
                     "uptime_before": uptime()}
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(1))   # so that `finally` stops the fleet
    try:
        direct_urls = [fleet.workers[i] for i in sorted(fleet.workers)]
        print(f"0. control-message round trip, one socket, {args.rounds} x 200 each way", flush=True)
        rtt_direct: list[float] = []
        rtt_haproxy: list[float] = []
        for _ in range(args.rounds):
            rtt_direct += asyncio.run(control_rtt_ms(direct_urls[0], 200))
            rtt_haproxy += asyncio.run(control_rtt_ms(fleet.front, 200))
        results["control_rtt_ms"] = {"direct": percentiles(rtt_direct), "haproxy": percentiles(rtt_haproxy)}
        print(f"  direct  {results['control_rtt_ms']['direct']}\n  haproxy {results['control_rtt_ms']['haproxy']}",
              flush=True)
        print(f"1. frame turnaround, {args.clients} clients directly and {args.clients} through HAProxy in the same "
              f"loads, {args.rounds} round(s)", flush=True)
        # client i of a load goes to urls[i]: half straight to the workers, half through HAProxy (which spreads
        # them over the same workers), so both paths share the same batches, ticks and machine load,
        # and the paths alternate over the clients' phases (spread over the 80 ms frame), swapped every other
        # round: where in the frame a client sends changes its wait for the tick, and must not favour one path
        pairs = [(direct_urls[i % len(direct_urls)], fleet.front) for i in range(args.clients)]
        pooled: dict[str, list[float]] = {"direct": [], "haproxy": []}
        haproxy_cpu_s = 0.0
        for round_ in range(args.rounds):
            urls = [url for pair in pairs for url in (pair if round_ % 2 == 0 else pair[::-1])]
            cpu0 = fleet.haproxy_cpu_s()
            load = run_load(urls, "ws_opus", 2 * args.clients, payloads, aligned=False)
            haproxy_cpu_s += fleet.haproxy_cpu_s() - cpu0
            by_url = load["turnarounds_by_url_ms"]
            direct = [t for url in direct_urls for t in by_url.get(url, [])]
            balanced = by_url.get(fleet.front, [])
            pooled["direct"] += direct
            pooled["haproxy"] += balanced
            print(f"  direct  {percentiles(direct)}\n  haproxy {percentiles(balanced)}"
                  + (f"  ({load['errors'][0]})" if load["errors"] else ""), flush=True)
        messages = 2 * args.clients * frames * args.rounds   # audio messages through HAProxy, both directions
        d, h = percentiles(pooled["direct"]), percentiles(pooled["haproxy"])
        results["turnaround"] = {
            "direct": d, "haproxy": h,
            "direct_median_p50_ms": d["p50"], "direct_median_p99_ms": d["p99"],
            "haproxy_median_p50_ms": h["p50"], "haproxy_median_p99_ms": h["p99"],
            "haproxy_cpu_us_per_message": round(haproxy_cpu_s * 1e6 / messages, 2),
            "opus_bytes_per_message": round(sum(len(m) for m in payloads.get("opus", 0)) / frames, 1)}

        print("2. conversations at real time: one worker directly, then the fleet through HAProxy", flush=True)
        limit = args.slots * args.workers

        def one_worker(n: int) -> bool:
            load = run_load(direct_urls[0], "ws_opus", n, payloads, aligned=False)
            print(line("worker0", load), flush=True)
            return served(load, args.budget_ms)

        def whole_fleet(n: int) -> bool:
            load = run_load(fleet.front, "ws_opus", n, payloads, aligned=False, health=False)
            print(line("fleet", load), flush=True)
            return served(load, args.budget_ms)

        per_worker, tried_worker = capacity_search(one_worker, args.step, args.slots)
        total, tried_fleet = capacity_search(whole_fleet, args.step, limit)
        results["capacity"] = {"one_worker": per_worker, "fleet": total, "tried_one_worker": tried_worker,
                               "tried_fleet": tried_fleet, "budget_ms": args.budget_ms}
    finally:
        fleet.stop()
    results["uptime_after"] = uptime()
    t = results["turnaround"]
    c = results["control_rtt_ms"]
    print(f"\n| figure | value |\n|---|---|\n"
          f"| control round trip direct p50 / p99 | {c['direct']['p50']} / {c['direct']['p99']} ms |\n"
          f"| control round trip through HAProxy p50 / p99 | {c['haproxy']['p50']} / {c['haproxy']['p99']} ms |\n"
          f"| frame turnaround direct p50 / p99 (all rounds pooled) | "
          f"{t['direct_median_p50_ms']} / {t['direct_median_p99_ms']} ms |\n"
          f"| frame turnaround through HAProxy p50 / p99 (same loads) | {t['haproxy_median_p50_ms']} / "
          f"{t['haproxy_median_p99_ms']} ms |\n"
          f"| added by HAProxy p50 / p99 | {t['haproxy_median_p50_ms'] - t['direct_median_p50_ms']:+.2f} / "
          f"{t['haproxy_median_p99_ms'] - t['direct_median_p99_ms']:+.2f} ms |\n"
          f"| HAProxy CPU per forwarded audio message | {t['haproxy_cpu_us_per_message']} us |\n"
          f"| Opus audio message (client to server) | {t['opus_bytes_per_message']} bytes |\n"
          f"| conversations at real time, one worker (others idle) | {results['capacity']['one_worker']} |\n"
          f"| conversations at real time, {args.workers} workers through HAProxy | {results['capacity']['fleet']} |\n"
          f"\nload before: {results['uptime_before']}\nload after:  {results['uptime_after']}")
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))
        print(f"written: {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
