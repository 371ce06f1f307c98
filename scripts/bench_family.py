#!/usr/bin/env python3
"""Moshi-family capacity side by side: N conversations at once per tiny preset, in one run.

For each preset (default: tiny, tiny-hibiki-zero, tiny-jmoshi), in rounds that alternate the presets so
that a busy machine loads them alike:
  1. bare: the `MoshiBatch` step with N slots all active (no sockets), p50 / p99 wall time, and the CPU
     time per step (process time: what the step costs this process, which other load on a shared
     machine inflates much less than the wall time; below 80 ms on one thread is real time);
  2. served: `duplex serve --preset P --slots N` and N clients on /ws (Ogg Opus, unaligned phases, speech
     at real-time pace, scripts/bench_capacity.py's load generator); turnaround p50 / p99 and whether
     the load is served (p99 <= 80 ms + the bare p99, every frame answered, no growing lag).
Prints a table with each preset's figures as a ratio of the first preset's.
`--cpu-sweep 1,8,16,24,32` instead measures only the CPU time of a step of a 32-slot batch with N slots
executing, per preset (no servers): how the cost grows with the active rows.

    OMP_NUM_THREADS=1 python scripts/bench_family.py --conversations 16 --rounds 2 --threads 1
    OMP_NUM_THREADS=1 python scripts/bench_family.py --cpu-sweep 1,8,16,24,32 --threads 1
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

import bench_capacity as cap  # noqa: E402
from bench_duplex import load_model, step_times  # noqa: E402

from duplex.server.process import ServerProcess  # noqa: E402


def measure(args: argparse.Namespace, preset: str, payloads: cap.Payloads) -> dict:
    model_args = argparse.Namespace(preset=preset, moshi_spec=None, device="cpu", dtype="float32",
                                    threads=args.threads)
    model = load_model(model_args, args.conversations)
    cpu0 = time.process_time()
    bare = cap.percentiles(step_times(model, args.conversations, args.bare_steps))
    bare["cpu_ms"] = round((time.process_time() - cpu0) * 1000 / args.bare_steps, 1)
    del model
    with ServerProcess("--preset", preset, "--slots", str(args.conversations), "--device", "cpu",
                       "--dtype", "float32", "--threads", str(args.threads), "--no-cascade") as server:
        load = cap.run_load(server.http_url, "ws_opus", args.conversations, payloads, aligned=False)
    served = cap.load_served(load, bare["p99"])
    print(f"  {preset:17s} bare p50 {bare['p50']:6.1f} p99 {bare['p99']:6.1f} ms, CPU {bare['cpu_ms']:5.1f} ms/step | "
          f"{cap.describe(load, served)}",
          flush=True)
    return {"bare_ms": bare, "turnaround_ms": load["turnaround_ms"], "served": served,
            "errors": load["errors"], "growing_lag": load["growing_lag"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", default="tiny,tiny-hibiki-zero,tiny-jmoshi")
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=2, help="alternating rounds; the medians are reported")
    parser.add_argument("--seconds", type=float, default=6.0, help="seconds of audio per load")
    parser.add_argument("--bare-steps", type=int, default=60)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--cpu-sweep", help="comma-separated N: CPU ms per step with N of 32 slots executing")
    args = parser.parse_args()
    presets = args.presets.split(",")
    if args.cpu_sweep:
        return cpu_sweep(args, presets, [int(n) for n in args.cpu_sweep.split(",")])
    with tempfile.TemporaryDirectory() as tmp:
        payloads = cap.Payloads(cap.speech(Path(tmp), args.seconds + 2), int(args.seconds * cap.FRAMES_PER_SECOND))
        runs: dict[str, list[dict]] = {p: [] for p in presets}
        for r in range(args.rounds):
            print(f"round {r + 1}/{args.rounds}: N = {args.conversations}", flush=True)
            for preset in presets if r % 2 == 0 else reversed(presets):
                runs[preset].append(measure(args, preset, payloads))
    rows = {p: summary(runs[p]) for p in presets}
    base = rows[presets[0]]
    print(f"\nN = {args.conversations} conversations, {args.rounds} rounds (medians), /ws Opus unaligned:")
    print("| preset | bare step CPU | bare step p50 / p99 | served turnaround p50 / p99 | rounds served | CPU vs first |")
    print("|---|---|---|---|---|---|")
    for p, row in rows.items():
        print(f"| {p} | {row['cpu_ms']:.1f} ms | {row['bare_p50']:.1f} / {row['bare_p99']:.1f} ms | "
              f"{row['p50']:.1f} / {row['p99']:.1f} ms | {row['served']}/{args.rounds} | "
              f"{row['cpu_ms'] / base['cpu_ms']:.2f}x |")
    if args.out:
        args.out.write_text(json.dumps({"args": vars(args) | {"out": str(args.out)}, "runs": runs, "rows": rows},
                                       indent=2))
    return 0


def cpu_sweep(args: argparse.Namespace, presets: list[str], counts: list[int]) -> int:
    import numpy as np

    from duplex.audio import FRAME_SAMPLES
    from duplex.models.moshi_batch import StepInput

    slots = max(counts)
    print(f"| preset | {' | '.join(f'N = {n}' for n in counts)} |  (CPU ms per step, {slots} slots)")
    print("|---|" + "---|" * len(counts))
    for preset in presets:
        model_args = argparse.Namespace(preset=preset, moshi_spec=None, device="cpu", dtype="float32",
                                        threads=args.threads)
        model = load_model(model_args, slots)
        none = np.zeros(slots, dtype=bool)
        pcm = (np.random.default_rng(0).standard_normal((slots, FRAME_SAMPLES)) * 0.05).astype(np.float32)
        row = []
        for n in counts:
            execute = np.zeros(slots, dtype=bool)
            execute[:n] = True
            for _ in range(3):
                model.step(StepInput(pcm, execute, none, none, none))
            cpu0 = time.process_time()
            for _ in range(args.bare_steps):
                model.step(StepInput(pcm, execute, none, none, none))
            row.append((time.process_time() - cpu0) * 1000 / args.bare_steps)
        print(f"| {preset} | {' | '.join(f'{ms:.1f}' for ms in row)} |", flush=True)
        del model
    return 0


def summary(runs: list[dict]) -> dict:
    def median(values: list[float]) -> float:
        values = sorted(values)
        return values[len(values) // 2] if len(values) % 2 else (values[len(values) // 2 - 1] + values[len(values) // 2]) / 2

    return {"cpu_ms": median([r["bare_ms"]["cpu_ms"] for r in runs]),
            "bare_p50": median([r["bare_ms"]["p50"] for r in runs]), "bare_p99": median([r["bare_ms"]["p99"] for r in runs]),
            "p50": median([r["turnaround_ms"].get("p50", float("nan")) for r in runs]),
            "p99": median([r["turnaround_ms"].get("p99", float("nan")) for r in runs]),
            "served": sum(r["served"] for r in runs)}


if __name__ == "__main__":
    sys.exit(main())
