"""`duplex eval` offline vs in real time, side by side in one run, on the same generated scenario set.

Real time: a `duplex serve` child (--slots S, duplex only) and `duplex eval --clock audio --concurrency C`
against it, every scenario played at real-time pace through the client. Offline: `duplex eval --offline
--rows R` in this process, after the server has stopped (they do not share the CPU). It prints each
path's wall time (the whole command: set loading, model loading for offline, scoring), scenarios per
minute, the ratio, and whether every scenario's figures and recording are identical. Since a busy
machine slows the real-time server below real time (which would flatter the ratio), it also gives the
ideal real-time run: C scenarios at a time, each taking exactly its length, nothing else.

Identical recordings need both batches to round alike: on CPU, batches of 8 rows or fewer round
differently from larger ones (models/moshi_batch.py, ROW_BUCKET), so S and R should both be over 8 or
both 8 or fewer.

    OMP_NUM_THREADS=1 PYTHONPATH=. .venv/bin/python scripts/bench_eval_offline.py --per-kind 4 \\
        --slots 16 --concurrency 4 --rows 64
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from duplex.cli import main
from duplex.eval.generate import generate_set
from duplex.eval.scenarios import load_set, read_audio
from duplex.server.process import ServerProcess


def timed_eval(flags: list[str]) -> float:
    started = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):      # the results table: not wanted here
        code = main(["eval", *flags])
    if code != 0:
        sys.exit(f"duplex eval {' '.join(flags)} exited {code}")
    return time.perf_counter() - started


def main_() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--per-kind", type=int, default=4, help="generated scenarios of each of the 4 kinds")
    p.add_argument("--slots", type=int, default=16, help="the real-time server's slots")
    p.add_argument("--concurrency", type=int, default=4, help="scenarios played at once in real time")
    p.add_argument("--rows", type=int, default=64, help="offline scenarios per batched step")
    p.add_argument("--codec", default="opus", choices=("opus", "pcm16"))
    p.add_argument("--threads", type=int, default=1, help="torch threads, both paths")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-eval-offline-"))
    generate_set(work / "set", per_kind=args.per_kind, seed=args.seed)
    scenarios = load_set(work / "set")
    audio_s = sum(pcm.size for _, pcm in scenarios) / 24000
    common = ["--set", str(work / "set"), "--modes", "duplex", "--vad", "energy", "--seed", str(args.seed),
              "--codec", args.codec]
    load_before = os.getloadavg()[0]
    # an input queue that never drops: on a busy machine the server falls behind and catches up (slower than
    # real time, measured as such), and every scenario is still complete and comparable
    server = ServerProcess("--preset", args.preset, "--slots", str(args.slots), "--no-cascade", "--max-queue-frames",
                           "100000", "--threads", str(args.threads), log_path=work / "server.log")
    try:
        live_s = timed_eval(["--url", server.http_url, "--out", str(work / "live"), "--clock", "audio",
                             "--concurrency", str(args.concurrency), "--warmup", "0", *common])
    finally:
        server.stop()
    offline_s = timed_eval(["--offline", "--preset", args.preset, "--rows", str(args.rows), "--threads",
                            str(args.threads), "--out", str(work / "offline"), *common])
    live = json.loads((work / "live" / "results.json").read_text())
    offline = json.loads((work / "offline" / "results.json").read_text())
    a, b = live["modes"]["duplex"], offline["modes"]["duplex"]
    same_entries = sum(x == y for x, y in zip(a["scenarios"], b["scenarios"]))
    same_audio = sum(np.array_equal(read_audio(work / "live" / e["output"]), read_audio(work / "offline" / e["output"]))
                     for e in b["scenarios"])
    n = len(scenarios)
    run = offline["meta"]["offline"]
    print(f"{n} scenarios, {audio_s:.0f} s of audio, preset {args.preset}, codec {args.codec}, torch threads "
          f"{args.threads}, {os.cpu_count()} CPUs, load {load_before:.1f} -> {os.getloadavg()[0]:.1f}")
    print("| path | setting | wall s | scenarios/min | x real time |")
    print("|---|---|---|---|---|")
    print(f"| real time | server --slots {args.slots}, --concurrency {args.concurrency} | {live_s:.1f} | "
          f"{60 * n / live_s:.1f} | {audio_s / live_s:.2f} |")
    ideal_s = audio_s / args.concurrency       # C scenarios at a time, each exactly its length: no start, no lag
    print(f"| real time, ideal | {args.concurrency} at a time, exactly at real-time pace, nothing else | {ideal_s:.1f} | "
          f"{60 * n / ideal_s:.1f} | {audio_s / ideal_s:.2f} |")
    print(f"| offline | --rows {args.rows}, whole command | {offline_s:.1f} | {60 * n / offline_s:.1f} | "
          f"{audio_s / offline_s:.2f} |")
    print(f"| offline | the batched run alone ({run['steps']} steps of {run['rows_per_step']} rows, "
          f"{run['step_ms']} ms) | {run['wall_s']:.1f} | {run['scenarios_per_min']} | {run['times_real_time']} |")
    print(f"offline / real time, scenarios per minute: {live_s / offline_s:.1f}x measured (whole commands), "
          f"{ideal_s / offline_s:.1f}x against the ideal real-time run")
    print(f"identical: scenario entries {same_entries}/{n}, recordings {same_audio}/{n}, aggregates "
          f"{'yes' if a['aggregate'] == b['aggregate'] else 'NO'}   (files in {work})")


if __name__ == "__main__":
    main_()
