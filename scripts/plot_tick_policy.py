#!/usr/bin/env python3
"""Draws docs/tick-policy.png: what a tick policy costs and what it gives, for clients at spread phases.

A discrete-event model of the scheduler, not a measurement: N clients send a frame every 80 ms at phases
spread evenly over the frame; a tick takes every waiting frame (one per slot) and costs
S(rows) = a + c * rows ms of model time. `a` and `c` default to this project's tiny Moshi on the 2-core
CI machine (S(1) ~14 ms, S(48) ~77 ms: `python scripts/bench_capacity.py` prints the bare step times),
so the curves show the shape of the trade-off; scripts/bench_capacity.py measures the real server.

    python scripts/plot_tick_policy.py [--a 14 --c 1.3 --slots 48] [--out docs/tick-policy.png]

Policies compared:
  fixed 20 ms hold, all rows  the former rule: tick when the oldest frame has waited 20 ms; every slot computed
  one tick per period         the least model time: the oldest frame waits 75 ms
  budget hold, active rows    the current rule (engines/scheduler.py TickPolicy + models/active_rows.py)
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import numpy as np

PERIOD = 80.0
MARGIN = 5.0
BUCKET = 16


def simulate(clients: int, slots: int, a: float, c: float, policy: str, periods: int = 60) -> dict[str, float]:
    """Turnaround p50/p99 (ms), model busy fraction, ticks per period; lag marks a schedule that falls behind."""
    arrivals = sorted((i * PERIOD / clients + k * PERIOD, i) for k in range(periods) for i in range(clients))
    queue: list[tuple[float, int]] = []        # waiting frames (arrival, client), at most one per client per tick
    turnarounds: list[float] = []
    now, busy, ticks, step_avg, index = 0.0, 0.0, 0, None, 0
    rows_all = slots
    while index < len(arrivals) or queue:
        # frames that have arrived by `now` join the queue
        while index < len(arrivals) and arrivals[index][0] <= now:
            queue.append(arrivals[index])
            index += 1
        if not queue:
            now = arrivals[index][0]
            continue
        oldest = min(t for t, _ in queue)
        waiting_clients = {client for _, client in queue}
        if policy == "fixed":
            hold = 20.0
        elif policy == "cadence":
            hold = PERIOD - MARGIN
        else:
            hold = 20.0 if step_avg is None else (
                max(0.0, PERIOD - step_avg - MARGIN))
        due = oldest + hold if len(waiting_clients) < clients else now
        next_arrival = arrivals[index][0] if index < len(arrivals) else math.inf
        if due > now:
            now = min(due, next_arrival)
            continue
        # tick: one frame per client, the oldest first
        taken: dict[int, float] = {}
        for t, client in sorted(queue):
            taken.setdefault(client, t)
        queue = [(t, client) for t, client in queue if taken.get(client) != t]
        rows = rows_all if policy != "budget" else min(slots, BUCKET * math.ceil(clients / BUCKET))
        step = a + c * rows
        step_avg = step if step_avg is None else step_avg + 0.2 * (step - step_avg)
        now += step
        busy += step
        ticks += 1
        turnarounds += [now - t for t in taken.values()]
    skip = clients * 5
    values = np.asarray(turnarounds[skip:])
    return {"p50": float(np.percentile(values, 50)), "p99": float(np.percentile(values, 99)),
            "busy": busy / now, "ticks": ticks / periods, "lag": float(values[-clients:].mean() - values[:clients].mean())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--a", type=float, default=14.0, help="fixed cost of a step, ms")
    parser.add_argument("--c", type=float, default=1.3, help="cost per computed slot, ms")
    parser.add_argument("--slots", type=int, default=48, help="the server's --slots")
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "tick-policy.png")
    args = parser.parse_args()

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    loads = list(range(4, args.slots + 1, 4))
    names = {"fixed": "fixed 20 ms hold, all rows", "cadence": "one tick per period, all rows",
             "budget": "budget hold, active rows (current)"}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for policy, label in names.items():
        results = [simulate(n, args.slots, args.a, args.c, policy) for n in loads]
        kept = [r["lag"] < PERIOD for r in results]
        left.plot([n for n, ok in zip(loads, kept) if ok], [r["p99"] for r, ok in zip(results, kept) if ok],
                  marker="o", label=f"{label}: p99")
        left.plot([n for n, ok in zip(loads, kept) if ok], [r["p50"] for r, ok in zip(results, kept) if ok],
                  linestyle="--", color=left.lines[-1].get_color(), label=f"{label}: p50")
        right.plot(loads, [100 * r["busy"] for r in results], marker="o", label=label)
        print(policy, [(n, round(r["p50"]), round(r["p99"]), round(100 * r["busy"]), round(r["ticks"], 2))
                       for n, r in zip(loads, results)])
    left.set_xlabel("conversations (phases spread over the 80 ms frame)")
    left.set_ylabel("frame turnaround, ms")
    left.grid(alpha=0.3)
    left.legend(fontsize=7)
    right.set_xlabel("conversations")
    right.set_ylabel("model thread busy, % of wall time")
    right.grid(alpha=0.3)
    right.legend(fontsize=7)
    fig.suptitle(f"tick policies, modelled: step = {args.a:g} + {args.c:g} x rows ms, {args.slots} slots")
    fig.tight_layout()
    fig.savefig(args.out, dpi=100)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
